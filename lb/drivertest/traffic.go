package drivertest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/testhost"
)

// TrafficHarness opens real balancers for RunTrafficTests.
type TrafficHarness struct {
	// Open returns a fresh balancer whose process runs in the root
	// namespace (frontends bind the cluster's root address). It registers
	// its own cleanup.
	Open func(t *testing.T) driver.Driver
	// ZeroLossReloads says reloads under load must lose no request; if
	// false the failures are measured and logged.
	ZeroLossReloads bool
	// BadSnippets pass Config.Validate but the backend rejects them.
	BadSnippets map[string]string
	// OpenIn returns a fresh balancer that runs in host's network
	// namespace: its processes through host.Command, or its sockets
	// through host.Listen or host.Do. It is required.
	OpenIn func(t *testing.T, host *testhost.Host) driver.Driver
}

// Lab is a cluster of four simulated servers: h0, h1 and h2 run backends,
// h3 runs clients (from Sources, extra addresses of h3), and the balancer
// runs in the root namespace on Cluster.RootAddr.
type Lab struct {
	Cluster *testhost.Cluster
	// Sources are 20 addresses of h3 that clients may send from.
	Sources []netip.Addr
	port    atomic.Uint32
}

// NewLab builds a Lab (it needs root; see testhost.New).
func NewLab(t testing.TB) *Lab {
	c := testhost.New(t, 4)
	lab := &Lab{Cluster: c}
	lab.port.Store(20000)
	h := c.Hosts[3]
	nh, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	link, err := nh.LinkByName(h.Link)
	if err != nil {
		t.Fatal(err)
	}
	base := c.Subnet.Addr().As4()
	for i := range 20 {
		a := base
		a[3] = byte(100 + i)
		addr := netip.AddrFrom4(a)
		nl, _ := netlink.ParseAddr(netip.PrefixFrom(addr, c.Subnet.Bits()).String())
		if err := nh.AddrAdd(link, nl); err != nil {
			t.Fatalf("add address %v to h3: %v", addr, err)
		}
		lab.Sources = append(lab.Sources, addr)
	}
	return lab
}

// Port returns a port no other part of the lab uses.
func (l *Lab) Port() uint16 { return uint16(l.port.Add(1)) }

// Backend is an HTTP server in a host's namespace answering its name; path
// /health answers 200 and every other path waits Delay first. It echoes
// the request header X-Route as X-Seen-Route and always sends X-Upstream.
type Backend struct {
	Name  string
	Host  *testhost.Host
	Port  uint16
	Delay time.Duration
	mu    sync.Mutex
	srv   *http.Server
}

// StartBackend starts a backend named name on host h at port, stopped in
// t.Cleanup.
func StartBackend(t testing.TB, h *testhost.Host, port uint16, name string, delay time.Duration) *Backend {
	b := &Backend{Name: name, Host: h, Port: port, Delay: delay}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	return b
}

// Server returns the backend as a pool server.
func (b *Backend) Server() driver.Server {
	return driver.Server{Name: b.Name, Address: b.Host.Addr.String(), Port: b.Port}
}

// Start listens again after Stop.
func (b *Backend) Start() error {
	l, err := b.Host.Listen("tcp", netip.AddrPortFrom(b.Host.Addr, b.Port).String())
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" && b.Delay > 0 {
			time.Sleep(b.Delay)
		}
		if v := r.Header.Get("X-Route"); v != "" {
			w.Header().Set("X-Seen-Route", v)
		}
		w.Header().Set("X-Upstream", "from-backend")
		io.WriteString(w, b.Name)
	})}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(l)
	return nil
}

// Stop closes the listener and every connection: the backend is dead.
func (b *Backend) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		b.srv.Close()
		b.srv = nil
	}
}

// Client returns an HTTP client whose connections come from h3 at src.
func (l *Lab) Client(src netip.Addr, keepAlive bool, tlsConf *tls.Config) *http.Client {
	h := l.Cluster.Hosts[3]
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: dial, DisableKeepAlives: !keepAlive, TLSClientConfig: tlsConf,
		MaxIdleConnsPerHost: 4, ForceAttemptHTTP2: false,
	}}
}

