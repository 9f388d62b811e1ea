// Package driver defines what network backends implement.
//
// Application code uses package network; this package is for driver
// authors. A driver manages the overlay networks of one server: the devices,
// bridge, forwarding entries and routes that join this server's containers to
// the same network on other servers. Package network drives one driver per
// server, computes each server's Spec and Peers from the cluster's view (IPAM,
// keys, underlay addresses), and attaches containers.
//
// Drivers return raw errors that carry an errcode; the portable type
// validates input first (Spec.Validate), and drivers validate again before
// anything reaches the kernel. Every method is idempotent: applying an equal
// spec or peer set again changes nothing, and a call that fails leaves nothing
// half-built.
//
// Every driver passes the conformance suite in package network/drivertest.
package driver

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Driver manages the networks of one server.
type Driver interface {
	// EnsureNetwork makes network spec.ID exist on this server as spec
	// says and returns its state. Applying an equal spec again changes
	// nothing. A spec that changes what cannot change in place (the mode,
	// the VNI, the subnet) is errcode.FailedPrecondition, and so is one the
	// server cannot carry: an Underlay no link of the server holds, an MTU
	// above what the underlay's leaves after the mode's overhead, a port
	// another program holds. A mode the driver does not support is
	// errcode.Unimplemented; a link that holds a name the network needs
	// and is not the network's is errcode.AlreadyExists, and is left
	// alone. On any error nothing the call created is left behind.
	EnsureNetwork(ctx context.Context, spec *Spec) (*Status, error)
	// DeleteNetwork removes the network's devices, forwarding entries and
	// routes from this server. errcode.NotFound if unknown.
	DeleteNetwork(ctx context.Context, id string) error
	// SetPeers declares the network's whole peer set on this server: the
	// other servers' ends. Peers not listed are removed, with their
	// forwarding entries, neighbours and routes, so that their traffic is
	// cut and no other's. errcode.NotFound if the network is unknown,
	// errcode.InvalidArgument for a malformed or duplicate peer.
	SetPeers(ctx context.Context, id string, peers []Peer) error
	// Networks returns the state of every network on this server, sorted
	// by ID.
	Networks(ctx context.Context) ([]*Status, error)
	// Capabilities says which modes and options the driver supports.
	Capabilities() Capabilities
	// Close releases the driver's resources. Networks stay in place: their
	// bridges and addresses at least (a driver whose tunnels live in its
	// process, like a userspace WireGuard device, stops carrying traffic
	// until a new driver ensures them again). Closing again returns nil;
	// every other method but Capabilities then fails with
	// errcode.FailedPrecondition.
	Close() error
}

// Mode is how a network crosses servers.
type Mode string

const (
	// VXLAN stretches one layer-2 segment over the underlay: a VXLAN device
	// and a bridge per network on each server, unicast to peers.
	VXLAN Mode = "vxlan"
	// WireGuard routes each server's container range through an encrypted
	// layer-3 tunnel.
	WireGuard Mode = "wireguard"
	// BGP routes each server's container range over the underlay, learnt
	// from the servers' BGP speakers.
	BGP Mode = "bgp"
	// VXLANOverWireGuard is VXLAN whose underlay is a WireGuard tunnel:
	// encrypted layer 2.
	VXLANOverWireGuard Mode = "vxlan-wireguard"
)

// Spec is a network as one server sees it.
type Spec struct {
	// ID names the network: a DNS label, unique in the cluster.
	ID   string `json:"id"`
	Mode Mode   `json:"mode"`
	// Subnet is the network's whole address range.
	Subnet netip.Prefix `json:"subnet"`
	// Local is this server's address on the network's bridge, with the
	// prefix containers on this server use: in layer-2 modes an address
	// of Subnet with Subnet's length; in layer-3 modes the first address
	// of this server's range, with the range's length.
	Local netip.Prefix `json:"local"`
	// Underlay is this server's address that peers send to.
	Underlay netip.Addr `json:"underlay"`
	// VNI is the VXLAN network identifier, 1 to 16777215 (VXLAN modes).
	VNI uint32 `json:"vni,omitempty"`
	// Port is the UDP port of VXLAN (default 4789) or WireGuard (default
	// 51820), or the TCP port of BGP (default 179).
	Port uint16 `json:"port,omitempty"`
	// MTU of the network's devices; zero derives it from the underlay's.
	MTU int `json:"mtu,omitempty"`
	// PrivateKey is this server's WireGuard key, base64 (WireGuard modes).
	PrivateKey string `json:"privateKey,omitempty"`
	// BGP options (BGP mode).
	ASN      uint32        `json:"asn,omitempty"`
	RouterID netip.Addr    `json:"routerID,omitzero"`
	HoldTime time.Duration `json:"holdTime,omitempty"`
	Password string        `json:"password,omitempty"` // TCP MD5, optional
}

