package nginx_test

import (
	"context"
	"os/exec"
	"testing"

	"github.com/musterkit/muster/drivers/nginx"
	"github.com/musterkit/muster/internal/roottest"
	"github.com/musterkit/muster/internal/testhost"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
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
