package wireguard_test

import (
	"context"
	"log"
	"net/netip"

	"github.com/musterkit/muster/drivers/wireguard"
	"github.com/musterkit/muster/namespace"
	"github.com/musterkit/muster/network/driver"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Open a driver for a server's network namespace, make a network and
// declare the other servers. (Not run: it needs root and a namespace.)
func Example() {
	ctx := context.Background()
	ns, err := netns.GetFromName("server-a")
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	d, err := wireguard.Open(ctx, &wireguard.Options{Handle: h, Do: namespace.Runner(ns)})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	st, err := d.EnsureNetwork(ctx, &driver.Spec{
		ID:         "backend",
		Mode:       driver.WireGuard,
		Subnet:     netip.MustParsePrefix("10.30.0.0/16"),
		Local:      netip.MustParsePrefix("10.30.1.1/24"),
		Underlay:   netip.MustParseAddr("192.0.2.1"),
		PrivateKey: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("containers attach to %s; peers need public key %s", st.Bridge, st.PublicKey)
	err = d.SetPeers(ctx, "backend", []driver.Peer{{
		Name:      "server-b",
		Underlay:  netip.MustParseAddr("192.0.2.2"),
		Range:     netip.MustParsePrefix("10.30.2.0/24"),
		PublicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
	}})
	if err != nil {
		log.Fatal(err)
	}
}