// Get fetches url and returns the body (the backend's name).
func Get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// RunTrafficTests sends real traffic through real balancers: they need
// root (testhost) and run the same subtests for every real driver. A
// driver without Capabilities.Layer7 gets TCP frontends where the others
// get HTTP ones, with clients that open a connection per request, so the
// same counts hold.
func RunTrafficTests(t *testing.T, h TrafficHarness) {
	lab := NewLab(t)
	for _, tt := range []struct {
		name string
		run  func(*testing.T, *trafficSuite)
	}{
		{"RoundRobin", testRoundRobin},
		{"Weighted", testWeighted},
		{"SourceHash", testSourceHash},
		{"LeastConnections", testLeastConnections},
		{"HealthCheck", testHealthCheck},
		{"TLS", testTLS},
		{"Routes", testRoutes},
		{"TCP", testTCP},
		{"ReloadUnderLoad", testReloadUnderLoad},
		{"ServerOperations", testRuntimeServers},
		{"RejectedConfigKeepsServing", testRejectedKeepsServing},
		{"FailedBindKeepsServing", testFailedBindKeepsServing},
		{"InHostNamespace", testInHostNamespace},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, &trafficSuite{h: h, lab: lab, d: h.Open(t)}) })
	}
}

type trafficSuite struct {
	h   TrafficHarness
	lab *Lab
	d   driver.Driver
}

// protocol is the frontends' protocol: HTTP, or TCP for a layer-4 driver.
func (s *trafficSuite) protocol() driver.Protocol {
	if s.d.Capabilities().Layer7 {
		return driver.HTTP
	}
	return driver.TCP
}

// setup starts one backend per delay on h0, h1, h2 (named h0, h1, h2) and
// applies a config with one HTTP (or TCP, see protocol) frontend over a
// pool of them; it returns the frontend's URL.
func (s *trafficSuite) setup(t *testing.T, pool driver.Pool, delays ...time.Duration) (string, []*Backend, *driver.Config) {
	port := s.lab.Port()
	var bs []*Backend
	for i, d := range delays {
		b := StartBackend(t, s.lab.Cluster.Hosts[i], port, fmt.Sprintf("h%d", i), d)
		bs = append(bs, b)
		if len(pool.Servers) <= i {
			pool.Servers = append(pool.Servers, b.Server())
		} else {
			pool.Servers[i].Address, pool.Servers[i].Port = b.Server().Address, port
		}
	}
	pool.Name = "pool"
	cfg := &driver.Config{Pools: []driver.Pool{pool}, Frontends: []driver.Frontend{{
		Name: "www", Protocol: s.protocol(), Address: s.lab.Cluster.RootAddr.String(), Port: s.lab.Port(), DefaultPool: "pool",
	}}}
	if err := s.d.Apply(t.Context(), cfg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(s.lab.Cluster.RootAddr, cfg.Frontends[0].Port)), bs, cfg
}

// count sends n sequential requests and counts them by backend.
func count(t *testing.T, c *http.Client, url string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		name, err := Get(c, url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		got[name]++
	}
	return got
}

func within(got, want int, tol float64) bool {
	d := float64(got - want)
	return d <= tol*float64(want) && -d <= tol*float64(want)
}

func testRoundRobin(t *testing.T, s *trafficSuite) {
	url, _, _ := s.setup(t, driver.Pool{Algorithm: driver.RoundRobin}, 0, 0, 0)
	got := count(t, s.lab.Client(s.lab.Sources[0], false, nil), url, 300)
	t.Logf("round robin, 300 requests: %v", got)
	for _, n := range []string{"h0", "h1", "h2"} {
		if !within(got[n], 100, 0.05) {
			t.Fatalf("round robin over 3 servers: %v, want each 100±5", got)
		}
	}
}

func testWeighted(t *testing.T, s *trafficSuite) {
	for _, alg := range []driver.Algorithm{driver.Weighted, driver.RoundRobin} {
		url, _, _ := s.setup(t, driver.Pool{Algorithm: alg, Servers: []driver.Server{{Name: "h0", Weight: 1}, {Name: "h1", Weight: 3}}}, 0, 0)
		got := count(t, s.lab.Client(s.lab.Sources[0], false, nil), url, 400)
		t.Logf("%s 1:3, 400 requests: %v", alg, got)
		if !within(got["h0"], 100, 0.10) || !within(got["h1"], 300, 0.10) {
			t.Fatalf("%s with weights 1:3 over 400 requests: %v, want 100 and 300 within 10%%", alg, got)
		}
	}
}

