package drivertest

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/testhost"
)

// State is what a network driver may change in a server's network
// namespace, as RunKernelTests compares it before and after a call.
type State struct {
	// Lines describe, sorted, one thing each: a link (name, type, master,
	// MTU, up or down, alias), an address (except IPv6 link-local ones), a
	// route of any table but the local one (except IPv6 link-local and
	// multicast routes, which IPv6 autoconfiguration adds on its own), a
	// static forwarding entry (one with a tunnel destination, or static on a
	// MAC that is no link's own: not the entries the kernel makes for its
	// ports or learns from traffic) and a permanent neighbour. Links are
	// named by name, so a link made again under its name reads the same;
	// Index tells them apart.
	Lines []string
	// Index is each link's index, by name.
	Index map[string]int
}

// Snapshot returns the State of host's namespace.
func Snapshot(t testing.TB, host *testhost.Host) *State {
	t.Helper()
	nh, err := host.Handle()
	if err != nil {
		t.Fatalf("drivertest: netlink in %s: %v", host.Name, err)
	}
	defer nh.Close()
	s, err := snapshot(nh)
	if err != nil {
		t.Fatalf("drivertest: reading the state of %s: %v", host.Name, err)
	}
	return s
}

func snapshot(nh *netlink.Handle) (*State, error) {
	links, err := nh.LinkList()
	if err != nil {
		return nil, fmt.Errorf("links: %w", err)
	}
	s := &State{Index: map[string]int{}}
	name := map[int]string{}
	var own [][]byte // the links' own MACs
	for _, l := range links {
		a := l.Attrs()
		name[a.Index] = a.Name
		s.Index[a.Name] = a.Index
		if len(a.HardwareAddr) > 0 {
			own = append(own, a.HardwareAddr)
		}
	}
	dev := func(i int) string {
		if n, ok := name[i]; ok {
			return n
		}
		if i == 0 {
			return "-"
		}
		return fmt.Sprintf("#%d", i)
	}
	add := func(format string, args ...any) { s.Lines = append(s.Lines, fmt.Sprintf(format, args...)) }
	for _, l := range links {
		a := l.Attrs()
		add("link %s type %s master %s mtu %d up %v alias %q", a.Name, l.Type(), dev(a.MasterIndex), a.MTU, a.Flags&net.FlagUp != 0, a.Alias)
		addrs, err := nh.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if !ad.IP.IsLinkLocalUnicast() {
				add("addr %s %s", a.Name, ad.IPNet)
			}
		}
	}
	routes, err := nh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	for _, r := range routes {
		if r.Table == unix.RT_TABLE_LOCAL || r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast()) {
			continue
		}
		dst := "default"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		add("route table %d %s via %s dev %s src %s proto %d scope %d type %d metric %d", r.Table, dst, ipOrDash(r.Gw), dev(r.LinkIndex), ipOrDash(r.Src), r.Protocol, r.Scope, r.Type, r.Priority)
	}
	fdb, err := nh.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("forwarding entries: %w", err)
	}
	for _, n := range fdb {
		static := n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 && len(n.HardwareAddr) > 0 && n.HardwareAddr[0]&1 == 0 &&
			!slices.ContainsFunc(own, func(m []byte) bool { return bytes.Equal(m, n.HardwareAddr) })
		if n.IP != nil || static {
			add("fdb dev %s mac %s dst %s vlan %d master %s", dev(n.LinkIndex), n.HardwareAddr, ipOrDash(n.IP), n.Vlan, dev(n.MasterIndex))
		}
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neigh, err := nh.NeighList(0, family)
		if err != nil {
			return nil, fmt.Errorf("neighbours: %w", err)
		}
		for _, n := range neigh {
			if n.State&netlink.NUD_PERMANENT != 0 {
				add("neigh dev %s %s lladdr %s", dev(n.LinkIndex), n.IP, n.HardwareAddr)
			}
		}
	}
	slices.Sort(s.Lines)
	return s, nil
}

func ipOrDash(ip net.IP) string {
	if ip == nil {
		return "-"
	}
	return ip.String()
}

// Diff describes how o differs from s: the lines only one has, and the
// links of both whose index changed. It is empty if they are equal.
func (s *State) Diff(o *State) string {
	var b strings.Builder
	for _, l := range s.Lines {
		if !slices.Contains(o.Lines, l) {
			fmt.Fprintf(&b, "\n  - %s", l)
		}
	}
	for _, l := range o.Lines {
		if !slices.Contains(s.Lines, l) {
			fmt.Fprintf(&b, "\n  + %s", l)
		}
	}
	for _, n := range sortedKeys(s.Index) {
		if j, ok := o.Index[n]; ok && j != s.Index[n] {
			fmt.Fprintf(&b, "\n  link %s: index %d -> %d", n, s.Index[n], j)
		}
	}
	return b.String()
}

// String lists the state's lines, one per line.
func (s *State) String() string { return strings.Join(s.Lines, "\n") }

// without returns a copy of s without the lines that hold one of tokens as a
// whole word (an address, a prefix, a MAC).
func (s *State) without(tokens ...string) *State {
	c := &State{Index: s.Index}
	for _, l := range s.Lines {
		if !hasToken(l, tokens...) {
			c.Lines = append(c.Lines, l)
		}
	}
	return c
}

func hasToken(line string, tokens ...string) bool {
	for f := range strings.FieldsSeq(line) {
		if slices.Contains(tokens, f) {
			return true
		}
	}
	return false
}

// masked returns a copy of s whose lines have the values of the given
// fields ("mtu", "mac", "lladdr", "alias") replaced by "*", and an empty
// Index: what is left to compare when those may change.
func (s *State) masked(fields ...string) *State {
	c := &State{Index: map[string]int{}}
	for _, l := range s.Lines {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if !slices.Contains(fields, f[i]) {
				continue
			}
			if f[i] == "alias" { // the last field, and it may hold spaces
				f = append(f[:i+1], "*")
				break
			}
			f[i+1] = "*"
		}
		c.Lines = append(c.Lines, strings.Join(f, " "))
	}
	slices.Sort(c.Lines)
	return c
}

func sortedKeys(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
