package driver

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// vxlan reports whether m carries a layer-2 segment in VXLAN. These are the
// layer-2 modes; the others route each server's range (layer 3).
func (m Mode) vxlan() bool { return m == VXLAN || m == VXLANOverWireGuard }

// wireGuard reports whether m's traffic crosses servers in WireGuard.
func (m Mode) wireGuard() bool { return m == WireGuard || m == VXLANOverWireGuard }

// Validate reports the first problem with s as an errcode.InvalidArgument
// error. A valid spec is safe to put in a kernel call or a configuration
// file:
//
//   - ID is a DNS label (names.Label) and Mode one of the constants.
//   - Subnet is valid and masked; Local's address is in Subnet. In layer-2
//     modes (VXLAN, VXLANOverWireGuard) Local has Subnet's length; in layer-3
//     modes (WireGuard, BGP) its length is Subnet's or longer.
//   - Underlay is a unicast address without a zone.
//   - VNI is 1 to 16777215 in VXLAN modes and 0 otherwise.
//   - MTU is 0 or 576 to 65535. Whether the underlay leaves room for it
//     after the tunnel's overhead is the driver's to check.
//   - PrivateKey is the standard base64 of 32 bytes in WireGuard modes, and
//     empty otherwise.
//   - ASN is set in BGP mode. RouterID, if set, is IPv4. HoldTime is 0 or
//     whole seconds from 3s to 65535s. Password is at most 80 printable
//     ASCII characters, without quotes or backslashes. In other modes these
//     four are zero.
func (s *Spec) Validate() error {
	if err := names.Label(s.ID); err != nil {
		return fmt.Errorf("network ID: %w", err)
	}
	if !slices.Contains([]Mode{VXLAN, WireGuard, BGP, VXLANOverWireGuard}, s.Mode) {
		return errcode.New(errcode.InvalidArgument, "mode %q is not one of %q, %q, %q, %q", s.Mode, VXLAN, WireGuard, BGP, VXLANOverWireGuard)
	}
	if !s.Subnet.IsValid() || s.Subnet.Addr().Is4In6() || s.Subnet != s.Subnet.Masked() {
		return errcode.New(errcode.InvalidArgument, "subnet %s is not a masked prefix such as %s", s.Subnet, s.Subnet.Masked())
	}
	if !s.Local.IsValid() || !s.Subnet.Contains(s.Local.Addr()) || s.Local.Bits() < s.Subnet.Bits() {
		return errcode.New(errcode.InvalidArgument, "local %s is not an address in subnet %s", s.Local, s.Subnet)
	}
	if s.Mode.vxlan() && s.Local.Bits() != s.Subnet.Bits() {
		return errcode.New(errcode.InvalidArgument, "local %s must have the length of subnet %s in %s mode", s.Local, s.Subnet, s.Mode)
	}
	if err := validUnderlay("underlay", s.Underlay); err != nil {
		return err
	}
	if s.Mode.vxlan() != (s.VNI != 0) || s.VNI > 1<<24-1 {
		if s.Mode.vxlan() {
			return errcode.New(errcode.InvalidArgument, "VNI %d is outside 1..16777215", s.VNI)
		}
		return errcode.New(errcode.InvalidArgument, "VNI is for VXLAN modes, not %s", s.Mode)
	}
	if s.MTU != 0 && (s.MTU < 576 || s.MTU > 65535) {
		return errcode.New(errcode.InvalidArgument, "MTU %d is outside 576..65535", s.MTU)
	}
	if err := validKey("private key", s.PrivateKey, s.Mode.wireGuard(), s.Mode); err != nil {
		return err
	}
	return s.validateBGP()
}