func testSourceHash(t *testing.T, s *trafficSuite) {
	url, _, _ := s.setup(t, driver.Pool{Algorithm: driver.SourceHash}, 0, 0, 0)
	servers := map[string]int{}
	for i, src := range s.lab.Sources {
		n := 10
		if i == 0 {
			n = 50
		}
		got := count(t, s.lab.Client(src, false, nil), url, n)
		if len(got) != 1 {
			t.Fatalf("source hash: client %v reached %v over %d requests, want one server", src, got, n)
		}
		for name := range got {
			servers[name]++
		}
	}
	t.Logf("source hash: %d client addresses per server: %v", len(s.lab.Sources), servers)
	if len(servers) < 2 {
		t.Fatalf("source hash sent all %d client addresses to one server: %v", len(s.lab.Sources), servers)
	}
}

func testLeastConnections(t *testing.T, s *trafficSuite) {
	url, _, _ := s.setup(t, driver.Pool{Algorithm: driver.LeastConnections}, 300*time.Millisecond, 0, 0)
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	stop := time.Now().Add(3 * time.Second)
	for i := range 8 {
		wg.Go(func() {
			c := s.lab.Client(s.lab.Sources[i], false, nil)
			for time.Now().Before(stop) {
				name, err := Get(c, url)
				if err != nil {
					t.Errorf("GET: %v", err)
					return
				}
				mu.Lock()
				got[name]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("least connections, slow h0 (300ms), 8 concurrent clients for 3s: %v", got)
	if fast := min(got["h1"], got["h2"]); got["h0"]*2 >= fast || got["h0"] == 0 && fast == 0 {
		t.Fatalf("least connections: slow h0 got %d requests, fast ones %v; want under half of each fast one's", got["h0"], got)
	}
}

// load sends requests in the background until stop is called, returning
// per-backend counts and failures.
type load struct {
	mu       sync.Mutex
	ok, fail int
	by       map[string]int
	last     map[string]time.Time
	errs     []string
	stop     chan struct{}
	wg       sync.WaitGroup
}

func startLoad(c []*http.Client, url string, pause time.Duration) *load {
	l := &load{by: map[string]int{}, last: map[string]time.Time{}, stop: make(chan struct{})}
	for _, c := range c {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				name, err := Get(c, url)
				l.mu.Lock()
				if err != nil {
					l.fail++
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err.Error())
					}
				} else {
					l.ok++
					l.by[name]++
					l.last[name] = time.Now()
				}
				l.mu.Unlock()
				time.Sleep(pause)
			}
		})
	}
	return l
}

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

func (l *load) snapshot() (ok, fail int, by map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	by = map[string]int{}
	for k, v := range l.by {
		by[k] = v
	}
	return l.ok, l.fail, by
}

