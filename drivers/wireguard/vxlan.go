package wireguard

import (
	"crypto/sha256"
	"net/netip"

	"github.com/musterkit/muster/network/driver"
)

// VXLANOverhead is what VXLAN over the IPv6 tunnel adds to a frame (outer
// IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14), on top of Overhead.
const VXLANOverhead = 70

// TunnelAddress returns the address that the server with underlay address
// underlay holds on network id's WireGuard device in mode
// VXLANOverWireGuard, with its /64: a unique local IPv6 address whose
// prefix fdXX:XXXX:XXXX::/64 is taken from a hash of id and whose interface
// ID is the IPv4 underlay address (or, for an IPv6 underlay, 64 bits of its
// hash). Every server computes every peer's tunnel address from the peer's
// underlay, so nothing more needs to be exchanged, and tunnel addresses
// never meet a container subnet, which is what keeps VXLAN packets from
// being routed into the overlay they carry.
func TunnelAddress(id string, underlay netip.Addr) netip.Prefix {
	sum := sha256.Sum256([]byte("muster vxlan-wireguard " + id))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], sum[:5])
	if underlay.Is4() {
		u := underlay.As4()
		copy(a[12:], u[:])
	} else {
		h := sha256.Sum256(underlay.AsSlice())
		copy(a[8:], h[:8])
	}
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// innerSpec is the VXLAN network that carries a VXLANOverWireGuard spec
// over its tunnel: the same ID, subnet, Local, VNI and MTU, with the
// tunnel address as its underlay and the default VXLAN port (which only
// the tunnel carries).
func innerSpec(spec *driver.Spec) *driver.Spec {
	return &driver.Spec{
		ID:       spec.ID,
		Mode:     driver.VXLAN,
		Subnet:   spec.Subnet,
		Local:    spec.Local,
		Underlay: TunnelAddress(spec.ID, spec.Underlay).Addr(),
		VNI:      spec.VNI,
		MTU:      spec.MTU,
	}
}

// innerPeers are the VXLAN network's peers: peers at their tunnel
// addresses, with their endpoints.
func innerPeers(id string, peers []driver.Peer) []driver.Peer {
	out := make([]driver.Peer, len(peers))
	for i, p := range peers {
		out[i] = driver.Peer{Name: p.Name, Underlay: TunnelAddress(id, p.Underlay).Addr(), Endpoints: p.Endpoints}
	}
	return out
}
