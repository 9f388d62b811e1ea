package network_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
	"github.com/musterkit/muster/network/preflight"
)

// newFabric returns a Fabric over three in-memory servers s0..s2 and the
// servers' drivers.
func newFabric(t *testing.T) (*network.Fabric, map[string]driver.Driver) {
	t.Helper()
	f, err := network.Open(context.Background(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	drivers := map[string]driver.Driver{}
	for i := range 3 {
		name := fmt.Sprint("s", i)
		drivers[name] = memnetwork.New(nil)
		if err := f.AddServer(context.Background(), name, network.Local{Driver: drivers[name]}, netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})); err != nil {
			t.Fatal(err)
		}
	}
	return f, drivers
}

func TestEnsureVXLAN(t *testing.T) {
	ctx := context.Background()
	f, drivers := newFabric(t)
	spec := &network.Spec{ID: "blue", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.0/24"), VNI: 42}
	sts, err := f.Ensure(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	locals := map[netip.Prefix]bool{}
	for _, st := range sts {
		if !spec.Subnet.Contains(st.Spec.Local.Addr()) || st.Spec.Local.Bits() != 24 || locals[st.Spec.Local] {
			t.Fatalf("server address %v: not a distinct address of the subnet", st.Spec.Local)
		}
		locals[st.Spec.Local] = true
		if len(st.Peers) != 2 || st.Peers[0].Underlay == st.Spec.Underlay || st.Peers[1].Underlay == st.Spec.Underlay {
			t.Fatalf("peers of %v: %+v", st.Spec.Underlay, st.Peers)
		}
	}
	again, err := f.Ensure(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sts {
		if again[i].Spec.Local != sts[i].Spec.Local || again[i].Bridge != sts[i].Bridge {
			t.Fatalf("applying the same spec again changed server %d: %+v -> %+v", i, sts[i].Spec, again[i].Spec)
		}
	}
	changed := *spec
	changed.VNI = 43
	if _, err := f.Ensure(ctx, &changed); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("changing the VNI: %v", err)
	}
	overlap := &network.Spec{ID: "red", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.128/25"), VNI: 7}
	if _, err := f.Ensure(ctx, overlap); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("an overlapping subnet: %v", err)
	}
	for name, d := range drivers {
		if nets, _ := d.Networks(ctx); len(nets) != 1 {
			t.Fatalf("server %s has %d networks, want only blue", name, len(nets))
		}
	}
	n, err := f.Attach(ctx, "blue", "s1", "web")
	if err != nil {
		t.Fatal(err)
	}
	if n.Bridge != sts[1].Bridge || !spec.Subnet.Contains(n.Address.Addr()) || locals[netip.PrefixFrom(n.Address.Addr(), 24)] || n.Gateway.IsValid() {
		t.Fatalf("Attach = %+v", n)
	}
	if same, _ := f.Attach(ctx, "blue", "s1", "web"); same != n {
		t.Fatalf("attaching again gave %+v, want %+v", same, n)
	}
	other, _ := f.Attach(ctx, "blue", "s2", "db")
	if other.Address == n.Address {
		t.Fatal("two containers got one address")
	}
}

func TestEnsureWireGuardRangesAndKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f, err := network.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		f.AddServer(context.Background(), fmt.Sprint("s", i), network.Local{Driver: memnetwork.New(nil)}, netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)}))
	}
	spec := &network.Spec{ID: "green", Mode: driver.WireGuard, Subnet: netip.MustParsePrefix("198.19.0.0/16")}
	sts, err := f.Ensure(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	var ranges []netip.Prefix
	for i, st := range sts {
		r := st.Spec.Local.Masked()
		if r.Bits() != 24 || st.Spec.Local.Addr() != r.Addr().Next() || st.PublicKey == "" {
			t.Fatalf("server %d: local %v, key %q", i, st.Spec.Local, st.PublicKey)
		}
		ranges = append(ranges, r)
		keys[st.Spec.Underlay.String()] = st.PublicKey
	}
	if ranges[0].Overlaps(ranges[1]) || ranges[1].Overlaps(ranges[2]) || ranges[0].Overlaps(ranges[2]) {
		t.Fatalf("ranges overlap: %v", ranges)
	}
	for _, st := range sts {
		for _, p := range st.Peers {
			if p.PublicKey != keys[p.Underlay.String()] || !slices.Contains(ranges, p.Range) {
				t.Fatalf("peer %+v does not carry its server's key and range", p)
			}
		}
	}
	n, err := f.Attach(ctx, "green", "s2", "app")
	if err != nil {
		t.Fatal(err)
	}
	if !ranges[2].Contains(n.Address.Addr()) || n.Gateway != sts[2].Spec.Local.Addr() || n.Address.Bits() != 24 {
		t.Fatalf("Attach on s2 = %+v; want an address of %v via %v", n, ranges[2], sts[2].Spec.Local.Addr())
	}

	// A new Fabric on the same directory keeps keys, ranges and leases.
	f2, _ := network.Open(context.Background(), dir, nil)
	for i := range 3 {
		f2.AddServer(context.Background(), fmt.Sprint("s", i), network.Local{Driver: memnetwork.New(nil)}, netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)}))
	}
	sts2, err := f2.Ensure(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sts {
		if sts2[i].PublicKey != sts[i].PublicKey || sts2[i].Spec.Local != sts[i].Spec.Local {
			t.Fatalf("after a restart server %d has key %q local %v, had %q %v", i, sts2[i].PublicKey, sts2[i].Spec.Local, sts[i].PublicKey, sts[i].Spec.Local)
		}
	}
	if again, _ := f2.Attach(ctx, "green", "s2", "app"); again != n {
		t.Fatalf("lease after a restart %+v, want %+v", again, n)
	}
}