// waitFor polls cond every 10ms up to timeout and returns how long it took.
func waitFor(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < timeout {
		if cond() {
			return time.Since(start), true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start), false
}

func testHealthCheck(t *testing.T, s *trafficSuite) {
	const interval, rise, fall = 200 * time.Millisecond, 2, 3
	hc := &driver.HealthCheck{Type: driver.HTTPCheck, Path: "/health", ExpectStatus: 200, Interval: interval, Rise: rise, Fall: fall}
	url, bs, cfg := s.setup(t, driver.Pool{HealthCheck: hc}, 0, 0, 0)
	active := s.d.Capabilities().ActiveHealthChecks
	if active {
		st := WaitStats(t, s.d, 5*time.Second, func(st []driver.ServerStats) bool { return Find(st, "pool", "h1").State == driver.Up })
		if x := Find(st, "pool", "h1"); x.State != driver.Up {
			t.Fatalf("h1 is %s before the test", x.State)
		}
	}
	l := startLoad([]*http.Client{s.lab.Client(s.lab.Sources[0], false, nil)}, url, 5*time.Millisecond)
	defer l.end()
	time.Sleep(300 * time.Millisecond)

	bs[1].Stop()
	killed := time.Now()
	bound := time.Duration(fall)*interval + time.Second
	if active {
		took, ok := waitFor(bound+5*time.Second, func() bool {
			st, err := s.d.Stats(context.Background())
			return err == nil && Find(st, "pool", "h1").State == driver.Down
		})
		t.Logf("active check: h1 down %v after its listener closed (fall %d x interval %v, bound %v)", took.Round(time.Millisecond), fall, interval, bound)
		if !ok || took > bound {
			t.Fatalf("h1 taken out after %v, want within %v", took, bound)
		}
		// A reload keeps what the check found.
		cfg.Pools[0].Servers[0].Weight = 2
		if err := s.d.Apply(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		st, _ := s.d.Stats(context.Background())
		if x := Find(st, "pool", "h1"); x.State != driver.Down {
			t.Fatalf("right after a reload the dead h1 is %s, want down", x.State)
		}
	} else {
		time.Sleep(bound)
	}
	ok1, fail1, by1 := l.snapshot()
	time.Sleep(time.Second)
	ok2, fail2, by2 := l.snapshot()
	t.Logf("after h1 died: %d requests ok, %d failed; in the next second h1 got %d of %d", ok1, fail1, by2["h1"]-by1["h1"], ok2-ok1)
	if by2["h1"] != by1["h1"] {
		t.Fatalf("h1 got requests while dead")
	}
	if ok2 == ok1 {
		t.Fatalf("no request succeeded while h1 was dead: %v", l.errs)
	}
	if fail2 > fail1 {
		t.Fatalf("requests failed once h1 was out: %d", fail2-fail1)
	}
	t.Logf("requests failed in total since h1 died: %d (time since: %v)", fail2, time.Since(killed).Round(time.Millisecond))

	if err := bs[1].Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Duration(rise)*interval + time.Second
	if !active {
		back = time.Duration(fall)*interval + 2*time.Second // nginx fail_timeout, see the driver
	}
	took, ok := waitFor(back+5*time.Second, func() bool {
		_, _, by := l.snapshot()
		return by["h1"] > by2["h1"]
	})
	t.Logf("h1 takes traffic again %v after it recovered (bound %v)", took.Round(time.Millisecond), back)
	if !ok || took > back {
		t.Fatalf("h1 back after %v, want within %v", took, back)
	}
}

// wantRefused checks that a driver lacking a capability refuses cfg with
// errcode.Unimplemented, keeps its configuration and binds nothing.
func (s *trafficSuite) wantRefused(t *testing.T, what string, cfg *driver.Config) {
	t.Helper()
	before, err := s.d.Config(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, what, s.d.Apply(t.Context(), cfg), errcode.Unimplemented)
	if now, err := s.d.Config(t.Context()); err != nil || !driver.Equal(now, before) {
		t.Fatalf("%s: the configuration changed (%v)", what, err)
	}
	err = s.lab.Cluster.Hosts[3].Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(s.lab.Cluster.RootAddr, cfg.Frontends[0].Port).String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Fatalf("%s: the refused frontend accepts connections", what)
	}
}

func testTLS(t *testing.T, s *trafficSuite) {
	ca := NewCA(t)
	port := s.lab.Port()
	b := StartBackend(t, s.lab.Cluster.Hosts[0], port, "h0", 0)
	cfg := &driver.Config{
		Pools: []driver.Pool{{Name: "pool", Servers: []driver.Server{b.Server()}}},
		Frontends: []driver.Frontend{{Name: "secure", Protocol: s.protocol(), Address: s.lab.Cluster.RootAddr.String(), Port: s.lab.Port(), DefaultPool: "pool",
			TLS: &driver.TLS{Certificates: []driver.Certificate{ca.Issue(t, "a", "a.example.test"), ca.Issue(t, "b", "b.example.test", "www.b.example.test")}}}},
	}
	if !s.d.Capabilities().TLS {
		s.wantRefused(t, "TLS without the capability", cfg)
		return
	}
	if err := s.d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(s.lab.Cluster.RootAddr, cfg.Frontends[0].Port).String()
	for _, sni := range []string{"a.example.test", "b.example.test", "www.b.example.test"} {
		tc := &tls.Config{RootCAs: ca.Pool, ServerName: sni}
		c := s.lab.Client(s.lab.Sources[0], false, tc)
		c.Transport.(*http.Transport).DialTLSContext = nil
		name, err := Get(c, "https://"+addr+"/")
		if err != nil {
			t.Fatalf("HTTPS with SNI %s, verified against the test CA: %v", sni, err)
		}
		if name != "h0" {
			t.Fatalf("HTTPS answered %q", name)
		}
		var leaf []string
		err = s.lab.Cluster.Hosts[3].Do(func() error {
			conn, err := tls.Dial("tcp", addr, tc)
			if err != nil {
				return err
			}
			defer conn.Close()
			leaf = conn.ConnectionState().PeerCertificates[0].DNSNames
			return nil
		})
		if err != nil || !strings.Contains(strings.Join(leaf, " "), sni) {
			t.Fatalf("SNI %s got a certificate for %v (%v)", sni, leaf, err)
		}
	}
	// No SNI: the first certificate is the default.
	var leaf []string
	err := s.lab.Cluster.Hosts[3].Do(func() error {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer conn.Close()
		leaf = conn.ConnectionState().PeerCertificates[0].DNSNames
		return nil
	})
	if err != nil || len(leaf) != 1 || leaf[0] != "a.example.test" {
		t.Fatalf("without SNI got a certificate for %v (%v), want the default a.example.test", leaf, err)
	}
	// A name no certificate has fails verification.
	_, err = Get(s.lab.Client(s.lab.Sources[0], false, &tls.Config{RootCAs: ca.Pool, ServerName: "c.example.test"}), "https://"+addr+"/")
	if err == nil {
		t.Fatal("a client asking for c.example.test verified a certificate")
	}
}

func testReloadUnderLoad(t *testing.T, s *trafficSuite) {
	url, _, cfg := s.setup(t, driver.Pool{Algorithm: driver.RoundRobin}, 0, 0, 0)
	var clients []*http.Client
	for i := range 4 {
		clients = append(clients, s.lab.Client(s.lab.Sources[i], i%2 == 0, nil))
	}
	r, _ := s.d.(Reloader)
	before := 0
	if r != nil {
		before = r.Reloads()
	}
	l := startLoad(clients, url, 0)
	start := time.Now()
	for i := range 100 {
		cfg.Pools[0].Servers[0].Weight = 1 + (i+1)%2
		if err := s.d.Apply(t.Context(), cfg); err != nil {
			l.end()
			t.Fatalf("Apply %d: %v", i, err)
		}
	}
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	l.end()
	ok, fail, by := l.snapshot()
	t.Logf("100 configuration changes with reloads in %v under load from 4 clients (2 with keep-alive): %d requests ok, %d failed %v; by server %v",
		took.Round(time.Millisecond), ok, fail, l.errs, by)
	if r != nil && r.Reloads()-before != 100 {
		t.Fatalf("%d reloads for 100 changes", r.Reloads()-before)
	}
	if ok < 100 {
		t.Fatalf("only %d requests succeeded", ok)
	}
	if s.h.ZeroLossReloads && fail != 0 {
		t.Fatalf("%d requests failed during reloads, want none", fail)
	}
}

func testRuntimeServers(t *testing.T, s *trafficSuite) {
	url, bs, _ := s.setup(t, driver.Pool{Algorithm: driver.RoundRobin}, 0, 0, 0)
	ctx := t.Context()
	if err := s.d.RemoveServer(ctx, "pool", "h2"); err != nil {
		t.Fatal(err)
	}
	c := s.lab.Client(s.lab.Sources[0], false, nil)
	if got := count(t, c, url, 30); got["h2"] != 0 {
		t.Fatalf("removed h2 still takes traffic: %v", got)
	}
	r, _ := s.d.(Reloader)
	before := 0
	if r != nil {
		before = r.Reloads()
	}
	start := time.Now()
	if err := s.d.AddServer(ctx, "pool", bs[2].Server()); err != nil {
		t.Fatal(err)
	}
	took, ok := waitFor(10*time.Second, func() bool { name, _ := Get(c, url); return name == "h2" })
	reloaded := r != nil && r.Reloads() != before
	t.Logf("server added (reload: %v) takes traffic %v after AddServer was called", reloaded, took.Round(100*time.Microsecond))
	if !ok {
		t.Fatal("added server h2 never took traffic")
	}
	if s.d.Capabilities().RuntimeAPI && reloaded {
		t.Fatal("a driver with a runtime API reloaded to add a server")
	}
	_ = start

	if err := s.d.SetWeight(ctx, "pool", "h0", 5); err != nil {
		t.Fatal(err)
	}
	if err := s.d.SetState(ctx, "pool", "h1", driver.Drain); err != nil {
		t.Fatal(err)
	}
	wantDrain := driver.Draining
	if !s.d.Capabilities().Drain {
		wantDrain = driver.Maint
	}
	st := WaitStats(t, s.d, 5*time.Second, func(st []driver.ServerStats) bool {
		return Find(st, "pool", "h0").Weight == 5 && Find(st, "pool", "h1").State == wantDrain
	})
	t.Logf("stats after SetWeight(h0, 5) and SetState(h1, drain): %+v", st)
	if x := Find(st, "pool", "h0"); x.Weight != 5 {
		t.Fatalf("stats show h0 with weight %d, want 5", x.Weight)
	}
	if x := Find(st, "pool", "h1"); x.State != wantDrain {
		t.Fatalf("stats show h1 %s, want %s", x.State, wantDrain)
	}
	got := count(t, c, url, 60)
	t.Logf("after the changes, 60 requests: %v", got)
	if got["h1"] != 0 || !within(got["h0"], 50, 0.2) {
		t.Fatalf("with h1 drained and h0 at weight 5 against h2 at 1: %v, want h0 about 50, h1 none", got)
	}
	if s.d.Capabilities().SessionStats {
		if x := Find(st, "pool", "h0"); x.TotalConnections == 0 {
			t.Fatalf("stats count no connection to h0: %+v", x)
		}
	}
	if r != nil && s.d.Capabilities().RuntimeAPI && r.Reloads() != before {
		t.Fatal("weight and state changes reloaded a driver with a runtime API")
	}
}

func testRejectedKeepsServing(t *testing.T, s *trafficSuite) {
	url, _, cfg := s.setup(t, driver.Pool{}, 0, 0, 0)
	// Keep-alive, except for a layer-4 balancer, which spreads connections.
	c := s.lab.Client(s.lab.Sources[0], s.protocol() == driver.HTTP, nil)
	count(t, c, url, 10)
	r, _ := s.d.(Reloader)
	before := 0
	if r != nil {
		before = r.Reloads()
	}
	l := startLoad([]*http.Client{c}, url, 5*time.Millisecond)
	bad := cfg.Normalized()
	bad.Pools[0].Servers = bad.Pools[0].Servers[:1]
	bad.Unsafe = &driver.Unsafe{RawSnippets: s.h.BadSnippets}
	if s.h.BadSnippets == nil {
		bad.Unsafe.RawSnippets = map[string]string{"global": "this is not a directive"}
	}
	err := s.d.Apply(t.Context(), bad)
	time.Sleep(300 * time.Millisecond)
	l.end()
	if !errors.Is(err, errcode.InvalidArgument) && !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("Apply with a bad snippet: %v, want InvalidArgument (or Unimplemented)", err)
	}
	ok, fail, _ := l.snapshot()
	if fail != 0 || ok == 0 {
		t.Fatalf("while the bad config was rejected: %d ok, %d failed %v", ok, fail, l.errs)
	}
	if got := count(t, c, url, 30); len(got) != 3 {
		t.Fatalf("after the rejection the old config (3 servers) should serve: %v", got)
	}
	if r != nil && r.Reloads() != before {
		t.Fatal("the rejected config reloaded the balancer")
	}
	now, _ := s.d.Config(t.Context())
	if !driver.Equal(now, cfg) {
		t.Fatal("Config changed after a rejected Apply")
	}
}