// validateBGP checks the BGP options.
func (s *Spec) validateBGP() error {
	if s.Mode != BGP {
		if s.ASN != 0 || s.RouterID.IsValid() || s.HoldTime != 0 || s.Password != "" {
			return errcode.New(errcode.InvalidArgument, "ASN, router ID, hold time and password are for BGP mode, not %s", s.Mode)
		}
		return nil
	}
	if s.ASN == 0 {
		return errcode.New(errcode.InvalidArgument, "BGP mode needs an ASN")
	}
	if s.RouterID.IsValid() && !s.RouterID.Is4() {
		return errcode.New(errcode.InvalidArgument, "router ID %s is not an IPv4 address", s.RouterID)
	}
	if s.HoldTime != 0 && (s.HoldTime < 3*time.Second || s.HoldTime > 65535*time.Second || s.HoldTime%time.Second != 0) {
		return errcode.New(errcode.InvalidArgument, "hold time %v is not whole seconds from 3s to 65535s", s.HoldTime)
	}
	if len(s.Password) > 80 {
		return errcode.New(errcode.InvalidArgument, "password is %d characters long; the limit is 80", len(s.Password))
	}
	for _, c := range []byte(s.Password) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\'' || c == '\\' {
			return errcode.New(errcode.InvalidArgument, "password holds a character that is not allowed (only printable ASCII without quotes or backslashes)")
		}
	}
	return nil
}

// ValidatePeers reports the first problem with spec (Validate) or with peers
// as seen by spec's server, as an errcode.InvalidArgument error:
//
//   - Names are DNS labels, each used once.
//   - Underlays are unicast addresses of the family of spec.Underlay,
//     without a zone, each used once and none equal to spec.Underlay.
//   - In WireGuard modes every peer has a PublicKey, the standard base64 of
//     32 bytes, each used once; in other modes none has one.
//   - In BGP mode every peer has an ASN; in other modes none has one.
//   - In layer-3 modes every peer has a masked Range inside spec.Subnet,
//     overlapping no other peer's range nor spec.Local's; in layer-2 modes
//     none has one.
//   - Endpoints (layer-2 modes only) have addresses in spec.Subnet other
//     than spec.Local's, each used once, and 6-byte unicast MACs.
func ValidatePeers(spec *Spec, peers []Peer) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	seen := map[string]bool{}
	underlays := map[netip.Addr]string{}
	keys := map[string]string{}
	endpoints := map[netip.Addr]string{}
	var ranges []ownedRange // layer-3 ranges taken
	if !spec.Mode.vxlan() {
		ranges = append(ranges, ownedRange{spec.Local.Masked(), "this server's range"})
	}
	for _, p := range peers {
		if err := names.Label(p.Name); err != nil {
			return fmt.Errorf("peer name: %w", err)
		}
		if seen[p.Name] {
			return errcode.New(errcode.InvalidArgument, "peer %q is listed twice", p.Name)
		}
		seen[p.Name] = true
		if err := validPeer(spec, &p); err != nil {
			return err
		}
		if other, ok := underlays[p.Underlay]; ok {
			return errcode.New(errcode.InvalidArgument, "peers %q and %q have the same underlay %s", other, p.Name, p.Underlay)
		}
		underlays[p.Underlay] = p.Name
		if other, ok := keys[p.PublicKey]; ok && p.PublicKey != "" {
			return errcode.New(errcode.InvalidArgument, "peers %q and %q have the same public key", other, p.Name)
		}
		keys[p.PublicKey] = p.Name
		if p.Range.IsValid() {
			ranges = append(ranges, ownedRange{p.Range, fmt.Sprintf("peer %q's range", p.Name)})
		}
		for _, e := range p.Endpoints {
			if other, ok := endpoints[e.Address]; ok {
				return errcode.New(errcode.InvalidArgument, "peers %q and %q both list endpoint %s", other, p.Name, e.Address)
			}
			endpoints[e.Address] = p.Name
		}
	}
	return overlapping(ranges)
}

// ownedRange is a layer-3 range and, for messages, whose it is.
type ownedRange struct {
	prefix netip.Prefix
	owner  string
}

