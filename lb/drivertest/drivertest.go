// Package drivertest is the conformance suite every load-balancer driver
// passes. A driver's tests call RunConformanceTests with a Harness that opens
// fresh balancers; the suite checks the SPI's contract (validation, error
// codes, idempotence, server operations, stats, capability gating). The same
// test names run on every driver: memlb and the real drivers in drivers/.
//
// RunTrafficTests is the second suite, for real drivers only: it needs root
// (it builds simulated servers with testhost) and sends real HTTP
// and HTTPS traffic through the balancer to backends on those servers,
// measuring what each algorithm, health check, reload and server operation
// does to it. Driver-specific features are gated by Capabilities, so every
// real driver runs the same subtest names.
//
// The package also holds what the drivers' own tests share: GoldenConfigs
// and FuzzConfig for renderers, BadConfigs, a throw-away CA for TLS, the
// Lab, Backend and client helpers, BenchmarkAddServer, and for frontends
// on loopback LoopbackBind with ApplyRebinding (a port another process
// took between the pick and the bind is picked again) and
// RunTakenPortTest, which checks it.
package drivertest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
)

// Harness opens the balancers the suite runs on.
type Harness struct {
	// Open returns a fresh balancer with no configuration. It registers
	// its own cleanup with t.Cleanup.
	Open func(t *testing.T) driver.Driver
	// Bind returns an address and port a frontend of the opened balancer
	// may bind, distinct on every call.
	Bind func(t *testing.T) (string, uint16)
	// BadSnippets, for drivers with Capabilities.RawSnippets, are raw
	// snippets that pass Config.Validate but that the backend rejects.
	BadSnippets map[string]string
}

// Reloader is implemented by drivers that count how often they changed the
// running balancer (start, reload or in-memory swap); the suite uses it to
// check that applying an equal config changes nothing.
type Reloader interface {
	Reloads() int
}

