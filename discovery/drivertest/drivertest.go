// Package drivertest is the conformance suite every discovery driver
// passes: registration, resolution, replacement, tags and metadata, the
// three kinds of health checks against real listeners, blocking waits,
// the rejection of bad input, and Close. The same test names run on every driver:
// memdiscovery and drivers/consul against a real Consul agent.
package drivertest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

// Harness opens the registries the suite runs on.
type Harness struct {
	// Open returns a driver of a fresh, empty registry (or namespace of
	// one). It registers its own cleanup with t.Cleanup.
	Open func(t *testing.T) driver.Driver
	// Listen opens a TCP listener on an address the registry's checks
	// reach; nil means loopback.
	Listen func(t *testing.T) net.Listener
	// CheckInterval is the interval the suite's checks use; 0 means 1s.
	// Changes are awaited for up to ten intervals.
	CheckInterval time.Duration
}

// RunConformanceTests runs the suite as subtests of t.
func RunConformanceTests(t *testing.T, h Harness) {
	if h.Listen == nil {
		h.Listen = func(t *testing.T) net.Listener {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return l
		}
	}
	if h.CheckInterval == 0 {
		h.CheckInterval = time.Second
	}
	tests := []struct {
		name string
		run  func(*testing.T, *suite)
	}{
		{"RegisterResolve", testRegisterResolve},
		{"Replace", testReplace},
		{"Deregister", testDeregister},
		{"Rejects", testRejects},
		{"TTLCheck", testTTL},
		{"TCPCheck", testTCP},
		{"HTTPCheck", testHTTP},
		{"Wait", testWait},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, &suite{h: h, d: h.Open(t)})
		})
	}
}

