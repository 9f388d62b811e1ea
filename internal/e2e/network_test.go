package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/network"
	netdriver "github.com/musterkit/muster/network/driver"
)

// TestContainersTalkOverVXLAN builds a VXLAN network across three servers
// through their agents, attaches an LXC container on each, and sends a
// message over TCP from a container on one server to containers on the
// others.
func TestContainersTalkOverVXLAN(t *testing.T) {
	f := startFleet(t, 3)
	ctx := context.Background()
	fab, err := network.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range f.Servers {
		if err := fab.AddServer(s.Name, s.Client.Network(netdriver.VXLAN), s.Host.Addr); err != nil {
			t.Fatal(err)
		}
	}
	spec := &network.Spec{ID: "blue", Mode: netdriver.VXLAN, Subnet: netip.MustParsePrefix("198.19.128.0/24"), VNI: 4242}
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	addrs := map[string]netip.Addr{}
	for _, s := range f.Servers {
		name := "c-" + s.Name
		n, err := fab.Attach(ctx, "blue", s.Name, name)
		if err != nil {
			t.Fatal(err)
		}
		srv, _ := f.Cluster.Server(s.Name)
		if _, err := srv.Create(ctx, &container.Spec{Name: name, Image: "base", Networks: []container.Network{n}}); err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
		addrs[s.Name] = n.Address.Addr()
	}
	// Applying the same spec again changes nothing and keeps traffic.
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	send(t, f, "c-s0", addrs, "s1", "s2")

	// After an agent restart the network still carries traffic, and
	// applying the spec again changes nothing.
	before, err := f.Servers[1].Client.Network(netdriver.VXLAN).Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.Servers[1].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	send(t, f, "c-s0", addrs, "s1")
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	after, err := f.Servers[1].Client.Network(netdriver.VXLAN).Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 1 || len(after) != 1 || before[0].Bridge != after[0].Bridge || before[0].Spec.Local != after[0].Spec.Local || len(after[0].Peers) != 2 {
		t.Fatalf("re-applying after a restart changed the network: %+v -> %+v", before, after)
	}
	send(t, f, "c-s0", addrs, "s1", "s2")
}

// send sends a line over TCP from container from (on s0) to the container
// c-<server> of each server named, and checks it arrives.
func send(t *testing.T, f *fleet.Fleet, from string, addrs map[string]netip.Addr, to ...string) {
	t.Helper()
	src, _ := f.Cluster.Server("s0")
	for _, server := range to {
		dst, _ := f.Cluster.Server(server)
		msg := fmt.Sprintf("hello %s over vxlan\n", server)
		got, err := fleet.Talk(context.Background(), src, from, dst, "c-"+server, addrs[server], msg)
		if err != nil || got != msg {
			t.Fatalf("to %s: received %q, %v; want %q", server, got, err, msg)
		}
	}
}
