package drivertest

import (
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/musterkit/muster/network/driver"
)

// NewSpec returns a valid spec of mode for network id with the given
// underlay, for harnesses and tests. Every ID gets subnet 198.19.0.0/16 and
// Local 198.19.0.1/16 (layer-2 modes) or 198.19.1.1/24 (layer-3 modes), so
// that NewPeers suits them all. The VNI (VXLAN modes) and the private key
// (WireGuard modes) are derived from the ID, so different IDs get
// different ones and equal IDs equal ones. BGP specs have ASN 64512.
// Port is left 0 (the default); a harness whose driver needs distinct
// ports per network sets them.
func NewSpec(mode driver.Mode, id string, underlay netip.Addr) *driver.Spec {
	s := &driver.Spec{
		ID:       id,
		Mode:     mode,
		Subnet:   netip.MustParsePrefix("198.19.0.0/16"),
		Local:    netip.MustParsePrefix("198.19.0.1/16"),
		Underlay: underlay,
	}
	seed := sha256.Sum256([]byte("muster drivertest network " + id))
	switch mode {
	case driver.VXLAN, driver.VXLANOverWireGuard:
		s.VNI = binary.BigEndian.Uint32(seed[:])%(1<<24-1) + 1
	default:
		s.Local = netip.MustParsePrefix("198.19.1.1/24")
	}
	switch mode {
	case driver.WireGuard, driver.VXLANOverWireGuard:
		s.PrivateKey = base64.StdEncoding.EncodeToString(seed[:])
	case driver.BGP:
		s.ASN = 64512
	}
	return s
}

// NewPeers returns two valid peers of mode, "server-b" at underlay b and
// "server-c" at underlay c, for any spec NewSpec returns with an underlay
// other than b and c. In layer-3 modes their ranges are 198.19.2.0/24 and
// 198.19.3.0/24; in layer-2 modes each has one endpoint, 198.19.9.1 and
// 198.19.9.2. WireGuard peers have real public keys, BGP peers ASN 64513.
func NewPeers(mode driver.Mode, b, c netip.Addr) []driver.Peer {
	ps := []driver.Peer{{Name: "server-b", Underlay: b}, {Name: "server-c", Underlay: c}}
	for i := range ps {
		p := &ps[i]
		switch mode {
		case driver.VXLAN, driver.VXLANOverWireGuard:
			p.Endpoints = []driver.Endpoint{{
				Address: netip.AddrFrom4([4]byte{198, 19, 9, byte(i + 1)}),
				MAC:     net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i + 1)},
			}}
		default:
			p.Range = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i + 2), 0}), 24)
		}
		switch mode {
		case driver.WireGuard, driver.VXLANOverWireGuard:
			seed := sha256.Sum256([]byte("muster drivertest peer " + p.Name))
			k, err := ecdh.X25519().NewPrivateKey(seed[:])
			if err != nil {
				panic(err) // 32 bytes are always an X25519 key
			}
			p.PublicKey = base64.StdEncoding.EncodeToString(k.PublicKey().Bytes())
		case driver.BGP:
			p.ASN = 64513
		}
	}
	return ps
}