// testFailedBindKeepsServing applies a config that passes validation and
// the backend's own check (for HAProxy) but cannot start: a frontend on an
// address this machine does not have (TEST-NET-1; nothing is sent there).
func testFailedBindKeepsServing(t *testing.T, s *trafficSuite) {
	url, _, cfg := s.setup(t, driver.Pool{}, 0, 0, 0)
	c := s.lab.Client(s.lab.Sources[0], false, nil)
	l := startLoad([]*http.Client{c}, url, 5*time.Millisecond)
	bad := cfg.Normalized()
	bad.Frontends = append(bad.Frontends, driver.Frontend{Name: "nowhere", Protocol: s.protocol(), Address: "192.0.2.1", Port: s.lab.Port(), DefaultPool: "pool"})
	start := time.Now()
	err := s.d.Apply(t.Context(), bad)
	took := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	l.end()
	t.Logf("Apply with an unbindable address failed in %v: %v", took.Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("Apply with a frontend on an address the machine lacks succeeded")
	}
	if took > 5*time.Second {
		t.Fatalf("the failure took %v to detect", took)
	}
	ok, fail, _ := l.snapshot()
	if fail != 0 || ok == 0 {
		t.Fatalf("while the config failed: %d ok, %d failed %v", ok, fail, l.errs)
	}
	if now, _ := s.d.Config(t.Context()); !driver.Equal(now, cfg) {
		t.Fatal("Config changed after a failed Apply")
	}
	// The next good change works.
	cfg.Pools[0].Servers[0].Weight = 2
	if err := s.d.Apply(t.Context(), cfg); err != nil {
		t.Fatalf("Apply after the failure: %v", err)
	}
	if got := count(t, c, url, 40); got["h0"] != 20 {
		t.Fatalf("after the recovery, weights 2:1:1 over 40 requests: %v", got)
	}
}

