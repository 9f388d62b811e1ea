// Package drivertest is the conformance suite every network driver passes.
// A driver's tests call RunConformanceTests with a Harness that opens fresh
// servers. The suite checks the SPI's contract (idempotence, validation,
// what may change in place, peer sets, error codes, Close). The same test
// names run on every driver: memnetwork and the real drivers in drivers/.
//
// RunKernelTests is the second suite, for real drivers only: it needs root
// (it builds simulated servers with package testhost) and checks packets
// between servers and the kernel state each call leaves (State): traffic,
// applying again, removing a peer, changes in place, bad input that leaves
// nothing behind, deletion and a restart. Every real driver runs the same
// subtest names, in each mode it supports.
//
// NewSpec and NewPeers make valid specs and peers of every mode for
// harnesses and other tests; Snapshot reads a simulated server's State for
// a driver's own tests.
package drivertest

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
)

// Harness opens the servers the suite runs on.
type Harness struct {
	// Open returns a driver for a fresh server with no networks. It
	// registers its own cleanup with t.Cleanup.
	Open func(t *testing.T) driver.Driver
	// Mode is the mode the suite's networks use; the driver supports it.
	Mode driver.Mode
	// Spec returns a new valid spec of Mode for network id on the opened
	// server (the harness knows its underlay). Specs of different IDs can
	// coexist on one server (distinct VNIs or ports) and share Subnet and
	// Local, so that Peers suits them all. The server's underlay leaves
	// room for an MTU of 1280 in Mode.
	Spec func(id string) *driver.Spec
	// Peers returns two new valid peers of Mode for any spec Spec returns,
	// each with every field its mode uses (endpoints in layer-2 modes).
	Peers func() []driver.Peer
}

// RunConformanceTests runs the suite as subtests of t.
func RunConformanceTests(t *testing.T, h Harness) {
	tests := []struct {
		name string
		run  func(*testing.T, *suite)
	}{
		{"EnsureIdempotent", testEnsureIdempotent},
		{"EnsureRejects", testEnsureRejects},
		{"Delete", testDelete},
		{"SetPeers", testSetPeers},
		{"Capabilities", testCapabilities},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, &suite{h: h, d: h.Open(t)})
		})
	}
}