// RunConformanceTests runs the suite as subtests of t.
func RunConformanceTests(t *testing.T, h Harness) {
	tests := []struct {
		name string
		run  func(*testing.T, *suite)
	}{
		{"ApplyIdempotent", testApplyIdempotent},
		{"ApplyRejects", testApplyRejects},
		{"ServerOperations", testServerOperations},
		{"Stats", testStats},
		{"CapabilityGating", testCapabilityGating},
		{"RawSnippets", testRawSnippets},
		{"SideBySide", testSideBySide},
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
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// config returns a valid config with a TCP and (if the driver has Layer7)
// an HTTP frontend over two pools.
func (s *suite) config(t *testing.T) *driver.Config {
	addr, port := s.h.Bind(t)
	c := &driver.Config{
		Pools: []driver.Pool{
			{Name: "web", Servers: []driver.Server{
				{Name: "a", Address: "127.0.0.1", Port: 18081, Weight: 2},
				{Name: "b", Address: "127.0.0.1", Port: 18082},
				{Name: "c", Address: "localhost", Port: 18083, Backup: true},
			}},
			{Name: "db", Algorithm: driver.LeastConnections, Servers: []driver.Server{
				{Name: "primary", Address: "127.0.0.1", Port: 18091},
			}, HealthCheck: &driver.HealthCheck{Type: driver.TCPCheck, Interval: time.Hour}},
		},
		Frontends: []driver.Frontend{{Name: "db", Protocol: driver.TCP, Address: addr, Port: port, DefaultPool: "db"}},
	}
	if s.d.Capabilities().Layer7 {
		addr, port := s.h.Bind(t)
		c.Frontends = append(c.Frontends, driver.Frontend{
			Name: "www", Protocol: driver.HTTP, Address: addr, Port: port, DefaultPool: "web",
			Routes: []driver.Route{
				{Name: "api", Host: "api.example.test", PathPrefix: "/v1", Pool: "web",
					RequestHeaders:  []driver.Header{{Name: "X-Route", Value: "api"}},
					ResponseHeaders: []driver.Header{{Name: "Cache-Control", Value: "no-store"}}},
				{Name: "old", Host: "old.example.test", Redirect: &driver.Redirect{Scheme: "https", Host: "new.example.test", StatusCode: 301}},
			},
		})
	}
	return c
}

func (s *suite) apply(t *testing.T, c *driver.Config) {
	t.Helper()
	if err := ApplyRebinding(ctx(t), t, s.d, c, s.h.Bind); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func (s *suite) wantConfig(t *testing.T, what string, want *driver.Config) {
	t.Helper()
	got, err := s.d.Config(ctx(t))
	if err != nil {
		t.Fatalf("%s: Config: %v", what, err)
	}
	if show(got) != show(want.Normalized()) {
		t.Fatalf("%s: Config =\n%s\nwant\n%s", what, show(got), show(want.Normalized()))
	}
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func wantCode(t *testing.T, what string, err error, code errcode.Code) {
	t.Helper()
	if !errors.Is(err, code) {
		t.Fatalf("%s: got error %v (code %v), want code %v", what, err, errcode.Of(err), code)
	}
}

func (s *suite) reloads() int {
	if r, ok := s.d.(Reloader); ok {
		return r.Reloads()
	}
	return -1
}

func testApplyIdempotent(t *testing.T, s *suite) {
	s.wantConfig(t, "before Apply", &driver.Config{})
	c := s.config(t)
	s.apply(t, c)
	s.wantConfig(t, "after Apply", c)
	n := s.reloads()
	s.apply(t, c)
	s.apply(t, c.Normalized())
	if m := s.reloads(); m != n {
		t.Fatalf("applying an equal config reloaded the balancer (%d -> %d)", n, m)
	}
	s.wantConfig(t, "after applying twice", c)

	c.Pools[0].Servers[1].Weight = 5
	s.apply(t, c)
	s.wantConfig(t, "after changing a weight", c)
	if s.reloads() == n && n >= 0 {
		t.Fatalf("a changed config did not change the balancer")
	}
	s.apply(t, &driver.Config{})
	s.wantConfig(t, "after applying the empty config", &driver.Config{})
}

// BadConfigs returns configs that Validate rejects, each built from a valid
// one by mutate; they include injection attempts through every text field.
func BadConfigs() []struct {
	Name   string
	Mutate func(*driver.Config)
} {
	type bc = struct {
		Name   string
		Mutate func(*driver.Config)
	}
	fe := func(c *driver.Config) *driver.Frontend { return &c.Frontends[0] }
	srv := func(c *driver.Config) *driver.Server { return &c.Pools[0].Servers[0] }
	route := func(c *driver.Config) *driver.Route {
		c.Frontends[0].Protocol = driver.HTTP
		c.Frontends[0].Routes = []driver.Route{{Name: "r", Pool: c.Pools[0].Name}}
		return &c.Frontends[0].Routes[0]
	}
	out := []bc{
		{"pool name with a space", func(c *driver.Config) { c.Pools[0].Name = "a b"; c.Frontends[0].DefaultPool = "a b" }},
		{"uppercase frontend name", func(c *driver.Config) { fe(c).Name = "Web" }},
		{"duplicate pool", func(c *driver.Config) { c.Pools = append(c.Pools, c.Pools[0]) }},
		{"unknown default pool", func(c *driver.Config) { fe(c).DefaultPool = "nope" }},
		{"TCP frontend without pool", func(c *driver.Config) { fe(c).DefaultPool = "" }},
		{"frontend port 0", func(c *driver.Config) { fe(c).Port = 0 }},
		{"frontend address is a name", func(c *driver.Config) { fe(c).Address = "localhost" }},
		{"frontend address injection", func(c *driver.Config) { fe(c).Address = "127.0.0.1\n  bind 0.0.0.0" }},
		{"unknown protocol", func(c *driver.Config) { fe(c).Protocol = "udp" }},
		{"server address with newline", func(c *driver.Config) { srv(c).Address = "10.0.0.1\nserver x 1.2.3.4" }},
		{"server address with semicolon", func(c *driver.Config) { srv(c).Address = "a.test;return 200" }},
		{"server address with brace", func(c *driver.Config) { srv(c).Address = "a.test}" }},
		{"server address with hash", func(c *driver.Config) { srv(c).Address = "a.test#x" }},
		{"server address with quote", func(c *driver.Config) { srv(c).Address = "a\"b" }},
		{"server address with space", func(c *driver.Config) { srv(c).Address = "a.test backup" }},
		{"malformed IPv4", func(c *driver.Config) { srv(c).Address = "10.0.0.300" }},
		{"server port 0", func(c *driver.Config) { srv(c).Port = 0 }},
		{"weight 257", func(c *driver.Config) { srv(c).Weight = 257 }},
		{"unknown state", func(c *driver.Config) { srv(c).State = "broken" }},
		{"unknown algorithm", func(c *driver.Config) { c.Pools[0].Algorithm = "random" }},
		{"route host with space", func(c *driver.Config) { route(c).Host = "a.test b" }},
		{"route host with newline", func(c *driver.Config) { route(c).Host = "a.test\nuse_backend x" }},
		{"path with space", func(c *driver.Config) { route(c).PathPrefix = "/a b" }},
		{"path with semicolon", func(c *driver.Config) { route(c).PathPrefix = "/a;b" }},
		{"path with brace", func(c *driver.Config) { route(c).PathPrefix = "/a{" }},
		{"path with quote", func(c *driver.Config) { route(c).PathPrefix = "/a'" }},
		{"relative path", func(c *driver.Config) { route(c).PathPrefix = "a" }},
		{"path with dot-dot", func(c *driver.Config) { route(c).PathPrefix = "/a/../b" }},
		{"header name with colon", func(c *driver.Config) {
			route(c).RequestHeaders = []driver.Header{{Name: "X:Y", Value: "v"}}
		}},
		{"header value with newline", func(c *driver.Config) {
			route(c).RequestHeaders = []driver.Header{{Name: "X", Value: "v\r\nX-Evil: 1"}}
		}},
		{"header value with semicolon", func(c *driver.Config) {
			route(c).ResponseHeaders = []driver.Header{{Name: "X", Value: "a;b"}}
		}},
		{"header value with dollar", func(c *driver.Config) {
			route(c).ResponseHeaders = []driver.Header{{Name: "X", Value: "$host"}}
		}},
		{"header value with percent", func(c *driver.Config) {
			route(c).ResponseHeaders = []driver.Header{{Name: "X", Value: "%[src]"}}
		}},
		{"header value with quote", func(c *driver.Config) {
			route(c).ResponseHeaders = []driver.Header{{Name: "X", Value: `a"b`}}
		}},
		{"route with pool and redirect", func(c *driver.Config) { route(c).Redirect = &driver.Redirect{Scheme: "https"} }},
		{"route to unknown pool", func(c *driver.Config) { route(c).Pool = "nope" }},
		{"redirect status 200", func(c *driver.Config) {
			r := route(c)
			r.Pool, r.Redirect = "", &driver.Redirect{Scheme: "https", StatusCode: 200}
		}},
		{"redirect scheme ftp", func(c *driver.Config) {
			r := route(c)
			r.Pool, r.Redirect = "", &driver.Redirect{Scheme: "ftp"}
		}},
		{"routes on a TCP frontend", func(c *driver.Config) {
			route(c)
			c.Frontends[0].Protocol = driver.TCP
		}},
		{"TLS without certificates", func(c *driver.Config) { fe(c).TLS = &driver.TLS{} }},
		{"TLS with garbage", func(c *driver.Config) {
			fe(c).TLS = &driver.TLS{Certificates: []driver.Certificate{{Name: "x", CertPEM: []byte("junk"), KeyPEM: []byte("junk")}}}
		}},
		{"check interval 1ns", func(c *driver.Config) {
			c.Pools[0].HealthCheck = &driver.HealthCheck{Type: driver.TCPCheck, Interval: 1}
		}},
		{"check path injection", func(c *driver.Config) {
			c.Pools[0].HealthCheck = &driver.HealthCheck{Type: driver.HTTPCheck, Path: "/\n  http-check send"}
		}},
		{"check status 700", func(c *driver.Config) {
			c.Pools[0].HealthCheck = &driver.HealthCheck{Type: driver.HTTPCheck, ExpectStatus: 700}
		}},
		{"snippet with a bad key", func(c *driver.Config) {
			c.Unsafe = &driver.Unsafe{RawSnippets: map[string]string{"everywhere": "x"}}
		}},
	}
	return out
}

func testApplyRejects(t *testing.T, s *suite) {
	good := s.config(t)
	s.apply(t, good)
	for _, bad := range BadConfigs() {
		c := s.config(t)
		c.Frontends[0].Address, c.Frontends[0].Port = good.Frontends[0].Address, good.Frontends[0].Port
		if len(c.Frontends) > 1 {
			c.Frontends[1].Address, c.Frontends[1].Port = good.Frontends[1].Address, good.Frontends[1].Port
		}
		bad.Mutate(c)
		wantCode(t, bad.Name, s.d.Apply(ctx(t), c), errcode.InvalidArgument)
	}
	wantCode(t, "nil config", s.d.Apply(ctx(t), nil), errcode.InvalidArgument)
	s.wantConfig(t, "after invalid configs", good)
}

func testServerOperations(t *testing.T, s *suite) {
	c := ctx(t)
	cfg := s.config(t)
	s.apply(t, cfg)
	d := s.d
	added := driver.Server{Name: "d", Address: "127.0.0.1", Port: 18084, Weight: 3}
	if err := d.AddServer(c, "web", added); err != nil {
		t.Fatalf("AddServer: %v", err)
	}
	cfg.Pools[0].Servers = append(cfg.Pools[0].Servers, added)
	s.wantConfig(t, "after AddServer", cfg)
	wantCode(t, "adding it again", d.AddServer(c, "web", added), errcode.AlreadyExists)
	wantCode(t, "adding to an unknown pool", d.AddServer(c, "nope", added), errcode.NotFound)
	wantCode(t, "adding an invalid server", d.AddServer(c, "web", driver.Server{Name: "e", Address: "a b", Port: 1}), errcode.InvalidArgument)

	if err := d.SetWeight(c, "web", "d", 7); err != nil {
		t.Fatalf("SetWeight: %v", err)
	}
	cfg.Pools[0].Servers[3].Weight = 7
	s.wantConfig(t, "after SetWeight", cfg)
	wantCode(t, "weight 0", d.SetWeight(c, "web", "d", 0), errcode.InvalidArgument)
	wantCode(t, "weight 1000", d.SetWeight(c, "web", "d", 1000), errcode.InvalidArgument)
	wantCode(t, "weight of an unknown server", d.SetWeight(c, "web", "zz", 2), errcode.NotFound)

	for _, st := range []driver.AdminState{driver.Drain, driver.Maintenance, driver.Ready} {
		if err := d.SetState(c, "web", "a", st); err != nil {
			t.Fatalf("SetState %s: %v", st, err)
		}
		cfg.Pools[0].Servers[0].State = st
		s.wantConfig(t, "after SetState "+string(st), cfg)
	}
	wantCode(t, "unknown state", d.SetState(c, "web", "a", "gone"), errcode.InvalidArgument)
	wantCode(t, "state of an unknown pool", d.SetState(c, "nope", "a", driver.Drain), errcode.NotFound)

	if err := d.RemoveServer(c, "web", "d"); err != nil {
		t.Fatalf("RemoveServer: %v", err)
	}
	cfg.Pools[0].Servers = cfg.Pools[0].Servers[:3]
	s.wantConfig(t, "after RemoveServer", cfg)
	wantCode(t, "removing it again", d.RemoveServer(c, "web", "d"), errcode.NotFound)
	wantCode(t, "removing from an unknown pool", d.RemoveServer(c, "nope", "a"), errcode.NotFound)

	n := s.reloads()
	s.apply(t, cfg)
	if m := s.reloads(); m != n {
		t.Fatalf("applying the config the operations produced reloaded the balancer")
	}

	// With a runtime API, operations on a round-robin pool of IP
	// addresses take effect without a reload.
	if s.d.Capabilities().RuntimeAPI && n >= 0 {
		for _, op := range []func() error{
			func() error { return d.AddServer(c, "web", added) },
			func() error { return d.SetWeight(c, "web", "d", 4) },
			func() error { return d.SetState(c, "web", "d", driver.Drain) },
			func() error { return d.SetState(c, "web", "d", driver.Ready) },
			func() error { return d.RemoveServer(c, "web", "d") },
		} {
			if err := op(); err != nil {
				t.Fatal(err)
			}
		}
		if m := s.reloads(); m != n {
			t.Fatalf("server operations reloaded a balancer with a runtime API %d times", m-n)
		}
	}
}

// WaitStats polls d.Stats until ok accepts them or the timeout passes, and
// returns the last stats.
func WaitStats(t testing.TB, d driver.Driver, timeout time.Duration, ok func([]driver.ServerStats) bool) []driver.ServerStats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := d.Stats(context.Background())
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if ok(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Find returns the stats of pool/server, or nil.
func Find(st []driver.ServerStats, pool, server string) *driver.ServerStats {
	for i := range st {
		if st[i].Pool == pool && st[i].Server == server {
			return &st[i]
		}
	}
	return nil
}

func testStats(t *testing.T, s *suite) {
	cfg := s.config(t)
	cfg.Pools[0].Servers[1].State = driver.Maintenance
	s.apply(t, cfg)
	c := ctx(t)
	if err := s.d.SetState(c, "web", "a", driver.Drain); err != nil {
		t.Fatal(err)
	}
	if err := s.d.SetWeight(c, "web", "c", 9); err != nil {
		t.Fatal(err)
	}
	wantDrain := driver.Draining
	if !s.d.Capabilities().Drain {
		wantDrain = driver.Maint
	}
	check := func(st []driver.ServerStats) string {
		var names []string
		for _, x := range st {
			names = append(names, x.Pool+"/"+x.Server)
		}
		if got := strings.Join(names, " "); got != "db/primary web/a web/b web/c" {
			return "servers " + got
		}
		if a := Find(st, "web", "a"); a.State != wantDrain || a.Weight != 2 {
			return "web/a " + show(a)
		}
		if b := Find(st, "web", "b"); b.State != driver.Maint {
			return "web/b " + show(b)
		}
		if x := Find(st, "web", "c"); x.State != driver.Up || x.Weight != 9 {
			return "web/c " + show(x)
		}
		return ""
	}
	st := WaitStats(t, s.d, 5*time.Second, func(st []driver.ServerStats) bool { return check(st) == "" })
	if msg := check(st); msg != "" {
		t.Fatalf("Stats: %s; all: %s", msg, show(st))
	}
}

func testCapabilityGating(t *testing.T, s *suite) {
	caps := s.d.Capabilities()
	ca := NewCA(t)
	cfg := s.config(t)
	addr, port := s.h.Bind(t)
	cfg.Frontends = append(cfg.Frontends, driver.Frontend{
		Name: "secure", Protocol: driver.HTTP, Address: addr, Port: port, DefaultPool: "web",
		TLS: &driver.TLS{Certificates: []driver.Certificate{ca.Issue(t, "main", "www.example.test")}},
	})
	err := ApplyRebinding(ctx(t), t, s.d, cfg, s.h.Bind)
	switch {
	case caps.TLS && caps.Layer7 && err != nil:
		t.Fatalf("Apply with TLS on a driver with TLS: %v", err)
	case !(caps.TLS && caps.Layer7):
		wantCode(t, "TLS without the capability", err, errcode.Unimplemented)
	}
}

func testRawSnippets(t *testing.T, s *suite) {
	good := s.config(t)
	s.apply(t, good)
	bad := s.config(t)
	bad.Frontends = good.Frontends
	snippets := s.h.BadSnippets
	if snippets == nil {
		snippets = map[string]string{"global": "this is not a directive"}
	}
	bad.Unsafe = &driver.Unsafe{RawSnippets: snippets}
	err := s.d.Apply(ctx(t), bad)
	if s.d.Capabilities().RawSnippets {
		wantCode(t, "a snippet the backend rejects", err, errcode.InvalidArgument)
	} else {
		wantCode(t, "snippets without the capability", err, errcode.Unimplemented)
	}
	s.wantConfig(t, "after a rejected snippet", good)
}

// testClose closes a running balancer twice, then uses it: every method
// but Capabilities fails with errcode.FailedPrecondition.
func testClose(t *testing.T, s *suite) {
	c := ctx(t)
	cfg := s.config(t)
	s.apply(t, cfg)
	caps := s.d.Capabilities()
	if err := s.d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.d.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	wantCode(t, "Apply after Close", s.d.Apply(c, cfg), errcode.FailedPrecondition)
	_, err := s.d.Config(c)
	wantCode(t, "Config after Close", err, errcode.FailedPrecondition)
	wantCode(t, "AddServer after Close", s.d.AddServer(c, "web", driver.Server{Name: "d", Address: "127.0.0.1", Port: 18084}), errcode.FailedPrecondition)
	wantCode(t, "RemoveServer after Close", s.d.RemoveServer(c, "web", "b"), errcode.FailedPrecondition)
	wantCode(t, "SetWeight after Close", s.d.SetWeight(c, "web", "b", 3), errcode.FailedPrecondition)
	wantCode(t, "SetState after Close", s.d.SetState(c, "web", "b", driver.Drain), errcode.FailedPrecondition)
	_, err = s.d.Stats(c)
	wantCode(t, "Stats after Close", err, errcode.FailedPrecondition)
	if got := s.d.Capabilities(); got != caps {
		t.Fatalf("Capabilities after Close = %+v, want %+v still", got, caps)
	}
}

// testSideBySide runs two balancers at once: nothing they keep (files,
// sockets, pids) may clash.
func testSideBySide(t *testing.T, s *suite) {
	other := &suite{h: s.h, d: s.h.Open(t)}
	a, b := s.config(t), other.config(t)
	s.apply(t, a)
	other.apply(t, b)
	for i, x := range []*suite{s, other} {
		st, err := x.d.Stats(ctx(t))
		if err != nil || len(st) != 4 {
			t.Fatalf("balancer %d: Stats = %v, %v", i, st, err)
		}
	}
	if err := s.d.SetWeight(ctx(t), "web", "b", 4); err != nil {
		t.Fatal(err)
	}
	if err := other.d.Close(); err != nil {
		t.Fatal(err)
	}
	a.Pools[0].Servers[1].Weight = 4
	s.wantConfig(t, "the first balancer after the second closed", a)
	a.Pools[0].Servers[0].Weight = 6
	s.apply(t, a)
	st := WaitStats(t, s.d, 5*time.Second, func(st []driver.ServerStats) bool { return Find(st, "web", "a").Weight == 6 })
	if x := Find(st, "web", "a"); x.Weight != 6 {
		t.Fatalf("after the other balancer closed, a change shows weight %d, want 6", x.Weight)
	}
}
