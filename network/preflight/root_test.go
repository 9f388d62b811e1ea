package preflight

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

// TestAcrossTestHosts runs a preflight across three test hosts where
// server-2's link has MTU 1400 (bigger frames sent to it vanish at its
// veth without an error: a black hole that only probing finds) and server-1 drops UDP 4789 with
// nftables, and checks the report finds both and nothing else.
func TestAcrossTestHosts(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nft", "nftables"), roottest.Kernel(roottest.Veth))
	c := testhost.New(t, 3)
	ctx := context.Background()
	h2, err := c.Hosts[2].Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	eth, err := h2.LinkByName(c.Hosts[2].Link)
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.LinkSetMTU(eth, 1400); err != nil {
		t.Fatal(err)
	}
	rules := "add table inet mstpf\n" +
		"add chain inet mstpf in { type filter hook input priority 0; }\n" +
		"add rule inet mstpf in udp dport 4789 drop\n"
	cmd := c.Hosts[1].Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	var targets []Target
	for i, h := range c.Hosts {
		targets = append(targets, Target{Name: []string{"server-0", "server-1", "server-2"}[i], Underlay: h.Addr, Server: NewLocal(h.Do)})
	}
	r, err := Run(ctx, Plan{Mode: driver.VXLAN}, targets)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range r.Pairs {
		// A veth takes frames up to 4 bytes over its MTU (room for a
		// VLAN tag), so packets to server-2 may be up to 1404 bytes.
		wantMTU, slack := 1500, 0
		if p.From == "server-2" {
			wantMTU = 1400
		} else if p.To == "server-2" {
			wantMTU, slack = 1400, 4
		}
		wantPort := p.To != "server-1"
		if !p.Reachable || p.PathMTU < wantMTU || p.PathMTU > wantMTU+slack || len(p.Ports) != 1 || p.Ports[0].Reachable != wantPort || p.Error != "" {
			t.Errorf("%s -> %s: %+v; want path MTU %d, port reachable %v", p.From, p.To, p, wantMTU, wantPort)
		}
	}
	if r.MTU != 1400-50 {
		t.Errorf("MTU %d, want %d", r.MTU, 1400-50)
	}
	problems := r.Problems()
	if len(problems) != 2 || !strings.Contains(problems[0], "server-0 -> server-1: udp/4789 does not reach") ||
		!strings.Contains(problems[1], "server-2 -> server-1: udp/4789 does not reach") {
		t.Errorf("problems %q", problems)
	}

	// A network MTU that needs more than server-2's paths carry.
	r, err = Run(ctx, Plan{Mode: driver.VXLAN, MTU: 1450}, targets)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Err()
	if !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "server-2 -> server-0: path MTU 1400, the network needs 1500") {
		t.Errorf("Err() = %v", err)
	}
}