// Peer is another server's end of a network.
type Peer struct {
	// Name is the peer server's name, a DNS label.
	Name string `json:"name"`
	// Underlay is the peer's underlay address.
	Underlay netip.Addr `json:"underlay"`
	// Range is the peer's container range (layer-3 modes).
	Range netip.Prefix `json:"range,omitzero"`
	// PublicKey is the peer's WireGuard public key, base64.
	PublicKey string `json:"publicKey,omitempty"`
	// ASN is the peer's autonomous system (BGP).
	ASN uint32 `json:"asn,omitempty"`
	// Endpoints are containers known to live on the peer (layer 2): the
	// driver may install neighbour and forwarding entries for them so
	// that no flooding or learning is needed.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Endpoint is a container's interface on a network.
type Endpoint struct {
	Address netip.Addr       `json:"address"`
	MAC     net.HardwareAddr `json:"mac"`
}

// Status is a network's state on one server.
type Status struct {
	Spec Spec `json:"spec"`
	// Bridge is where containers on this server attach (through a veth).
	Bridge string `json:"bridge"`
	// MTU is the MTU containers on the network must use.
	MTU int `json:"mtu"`
	// PublicKey is this server's WireGuard public key (WireGuard modes).
	PublicKey string `json:"publicKey,omitempty"`
	// Peers are the peers in place, sorted by name.
	Peers []Peer `json:"peers,omitempty"`
	// Connected names, sorted, the peers this server has a live session
	// with, in modes that have sessions: BGP's established sessions,
	// WireGuard's peers with a handshake in the last three minutes (after
	// which WireGuard itself rejects the session's keys). Callers wait on
	// it for a network to converge. Always empty in mode VXLAN.
	Connected []string `json:"connected,omitempty"`
	// Sessions are the WireGuard device's view of each peer, sorted by
	// name (WireGuard modes): what `wg show` prints, readable through the
	// agent.
	Sessions []Session `json:"sessions,omitempty"`
}

// Session is a WireGuard peer as the device sees it.
type Session struct {
	Peer string `json:"peer"`
	// Endpoint is where the peer's packets come from; zero before any.
	Endpoint netip.AddrPort `json:"endpoint,omitzero"`
	// LastHandshake is zero before the first handshake.
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	ReceiveBytes  int64     `json:"receiveBytes"`
	TransmitBytes int64     `json:"transmitBytes"`
}

// Capabilities says what a driver supports.
type Capabilities struct {
	Modes []Mode `json:"modes"`
	// Encrypted says traffic between servers is encrypted.
	Encrypted bool `json:"encrypted,omitempty"`
}

// DefaultPort returns the port a network of mode uses when its Spec.Port
// is zero: VXLAN's UDP 4789 (IANA), WireGuard's UDP 51820 (also for
// VXLANOverWireGuard, whose VXLAN stays inside the tunnel), BGP's TCP 179;
// 0 for an unknown mode.
func DefaultPort(m Mode) uint16 {
	switch m {
	case VXLAN:
		return 4789
	case WireGuard, VXLANOverWireGuard:
		return 51820
	case BGP:
		return 179
	}
	return 0
}

// Overhead returns the bytes a network of mode adds to each packet that
// crosses an underlay of the given family, as the drivers count them for
// their default MTU: VXLAN 50 over IPv4 and 70 over IPv6; WireGuard 80
// (wg-quick's rule, for both families); VXLANOverWireGuard 150 (VXLAN over
// the tunnel's IPv6, then WireGuard); BGP 0 (plain routing).
func Overhead(m Mode, underlay6 bool) int {
	switch m {
	case VXLAN:
		if underlay6 {
			return 70
		}
		return 50
	case WireGuard:
		return 80
	case VXLANOverWireGuard:
		return 150
	}
	return 0
}