type suite struct {
	h Harness
	d driver.Driver
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (s *suite) register(t *testing.T, inst *driver.Instance) {
	t.Helper()
	if err := s.d.Register(ctx(t), inst); err != nil {
		t.Fatalf("Register(%s): %v", inst.ID, err)
	}
}

func (s *suite) resolve(t *testing.T, service, tag string, all bool) []driver.Entry {
	t.Helper()
	es, err := s.d.Resolve(ctx(t), driver.Query{Service: service, Tag: tag, Critical: all})
	if err != nil {
		t.Fatalf("Resolve(%s): %v", service, err)
	}
	return es
}

func ids(es []driver.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

// waitFor polls Resolve until ok or ten check intervals pass.
func (s *suite) waitFor(t *testing.T, what, service string, ok func([]driver.Entry) bool) {
	t.Helper()
	deadline := time.Now().Add(10*s.h.CheckInterval + 5*time.Second)
	for {
		es := s.resolve(t, service, "", true)
		if ok(es) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: entries %+v", what, es)
		}
		time.Sleep(s.h.CheckInterval / 5)
	}
}

func health(es []driver.Entry, id string) driver.Health {
	for _, e := range es {
		if e.ID == id {
			return e.Health
		}
	}
	return ""
}

func testRegisterResolve(t *testing.T, s *suite) {
	a := &driver.Instance{ID: "mysql-1", Service: "mysql", Address: "198.19.0.10", Port: 3306, Tags: []string{"primary", "v8"}, Meta: map[string]string{"zone": "a", "weight_hint": "10"}}
	b := &driver.Instance{ID: "mysql-2", Service: "mysql", Address: "198.19.0.11", Port: 3306, Tags: []string{"replica"}}
	c := &driver.Instance{ID: "web-1", Service: "web", Address: "198.19.0.20", Port: 80}
	for _, i := range []*driver.Instance{b, a, c} {
		s.register(t, i)
	}
	es := s.resolve(t, "mysql", "", false)
	if !slices.Equal(ids(es), []string{"mysql-1", "mysql-2"}) {
		t.Fatalf("Resolve(mysql) = %v", ids(es))
	}
	got := es[0]
	if got.Address != a.Address || got.Port != a.Port || !slices.Equal(got.Tags, a.Tags) || got.Meta["zone"] != "a" || got.Meta["weight_hint"] != "10" || got.Health != driver.Passing {
		t.Fatalf("mysql-1 resolved as %+v", got)
	}
	if es := s.resolve(t, "mysql", "replica", false); !slices.Equal(ids(es), []string{"mysql-2"}) {
		t.Fatalf("Resolve(mysql, replica) = %v", ids(es))
	}
	if es := s.resolve(t, "nothing", "", false); len(es) != 0 {
		t.Fatalf("Resolve of an unknown service = %v", es)
	}
	svcs, err := s.d.Services(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mysql", "web"} {
		if !slices.Contains(svcs, want) {
			t.Fatalf("Services = %v, want %s among them", svcs, want)
		}
	}
	if !slices.IsSorted(svcs) {
		t.Fatalf("Services not sorted: %v", svcs)
	}
}

func testReplace(t *testing.T, s *suite) {
	s.register(t, &driver.Instance{ID: "api-1", Service: "api", Address: "198.19.0.30", Port: 8080, Tags: []string{"old"}})
	s.register(t, &driver.Instance{ID: "api-1", Service: "api", Address: "198.19.0.31", Port: 9090, Tags: []string{"new"}})
	es := s.resolve(t, "api", "", true)
	if len(es) != 1 || es[0].Address != "198.19.0.31" || es[0].Port != 9090 || !slices.Equal(es[0].Tags, []string{"new"}) {
		t.Fatalf("after replacing: %+v", es)
	}
}

func testDeregister(t *testing.T, s *suite) {
	s.register(t, &driver.Instance{ID: "cache-1", Service: "cache", Address: "198.19.0.40", Port: 6379})
	if err := s.d.Deregister(ctx(t), "cache-1"); err != nil {
		t.Fatal(err)
	}
	if es := s.resolve(t, "cache", "", true); len(es) != 0 {
		t.Fatalf("after Deregister: %v", es)
	}
	if err := s.d.Deregister(ctx(t), "cache-1"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("Deregister again: %v", err)
	}
}

// BadInstances returns instances Validate rejects, including injection
// attempts through every text field.
func BadInstances() map[string]*driver.Instance {
	good := func() *driver.Instance {
		return &driver.Instance{ID: "x-1", Service: "x", Address: "198.19.0.50", Port: 80}
	}
	out := map[string]*driver.Instance{}
	add := func(name string, edit func(*driver.Instance)) {
		i := good()
		edit(i)
		out[name] = i
	}
	add("service with a dot", func(i *driver.Instance) { i.Service = "a.b" })
	add("service uppercase", func(i *driver.Instance) { i.Service = "MySQL" })
	add("service with a newline", func(i *driver.Instance) { i.Service = "x\nIN A 1.2.3.4" })
	add("empty ID", func(i *driver.Instance) { i.ID = "" })
	add("ID with a slash", func(i *driver.Instance) { i.ID = "../x" })
	add("address not an IP", func(i *driver.Instance) { i.Address = "example.com" })
	add("unspecified address", func(i *driver.Instance) { i.Address = "0.0.0.0" })
	add("port 0", func(i *driver.Instance) { i.Port = 0 })
	add("tag with a space", func(i *driver.Instance) { i.Tags = []string{"a b"} })
	add("tag twice", func(i *driver.Instance) { i.Tags = []string{"a", "a"} })
	add("meta key with a dot", func(i *driver.Instance) { i.Meta = map[string]string{"a.b": "c"} })
	add("meta value with a newline", func(i *driver.Instance) { i.Meta = map[string]string{"a": "b\nc"} })
	add("check interval too short", func(i *driver.Instance) {
		i.Check = &driver.Check{Type: driver.TCPCheck, Interval: time.Millisecond}
	})
	add("TTL check without TTL", func(i *driver.Instance) { i.Check = &driver.Check{Type: driver.TTLCheck} })
	add("unknown check", func(i *driver.Instance) { i.Check = &driver.Check{Type: "script"} })
	add("HTTP path with a quote", func(i *driver.Instance) { i.Check = &driver.Check{Type: driver.HTTPCheck, Path: `/a"b`} })
	add("deregister after 1s", func(i *driver.Instance) {
		i.Check = &driver.Check{Type: driver.TCPCheck, DeregisterAfter: time.Second}
	})
	return out
}

func testRejects(t *testing.T, s *suite) {
	for name, inst := range BadInstances() {
		if err := s.d.Register(ctx(t), inst); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: Register = %v, want InvalidArgument", name, err)
		}
	}
	if es := s.resolve(t, "x", "", true); len(es) != 0 {
		t.Fatalf("rejected instances were registered: %v", es)
	}
	if err := s.d.Deregister(ctx(t), "a/b"); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("Deregister of a bad ID: %v", err)
	}
	if _, err := s.d.Resolve(ctx(t), driver.Query{Service: "Bad Name"}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("Resolve of a bad name: %v", err)
	}
}