type suite struct {
	h Harness
	d driver.Driver
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func (s *suite) ensure(t *testing.T, spec *driver.Spec) *driver.Status {
	t.Helper()
	st, err := s.d.EnsureNetwork(ctx(t), spec)
	if err != nil {
		t.Fatalf("EnsureNetwork(%s): %v", spec.ID, err)
	}
	return st
}

func (s *suite) networks(t *testing.T) []*driver.Status {
	t.Helper()
	sts, err := s.d.Networks(ctx(t))
	if err != nil {
		t.Fatalf("Networks: %v", err)
	}
	return sts
}

// status returns network id's status as Networks lists it.
func (s *suite) status(t *testing.T, id string) *driver.Status {
	t.Helper()
	for _, st := range s.networks(t) {
		if st.Spec.ID == id {
			return st
		}
	}
	t.Fatalf("Networks does not list %q", id)
	return nil
}

// wantNetworks checks that Networks lists exactly want, in that order.
func (s *suite) wantNetworks(t *testing.T, what string, want ...*driver.Status) {
	t.Helper()
	if got := s.networks(t); !same(got, want) {
		t.Fatalf("%s: Networks = %s, want %s", what, show(got), show(want))
	}
}

// same reports whether a and b encode to the same JSON, so that a nil and
// an empty slice compare equal.
func same(a, b any) bool { return show(a) == show(b) }

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func wantCode(t *testing.T, what string, err error, code errcode.Code) {
	t.Helper()
	if !errors.Is(err, code) {
		t.Fatalf("%s: got error %v (code %v), want code %v", what, err, errcode.Of(err), code)
	}
}

func testEnsureIdempotent(t *testing.T, s *suite) {
	spec := s.h.Spec("net-b")
	st := s.ensure(t, spec)
	if st.Spec.ID != spec.ID || st.Spec.Mode != spec.Mode || st.Spec.Subnet != spec.Subnet ||
		st.Spec.Local != spec.Local || st.Spec.Underlay != spec.Underlay || st.Spec.VNI != spec.VNI {
		t.Fatalf("EnsureNetwork returned spec %+v, not what was ensured (%+v)", st.Spec, *spec)
	}
	if err := names.Interface(st.Bridge); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if st.MTU < 576 || spec.MTU != 0 && st.MTU != spec.MTU {
		t.Fatalf("MTU = %d for spec MTU %d", st.MTU, spec.MTU)
	}
	if spec.PrivateKey != "" && len(st.PublicKey) != 44 {
		t.Fatalf("public key %q is not the base64 of a WireGuard key", st.PublicKey)
	}
	if again := s.ensure(t, spec); !same(again, st) {
		t.Fatalf("ensuring an equal spec again changed the status:\n%s\nto\n%s", show(st), show(again))
	}
	s.wantNetworks(t, "after ensuring twice", st)

	a := s.ensure(t, s.h.Spec("net-a"))
	s.wantNetworks(t, "two networks", a, st)

	spec.MTU = 1280
	st = s.ensure(t, spec)
	if st.MTU != 1280 {
		t.Fatalf("after changing the MTU in place Status.MTU = %d, want 1280", st.MTU)
	}
	s.wantNetworks(t, "after changing the MTU", a, st)
}

func testEnsureRejects(t *testing.T, s *suite) {
	c := ctx(t)
	st := s.ensure(t, s.h.Spec("net-a"))
	for _, bad := range []struct {
		name   string
		mutate func(*driver.Spec)
	}{
		{"bad ID", func(sp *driver.Spec) { sp.ID = "Bad_ID" }},
		{"empty ID", func(sp *driver.Spec) { sp.ID = "" }},
		{"unknown mode", func(sp *driver.Spec) { sp.Mode = "ipip" }},
		{"unmasked subnet", func(sp *driver.Spec) { sp.Subnet = netip.PrefixFrom(sp.Subnet.Addr().Next(), sp.Subnet.Bits()) }},
		{"local outside subnet", func(sp *driver.Spec) { sp.Local = netip.MustParsePrefix("203.0.113.1/24") }},
		{"no underlay", func(sp *driver.Spec) { sp.Underlay = netip.Addr{} }},
		{"VNI 0 in VXLAN modes, 7 in others", func(sp *driver.Spec) {
			if sp.VNI == 0 {
				sp.VNI = 7
			} else {
				sp.VNI = 0
			}
		}},
		{"MTU 100", func(sp *driver.Spec) { sp.MTU = 100 }},
		{"malformed private key", func(sp *driver.Spec) { sp.PrivateKey = "not-a-key" }},
		{"password with newline", func(sp *driver.Spec) { sp.Password = "a\nb" }},
	} {
		for _, id := range []string{"net-a", "net-new"} {
			spec := s.h.Spec(id)
			bad.mutate(spec)
			_, err := s.d.EnsureNetwork(c, spec)
			wantCode(t, bad.name+" on "+id, err, errcode.InvalidArgument)
		}
	}
	s.wantNetworks(t, "after invalid specs", st)

	for _, change := range []struct {
		name   string
		mutate func(*driver.Spec) bool // false: does not apply to the mode
	}{
		{"subnet", func(sp *driver.Spec) bool {
			if sp.Local.Bits() == sp.Subnet.Bits() {
				sp.Local = netip.PrefixFrom(sp.Local.Addr(), sp.Subnet.Bits()-1)
			}
			sp.Subnet = netip.PrefixFrom(sp.Subnet.Addr(), sp.Subnet.Bits()-1).Masked()
			return true
		}},
		{"VNI", func(sp *driver.Spec) bool {
			if sp.VNI == 0 {
				return false
			}
			sp.VNI = sp.VNI%(1<<24-1) + 1 // the next valid VNI
			return true
		}},
		{"mode", func(sp *driver.Spec) bool {
			otherMode(t, sp)
			return true
		}},
	} {
		spec := s.h.Spec("net-a")
		if !change.mutate(spec) {
			continue
		}
		if !slices.Contains(s.d.Capabilities().Modes, spec.Mode) {
			t.Logf("changing the mode: the driver does not support %s, the mode next to %s", spec.Mode, s.h.Mode)
			continue
		}
		_, err := s.d.EnsureNetwork(c, spec)
		wantCode(t, "changing the "+change.name, err, errcode.FailedPrecondition)
		s.wantNetworks(t, "after changing the "+change.name, st)
	}
}

// otherMode turns sp into a valid spec of the other mode of its layer:
// VXLAN and VXLANOverWireGuard, WireGuard and BGP.
func otherMode(t *testing.T, sp *driver.Spec) {
	key := NewSpec(driver.WireGuard, sp.ID, sp.Underlay).PrivateKey
	switch sp.Mode {
	case driver.VXLAN:
		sp.Mode, sp.PrivateKey = driver.VXLANOverWireGuard, key
	case driver.VXLANOverWireGuard:
		sp.Mode, sp.PrivateKey = driver.VXLAN, ""
	case driver.WireGuard:
		sp.Mode, sp.PrivateKey, sp.ASN = driver.BGP, "", 64512
	case driver.BGP:
		sp.Mode, sp.PrivateKey, sp.ASN, sp.RouterID, sp.HoldTime, sp.Password = driver.WireGuard, key, 0, netip.Addr{}, 0, ""
	default:
		t.Fatalf("harness mode %q is not one of driver's", sp.Mode)
	}
}

func testDelete(t *testing.T, s *suite) {
	c := ctx(t)
	wantCode(t, "deleting an unknown network", s.d.DeleteNetwork(c, "ghost"), errcode.NotFound)
	s.ensure(t, s.h.Spec("net-a"))
	b := s.ensure(t, s.h.Spec("net-b"))
	if err := s.d.DeleteNetwork(c, "net-a"); err != nil {
		t.Fatal(err)
	}
	s.wantNetworks(t, "after deleting net-a", b)
	wantCode(t, "deleting net-a again", s.d.DeleteNetwork(c, "net-a"), errcode.NotFound)
	wantCode(t, "peers of a deleted network", s.d.SetPeers(c, "net-a", s.h.Peers()), errcode.NotFound)
	s.ensure(t, s.h.Spec("net-a"))
	if err := s.d.DeleteNetwork(c, "net-b"); err != nil {
		t.Fatal(err)
	}
	if got := s.networks(t); len(got) != 1 || got[0].Spec.ID != "net-a" {
		t.Fatalf("after re-creating net-a and deleting net-b Networks = %s", show(got))
	}
}

func testSetPeers(t *testing.T, s *suite) {
	c := ctx(t)
	spec := s.h.Spec("net-a")
	s.ensure(t, spec)
	peers := s.h.Peers()
	if len(peers) != 2 {
		t.Fatalf("harness gave %d peers, want 2", len(peers))
	}
	set := func(what string, ps ...driver.Peer) {
		t.Helper()
		if err := s.d.SetPeers(c, "net-a", ps); err != nil {
			t.Fatalf("SetPeers(%s): %v", what, err)
		}
		want := slices.SortedFunc(slices.Values(ps), func(a, b driver.Peer) int { return strings.Compare(a.Name, b.Name) })
		if got := s.status(t, "net-a").Peers; !same(got, want) {
			t.Fatalf("after SetPeers(%s) Status.Peers = %s, want %s", what, show(got), show(want))
		}
	}
	set("both, unsorted", peers[1], peers[0])
	set("the second only", peers[1])
	before := s.status(t, "net-a")
	set("the second again", peers[1])
	if after := s.status(t, "net-a"); !same(after, before) {
		t.Fatalf("setting the same peers again changed the status:\n%s\nto\n%s", show(before), show(after))
	}
	if st := s.ensure(t, spec); !same(st, before) {
		t.Fatalf("ensuring the spec again changed the status:\n%s\nto\n%s", show(before), show(st))
	}

	for _, bad := range []struct {
		name   string
		mutate func(p *driver.Peer) // p is a copy of peers[0] to declare with peers[1]
	}{
		{"duplicate name", func(p *driver.Peer) { p.Name = peers[1].Name }},
		{"bad name", func(p *driver.Peer) { p.Name = "Bad_Name" }},
		{"no underlay", func(p *driver.Peer) { p.Underlay = netip.Addr{} }},
		{"the server's own underlay", func(p *driver.Peer) { p.Underlay = spec.Underlay }},
		{"range or endpoint outside the subnet", func(p *driver.Peer) {
			if p.Range.IsValid() {
				p.Range = netip.MustParsePrefix("203.0.113.0/24")
			} else {
				p.Endpoints = []driver.Endpoint{{Address: netip.MustParseAddr("203.0.113.2"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}}
			}
		}},
		{"range overlapping or multicast endpoint MAC", func(p *driver.Peer) {
			if p.Range.IsValid() {
				p.Range = peers[1].Range
			} else {
				p.Endpoints = []driver.Endpoint{{Address: p.Endpoints[0].Address, MAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}}
			}
		}},
		{"malformed public key or one where none belongs", func(p *driver.Peer) { p.PublicKey = "not-a-key" }},
	} {
		p := peers[0]
		bad.mutate(&p)
		wantCode(t, "peers with "+bad.name, s.d.SetPeers(c, "net-a", []driver.Peer{p, peers[1]}), errcode.InvalidArgument)
		if after := s.status(t, "net-a"); !same(after, before) {
			t.Fatalf("rejected peers (%s) changed the status:\n%s\nto\n%s", bad.name, show(before), show(after))
		}
	}
	wantCode(t, "peers of an unknown network", s.d.SetPeers(c, "ghost", peers), errcode.NotFound)
	set("none")
}

// testClose closes a driver with a network twice, then uses it: every
// method but Capabilities fails with errcode.FailedPrecondition.
func testClose(t *testing.T, s *suite) {
	c := ctx(t)
	spec := s.h.Spec("net-a")
	s.ensure(t, spec)
	if err := s.d.SetPeers(c, "net-a", s.h.Peers()); err != nil {
		t.Fatalf("SetPeers: %v", err)
	}
	if err := s.d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.d.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	_, err := s.d.EnsureNetwork(c, spec)
	wantCode(t, "EnsureNetwork after Close", err, errcode.FailedPrecondition)
	_, err = s.d.EnsureNetwork(c, s.h.Spec("net-b"))
	wantCode(t, "EnsureNetwork of a new network after Close", err, errcode.FailedPrecondition)
	wantCode(t, "SetPeers after Close", s.d.SetPeers(c, "net-a", s.h.Peers()[:1]), errcode.FailedPrecondition)
	_, err = s.d.Networks(c)
	wantCode(t, "Networks after Close", err, errcode.FailedPrecondition)
	wantCode(t, "DeleteNetwork after Close", s.d.DeleteNetwork(c, "net-a"), errcode.FailedPrecondition)
	if modes := s.d.Capabilities().Modes; !slices.Contains(modes, s.h.Mode) {
		t.Fatalf("Capabilities().Modes after Close = %v, want it to list %s still", modes, s.h.Mode)
	}
}

func testCapabilities(t *testing.T, s *suite) {
	if modes := s.d.Capabilities().Modes; !slices.Contains(modes, s.h.Mode) {
		t.Fatalf("Capabilities().Modes = %v, want it to list %s", modes, s.h.Mode)
	}
}
