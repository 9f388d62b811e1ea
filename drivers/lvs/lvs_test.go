package lvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/ipvs"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/freeport"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/roottest"
)

// kernel is an ipvs.Client that records calls into a model of IPVS's
// tables, for the unit tests of the mapping (this machine has no IPVS;
// TestConformance runs against the kernel where it has).
type kernel struct {
	mu       sync.Mutex
	services map[ipvs.Service]ipvs.Service // by identity
	dsts     map[ipvs.Service][]ipvs.Destination
	calls    []string
	failOn   string // a call name that fails
}

func newKernel() *kernel {
	return &kernel{services: map[ipvs.Service]ipvs.Service{}, dsts: map[ipvs.Service][]ipvs.Destination{}}
}

func (k *kernel) call(name string) error {
	k.calls = append(k.calls, name)
	if name == k.failOn {
		return fmt.Errorf("injected: %w", syscall.ENOMEM)
	}
	return nil
}

func (k *kernel) Info() (ipvs.Info, error)     { return ipvs.Info{Version: [3]int{1, 2, 1}}, nil }
func (k *kernel) Config() (ipvs.Config, error) { return ipvs.Config{}, nil }
func (k *kernel) SetConfig(ipvs.Config) error  { return nil }
func (k *kernel) Service(s ipvs.Service) (ipvs.ServiceExtended, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return ipvs.ServiceExtended{Service: k.services[identity(s)]}, nil
}

func (k *kernel) Services() ([]ipvs.ServiceExtended, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []ipvs.ServiceExtended
	for _, s := range k.services {
		out = append(out, ipvs.ServiceExtended{Service: s})
	}
	return out, nil
}

func (k *kernel) CreateService(s ipvs.Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.services[identity(s)]; ok {
		return syscall.EEXIST
	}
	if err := k.call("CreateService"); err != nil {
		return err
	}
	k.services[identity(s)] = s
	return nil
}

func (k *kernel) UpdateService(s ipvs.Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if old, ok := k.services[identity(s)]; !ok || old == s {
		if !ok {
			return syscall.ESRCH
		}
		return nil // the kernel takes it; no change to record
	}
	if err := k.call("UpdateService"); err != nil {
		return err
	}
	k.services[identity(s)] = s
	return nil
}

func (k *kernel) RemoveService(s ipvs.Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("RemoveService"); err != nil {
		return err
	}
	delete(k.services, identity(s))
	delete(k.dsts, identity(s))
	return nil
}

func (k *kernel) Destinations(s ipvs.Service) ([]ipvs.DestinationExtended, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []ipvs.DestinationExtended
	for i, d := range k.dsts[identity(s)] {
		out = append(out, ipvs.DestinationExtended{Destination: d, ActiveConnections: uint32(i), Stats64: ipvs.Stats{Connections: uint64(10 * (i + 1))}})
	}
	return out, nil
}

func (k *kernel) CreateDestination(s ipvs.Service, d ipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("CreateDestination"); err != nil {
		return err
	}
	k.dsts[identity(s)] = append(k.dsts[identity(s)], d)
	return nil
}

func (k *kernel) UpdateDestination(s ipvs.Service, d ipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("UpdateDestination"); err != nil {
		return err
	}
	ds := k.dsts[identity(s)]
	for i := range ds {
		if ds[i].Address == d.Address && ds[i].Port == d.Port {
			ds[i] = d
		}
	}
	return nil
}

func (k *kernel) RemoveDestination(s ipvs.Service, d ipvs.Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("RemoveDestination"); err != nil {
		return err
	}
	k.dsts[identity(s)] = slices.DeleteFunc(k.dsts[identity(s)], func(x ipvs.Destination) bool { return x.Address == d.Address && x.Port == d.Port })
	return nil
}