// testInHostNamespace runs the balancer in h0's namespace, bound on h0's
// address, in front of backends on h1 and h2, for clients on h3.
func testInHostNamespace(t *testing.T, s *trafficSuite) {
	if s.h.OpenIn == nil {
		t.Fatal("TrafficHarness.OpenIn is nil: every driver must be able to run in a simulated server's namespace")
	}
	h0 := s.lab.Cluster.Hosts[0]
	d := s.h.OpenIn(t, h0)
	port := s.lab.Port()
	b1 := StartBackend(t, s.lab.Cluster.Hosts[1], port, "h1", 0)
	b2 := StartBackend(t, s.lab.Cluster.Hosts[2], port, "h2", 0)
	cfg := &driver.Config{
		Pools:     []driver.Pool{{Name: "pool", Servers: []driver.Server{b1.Server(), b2.Server()}}},
		Frontends: []driver.Frontend{{Name: "www", Protocol: s.protocol(), Address: h0.Addr.String(), Port: s.lab.Port(), DefaultPool: "pool"}},
	}
	if err := d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(h0.Addr, cfg.Frontends[0].Port))
	got := count(t, s.lab.Client(s.lab.Sources[0], false, nil), url, 100)
	if got["h1"] != 50 || got["h2"] != 50 {
		t.Fatalf("balancer in h0's namespace, round robin over h1 and h2: %v", got)
	}
	// The frontend is not bound in the root namespace.
	if c, err := net.DialTimeout("tcp", netip.AddrPortFrom(s.lab.Cluster.RootAddr, cfg.Frontends[0].Port).String(), time.Second); err == nil {
		c.Close()
		t.Fatal("the frontend answers in the root namespace too")
	}
	cfg.Pools[0].Servers[0].Weight = 3
	if err := d.Apply(t.Context(), cfg); err != nil {
		t.Fatalf("reload in h0's namespace: %v", err)
	}
	if got := count(t, s.lab.Client(s.lab.Sources[0], false, nil), url, 100); got["h1"] != 75 {
		t.Fatalf("after a reload with weights 3:1: %v", got)
	}
}

