package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/bgp"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/network"
	netdriver "github.com/musterkit/muster/network/driver"
)

// TestContainersTalkAcrossServers builds a network of each mode across
// three servers through their agents, attaches an LXC container on each,
// and sends a message over TCP from a container on one server to the
// containers on the others. Then it kills an agent and starts it again:
// every mode carries traffic again before the orchestrator does anything
// (VXLAN lives in the kernel; the agent restores the userspace WireGuard
// devices and BGP speakers), and re-applying changes nothing.
func TestContainersTalkAcrossServers(t *testing.T) {
	for _, tc := range []struct {
		driver string
		spec   network.Spec
	}{
		{"vxlan", network.Spec{Mode: netdriver.VXLAN, Subnet: netip.MustParsePrefix("198.19.128.0/24"), VNI: 4242}},
		{"wireguard", network.Spec{Mode: netdriver.WireGuard, Subnet: netip.MustParsePrefix("198.19.128.0/17")}},
		{"bgp", network.Spec{Mode: netdriver.BGP, Subnet: netip.MustParsePrefix("198.19.128.0/17"), ASN: 64512}},
		{"wireguard", network.Spec{Mode: netdriver.VXLANOverWireGuard, Subnet: netip.MustParsePrefix("198.19.128.0/24"), VNI: 4243}},
	} {
		t.Run(string(tc.spec.Mode), func(t *testing.T) {
			spec := tc.spec
			spec.ID = "blue"
			talkAcross(t, tc.driver, &spec)
		})
	}
}

func talkAcross(t *testing.T, driverName string, spec *network.Spec) {
	f := startFleet(t, 3, driverName)
	ctx := context.Background()
	fab := fabricOf(t, f)
	report, err := fab.Preflight(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := report.Err(); err != nil || len(report.Pairs) != 6 || report.MTU != 1500-report.Overhead {
		t.Fatalf("preflight through the agents: %v; report %+v", err, report)
	}
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	addrs := map[string]netip.Addr{}
	for _, s := range f.Servers {
		name := "c-" + s.Name
		n := runOn(t, f, fab, spec.ID, s.Name, name, nil)
		addrs[s.Name] = n.Address.Addr()
	}
	// Applying the same spec again changes nothing and keeps traffic.
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	converge(t, f, spec.Mode)
	send(t, f, "c-s0", addrs, "s1", "s2")
	if spec.Mode != netdriver.VXLAN {
		// Sessions (BGP) or handshakes (WireGuard) with both others.
		sts, err := f.Servers[0].Client.Network(spec.Mode).Networks(ctx)
		if err != nil || len(sts) != 1 || !slices.Equal(sts[0].Connected, []string{"s1", "s2"}) {
			t.Fatalf("s0's network: %+v, %v; want s1 and s2 connected", sts, err)
		}
		if sts[0].PublicKey != "" {
			checkWgShow(t, f.Servers[0], sts[0])
		}
	}

	before, err := f.Servers[1].Client.Network(spec.Mode).Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.Servers[1].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// The restarted agent restored its networks (package network/restore):
	// traffic flows before the orchestrator applies anything.
	converge(t, f, spec.Mode)
	send(t, f, "c-s0", addrs, "s1")
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	after, err := f.Servers[1].Client.Network(spec.Mode).Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 1 || len(after) != 1 || before[0].Bridge != after[0].Bridge || before[0].Spec.Local != after[0].Spec.Local ||
		before[0].PublicKey != after[0].PublicKey || len(after[0].Peers) != 2 {
		t.Fatalf("re-applying after a restart changed the network: %+v -> %+v", before, after)
	}
	converge(t, f, spec.Mode)
	send(t, f, "c-s0", addrs, "s1", "s2")

	// A server leaving: the others drop it (BGP withdraws its routes)
	// and keep talking.
	if err := fab.RemoveServer(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	sts, err := f.Servers[0].Client.Network(spec.Mode).Networks(ctx)
	if err != nil || len(sts) != 1 || len(sts[0].Peers) != 1 || sts[0].Peers[0].Name != "s1" {
		t.Fatalf("s0's network after s2 left: %+v, %v", sts, err)
	}
	if spec.Mode == netdriver.BGP {
		waitRoutes(t, f.Servers[0], 1)
	}
	send(t, f, "c-s0", addrs, "s1")
}

// checkWgShow checks that wg(8), run in server s, sees s's WireGuard
// device as st (its Status, read through the agent) says: every peer's
// endpoint and latest handshake.
func checkWgShow(t *testing.T, s *fleet.Server, st *netdriver.Status) {
	t.Helper()
	ctx := context.Background()
	out, err := s.Host.Command(ctx, "wg", "show", "all", "public-key").Output()
	if err != nil {
		t.Fatalf("wg show all public-key in %s: %v", s.Name, err)
	}
	var dev string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 2 && f[1] == st.PublicKey {
			dev = f[0]
		}
	}
	if dev == "" {
		t.Fatalf("wg show lists no device with %s's public key:\n%s", s.Name, out)
	}
	out, err = s.Host.Command(ctx, "wg", "show", dev, "dump").Output()
	if err != nil {
		t.Fatalf("wg show %s dump: %v", dev, err)
	}
	peers := map[string][]string{} // public key -> dump fields
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n")[1:] {
		f := strings.Split(line, "\t")
		peers[f[0]] = f
	}
	if len(st.Sessions) != len(st.Peers) || len(peers) != len(st.Peers) {
		t.Fatalf("%d sessions in Status, %d peers in wg show, %d peers configured", len(st.Sessions), len(peers), len(st.Peers))
	}
	for i, sess := range st.Sessions {
		f := peers[st.Peers[i].PublicKey]
		if f == nil || sess.Peer != st.Peers[i].Name || f[2] != sess.Endpoint.String() || f[4] != fmt.Sprint(sess.LastHandshake.Unix()) {
			t.Fatalf("%s: Status session %+v; wg show %q", s.Name, sess, f)
		}
	}
}

// waitRoutes waits until server s's kernel holds exactly n routes learnt
// over BGP (proto bgp.RouteProtocol).
func waitRoutes(t *testing.T, s *fleet.Server, n int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		out, err := s.Host.Command(context.Background(), "ip", "route", "show", "proto", fmt.Sprint(bgp.RouteProtocol)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(out), "\n") == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds these BGP routes after 2 minutes, want %d:\n%s", s.Name, n, out)
		}
	}
}

// converge waits until, in BGP mode, every server's kernel holds a learnt
// route (proto bgp.RouteProtocol) to every other server's range: sessions
// take seconds to come up after Ensure. Other modes are ready at once.
func converge(t *testing.T, f *fleet.Fleet, mode netdriver.Mode) {
	t.Helper()
	if mode != netdriver.BGP {
		return
	}
	for _, s := range f.Servers {
		waitRoutes(t, s, len(f.Servers)-1)
	}
}

// send sends a line over TCP from container from (on s0) to the container
// c-<server> of each server named, and checks it arrives.
func send(t *testing.T, f *fleet.Fleet, from string, addrs map[string]netip.Addr, to ...string) {
	t.Helper()
	src, _ := f.Cluster.Server("s0")
	for _, server := range to {
		dst, _ := f.Cluster.Server(server)
		msg := fmt.Sprintf("hello %s\n", server)
		got, err := fleet.Talk(context.Background(), src, from, dst, "c-"+server, addrs[server], msg)
		if err != nil || got != msg {
			t.Fatalf("to %s: received %q, %v; want %q", server, got, err, msg)
		}
	}
}