func testTTL(t *testing.T, s *suite) {
	ttl := 2 * time.Second
	s.register(t, &driver.Instance{ID: "job-1", Service: "job", Address: "198.19.0.60", Port: 7000, Check: &driver.Check{Type: driver.TTLCheck, TTL: ttl}})
	if es := s.resolve(t, "job", "", false); len(es) != 0 {
		t.Fatalf("a TTL instance is passing before its first PassTTL: %v", es)
	}
	if h := health(s.resolve(t, "job", "", true), "job-1"); h != driver.Critical {
		t.Fatalf("health before PassTTL: %q", h)
	}
	if err := s.d.PassTTL(ctx(t), "job-1"); err != nil {
		t.Fatal(err)
	}
	if es := s.resolve(t, "job", "", false); !slices.Equal(ids(es), []string{"job-1"}) {
		t.Fatalf("after PassTTL: %v", es)
	}
	start := time.Now()
	s.waitFor(t, "the TTL expiring", "job", func(es []driver.Entry) bool { return health(es, "job-1") == driver.Critical })
	if time.Since(start) < ttl/2 {
		t.Fatalf("critical %v after PassTTL, before the TTL of %v", time.Since(start), ttl)
	}
	if err := s.d.PassTTL(ctx(t), "nobody"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("PassTTL of an unknown instance: %v", err)
	}
	s.register(t, &driver.Instance{ID: "plain-1", Service: "plain", Address: "198.19.0.61", Port: 7000})
	if err := s.d.PassTTL(ctx(t), "plain-1"); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("PassTTL without a TTL check: %v", err)
	}
}

func testTCP(t *testing.T, s *suite) {
	l := s.h.Listen(t)
	addr := l.Addr().(*net.TCPAddr)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	s.register(t, &driver.Instance{ID: "db-1", Service: "db", Address: addr.IP.String(), Port: uint16(addr.Port),
		Check: &driver.Check{Type: driver.TCPCheck, Interval: s.h.CheckInterval}})
	s.waitFor(t, "the TCP check passing", "db", func(es []driver.Entry) bool { return health(es, "db-1") == driver.Passing })
	l.Close()
	s.waitFor(t, "the TCP check failing after the listener closed", "db", func(es []driver.Entry) bool { return health(es, "db-1") == driver.Critical })
	if es := s.resolve(t, "db", "", false); len(es) != 0 {
		t.Fatalf("a critical instance is in the answers: %v", es)
	}
}

func testHTTP(t *testing.T, s *suite) {
	l := s.h.Listen(t)
	addr := l.Addr().(*net.TCPAddr)
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.WriteHeader(int(status.Load()))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	s.register(t, &driver.Instance{ID: "web-1", Service: "web", Address: addr.IP.String(), Port: uint16(addr.Port),
		Check: &driver.Check{Type: driver.HTTPCheck, Path: "/healthz", Interval: s.h.CheckInterval}})
	s.waitFor(t, "the HTTP check passing", "web", func(es []driver.Entry) bool { return health(es, "web-1") == driver.Passing })
	status.Store(http.StatusServiceUnavailable)
	s.waitFor(t, "the HTTP check failing on 503", "web", func(es []driver.Entry) bool { return health(es, "web-1") == driver.Critical })
	status.Store(http.StatusOK)
	s.waitFor(t, "the HTTP check passing again", "web", func(es []driver.Entry) bool { return health(es, "web-1") == driver.Passing })
}

func testWait(t *testing.T, s *suite) {
	first, err := s.d.Wait(ctx(t), "queue", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Entries) != 0 || first.Index == 0 {
		t.Fatalf("Wait(0) on an empty service = %+v", first)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		s.d.Register(context.Background(), &driver.Instance{ID: "queue-1", Service: "queue", Address: "198.19.0.70", Port: 5672})
	}()
	start := time.Now()
	var res *driver.Result
	for {
		res, err = s.d.Wait(ctx(t), "queue", first.Index)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Entries) > 0 || time.Since(start) > 30*time.Second {
			break
		}
	}
	if !slices.Equal(ids(res.Entries), []string{"queue-1"}) || res.Index <= first.Index {
		t.Fatalf("Wait after a registration = %+v (index before %d)", res, first.Index)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("Wait returned after %v, before the change", waited)
	}
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if again, err := s.d.Wait(c, "queue", res.Index); err == nil && (again.Index < res.Index || !slices.Equal(ids(again.Entries), ids(res.Entries))) {
		t.Fatalf("Wait with nothing changing returned %+v", again)
	}
}

// testClose closes a driver with a registration twice, then uses it: every
// method fails with errcode.FailedPrecondition.
func testClose(t *testing.T, s *suite) {
	c := ctx(t)
	inst := &driver.Instance{ID: "closing-1", Service: "closing", Address: "198.19.0.30", Port: 80}
	s.register(t, inst)
	if err := s.d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.d.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	closed := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errcode.FailedPrecondition) {
			t.Fatalf("%s after Close: got error %v (code %v), want code %v", what, err, errcode.Of(err), errcode.FailedPrecondition)
		}
	}
	other := *inst
	other.ID = "closing-2"
	closed("Register", s.d.Register(c, &other))
	closed("Deregister", s.d.Deregister(c, inst.ID))
	closed("PassTTL", s.d.PassTTL(c, inst.ID))
	_, err := s.d.Resolve(c, driver.Query{Service: inst.Service})
	closed("Resolve", err)
	_, err = s.d.Wait(c, inst.Service, 0)
	closed("Wait", err)
	_, err = s.d.Services(c)
	closed("Services", err)
}
