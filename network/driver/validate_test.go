package driver_test

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
)

var (
	underlay = netip.MustParseAddr("198.18.0.1")
	key      = validSpec(driver.WireGuard).PrivateKey
	mac1     = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
)

func validSpec(m driver.Mode) *driver.Spec { return drivertest.NewSpec(m, "net-a", underlay) }

func validPeers(m driver.Mode) []driver.Peer {
	return drivertest.NewPeers(m, netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3"))
}

var modes = []driver.Mode{driver.VXLAN, driver.WireGuard, driver.BGP, driver.VXLANOverWireGuard}

func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("%s: got %v (code %v), want invalid argument", what, err, errcode.Of(err))
	}
	if testing.Verbose() {
		t.Logf("%s: %v", what, err)
	}
}

func TestValidateAccepts(t *testing.T) {
	for _, m := range modes {
		if err := validSpec(m).Validate(); err != nil {
			t.Errorf("%s: %v", m, err)
		}
		if err := driver.ValidatePeers(validSpec(m), validPeers(m)); err != nil {
			t.Errorf("%s peers: %v", m, err)
		}
		if err := driver.ValidatePeers(validSpec(m), nil); err != nil {
			t.Errorf("%s no peers: %v", m, err)
		}
	}
	for name, mutate := range map[string]func(*driver.Spec){
		"ipv6": func(s *driver.Spec) {
			s.Subnet, s.Local = netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("fd00::1/64")
		},
		"ipv6 underlay": func(s *driver.Spec) { s.Underlay = netip.MustParseAddr("2001:db8::1") },
		"max VNI":       func(s *driver.Spec) { s.VNI = 1<<24 - 1 },
		"MTU bounds":    func(s *driver.Spec) { s.MTU = 576 },
		"port":          func(s *driver.Spec) { s.Port = 4790 },
	} {
		s := validSpec(driver.VXLAN)
		mutate(s)
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bgp := validSpec(driver.BGP)
	bgp.RouterID, bgp.HoldTime, bgp.Password = netip.MustParseAddr("198.18.0.1"), 90*time.Second, "s3cret-!#"
	if err := bgp.Validate(); err != nil {
		t.Errorf("full BGP spec: %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mode   driver.Mode
		mutate func(*driver.Spec)
	}{
		{"empty ID", driver.VXLAN, func(s *driver.Spec) { s.ID = "" }},
		{"uppercase ID", driver.VXLAN, func(s *driver.Spec) { s.ID = "Net" }},
		{"ID with newline", driver.VXLAN, func(s *driver.Spec) { s.ID = "a\nb" }},
		{"long ID", driver.VXLAN, func(s *driver.Spec) { s.ID = strings.Repeat("a", 64) }},
		{"unknown mode", driver.VXLAN, func(s *driver.Spec) { s.Mode = "ipip" }},
		{"no subnet", driver.VXLAN, func(s *driver.Spec) { s.Subnet = netip.Prefix{} }},
		{"unmasked subnet", driver.VXLAN, func(s *driver.Spec) { s.Subnet = netip.MustParsePrefix("198.19.0.1/16") }},
		{"4in6 subnet", driver.VXLAN, func(s *driver.Spec) { s.Subnet = netip.MustParsePrefix("::ffff:198.19.0.0/112") }},
		{"no local", driver.VXLAN, func(s *driver.Spec) { s.Local = netip.Prefix{} }},
		{"local outside", driver.VXLAN, func(s *driver.Spec) { s.Local = netip.MustParsePrefix("198.18.200.1/16") }},
		{"local shorter", driver.BGP, func(s *driver.Spec) { s.Local = netip.MustParsePrefix("198.19.0.1/8") }},
		{"local other family", driver.VXLAN, func(s *driver.Spec) { s.Local = netip.MustParsePrefix("fd00::1/16") }},
		{"layer-2 local longer", driver.VXLAN, func(s *driver.Spec) { s.Local = netip.MustParsePrefix("198.19.0.1/24") }},
		{"no underlay", driver.VXLAN, func(s *driver.Spec) { s.Underlay = netip.Addr{} }},
		{"unspecified underlay", driver.VXLAN, func(s *driver.Spec) { s.Underlay = netip.MustParseAddr("0.0.0.0") }},
		{"multicast underlay", driver.VXLAN, func(s *driver.Spec) { s.Underlay = netip.MustParseAddr("239.1.1.1") }},
		{"zoned underlay", driver.VXLAN, func(s *driver.Spec) { s.Underlay = netip.MustParseAddr("fe80::1%eth0") }},
		{"VNI 0", driver.VXLAN, func(s *driver.Spec) { s.VNI = 0 }},
		{"VNI too big", driver.VXLANOverWireGuard, func(s *driver.Spec) { s.VNI = 1 << 24 }},
		{"VNI in wireguard", driver.WireGuard, func(s *driver.Spec) { s.VNI = 7 }},
		{"MTU small", driver.VXLAN, func(s *driver.Spec) { s.MTU = 575 }},
		{"MTU big", driver.VXLAN, func(s *driver.Spec) { s.MTU = 65536 }},
		{"MTU negative", driver.VXLAN, func(s *driver.Spec) { s.MTU = -1 }},
		{"no private key", driver.WireGuard, func(s *driver.Spec) { s.PrivateKey = "" }},
		{"short private key", driver.VXLANOverWireGuard, func(s *driver.Spec) { s.PrivateKey = "YWJj" }},
		{"private key not base64", driver.WireGuard, func(s *driver.Spec) { s.PrivateKey = strings.Repeat("!", 44) }},
		{"private key with newline", driver.WireGuard, func(s *driver.Spec) { s.PrivateKey = key[:20] + "\n" + key[20:] }},
		{"private key in vxlan", driver.VXLAN, func(s *driver.Spec) { s.PrivateKey = key }},
		{"no ASN", driver.BGP, func(s *driver.Spec) { s.ASN = 0 }},
		{"ASN in vxlan", driver.VXLAN, func(s *driver.Spec) { s.ASN = 64512 }},
		{"password in wireguard", driver.WireGuard, func(s *driver.Spec) { s.Password = "x" }},
		{"IPv6 router ID", driver.BGP, func(s *driver.Spec) { s.RouterID = netip.MustParseAddr("fd00::1") }},
		{"hold time short", driver.BGP, func(s *driver.Spec) { s.HoldTime = 2 * time.Second }},
		{"hold time long", driver.BGP, func(s *driver.Spec) { s.HoldTime = 65536 * time.Second }},
		{"hold time fraction", driver.BGP, func(s *driver.Spec) { s.HoldTime = 3500 * time.Millisecond }},
		{"password long", driver.BGP, func(s *driver.Spec) { s.Password = strings.Repeat("p", 81) }},
		{"password quote", driver.BGP, func(s *driver.Spec) { s.Password = `a"; }` }},
		{"password single quote", driver.BGP, func(s *driver.Spec) { s.Password = "a'b" }},
		{"password newline", driver.BGP, func(s *driver.Spec) { s.Password = "a\nb" }},
		{"password non-ASCII", driver.BGP, func(s *driver.Spec) { s.Password = "pässword" }},
	}
	for _, tt := range tests {
		s := validSpec(tt.mode)
		tt.mutate(s)
		wantInvalid(t, tt.name, s.Validate())
		wantInvalid(t, tt.name+" (ValidatePeers)", driver.ValidatePeers(s, nil))
	}
}

func TestValidatePeersRejects(t *testing.T) {
	tests := []struct {
		name   string
		mode   driver.Mode
		mutate func(s *driver.Spec, ps []driver.Peer)
	}{
		{"bad name", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Name = "C" }},
		{"empty name", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Name = "" }},
		{"duplicate name", driver.WireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].Name = ps[0].Name }},
		{"no underlay", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Underlay = netip.Addr{} }},
		{"own underlay", driver.BGP, func(s *driver.Spec, ps []driver.Peer) { ps[1].Underlay = s.Underlay }},
		{"duplicate underlay", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Underlay = ps[0].Underlay }},
		{"underlay other family", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Underlay = netip.MustParseAddr("2001:db8::2") }},
		{"no public key", driver.WireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].PublicKey = "" }},
		{"bad public key", driver.VXLANOverWireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].PublicKey = "abc=" }},
		{"duplicate public key", driver.WireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].PublicKey = ps[0].PublicKey }},
		{"public key in vxlan", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].PublicKey = key }},
		{"no ASN", driver.BGP, func(s *driver.Spec, ps []driver.Peer) { ps[1].ASN = 0 }},
		{"ASN in wireguard", driver.WireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].ASN = 1 }},
		{"no range", driver.WireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = netip.Prefix{} }},
		{"unmasked range", driver.BGP, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = netip.MustParsePrefix("198.19.3.1/24") }},
		{"range outside", driver.BGP, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = netip.MustParsePrefix("198.18.99.0/24") }},
		{"range wider than subnet", driver.BGP, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = netip.MustParsePrefix("198.0.0.0/8") }},
		{"range overlaps peer", driver.WireGuard, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = netip.MustParsePrefix("198.19.2.128/25") }},
		{"range overlaps local", driver.BGP, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = s.Local.Masked() }},
		{"range in vxlan", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Range = netip.MustParsePrefix("198.19.3.0/24") }},
		{"endpoints in bgp", driver.BGP, func(s *driver.Spec, ps []driver.Peer) {
			ps[1].Endpoints = []driver.Endpoint{{Address: netip.MustParseAddr("198.19.3.2"), MAC: mac1}}
		}},
		{"endpoint outside", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) {
			ps[1].Endpoints[0].Address = netip.MustParseAddr("198.18.99.2")
		}},
		{"endpoint is local", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Endpoints[0].Address = s.Local.Addr() }},
		{"endpoint twice", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Endpoints[0].Address = ps[0].Endpoints[0].Address }},
		{"endpoint MAC short", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { ps[1].Endpoints[0].MAC = mac1[:5] }},
		{"endpoint MAC multicast", driver.VXLANOverWireGuard, func(s *driver.Spec, ps []driver.Peer) {
			ps[1].Endpoints[0].MAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		}},
		{"invalid spec", driver.VXLAN, func(s *driver.Spec, ps []driver.Peer) { s.VNI = 0 }},
	}
	for _, tt := range tests {
		s, ps := validSpec(tt.mode), validPeers(tt.mode)
		tt.mutate(s, ps)
		wantInvalid(t, tt.name, driver.ValidatePeers(s, ps))
	}
}
