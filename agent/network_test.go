package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/musterkit/muster/errcode"
	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/network/memnetwork"
)

// remoteNetwork serves an in-memory network driver for mode through an
// agent and returns the client's view of it.
func remoteNetwork(t *testing.T, mode netdriver.Mode) netdriver.Driver {
	cl := newCluster(t, nil)
	cl.networks = map[netdriver.Mode]netdriver.Driver{mode: memnetwork.New(nil)}
	return cl.dial(t, cl.serve(t, memServer(t))).Network(mode)
}

func TestNetworkConformance(t *testing.T) {
	for _, mode := range []netdriver.Mode{netdriver.VXLAN, netdriver.WireGuard} {
		t.Run(string(mode), func(t *testing.T) {
			drivertest.RunConformanceTests(t, drivertest.Harness{
				Open: func(t *testing.T) netdriver.Driver { return remoteNetwork(t, mode) },
				Mode: mode,
				Spec: func(id string) *netdriver.Spec {
					return drivertest.NewSpec(mode, id, netip.MustParseAddr("198.18.0.1"))
				},
				Peers: func() []netdriver.Peer {
					return drivertest.NewPeers(mode, netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3"))
				},
			})
		})
	}
}

func TestNetworkModeNotServed(t *testing.T) {
	n := remoteNetwork(t, netdriver.VXLAN)
	cl := newCluster(t, nil)
	bgp := cl.dial(t, cl.serve(t, memServer(t))).Network(netdriver.BGP)
	if _, err := bgp.Networks(context.Background()); !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("a mode the agent does not serve: %v", err)
	}
	if caps := n.Capabilities(); !slices.Contains(caps.Modes, netdriver.VXLAN) {
		t.Fatalf("Capabilities through the agent = %+v", caps)
	}
	spec := drivertest.NewSpec(netdriver.VXLAN, "blue", netip.MustParseAddr("198.18.0.1"))
	spec.VNI = 1 << 24
	if _, err := n.EnsureNetwork(context.Background(), spec); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("an invalid spec through the agent: %v", err)
	}
}
