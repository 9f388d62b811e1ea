package agent

import (
	"context"
	"slices"
	"testing"

	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
)

// TestCapabilitiesReadAtDial checks the capability document: a client
// knows each service's kinds and their capabilities from Dial on, without
// a call per question, and they do not vanish when the agent goes away.
func TestCapabilitiesReadAtDial(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	cl.networks = map[netdriver.Mode]netdriver.Driver{netdriver.VXLAN: memnetwork.New(nil)}
	bs, err := OpenBalancers(ctx, t.TempDir(), memKinds(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	cl.balancers = bs
	ctx, stop := context.WithCancel(ctx)
	addr := cl.serveUntil(t, ctx, memServer(t))
	c := cl.dial(t, addr)

	if got := c.Kinds("networks"); !slices.Equal(got, []string{"vxlan"}) {
		t.Errorf("network kinds %v, want [vxlan]", got)
	}
	if got := c.Kinds("balancers"); !slices.Equal(got, []string{"memory"}) {
		t.Errorf("balancer kinds %v, want [memory]", got)
	}
	if got := c.Kinds("floating-ips"); len(got) != 0 {
		t.Errorf("floating-IP kinds %v of an agent that serves none", got)
	}
	stop() // the agent goes away: what it offers stays known
	if caps := c.Network(netdriver.VXLAN).Capabilities(); !slices.Contains(caps.Modes, netdriver.VXLAN) {
		t.Errorf("VXLAN capabilities %+v", caps)
	}
	if caps := c.Balancer("memory", "x").Capabilities(); !caps.Layer7 {
		t.Errorf("memory balancer capabilities %+v", caps)
	}
	if caps := c.Network(netdriver.BGP).Capabilities(); len(caps.Modes) != 0 {
		t.Errorf("a mode the agent does not serve has capabilities %+v", caps)
	}
}
