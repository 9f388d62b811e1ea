package memha_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/ha/memha"
)

// Two servers on one simulated link: the higher priority is master until
// the process it tracks dies.
func Example() {
	link := memha.NewNetwork(nil)
	a := link.New(&memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {netip.MustParsePrefix("198.18.0.1/24")}}})
	b := link.New(&memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {netip.MustParsePrefix("198.18.0.2/24")}}})
	defer a.Close()
	defer b.Close()
	cfg := func(src, peer string, prio int) *driver.Config {
		return &driver.Config{Name: "web", VirtualRouterID: 51, Interface: "eth0",
			Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.200")},
			Source:    netip.MustParseAddr(src), Peers: []netip.Addr{netip.MustParseAddr(peer)},
			Priority: prio, Track: driver.Track{Process: "haproxy"}}
	}
	ctx := context.Background()
	if err := a.Apply(ctx, cfg("198.18.0.1", "198.18.0.2", 150)); err != nil {
		log.Fatal(err)
	}
	if err := b.Apply(ctx, cfg("198.18.0.2", "198.18.0.1", 100)); err != nil {
		log.Fatal(err)
	}
	show := func() {
		sa, _ := a.Status(ctx)
		sb, _ := b.Status(ctx)
		fmt.Println("a:", sa.State, sa.Addresses, "b:", sb.State, sb.Addresses)
	}
	show()
	a.SetProcess("haproxy", false)
	show()
	// Output:
	// a: master [198.18.0.200] b: backup []
	// a: fault [] b: master [198.18.0.200]
}