func testRoutes(t *testing.T, s *trafficSuite) {
	port := s.lab.Port()
	var srv []driver.Server
	for i := range 3 {
		srv = append(srv, StartBackend(t, s.lab.Cluster.Hosts[i], port, fmt.Sprintf("h%d", i), 0).Server())
	}
	fe := netip.AddrPortFrom(s.lab.Cluster.RootAddr, s.lab.Port())
	cfg := &driver.Config{
		Pools: []driver.Pool{
			{Name: "main", Servers: srv[:1]}, {Name: "api", Servers: srv[1:2]}, {Name: "static", Servers: srv[2:3]},
		},
		Frontends: []driver.Frontend{{Name: "www", Protocol: driver.HTTP, Address: fe.Addr().String(), Port: fe.Port(), DefaultPool: "main",
			Routes: []driver.Route{
				{Name: "api", Host: "api.example.test", PathPrefix: "/v1", Pool: "api",
					RequestHeaders:  []driver.Header{{Name: "X-Route", Value: "api-v1"}},
					ResponseHeaders: []driver.Header{{Name: "X-Upstream", Value: "replaced"}, {Name: "Cache-Control", Value: "no-store"}}},
				{Name: "old", Host: "old.example.test", Redirect: &driver.Redirect{Scheme: "https", Host: "new.example.test", StatusCode: 301}},
				{Name: "static", PathPrefix: "/static", Pool: "static"},
				{Name: "shadowed", PathPrefix: "/static/deep", Pool: "api"},
			}}},
	}
	if !s.d.Capabilities().Layer7 {
		s.wantRefused(t, "routes without the capability", cfg)
		return
	}
	if err := s.d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	c := s.lab.Client(s.lab.Sources[0], false, nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct {
		host, path      string
		status          int
		body            string
		header, value   string
		header2, value2 string
	}{
		{"api.example.test", "/v1", 200, "h1", "X-Seen-Route", "api-v1", "X-Upstream", "replaced"},
		{"api.example.test:8080", "/v1/users?id=7", 200, "h1", "Cache-Control", "no-store", "X-Upstream", "replaced"},
		{"api.example.test", "/v1x", 200, "h0", "X-Seen-Route", "", "X-Upstream", "from-backend"},
		{"www.example.test", "/v1", 200, "h0", "X-Seen-Route", "", "", ""},
		{"old.example.test", "/a/b?c=d", 301, "", "Location", "https://new.example.test/a/b?c=d", "", ""},
		{"www.example.test", "/static/app.js", 200, "h2", "", "", "", ""},
		{"www.example.test", "/static/deep/x", 200, "h2", "", "", "", ""}, // the first match wins
		{"api.example.test", "/static", 200, "h2", "", "", "", ""},
	} {
		req, _ := http.NewRequest("GET", "http://"+fe.String()+tc.path, nil)
		req.Host = tc.host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s%s: %v", tc.host, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		what := fmt.Sprintf("GET http://%s%s", tc.host, tc.path)
		if resp.StatusCode != tc.status || tc.body != "" && string(body) != tc.body {
			t.Fatalf("%s: %d %q, want %d %q", what, resp.StatusCode, body, tc.status, tc.body)
		}
		for _, h := range [][2]string{{tc.header, tc.value}, {tc.header2, tc.value2}} {
			if h[0] != "" && resp.Header.Get(h[0]) != h[1] {
				t.Fatalf("%s: header %s = %q, want %q (all: %v)", what, h[0], resp.Header.Get(h[0]), h[1], resp.Header)
			}
		}
	}
	// Without a default pool, what no route matches is 404.
	cfg.Frontends[0].DefaultPool = ""
	if err := s.d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+fe.String()+"/nothing", nil)
	req.Host = "www.example.test"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("unrouted request without a default pool: %d, want 404", resp.StatusCode)
	}
}

