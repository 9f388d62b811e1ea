package wireguard

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/musterkit/muster/drivers/vxlan"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/testhost"
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

// TestPlainVXLANHoldsID checks what only this driver has: it layers its
// VXLAN through a vxlan.Driver of its own (Options.Over), so a network of
// a plain VXLAN driver holding the ID is errcode.AlreadyExists to it (the
// refused network's device, made before the clash shows, is removed), and
// its own layered networks are invisible to a plain VXLAN driver.
func TestPlainVXLANHoldsID(t *testing.T) {
	require(t)
	c := testhost.New(t, 1)
	h := c.Hosts[0]
	d, nl := openOn(t, h)
	ctx := testCtx(t)
	spec := drivertest.NewSpec(driver.VXLANOverWireGuard, netID, h.Addr)
	plain, err := vxlan.Open(ctx, &vxlan.Options{Handle: nl})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.EnsureNetwork(ctx, drivertest.NewSpec(driver.VXLAN, netID, h.Addr)); err != nil {
		t.Fatal(err)
	}
	withPlain := drivertest.Snapshot(t, h)
	if _, err := d.EnsureNetwork(ctx, spec); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("ID held by a plain VXLAN network: %v, want code %v", err, errcode.AlreadyExists)
	}
	if diff := withPlain.Diff(drivertest.Snapshot(t, h)); diff != "" {
		t.Fatalf("the refused network left state behind:%s", diff)
	}
	if err := plain.DeleteNetwork(ctx, netID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EnsureNetwork(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if sts, err := plain.Networks(ctx); err != nil || len(sts) != 0 {
		t.Fatalf("a plain VXLAN driver lists %v, %v", sts, err)
	}
}
