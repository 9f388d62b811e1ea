package network_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"

	"github.com/musterkit/muster/network"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
)

// Build a routed WireGuard network over two servers and attach a container:
// the Fabric gives each server a range and a key, and the container an
// address of its server's range and the server's bridge as gateway.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "fabric-")
	defer os.RemoveAll(dir)
	f, err := network.Open(context.Background(), dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	f.AddServer(context.Background(), "s1", network.Local{Driver: memnetwork.New(nil)}, netip.MustParseAddr("198.18.0.1"))
	f.AddServer(context.Background(), "s2", network.Local{Driver: memnetwork.New(nil)}, netip.MustParseAddr("198.18.0.2"))
	sts, err := f.Ensure(ctx, &network.Spec{ID: "apps", Mode: driver.WireGuard, Subnet: netip.MustParsePrefix("198.19.0.0/16")})
	if err != nil {
		log.Fatal(err)
	}
	for _, st := range sts {
		fmt.Println(st.Spec.Underlay, st.Spec.Local, "peers:", len(st.Peers))
	}
	n, err := f.Attach(ctx, "apps", "s2", "web")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("web:", n.Address, "via", n.Gateway, "mtu", n.MTU)
	// Output:
	// 198.18.0.1 198.19.0.1/24 peers: 1
	// 198.18.0.2 198.19.1.1/24 peers: 1
	// web: 198.19.1.2/24 via 198.19.1.1 mtu 1420
}
