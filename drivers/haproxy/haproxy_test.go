package haproxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/haproxy"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

// shortDir returns a fresh directory with a path short enough for sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mhap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func open(t *testing.T) *haproxy.Driver {
	t.Helper()
	d := mustOpen(t, filepath.Join(shortDir(t), "lb"))
	t.Cleanup(func() { d.Close() })
	return d
}

func mustOpen(t testing.TB, dir string) *haproxy.Driver {
	t.Helper()
	d, err := haproxy.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("haproxy", "haproxy"))
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:        func(t *testing.T) driver.Driver { return open(t) },
		Bind:        drivertest.LoopbackBind,
		BadSnippets: map[string]string{"global": "no-such-directive on"},
	})
}

// TestTakenPort: a frontend's port taken between its pick and the start is
// found by the driver's bind check, and, with that check told every bind
// works, by HAProxy itself; either way the config is applied again on
// another port.
func TestTakenPort(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("haproxy", "haproxy"))
	t.Run("bind check", func(t *testing.T) {
		drivertest.RunTakenPortTest(t, func(t *testing.T) driver.Driver { return open(t) })
	})
	t.Run("HAProxy's bind", func(t *testing.T) {
		drivertest.RunTakenPortTest(t, func(t *testing.T) driver.Driver {
			d, err := haproxy.Open(t.Context(), filepath.Join(shortDir(t), "lb"), &haproxy.Options{
				Listen: func(string, string) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		})
	})
}

func TestTraffic(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("haproxy", "haproxy"))
	drivertest.RunTrafficTests(t, drivertest.TrafficHarness{
		Open:            func(t *testing.T) driver.Driver { return open(t) },
		ZeroLossReloads: true,
		BadSnippets:     map[string]string{"global": "no-such-directive on"},
		OpenIn: func(t *testing.T, h *testhost.Host) driver.Driver {
			d, err := haproxy.Open(t.Context(), filepath.Join(shortDir(t), "lb"), &haproxy.Options{
				Command: func(name string, args ...string) *exec.Cmd { return h.Command(context.Background(), name, args...) },
				Listen:  h.Listen,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		},
	})
}

// TestDirWithSpaceServes runs an instance in a directory whose name needs
// quoting (oddDir: spaces, quotes, a backslash): haproxy -c accepts the
// configuration, HTTPS is served with the certificate from that directory,
// and a reload and a runtime change go through its sockets.
func TestDirWithSpaceServes(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("haproxy", "haproxy"))
	d := mustOpen(t, filepath.Join(shortDir(t), oddDir))
	defer d.Close()
	drivertest.ServesTLS(t, d,
		func(*driver.Config) error { return d.SetWeight(t.Context(), "web", "a", 3) }, // runtime API (stats socket)
		func(cfg *driver.Config) error { // reload (master socket)
			cfg.Pools[0].Algorithm = driver.LeastConnections
			return d.Apply(t.Context(), cfg)
		})
	if d.Reloads() != 2 {
		t.Fatalf("%d starts and reloads, want 2", d.Reloads())
	}
}

// TestReloadFailureDetected makes a reload fail after every check passed
// (the bind pre-check is told all binds work) and checks that the driver
// reports it, keeps the old configuration and recovers.
func TestReloadFailureDetected(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("haproxy", "haproxy"))
	bport := drivertest.OKBackend(t)
	d, err := haproxy.Open(t.Context(), filepath.Join(shortDir(t), "lb"), &haproxy.Options{
		Listen: func(string, string) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
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
	bad := cfg.Normalized()
	bad.Frontends = append(bad.Frontends, driver.Frontend{Name: "nowhere", Protocol: driver.HTTP, Address: "192.0.2.1", Port: port, DefaultPool: "web"})
	start := time.Now()
	err = d.Apply(t.Context(), bad)
	t.Logf("failed reload reported in %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Apply = %v, want FailedPrecondition", err)
	}
	if now, _ := d.Config(t.Context()); !driver.Equal(now, cfg) {
		t.Fatal("Config changed")
	}
	// The old worker resumes; the next good change reloads.
	waitOK := func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := http.Get(url)
			if err == nil {
				resp.Body.Close()
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the balancer does not serve: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitOK()
	cfg.Pools[0].Servers[0].Weight = 3
	if err := d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	waitOK()
}
