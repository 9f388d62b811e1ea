package haproxy_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/musterkit/muster/drivers/haproxy"
	"github.com/musterkit/muster/internal/roottest"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
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

func TestTraffic(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("haproxy", "haproxy"))
	drivertest.RunTrafficTests(t, drivertest.TrafficHarness{
		Open:            func(t *testing.T) driver.Driver { return open(t) },
		ZeroLossReloads: true,
		BadSnippets:     map[string]string{"global": "no-such-directive on"},
	})
}
