package memstorage_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/drivertest"
	"github.com/musterkit/muster/storage/memstorage"
)

func TestConformance(t *testing.T) {
	for _, layout := range []struct {
		name    string
		layout  driver.Layout
		members int
	}{
		{"replicate", driver.Layout{Kind: driver.Replicate, Copies: 2}, 2},
		{"single", driver.Layout{Kind: driver.Single}, 1},
	} {
		t.Run(layout.name, func(t *testing.T) {
			drivertest.RunConformanceTests(t, drivertest.Harness{
				Layout:  layout.layout,
				Members: layout.members,
				Servers: func(t *testing.T, n int) []drivertest.Server {
					c := memstorage.NewCluster()
					var out []drivertest.Server
					for i := range n {
						name, addr := fmt.Sprintf("s%d", i), netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
						out = append(out, drivertest.Server{Name: name, Addr: addr, Open: func(t *testing.T, _ string) driver.Driver {
							d := c.Open(name, addr)
							t.Cleanup(func() { d.Close() })
							return d
						}})
					}
					return out
				},
				Files: func(t *testing.T, d driver.Driver, _ drivertest.Server, vs driver.VolumeStatus) drivertest.Files {
					return d.(*memstorage.Driver).Files(vs.Name)
				},
			})
		})
	}
}
