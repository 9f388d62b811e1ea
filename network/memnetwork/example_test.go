package memnetwork_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"

	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
)

// A VXLAN network on one simulated server, joined to one other server that
// runs a known container.
func Example() {
	ctx := context.Background()
	d := memnetwork.New(nil)
	st, err := d.EnsureNetwork(ctx, &driver.Spec{
		ID:       "web",
		Mode:     driver.VXLAN,
		Subnet:   netip.MustParsePrefix("198.19.0.0/16"),
		Local:    netip.MustParsePrefix("198.19.0.1/16"),
		Underlay: netip.MustParseAddr("198.18.0.1"),
		VNI:      42,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("bridge", st.Bridge, "MTU", st.MTU)

	err = d.SetPeers(ctx, "web", []driver.Peer{{
		Name:     "server-b",
		Underlay: netip.MustParseAddr("198.18.0.2"),
		Endpoints: []driver.Endpoint{{
			Address: netip.MustParseAddr("198.19.9.1"),
			MAC:     net.HardwareAddr{0x02, 0, 0, 0, 0, 1},
		}},
	}})
	if err != nil {
		log.Fatal(err)
	}
	nets, err := d.Networks(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, n := range nets {
		for _, p := range n.Peers {
			fmt.Println(n.Spec.ID, "peer", p.Name, "at", p.Underlay, "with", p.Endpoints[0].Address, p.Endpoints[0].MAC)
		}
	}
	// Output:
	// bridge mst-web MTU 1450
	// web peer server-b at 198.18.0.2 with 198.19.9.1 02:00:00:00:00:01
}
