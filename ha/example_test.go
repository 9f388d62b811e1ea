package ha_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/musterkit/muster/ha"
	"github.com/musterkit/muster/ha/memha"
)

// A floating address shared by two servers, in memory: the higher
// priority holds it, a dead speaker moves it, a cut link splits the brain.
func Example() {
	link := memha.NewNetwork(nil)
	server := func(addr string) *memha.Driver {
		return link.New(&memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {netip.MustParsePrefix(addr)}}})
	}
	lb1, lb2 := server("198.18.0.1/24"), server("198.18.0.2/24")
	g, err := ha.New(ha.Spec{
		Name:            "web",
		VirtualRouterID: 51,
		Addresses:       []netip.Addr{netip.MustParseAddr("198.18.0.200")},
		AdvertInterval:  100 * time.Millisecond,
	}, []ha.Member{
		{Name: "lb1", Interface: "eth0", Address: netip.MustParseAddr("198.18.0.1"), Priority: 150, Driver: lb1},
		{Name: "lb2", Interface: "eth0", Address: netip.MustParseAddr("198.18.0.2"), Priority: 100, Driver: lb2},
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()
	ctx := context.Background()
	if err := g.Apply(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("holders:", g.Status(ctx).Holders)

	lb1.Kill() // lb1's speaker dies
	fmt.Println("holders:", g.Status(ctx).Holders)
	if err := g.Apply(ctx); err != nil { // starts it again; it preempts
		log.Fatal(err)
	}
	fmt.Println("holders:", g.Status(ctx).Holders)

	link.Cut(netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"))
	if e := g.Check(ctx); e != nil {
		fmt.Println(e.Kind, e.Holders)
	}
	// Output:
	// holders: [lb1]
	// holders: [lb2]
	// holders: [lb1]
	// split-brain [lb1 lb2]
}
