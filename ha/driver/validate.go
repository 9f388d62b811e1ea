package driver

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

func invalid(format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, format, args...)
}

const maxNameLen = 32

// ValidName checks a group name: a letter, then letters, digits, '_' and
// '-', at most 32 bytes. Nothing else can appear, so a valid name needs no
// quoting in any configuration language.
func ValidName(what, s string) error {
	if s == "" || len(s) > maxNameLen || !isLetter(s[0]) {
		return invalid("%s %.80q must start with a letter and have 1 to %d bytes", what, s, maxNameLen)
	}
	for _, c := range []byte(s) {
		if !isLetter(c) && !isDigit(c) && c != '_' && c != '-' {
			return invalid("%s %.80q contains %q; use letters, digits, '_' and '-'", what, s, c)
		}
	}
	return nil
}

// ValidProcess checks a tracked process name: 1 to 15 bytes (the kernel's
// command-name length) of letters, digits, '.', '_' and '-'.
func ValidProcess(s string) error {
	if s == "" || len(s) > 15 {
		return invalid("process name %.80q must have 1 to 15 bytes", s)
	}
	for _, c := range []byte(s) {
		if !isLetter(c) && !isDigit(c) && c != '.' && c != '_' && c != '-' {
			return invalid("process name %.80q contains %q; use letters, digits, '.', '_' and '-'", s, c)
		}
	}
	return nil
}

func validUnicast(what string, a netip.Addr) error {
	if !a.IsValid() || !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() ||
		a.IsLinkLocalUnicast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return invalid("%s %v is not a unicast IPv4 address", what, a)
	}
	return nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

// Validate checks everything about c that does not depend on the server:
// errcode.InvalidArgument names the first problem.
func (c *Config) Validate() error {
	if c == nil {
		return invalid("nil config")
	}
	if err := ValidName("group name", c.Name); err != nil {
		return err
	}
	if c.VirtualRouterID < MinVRID || c.VirtualRouterID > MaxVRID {
		return invalid("virtual router ID %d is outside %d..%d", c.VirtualRouterID, MinVRID, MaxVRID)
	}
	if err := names.Interface(c.Interface); err != nil {
		return err
	}
	if c.Priority < MinPriority || c.Priority > MaxPriority {
		return invalid("priority %d is outside %d..%d", c.Priority, MinPriority, MaxPriority)
	}
	if len(c.Addresses) == 0 || len(c.Addresses) > MaxAddresses {
		return invalid("a group needs 1 to %d floating addresses, not %d", MaxAddresses, len(c.Addresses))
	}
	seen := map[netip.Addr]string{}
	for _, a := range c.Addresses {
		if err := validUnicast("floating address", a); err != nil {
			return err
		}
		if seen[a] != "" {
			return invalid("floating address %v is listed twice", a)
		}
		seen[a] = "floating address"
	}
	if err := validUnicast("source address", c.Source); err != nil {
		return err
	}
	if seen[c.Source] != "" {
		return invalid("source address %v is also a %s", c.Source, seen[c.Source])
	}
	seen[c.Source] = "source address"
	if len(c.Peers) == 0 || len(c.Peers) > MaxPeers {
		return invalid("a group needs 1 to %d peers, not %d", MaxPeers, len(c.Peers))
	}
	for _, p := range c.Peers {
		if err := validUnicast("peer address", p); err != nil {
			return err
		}
		if seen[p] != "" {
			return invalid("peer address %v is also a %s", p, seen[p])
		}
		seen[p] = "peer address"
	}
	if c.PreemptDelay < 0 || c.PreemptDelay > MaxPreemptDelay || c.PreemptDelay%time.Second != 0 {
		return invalid("preempt delay %v is not whole seconds in 0..%v", c.PreemptDelay, MaxPreemptDelay)
	}
	if c.AdvertInterval != 0 && (c.AdvertInterval < AdvertResolution || c.AdvertInterval > MaxAdvertInterval || c.AdvertInterval%AdvertResolution != 0) {
		return invalid("advert interval %v is not a multiple of %v in %v..%v", c.AdvertInterval, AdvertResolution, AdvertResolution, MaxAdvertInterval)
	}
	if c.Track.Process != "" {
		if err := ValidProcess(c.Track.Process); err != nil {
			return err
		}
	}
	return nil
}

// Normalized returns a copy of c with defaults filled in and lists sorted;
// two configs are equal (Equal) if their normalized forms are.
func (c *Config) Normalized() *Config {
	n := *c
	n.Addresses = slices.Clone(c.Addresses)
	slices.SortFunc(n.Addresses, netip.Addr.Compare)
	n.Peers = slices.Clone(c.Peers)
	slices.SortFunc(n.Peers, netip.Addr.Compare)
	if n.AdvertInterval == 0 {
		n.AdvertInterval = DefaultAdvertInterval
	}
	if n.NoPreempt {
		n.PreemptDelay = 0
	}
	return &n
}

// Equal reports whether a and b describe the same configuration.
func Equal(a, b *Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	return reflect.DeepEqual(a.Normalized(), b.Normalized())
}

// CheckCapabilities returns errcode.Unimplemented if c needs a feature caps
// lacks.
func CheckCapabilities(c *Config, caps Capabilities) error {
	switch {
	case c.AdvertInterval != 0 && c.AdvertInterval < time.Second && !caps.SubSecondAdvert:
		return errcode.New(errcode.Unimplemented, "the driver has no sub-second advert interval (%v)", c.AdvertInterval)
	case c.Track.Process != "" && !caps.TrackProcess:
		return errcode.New(errcode.Unimplemented, "the driver cannot track a process")
	case c.Track.TCPPort != 0 && !caps.TrackTCP:
		return errcode.New(errcode.Unimplemented, "the driver cannot track a TCP port")
	}
	return nil
}

// Placement maps each floating address of c to the prefix it gets on the
// interface, given the interface's addresses ifAddrs (as prefixes, e.g.
// 198.18.0.1/24). Addresses of c present in ifAddrs (held now) do not
// count as networks. errcode.InvalidArgument if a floating address lies
// outside every network of the interface, or if Source is not one of its
// addresses.
func Placement(c *Config, ifAddrs []netip.Prefix) (map[netip.Addr]netip.Prefix, error) {
	var nets []netip.Prefix
	hasSource := false
	for _, p := range ifAddrs {
		if slices.Contains(c.Addresses, p.Addr()) {
			continue
		}
		if p.Addr() == c.Source {
			hasSource = true
		}
		nets = append(nets, p)
	}
	if !hasSource {
		return nil, invalid("source address %v is not an address of interface %q", c.Source, c.Interface)
	}
	out := map[netip.Addr]netip.Prefix{}
	for _, a := range c.Addresses {
		for _, n := range nets {
			if n.Masked().Contains(a) && a != n.Masked().Addr() && !isBroadcast(n, a) {
				out[a] = netip.PrefixFrom(a, n.Bits())
				break
			}
		}
		if _, ok := out[a]; !ok {
			return nil, invalid("floating address %v lies outside the networks of interface %q (%v)", a, c.Interface, nets)
		}
	}
	return out, nil
}

func isBroadcast(n netip.Prefix, a netip.Addr) bool {
	if n.Bits() >= 31 {
		return false
	}
	b := n.Masked().Addr().As4()
	host := uint32(1)<<(32-n.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return a == netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// String is a short description for logs.
func (c *Config) String() string {
	return fmt.Sprintf("group %s vrid %d on %s %v prio %d", c.Name, c.VirtualRouterID, c.Interface, c.Addresses, c.Priority)
}
