package memcontainer_test

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/memcontainer"
)

// newServer returns a memcontainer server holding the base image.
func newServer(t testing.TB) *memcontainer.Driver {
	d := memcontainer.New(&memcontainer.Options{Bridges: []string{"br-test"}})
	m, blob := drivertest.BaseImage(t)
	if _, err := d.PutImage(context.Background(), m, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:        func(t *testing.T) driver.Driver { return newServer(t) },
		Image:       "base",
		Bridge:      "br-test",
		Subnet:      netip.MustParsePrefix("198.19.0.0/24"),
		MountSource: t.TempDir(),
	})
}
