package wireguard

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/vxlan"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/testhost"
	"github.com/vishvananda/netlink"
)

func TestTunnelAddress(t *testing.T) {
	a := TunnelAddress("net-a", netip.MustParseAddr("198.18.0.1"))
	if a.String() != a.Addr().String()+"/64" || !strings.HasSuffix(a.Addr().String(), "::c612:1") || !a.Addr().IsPrivate() {
		t.Fatalf("TunnelAddress = %v, want a unique local address ending in the underlay", a)
	}
	b := TunnelAddress("net-a", netip.MustParseAddr("198.18.0.2"))
	if a.Masked() != b.Masked() || a == b {
		t.Fatalf("two servers of one network: %v and %v, want one /64 and two addresses", a, b)
	}
	if c := TunnelAddress("net-b", netip.MustParseAddr("198.18.0.1")); c.Masked() == a.Masked() {
		t.Fatalf("two networks share the tunnel prefix %v", c.Masked())
	}
	v6 := TunnelAddress("net-a", netip.MustParseAddr("2001:db8::1"))
	if v6.Masked() != a.Masked() || v6 == TunnelAddress("net-a", netip.MustParseAddr("2001:db8::2")) {
		t.Fatalf("IPv6 underlays: %v", v6)
	}
}

// l2snapshot describes n's kernel state on s: links with their indexes and
// MTUs, addresses, routes, the VXLAN device's forwarding entries and the
// bridge's neighbours.
func (s *server) l2snapshot(t testing.TB) string {
	t.Helper()
	lines := []string{snapshot(t, s.nl)}
	links, err := s.nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		a := l.Attrs()
		lines = append(lines, fmt.Sprintf("link %d %s mtu %d up %v", a.Index, a.Name, a.MTU, a.Flags&1 != 0))
		addrs, err := s.nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			if !ad.IP.IsLinkLocalUnicast() {
				lines = append(lines, "addr "+a.Name+" "+ad.IPNet.String())
			}
		}
		neigh, err := s.nl.NeighList(a.Index, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range neigh {
			if n.State&netlink.NUD_PERMANENT != 0 {
				lines = append(lines, fmt.Sprintf("neigh %s %v %v", a.Name, n.IP, n.HardwareAddr))
			}
		}
		fdb, err := s.nl.NeighList(a.Index, syscall.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range fdb {
			if n.IP != nil {
				lines = append(lines, fmt.Sprintf("fdb %s %v dst %v", a.Name, n.HardwareAddr, n.IP))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestTrafficVXLAN runs TCP between three servers' bridges over VXLAN over
// WireGuard: the frames cross the encrypted tunnel (the devices count
// them), a removed peer is cut alone, ensuring again changes nothing, and a
// driver reopened after its predecessor closed (an agent restart) carries
// traffic again once the spec and peers are applied.
func TestTrafficVXLAN(t *testing.T) {
	require(t)
	ss := serversOf(t, driver.VXLANOverWireGuard, 3)
	a, b, c := ss[0], ss[1], ss[2]
	st := a.ensure(t)
	if bridge, _ := vxlan.LinkNames(netID); st.Bridge != bridge || st.MTU != 1500-Overhead-VXLANOverhead {
		t.Fatalf("status: bridge %s, MTU %d; want %s and %d", st.Bridge, st.MTU, bridge, 1500-Overhead-VXLANOverhead)
	}
	a.setPeers(t, b, c)
	b.setPeers(t, a, c)
	c.setPeers(t, a, b)
	toA, toB, toC := a.echo(t), b.echo(t), c.echo(t)

	conn := a.firstDial(t, toB)
	defer conn.Close()
	r := bufio.NewReader(conn)
	payload := strings.Repeat("y", 100000)
	if err := roundTrip(conn, r, payload, 20*time.Second); err != nil {
		t.Fatalf("A -> B over VXLAN over WireGuard: %v", err)
	}
	if pb := a.peerState(t, b); pb.TransmitBytes < int64(len(payload)) || pb.ReceiveBytes < int64(len(payload)) {
		t.Fatalf("A's WireGuard peer B after %d bytes each way: tx %d, rx %d: the frames did not cross the tunnel", len(payload), pb.TransmitBytes, pb.ReceiveBytes)
	}
	c.firstDial(t, toA).Close()

	t.Run("ApplyAgainChangesNothing", func(t *testing.T) {
		before := a.l2snapshot(t)
		if !strings.Contains(before, "fdb mvx-"+netID) {
			t.Fatalf("no forwarding entries on A:\n%s", before)
		}
		a.ensure(t)
		a.setPeers(t, b, c)
		if after := a.l2snapshot(t); after != before {
			t.Fatalf("applying the same spec and peers changed A:\nbefore\n%s\nafter\n%s", before, after)
		}
		if err := roundTrip(conn, r, "after applying again", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RemovePeer", func(t *testing.T) {
		a.setPeers(t, b)
		if cc, err := a.dial(toC, 2*time.Second); err == nil {
			cc.Close()
			t.Fatal("A reaches C after C was removed from A's peers")
		}
		if cc, err := c.dial(toA, 2*time.Second); err == nil {
			cc.Close()
			t.Fatal("C reaches A after C was removed from A's peers")
		}
		if err := roundTrip(conn, r, "after removing C", 10*time.Second); err != nil {
			t.Fatalf("A -> B after removing C: %v", err)
		}
		c.firstDial(t, toB).Close()
	})

	t.Run("Restart", func(t *testing.T) {
		if err := a.d.Close(); err != nil {
			t.Fatal(err)
		}
		if cc, err := a.dial(toB, 2*time.Second); err == nil {
			cc.Close()
			t.Fatal("A reaches B with its WireGuard device stopped: the VXLAN frames left unencrypted")
		}
		d, err := Open(testCtx(t), &Options{Handle: a.nl, Do: a.h.Do})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		a.d = d
		a.ensure(t)
		a.setPeers(t, b, c)
		a.firstDial(t, toB).Close()
		a.firstDial(t, toC).Close()
		before := a.l2snapshot(t)
		a.ensure(t)
		a.setPeers(t, b, c)
		if after := a.l2snapshot(t); after != before {
			t.Fatalf("applying again after the restart changed A:\nbefore\n%s\nafter\n%s", before, after)
		}
	})
}

func TestBadInputLeavesNothingVXLAN(t *testing.T) {
	require(t)
	c := testhost.New(t, 1)
	h := c.Hosts[0]
	d, nl := openOn(t, h)
	s := &server{h: h, d: d, nl: nl}
	before := s.l2snapshot(t)
	ctx := testCtx(t)
	good := func() *driver.Spec {
		return &driver.Spec{ID: netID, Mode: driver.VXLANOverWireGuard, Subnet: netip.MustParsePrefix("198.19.0.0/16"),
			Local: netip.MustParsePrefix("198.19.0.1/16"), Underlay: h.Addr, PrivateKey: newKey(t), VNI: 77, Port: 52000}
	}
	for _, tc := range []struct {
		what string
		edit func(*driver.Spec)
		code errcode.Code
	}{
		{"VNI 0", func(s *driver.Spec) { s.VNI = 0 }, errcode.InvalidArgument},
		{"VNI too large", func(s *driver.Spec) { s.VNI = 1 << 24 }, errcode.InvalidArgument},
		{"malformed key", func(s *driver.Spec) { s.PrivateKey = "not a key" }, errcode.InvalidArgument},
		{"layer-3 Local", func(s *driver.Spec) { s.Local = netip.MustParsePrefix("198.19.0.1/24") }, errcode.InvalidArgument},
		{"MTU above what the tunnel leaves", func(s *driver.Spec) { s.MTU = 1500 - Overhead - VXLANOverhead + 1 }, errcode.FailedPrecondition},
		{"underlay not on this server", func(s *driver.Spec) { s.Underlay = netip.MustParseAddr("198.18.255.1") }, errcode.FailedPrecondition},
	} {
		spec := good()
		tc.edit(spec)
		if _, err := d.EnsureNetwork(ctx, spec); !errors.Is(err, tc.code) {
			t.Fatalf("%s: error %v (code %v), want %v", tc.what, err, errcode.Of(err), tc.code)
		}
		if after := s.l2snapshot(t); after != before {
			t.Fatalf("%s left state behind:\nbefore\n%s\nafter\n%s", tc.what, before, after)
		}
	}

	// A plain VXLAN network holding the ID: the layered one is refused
	// after its device was made, and the device is removed again.
	plain, err := vxlan.Open(ctx, &vxlan.Options{Handle: nl})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ps := good()
	ps.Mode, ps.PrivateKey, ps.Port = driver.VXLAN, "", 0
	if _, err := plain.EnsureNetwork(ctx, ps); err != nil {
		t.Fatal(err)
	}
	withPlain := s.l2snapshot(t)
	if _, err := d.EnsureNetwork(ctx, good()); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("ID held by a plain VXLAN network: %v", err)
	}
	if after := s.l2snapshot(t); after != withPlain {
		t.Fatalf("the refused network left state behind:\nbefore\n%s\nafter\n%s", withPlain, after)
	}
	if err := plain.DeleteNetwork(ctx, netID); err != nil {
		t.Fatal(err)
	}

	// Bad peers change nothing; the layered network is invisible to a
	// plain VXLAN driver.
	if _, err := d.EnsureNetwork(ctx, good()); err != nil {
		t.Fatal(err)
	}
	if sts, err := plain.Networks(ctx); err != nil || len(sts) != 0 {
		t.Fatalf("a plain VXLAN driver lists %v, %v", sts, err)
	}
	withNet := s.l2snapshot(t)
	peers := drivertest.NewPeers(driver.VXLANOverWireGuard, netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("198.18.255.2"))
	bad := slices.Clone(peers)
	bad[1].PublicKey = bad[0].PublicKey
	if err := d.SetPeers(ctx, netID, bad); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("duplicate keys: %v", err)
	}
	bad = slices.Clone(peers)
	bad[0].Endpoints = []driver.Endpoint{{Address: netip.MustParseAddr("198.20.0.1"), MAC: peers[0].Endpoints[0].MAC}}
	if err := d.SetPeers(ctx, netID, bad); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("endpoint outside the subnet: %v", err)
	}
	if after := s.l2snapshot(t); after != withNet {
		t.Fatalf("rejected peers changed state:\nbefore\n%s\nafter\n%s", withNet, after)
	}
	if err := d.DeleteNetwork(ctx, netID); err != nil {
		t.Fatal(err)
	}
	if after := s.l2snapshot(t); after != before {
		t.Fatalf("DeleteNetwork left state behind:\nbefore\n%s\nafter\n%s", before, after)
	}
}