// overlapping returns an error naming two of ranges that overlap, if any:
// in O(n log n), since CIDR ranges overlap only by one holding the other,
// so that, sorted by first address (the wider first), any overlap shows
// between neighbours.
func overlapping(ranges []ownedRange) error {
	slices.SortFunc(ranges, func(a, b ownedRange) int {
		if c := a.prefix.Addr().Compare(b.prefix.Addr()); c != 0 {
			return c
		}
		return a.prefix.Bits() - b.prefix.Bits()
	})
	for i := 1; i < len(ranges); i++ {
		if a, b := ranges[i-1], ranges[i]; a.prefix.Overlaps(b.prefix) {
			return errcode.New(errcode.InvalidArgument, "%s %s overlaps %s %s", b.owner, b.prefix, a.owner, a.prefix)
		}
	}
	return nil
}

// validPeer checks what can be checked of p alone against spec.
func validPeer(spec *Spec, p *Peer) error {
	if err := validUnderlay(fmt.Sprintf("peer %q underlay", p.Name), p.Underlay); err != nil {
		return err
	}
	if p.Underlay == spec.Underlay {
		return errcode.New(errcode.InvalidArgument, "peer %q has this server's underlay %s", p.Name, p.Underlay)
	}
	if p.Underlay.Is4() != spec.Underlay.Is4() {
		return errcode.New(errcode.InvalidArgument, "peer %q underlay %s is not of the family of this server's %s", p.Name, p.Underlay, spec.Underlay)
	}
	if err := validKey(fmt.Sprintf("peer %q public key", p.Name), p.PublicKey, spec.Mode.wireGuard(), spec.Mode); err != nil {
		return err
	}
	if (spec.Mode == BGP) != (p.ASN != 0) {
		if spec.Mode == BGP {
			return errcode.New(errcode.InvalidArgument, "peer %q has no ASN", p.Name)
		}
		return errcode.New(errcode.InvalidArgument, "peer %q: ASN is for BGP mode, not %s", p.Name, spec.Mode)
	}
	if spec.Mode.vxlan() {
		if p.Range.IsValid() {
			return errcode.New(errcode.InvalidArgument, "peer %q: a range is for layer-3 modes, not %s", p.Name, spec.Mode)
		}
	} else {
		r := p.Range
		if !r.IsValid() || r != r.Masked() || !spec.Subnet.Contains(r.Addr()) || r.Bits() < spec.Subnet.Bits() {
			return errcode.New(errcode.InvalidArgument, "peer %q range %s is not a masked prefix inside subnet %s", p.Name, r, spec.Subnet)
		}
		if len(p.Endpoints) != 0 {
			return errcode.New(errcode.InvalidArgument, "peer %q: endpoints are for layer-2 modes, not %s", p.Name, spec.Mode)
		}
	}
	for _, e := range p.Endpoints {
		if !spec.Subnet.Contains(e.Address) || e.Address == spec.Local.Addr() {
			return errcode.New(errcode.InvalidArgument, "peer %q endpoint %s is not another address in subnet %s", p.Name, e.Address, spec.Subnet)
		}
		if len(e.MAC) != 6 || e.MAC[0]&1 != 0 {
			return errcode.New(errcode.InvalidArgument, "peer %q endpoint %s MAC %q is not a 6-byte unicast address", p.Name, e.Address, e.MAC)
		}
	}
	return nil
}

// validUnderlay accepts a unicast address without a zone.
func validUnderlay(what string, a netip.Addr) error {
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" || a.Is4In6() {
		return errcode.New(errcode.InvalidArgument, "%s %q is not a unicast IP address without a zone", what, a)
	}
	return nil
}

// validKey accepts the standard base64 of 32 bytes if the mode needs a key,
// and only the empty string if not.
func validKey(what, key string, needed bool, m Mode) error {
	if !needed {
		if key != "" {
			return errcode.New(errcode.InvalidArgument, "%s is for WireGuard modes, not %s", what, m)
		}
		return nil
	}
	if b, err := base64.StdEncoding.Strict().DecodeString(key); len(key) != 44 || err != nil || len(b) != 32 {
		return errcode.New(errcode.InvalidArgument, "%s is not the base64 of 32 bytes", what)
	}
	return nil
}