// testTCP balances connections at layer 4, in the clear and with TLS
// terminated on the frontend.
func testTCP(t *testing.T, s *trafficSuite) {
	port := s.lab.Port()
	var srv []driver.Server
	for i := range 3 {
		srv = append(srv, StartBackend(t, s.lab.Cluster.Hosts[i], port, fmt.Sprintf("h%d", i), 0).Server())
	}
	plain := netip.AddrPortFrom(s.lab.Cluster.RootAddr, s.lab.Port())
	secure := netip.AddrPortFrom(s.lab.Cluster.RootAddr, s.lab.Port())
	ca := NewCA(t)
	cfg := &driver.Config{
		Pools: []driver.Pool{{Name: "pool", Servers: srv}},
		Frontends: []driver.Frontend{
			{Name: "plain", Protocol: driver.TCP, Address: plain.Addr().String(), Port: plain.Port(), DefaultPool: "pool"},
		},
	}
	if s.d.Capabilities().TLS {
		cfg.Frontends = append(cfg.Frontends, driver.Frontend{Name: "secure", Protocol: driver.TCP, Address: secure.Addr().String(), Port: secure.Port(), DefaultPool: "pool",
			TLS: &driver.TLS{Certificates: []driver.Certificate{ca.Issue(t, "a", "tcp.example.test")}}})
	}
	if err := s.d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	got := count(t, s.lab.Client(s.lab.Sources[0], false, nil), "http://"+plain.String()+"/", 90)
	t.Logf("TCP frontend, 90 connections: %v", got)
	for _, n := range []string{"h0", "h1", "h2"} {
		if !within(got[n], 30, 0.1) {
			t.Fatalf("round robin of TCP connections over 3 servers: %v, want 30±3 each", got)
		}
	}
	if s.d.Capabilities().TLS {
		c := s.lab.Client(s.lab.Sources[0], false, &tls.Config{RootCAs: ca.Pool, ServerName: "tcp.example.test"})
		got := count(t, c, "https://"+secure.String()+"/", 30)
		if len(got) != 3 {
			t.Fatalf("TLS terminated on a TCP frontend: %v", got)
		}
	}
}
