package nginx_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/nginx"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

func open(t *testing.T) *nginx.Driver {
	t.Helper()
	d, err := nginx.Open(t.Context(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

var badSnippets = map[string]string{"http": "no_such_directive on;"}

func TestConformance(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nginx", "nginx-light"))
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:        func(t *testing.T) driver.Driver { return open(t) },
		Bind:        drivertest.LoopbackBind,
		BadSnippets: badSnippets,
	})
}

// TestTakenPort: a frontend's port taken between its pick and the start
// makes Nginx's start fail naming it (nginx -t lets an address in use
// pass); the config is applied again on another port.
func TestTakenPort(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nginx", "nginx-light"))
	drivertest.RunTakenPortTest(t, func(t *testing.T) driver.Driver { return open(t) })
}

func TestTraffic(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nginx", "nginx-light"))
	drivertest.RunTrafficTests(t, drivertest.TrafficHarness{
		Open:        func(t *testing.T) driver.Driver { return open(t) },
		BadSnippets: badSnippets,
		OpenIn: func(t *testing.T, h *testhost.Host) driver.Driver {
			d, err := nginx.Open(t.Context(), t.TempDir(), &nginx.Options{
				Command: func(name string, args ...string) *exec.Cmd { return h.Command(context.Background(), name, args...) },
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		},
	})
}

// BenchmarkAddServer measures how long a server added to a pool takes to
// receive its first request; Nginx adds it by re-rendering and reloading.
func BenchmarkAddServer(b *testing.B) {
	roottest.Require(b, roottest.BinaryFrom("nginx", "nginx-light"))
	drivertest.BenchmarkAddServer(b, func(b *testing.B) driver.Driver {
		d, err := nginx.Open(b.Context(), b.TempDir(), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		return d
	}, map[string]driver.Algorithm{"reload": driver.RoundRobin})
}

// TestDirWithSpaceServes runs an instance in a directory whose name needs
// quoting (oddDir: spaces, quotes, a backslash): nginx -t accepts the
// configuration, HTTPS is served with the certificate from that directory,
// and a reload goes through.
func TestDirWithSpaceServes(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nginx", "nginx-light"))
	d, err := nginx.Open(t.Context(), filepath.Join(t.TempDir(), oddDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	drivertest.ServesTLS(t, d, func(cfg *driver.Config) error { // a reload
		cfg.Pools[0].Servers[0].Weight = 3
		return d.Apply(t.Context(), cfg)
	})
	if d.Reloads() != 2 {
		t.Fatalf("%d starts and reloads, want 2", d.Reloads())
	}
}

// TestReloadFailureDetected makes a reload fail after nginx -t passed (the
// check runs in a namespace that has the new address, the master in one
// that has not) and checks that the driver reports it at once, keeps the
// old configuration serving and recovers.
func TestReloadFailureDetected(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nginx", "nginx-light"))
	h := testhost.New(t, 1).Hosts[0]
	bport := drivertest.OKBackend(t)
	d, err := nginx.Open(t.Context(), t.TempDir(), &nginx.Options{
		Command: func(name string, args ...string) *exec.Cmd {
			if slices.Contains(args, "-t") {
				return h.Command(context.Background(), name, args...)
			}
			return exec.Command(name, args...)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	addr, port := drivertest.LoopbackBind(t)
	cfg := &driver.Config{
		Pools:     []driver.Pool{{Name: "web", Servers: []driver.Server{{Name: "a", Address: "127.0.0.1", Port: uint16(bport)}}}},
		Frontends: []driver.Frontend{{Name: "www", Protocol: driver.HTTP, Address: addr, Port: port, DefaultPool: "web"}},
	}
	if err := drivertest.ApplyRebinding(t.Context(), t, d, cfg, drivertest.LoopbackBind); err != nil {
		t.Fatal(err)
	}
	addr, port = cfg.Frontends[0].Address, cfg.Frontends[0].Port // others if those were taken meanwhile
	url := fmt.Sprintf("http://%s:%d/", addr, port)
	get := func() error {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	bad := cfg.Normalized()
	bad.Frontends = append(bad.Frontends, driver.Frontend{Name: "elsewhere", Protocol: driver.HTTP, Address: h.Addr.String(), Port: port, DefaultPool: "web"})
	start := time.Now()
	err = d.Apply(t.Context(), bad)
	t.Logf("failed reload reported in %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, errcode.FailedPrecondition) || time.Since(start) > 5*time.Second {
		t.Fatalf("Apply = %v after %v, want FailedPrecondition at once", err, time.Since(start))
	}
	if err := get(); err != nil {
		t.Fatalf("the old configuration stopped serving: %v", err)
	}
	if now, _ := d.Config(t.Context()); !driver.Equal(now, cfg) {
		t.Fatal("Config changed")
	}
	cfg.Pools[0].Servers[0].Weight = 3
	if err := d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
}