// table renders the model: one line per service and destination, sorted.
func (k *kernel) table() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var lines []string
	for id, s := range k.services {
		lines = append(lines, fmt.Sprintf("svc %v:%d %s", s.Address, s.Port, s.Scheduler))
		for _, d := range k.dsts[id] {
			lines = append(lines, fmt.Sprintf("svc %v:%d -> %v:%d w%d", s.Address, s.Port, d.Address, d.Port, d.Weight))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (k *kernel) takeCalls() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.calls
	k.calls = nil
	return c
}

func open(t *testing.T, k *kernel) *Driver {
	t.Helper()
	d, err := Open(context.Background(), &Options{Client: k})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func config(alg driver.Algorithm, servers ...driver.Server) *driver.Config {
	return &driver.Config{
		Frontends: []driver.Frontend{{Name: "vip", Protocol: driver.TCP, Address: "198.18.9.1", Port: 80, DefaultPool: "web"}},
		Pools:     []driver.Pool{{Name: "web", Algorithm: alg, Servers: servers}},
	}
}

func srv(name string, last byte, weight int) driver.Server {
	return driver.Server{Name: name, Address: fmt.Sprintf("198.18.9.%d", last), Port: 8080, Weight: weight}
}

func TestApplyMapsToIPVS(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	d := open(t, k)
	want := func(what, table string) {
		t.Helper()
		if got := k.table(); got != table {
			t.Fatalf("%s: IPVS holds\n%s\nwant\n%s", what, got, table)
		}
	}
	cfg := config(driver.RoundRobin, srv("a", 11, 1), srv("b", 12, 2), srv("c", 13, 3))
	if err := d.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want("apply", "svc 198.18.9.1:80 -> 198.18.9.11:8080 w1\nsvc 198.18.9.1:80 -> 198.18.9.12:8080 w2\nsvc 198.18.9.1:80 -> 198.18.9.13:8080 w3\nsvc 198.18.9.1:80 wrr")
	k.takeCalls()
	if err := d.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if calls := k.takeCalls(); len(calls) != 0 {
		t.Fatalf("applying the same config again made calls %v", calls)
	}
	for _, tc := range []struct {
		alg   driver.Algorithm
		sched string
	}{{driver.LeastConnections, "wlc"}, {driver.SourceHash, "sh"}, {driver.Weighted, "wrr"}} {
		alg, sched := tc.alg, tc.sched
		cfg.Pools[0].Algorithm = alg
		if err := d.Apply(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(k.table(), "svc 198.18.9.1:80 "+sched) {
			t.Fatalf("%s: %s", alg, k.table())
		}
	}
	k.takeCalls()

	// Server operations change only their destination.
	if err := d.AddServer(ctx, "web", srv("d", 14, 4)); err != nil {
		t.Fatal(err)
	}
	if err := d.SetState(ctx, "web", "b", driver.Drain); err != nil {
		t.Fatal(err)
	}
	if err := d.SetState(ctx, "web", "c", driver.Maintenance); err != nil {
		t.Fatal(err)
	}
	if err := d.SetWeight(ctx, "web", "a", 7); err != nil {
		t.Fatal(err)
	}
	if calls := k.takeCalls(); !slices.Equal(calls, []string{"CreateDestination", "UpdateDestination", "RemoveDestination", "UpdateDestination"}) {
		t.Fatalf("server operations made calls %v", calls)
	}
	want("server operations", "svc 198.18.9.1:80 -> 198.18.9.11:8080 w7\nsvc 198.18.9.1:80 -> 198.18.9.12:8080 w0\nsvc 198.18.9.1:80 -> 198.18.9.14:8080 w4\nsvc 198.18.9.1:80 wrr")
	st, err := d.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := drivertest.Find(st, "web", "b"); s == nil || s.State != driver.Draining {
		t.Fatalf("stats of b: %+v", s)
	}
	if s := drivertest.Find(st, "web", "c"); s == nil || s.State != driver.Maint || s.TotalConnections != 0 {
		t.Fatalf("stats of c: %+v", s)
	}
	if s := drivertest.Find(st, "web", "a"); s == nil || s.State != driver.Up || s.TotalConnections == 0 || s.Weight != 7 {
		t.Fatalf("stats of a: %+v", s)
	}

	// Backups get weight 0 while a primary is up.
	cfg = config(driver.RoundRobin, srv("a", 11, 1), driver.Server{Name: "spare", Address: "198.18.9.20", Port: 8080, Weight: 5, Backup: true})
	if err := d.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want("backup", "svc 198.18.9.1:80 -> 198.18.9.11:8080 w1\nsvc 198.18.9.1:80 -> 198.18.9.20:8080 w0\nsvc 198.18.9.1:80 wrr")

	// A removed frontend's service goes; one not made by the driver stays.
	other := ipvs.Service{Address: netip.MustParseAddr("198.18.9.99"), Port: 443, Protocol: ipvs.TCP, Family: ipvs.INET, Scheduler: "rr"}
	if err := k.CreateService(other); err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, &driver.Config{}); err != nil {
		t.Fatal(err)
	}
	want("empty config", "svc 198.18.9.99:443 rr")
}

func TestBadConfigsChangeNothing(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	d := open(t, k)
	good := config(driver.RoundRobin, srv("a", 11, 1))
	if err := d.Apply(ctx, good); err != nil {
		t.Fatal(err)
	}
	before := k.table()
	http := config(driver.RoundRobin, srv("a", 11, 1))
	http.Frontends[0].Protocol = driver.HTTP
	anyAddr := config(driver.RoundRobin, srv("a", 11, 1))
	anyAddr.Frontends[0].Address = "0.0.0.0"
	named := config(driver.RoundRobin, driver.Server{Name: "a", Address: "web.example", Port: 80})
	mixed := config(driver.RoundRobin, driver.Server{Name: "a", Address: "2001:db8::1", Port: 80})
	inject := config(driver.RoundRobin, driver.Server{Name: "a\nb", Address: "198.18.9.11", Port: 80})
	for _, tc := range []struct {
		what string
		cfg  *driver.Config
		code errcode.Code
	}{
		{"HTTP frontend", http, errcode.Unimplemented},
		{"unspecified address", anyAddr, errcode.InvalidArgument},
		{"DNS name", named, errcode.InvalidArgument},
		{"mixed families", mixed, errcode.InvalidArgument},
		{"newline in a name", inject, errcode.InvalidArgument},
	} {
		if err := d.Apply(ctx, tc.cfg); !errors.Is(err, tc.code) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.code)
		}
	}
	for _, bad := range drivertest.BadConfigs() {
		cfg := config(driver.RoundRobin, srv("a", 11, 1))
		bad.Mutate(cfg)
		if err := d.Apply(ctx, cfg); !errors.Is(err, errcode.InvalidArgument) && !errors.Is(err, errcode.Unimplemented) {
			t.Errorf("%s: %v", bad.Name, err)
		}
	}
	if got := k.table(); got != before {
		t.Fatalf("rejected configs changed IPVS:\n%s\nwant\n%s", got, before)
	}

	// A kernel call failing half way: the previous configuration is put back.
	k.failOn = "CreateDestination"
	err := d.Apply(ctx, config(driver.RoundRobin, srv("a", 11, 1), srv("b", 12, 1)))
	if errcode.Of(err) != errcode.Unavailable { // ENOMEM, by errcode's errno table
		t.Fatalf("failing kernel: %v", err)
	}
	k.failOn = ""
	if got := k.table(); got != before {
		t.Fatalf("after a failed apply IPVS holds\n%s\nwant\n%s", got, before)
	}
	if cfg, _ := d.Config(ctx); !driver.Equal(cfg, good) {
		t.Fatalf("config in force after a failed apply: %+v", cfg)
	}
}

