package memnetwork_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/network/memnetwork"
)

var (
	underlay   = netip.MustParseAddr("198.18.0.1")
	underlay6  = netip.MustParseAddr("2001:db8::1")
	peerB      = netip.MustParseAddr("198.18.0.2")
	peerC      = netip.MustParseAddr("198.18.0.3")
	everyMode  = []driver.Mode{driver.VXLAN, driver.WireGuard, driver.BGP, driver.VXLANOverWireGuard}
	background = context.Background()
)

func TestConformance(t *testing.T) {
	for _, m := range everyMode {
		t.Run(string(m), func(t *testing.T) {
			drivertest.RunConformanceTests(t, drivertest.Harness{
				Open:  func(t *testing.T) driver.Driver { return memnetwork.New(nil) },
				Mode:  m,
				Spec:  func(id string) *driver.Spec { return drivertest.NewSpec(m, id, underlay) },
				Peers: func() []driver.Peer { return drivertest.NewPeers(m, peerB, peerC) },
			})
		})
	}
}

func TestMTU(t *testing.T) {
	for _, tt := range []struct {
		mode        driver.Mode
		underlay    netip.Addr
		underlayMTU int
		want        int
	}{
		{driver.VXLAN, underlay, 0, 1450},
		{driver.VXLAN, underlay6, 0, 1430},
		{driver.WireGuard, underlay, 0, 1420},
		{driver.WireGuard, underlay6, 9000, 8920},
		{driver.VXLANOverWireGuard, underlay, 0, 1350}, // as drivers/wireguard: VXLAN over its IPv6 tunnel
		{driver.BGP, underlay, 0, 1500},
	} {
		d := memnetwork.New(&memnetwork.Options{UnderlayMTU: tt.underlayMTU})
		st, err := d.EnsureNetwork(background, drivertest.NewSpec(tt.mode, "net-a", tt.underlay))
		if err != nil || st.MTU != tt.want {
			t.Errorf("%s over %s, underlay MTU %d: got MTU %v, %v; want %d", tt.mode, tt.underlay, tt.underlayMTU, st, err, tt.want)
		}
	}
	d := memnetwork.New(&memnetwork.Options{UnderlayMTU: 1500})
	spec := drivertest.NewSpec(driver.VXLAN, "net-a", underlay)
	spec.MTU = 1451
	if _, err := d.EnsureNetwork(background, spec); !errors.Is(err, errcode.FailedPrecondition) {
		t.Errorf("MTU 1451 over a 1500 underlay in VXLAN: got %v, want failed precondition", err)
	}
	d = memnetwork.New(&memnetwork.Options{UnderlayMTU: 600})
	if _, err := d.EnsureNetwork(background, drivertest.NewSpec(driver.VXLANOverWireGuard, "net-a", underlay)); !errors.Is(err, errcode.FailedPrecondition) {
		t.Errorf("derived MTU 470: got %v, want failed precondition", err)
	}
}

func TestBridgeNames(t *testing.T) {
	d := memnetwork.New(nil)
	seen := map[string]string{}
	for _, id := range []string{"a", "net-a", "eleven-char", "twelve-chars", "twelve-charsx", "twelve-charsy"} {
		st, err := d.EnsureNetwork(background, drivertest.NewSpec(driver.BGP, id, underlay))
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Bridge) > 15 {
			t.Errorf("network %q: bridge %q is longer than 15 bytes", id, st.Bridge)
		}
		if other, ok := seen[st.Bridge]; ok {
			t.Errorf("networks %q and %q share bridge %q", other, id, st.Bridge)
		}
		seen[st.Bridge] = id
	}
	if got := seen["mst-net-a"]; got != "net-a" {
		t.Errorf("bridge mst-net-a is network %q, want net-a", got)
	}
}

// TestPublicKey checks the derivation against RFC 7748, section 6.1.
func TestPublicKey(t *testing.T) {
	spec := drivertest.NewSpec(driver.WireGuard, "net-a", underlay)
	spec.PrivateKey = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=" // Alice's private key
	st, err := memnetwork.New(nil).EnsureNetwork(background, spec)
	if err != nil {
		t.Fatal(err)
	}
	if want := "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="; st.PublicKey != want {
		t.Errorf("public key %s, want %s", st.PublicKey, want)
	}
}

// TestChangeClashesWithPeers checks that a spec change in place that the
// peers in place would contradict is refused and changes nothing.
func TestChangeClashesWithPeers(t *testing.T) {
	d := memnetwork.New(nil)
	spec := drivertest.NewSpec(driver.BGP, "net-a", underlay)
	if _, err := d.EnsureNetwork(background, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.SetPeers(background, "net-a", drivertest.NewPeers(driver.BGP, peerB, peerC)); err != nil {
		t.Fatal(err)
	}
	spec.Local = netip.MustParsePrefix("198.19.2.1/24") // server-b's range
	if _, err := d.EnsureNetwork(background, spec); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("local in a peer's range: got %v, want failed precondition", err)
	}
	sts, err := d.Networks(background)
	if err != nil || len(sts) != 1 || sts[0].Spec.Local.String() != "198.19.1.1/24" || len(sts[0].Peers) != 2 {
		t.Fatalf("after the refused change Networks = %+v, %v", sts, err)
	}
}