// failing fails every EnsureNetwork.
type failing struct{ *memnetwork.Driver }

func (failing) EnsureNetwork(context.Context, *driver.Spec) (*driver.Status, error) {
	return nil, errcode.New(errcode.Unavailable, "server down")
}

func TestEnsureRollsBack(t *testing.T) {
	ctx := context.Background()
	f, drivers := newFabric(t)
	if err := f.AddServer(context.Background(), "s9", network.Local{Driver: failing{memnetwork.New(nil)}}, netip.MustParseAddr("198.18.0.9")); err != nil {
		t.Fatal(err)
	}
	_, err := f.Ensure(ctx, &network.Spec{ID: "blue", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.0/24"), VNI: 42})
	if !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("Ensure with a failing server: %v", err)
	}
	for name, d := range drivers {
		if nets, _ := d.Networks(ctx); len(nets) != 0 {
			t.Fatalf("server %s kept the network after a rollback", name)
		}
	}
	if _, err := f.Attach(ctx, "blue", "s0", "web"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("a network that failed to build is attachable: %v", err)
	}
}

func TestDeleteAndRejects(t *testing.T) {
	ctx := context.Background()
	f, drivers := newFabric(t)
	spec := &network.Spec{ID: "blue", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.0/24"), VNI: 42}
	if _, err := f.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, "blue"); err != nil {
		t.Fatal(err)
	}
	for name, d := range drivers {
		if nets, _ := d.Networks(ctx); len(nets) != 0 {
			t.Fatalf("server %s kept a deleted network", name)
		}
	}
	if err := f.Delete(ctx, "blue"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
	for _, bad := range []*network.Spec{
		{ID: "Bad_ID", Mode: driver.VXLAN, Subnet: spec.Subnet, VNI: 1},
		{ID: "x", Mode: "carrier-pigeon", Subnet: spec.Subnet},
		{ID: "x", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.1/24"), VNI: 1},
		{ID: "x", Mode: driver.VXLAN, Subnet: spec.Subnet, VNI: 1 << 24},
		{ID: "x", Mode: driver.VXLAN, Subnet: spec.Subnet, VNI: 1, MTU: 100},
	} {
		if _, err := f.Ensure(ctx, bad); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Ensure(%+v): %v, want InvalidArgument", bad, err)
		}
	}
	for name, d := range drivers {
		if nets, _ := d.Networks(ctx); len(nets) != 0 {
			t.Fatalf("server %s has a network after rejected specs", name)
		}
	}
	// Nothing of the rejected "x" stayed: it can be built with another subnet.
	if _, err := f.Ensure(ctx, &network.Spec{ID: "x", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.9.0/24"), VNI: 9}); err != nil {
		t.Fatalf("building a network whose earlier attempts were rejected: %v", err)
	}
	if err := f.AddServer(context.Background(), "s0", network.Local{Driver: memnetwork.New(nil)}, netip.MustParseAddr("198.18.0.50")); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("duplicate server: %v", err)
	}
	if err := f.AddServer(context.Background(), "s5", network.Local{Driver: memnetwork.New(nil)}, netip.MustParseAddr("198.18.0.1")); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("duplicate underlay: %v", err)
	}
}

func TestRemoveServer(t *testing.T) {
	ctx := context.Background()
	f, drivers := newFabric(t)
	specs := []*network.Spec{
		{ID: "blue", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.0/24"), VNI: 42},
		{ID: "red", Mode: driver.BGP, Subnet: netip.MustParsePrefix("198.19.128.0/17"), ASN: 64512},
	}
	var s1Range netip.Prefix // in red, the BGP network
	for _, s := range specs {
		sts, err := f.Ensure(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		s1Range = sts[1].Spec.Local
	}
	if err := f.RemoveServer(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if nets, err := drivers["s1"].Networks(ctx); err != nil || len(nets) != 0 {
		t.Fatalf("the removed server keeps networks %v, %v", nets, err)
	}
	for _, name := range []string{"s0", "s2"} {
		nets, err := drivers[name].Networks(ctx)
		if err != nil || len(nets) != 2 {
			t.Fatalf("%s: networks %v, %v", name, nets, err)
		}
		for _, n := range nets {
			if len(n.Peers) != 1 || n.Peers[0].Name == "s1" {
				t.Fatalf("%s: network %s has peers %+v, want the other remaining server only", name, n.Spec.ID, n.Peers)
			}
		}
	}
	if err := f.RemoveServer(ctx, "s1"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("removing it again: %v", err)
	}
	if sts, err := f.Status(ctx, "red"); err != nil || len(sts) != 2 || sts[0].Spec.Underlay != netip.MustParseAddr("198.18.0.1") || len(sts[0].Peers) != 1 {
		t.Fatalf("Status after the removal: %+v, %v", sts, err)
	}
	if _, err := f.Status(ctx, "green"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("Status of an unknown network: %v", err)
	}
	// Coming back under the same name, it gets its range again.
	if err := f.AddServer(context.Background(), "s1", network.Local{Driver: drivers["s1"]}, netip.AddrFrom4([4]byte{198, 18, 0, 2})); err != nil {
		t.Fatal(err)
	}
	sts, err := f.Ensure(ctx, specs[1])
	if err != nil {
		t.Fatal(err)
	}
	if sts[1].Spec.Local != s1Range || len(sts[1].Peers) != 2 {
		t.Fatalf("s1 back: %+v", sts[1])
	}
}

func TestPreflight(t *testing.T) {
	ctx := context.Background()
	f, err := network.Open(context.Background(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		name := fmt.Sprint("s", i)
		if err := f.AddServer(context.Background(), name, network.Local{Driver: memnetwork.New(nil), Prober: preflight.NewLocal(nil)}, netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Ensure(ctx, &network.Spec{ID: "blue", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.0.0/24"), VNI: 42}); err != nil {
		t.Fatal(err)
	}
	spec := &network.Spec{ID: "red", Mode: driver.BGP, Port: 17900, Subnet: netip.MustParsePrefix("198.19.0.0/16"), ASN: 64512}
	r, err := f.Preflight(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Pairs) != 2 || !r.Pairs[0].Reachable || len(r.Pairs[0].Ports) != 1 || !r.Pairs[0].Ports[0].Reachable {
		t.Fatalf("pairs %+v", r.Pairs)
	}
	if len(r.Overlaps) != 1 || r.Overlaps[0].With != "network blue 198.19.0.0/24" || !errors.Is(r.Err(), errcode.FailedPrecondition) {
		t.Fatalf("overlaps %+v, Err %v", r.Overlaps, r.Err())
	}
	spec.Subnet = netip.MustParsePrefix("127.0.0.0/30")
	if r, err = f.Preflight(ctx, spec); err != nil || len(r.Overlaps) != 2 || r.Overlaps[0].With != "underlay of server s0 127.0.0.1" {
		t.Fatalf("a subnet holding the underlays: %+v, %v", r, err)
	}
	if _, err := f.Ensure(ctx, spec); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Ensure of a subnet holding the underlays: %v", err)
	}
	if err := f.AddServer(context.Background(), "s2", network.Local{Driver: memnetwork.New(nil)}, netip.MustParseAddr("127.0.0.3")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Preflight(ctx, spec); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("a server without a prober: %v", err)
	}
}