// TestHealthChecks runs the driver's TCP checks against real listeners on
// loopback: a server whose port stops answering goes to weight 0 after
// Fall probes, and back after Rise.
func TestHealthChecks(t *testing.T) {
	ctx := context.Background()
	k := newKernel()
	d := open(t, k)
	la, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	// b's port stays the test's while b is down (a freed port could be
	// taken meanwhile by a test running in parallel, and look up).
	reservedB := freeport.Reserve(t, "127.0.0.1")
	lb, err := reservedB.Listen()
	if err != nil {
		t.Fatal(err)
	}
	portB := uint16(reservedB.Port())
	cfg := &driver.Config{
		Frontends: []driver.Frontend{{Name: "vip", Protocol: driver.TCP, Address: "127.0.0.9", Port: 80, DefaultPool: "web"}},
		Pools: []driver.Pool{{Name: "web", Servers: []driver.Server{
			{Name: "a", Address: "127.0.0.1", Port: uint16(la.Addr().(*net.TCPAddr).Port)},
			{Name: "b", Address: "127.0.0.1", Port: portB},
		}, HealthCheck: &driver.HealthCheck{Type: driver.TCPCheck, Interval: 100 * time.Millisecond, Rise: 2, Fall: 2}}},
	}
	if err := d.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	weightOfB := func() string {
		for line := range strings.Lines(k.table()) {
			if f := strings.Fields(line); len(f) == 5 && strings.HasSuffix(f[3], fmt.Sprintf(":%d", portB)) {
				return f[4]
			}
		}
		return "none"
	}
	lb.Close()
	start := time.Now()
	drivertest.WaitStats(t, d, 3*time.Second, func(st []driver.ServerStats) bool {
		return drivertest.Find(st, "web", "b").State == driver.Down
	})
	t.Logf("b down after %v (interval 100ms, fall 2)", time.Since(start).Round(10*time.Millisecond))
	if w := weightOfB(); w != "w0" {
		t.Fatalf("b is down but has weight %s:\n%s", w, k.table())
	}
	lb, err = reservedB.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	drivertest.WaitStats(t, d, 3*time.Second, func(st []driver.ServerStats) bool {
		return drivertest.Find(st, "web", "b").State == driver.Up
	})
	if w := weightOfB(); w != "w1" {
		t.Fatalf("b is up again but has weight %s", w)
	}
}

func TestCloseRemovesServices(t *testing.T) {
	k := newKernel()
	d, err := Open(context.Background(), &Options{Client: k})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(context.Background(), config(driver.RoundRobin, srv("a", 11, 1))); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := k.table(); got != "" {
		t.Fatalf("after Close IPVS holds %s", got)
	}
	if err := d.Apply(context.Background(), config(driver.RoundRobin)); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Apply after Close: %v", err)
	}
}

// TestOpen opens the driver on this machine's kernel: where it has no IPVS
// the error says so with errcode.Unimplemented.
func TestOpen(t *testing.T) {
	roottest.Require(t)
	d, err := Open(context.Background(), nil)
	if err != nil {
		if !errors.Is(err, errcode.Unimplemented) || !strings.Contains(err.Error(), "ip_vs") {
			t.Fatalf("Open on a kernel without IPVS: %v", err)
		}
		return
	}
	d.Close()
}

// TestConformance runs the suite on the kernel's IPVS; this machine has
// none, which roottest reports as the listed exception.
func TestConformance(t *testing.T) {
	roottest.Require(t, roottest.Kernel(roottest.IPVS))
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) driver.Driver {
			d, err := Open(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		},
		Bind: drivertest.LoopbackBind,
	})
}
