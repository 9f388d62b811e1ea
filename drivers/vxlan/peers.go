package vxlan

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// zeroMAC is the FDB key of the head-end replication entries.
const zeroMAC = "00:00:00:00:00:00"

// fdbEntry is a unicast forwarding entry of a VXLAN device: frames to MAC
// go to the VTEP dst.
type fdbEntry struct {
	mac string // net.HardwareAddr.String()
	dst netip.Addr
}

// fdb dumps the permanent unicast entries (self, with a destination) of vx.
func (d *Driver) fdb(vx netlink.Link) ([]fdbEntry, error) {
	ns, err := d.h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, kernelErr("dumping the FDB of "+vx.Attrs().Name, err)
	}
	var out []fdbEntry
	for _, n := range ns {
		dst, ok := netip.AddrFromSlice(n.IP)
		if n.Flags&netlink.NTF_SELF == 0 || n.State&netlink.NUD_PERMANENT == 0 || !ok || len(n.HardwareAddr) != 6 {
			continue
		}
		out = append(out, fdbEntry{mac: n.HardwareAddr.String(), dst: dst.Unmap()})
	}
	return out, nil
}

func (d *Driver) fdbNeigh(vx netlink.Link, e fdbEntry) *netlink.Neigh {
	mac, _ := net.ParseMAC(e.mac)
	return &netlink.Neigh{
		LinkIndex:    vx.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT | netlink.NUD_NOARP,
		Flags:        netlink.NTF_SELF,
		IP:           e.dst.AsSlice(),
		HardwareAddr: mac,
	}
}

// addFDB adds e: appended for the all-zeros MAC (one entry per peer),
// replacing for an endpoint's MAC (one destination per MAC).
func (d *Driver) addFDB(vx netlink.Link, e fdbEntry) error {
	var err error
	if e.mac == zeroMAC {
		err = d.h.NeighAppend(d.fdbNeigh(vx, e))
	} else {
		err = d.h.NeighSet(d.fdbNeigh(vx, e))
	}
	if err != nil {
		return kernelErr("adding FDB entry "+e.mac+" dst "+e.dst.String()+" to "+vx.Attrs().Name, err)
	}
	return nil
}

func (d *Driver) delFDB(vx netlink.Link, e fdbEntry) error {
	if err := d.h.NeighDel(d.fdbNeigh(vx, e)); err != nil {
		return kernelErr("deleting FDB entry "+e.mac+" dst "+e.dst.String()+" from "+vx.Attrs().Name, err)
	}
	return nil
}

// arp dumps the permanent neighbours of the bridge: address -> MAC.
func (d *Driver) arp(br netlink.Link) (map[netip.Addr]string, error) {
	out := map[netip.Addr]string{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := d.h.NeighList(br.Attrs().Index, fam)
		if err != nil {
			return nil, kernelErr("dumping the neighbours of "+br.Attrs().Name, err)
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if n.State&netlink.NUD_PERMANENT == 0 || !ok || len(n.HardwareAddr) != 6 {
				continue
			}
			out[a.Unmap()] = n.HardwareAddr.String()
		}
	}
	return out, nil
}

func (d *Driver) setARP(br netlink.Link, a netip.Addr, mac string) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: hw}
	if err := d.h.NeighSet(n); err != nil {
		return kernelErr("setting neighbour "+a.String()+" on "+br.Attrs().Name, err)
	}
	return nil
}

func (d *Driver) delARP(br netlink.Link, a netip.Addr) error {
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, IP: a.AsSlice()}
	if err := d.h.NeighDel(n); err != nil {
		return kernelErr("deleting neighbour "+a.String()+" from "+br.Attrs().Name, err)
	}
	return nil
}

// peers reconstructs the peers of n from its FDB and neighbours. Names are
// the underlay addresses; the caller substitutes the names it knows.
func (d *Driver) peers(n network) ([]driver.Peer, error) {
	entries, err := d.fdb(n.vx)
	if err != nil {
		return nil, err
	}
	arp, err := d.arp(n.br)
	if err != nil {
		return nil, err
	}
	byMAC := map[string][]netip.Addr{}
	for a, mac := range arp {
		byMAC[mac] = append(byMAC[mac], a)
	}
	idx := map[netip.Addr]int{}
	var out []driver.Peer
	for _, e := range entries {
		if e.mac == zeroMAC {
			if _, ok := idx[e.dst]; !ok {
				idx[e.dst] = len(out)
				out = append(out, driver.Peer{Name: e.dst.String(), Underlay: e.dst})
			}
		}
	}
	for _, e := range entries {
		i, ok := idx[e.dst]
		if e.mac == zeroMAC || !ok {
			continue
		}
		mac, _ := net.ParseMAC(e.mac)
		for _, a := range byMAC[e.mac] {
			out[i].Endpoints = append(out[i].Endpoints, driver.Endpoint{Address: a, MAC: mac})
		}
	}
	for i := range out {
		slices.SortFunc(out[i].Endpoints, func(a, b driver.Endpoint) int { return a.Address.Compare(b.Address) })
	}
	return out, nil
}

// checkPeers validates peers against spec, on top of driver.ValidatePeers.
func checkPeers(spec *driver.Spec, peers []driver.Peer) error {
	bad := func(format string, args ...any) error {
		return errcode.New(errcode.InvalidArgument, "vxlan: network "+spec.ID+": "+format, args...)
	}
	seen := map[string]bool{}
	underlays := map[netip.Addr]bool{}
	macs := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	for _, p := range peers {
		u := p.Underlay
		switch {
		case names.Label(p.Name) != nil:
			return bad("peer name %q is not a DNS label", p.Name)
		case seen[p.Name]:
			return bad("duplicate peer %s", p.Name)
		case !u.IsValid() || u.IsUnspecified() || u.IsMulticast() || u.Zone() != "":
			return bad("peer %s: bad underlay address %v", p.Name, u)
		case u.Is4() != spec.Underlay.Is4():
			return bad("peer %s: underlay %v is not of the family of %v", p.Name, u, spec.Underlay)
		case u == spec.Underlay:
			return bad("peer %s: underlay %v is this server's", p.Name, u)
		case underlays[u]:
			return bad("peer %s: underlay %v used by another peer", p.Name, u)
		}
		seen[p.Name], underlays[u] = true, true
		for _, ep := range p.Endpoints {
			a := ep.Address
			switch {
			case !a.IsValid() || !spec.Subnet.Contains(a) || a == spec.Local.Addr():
				return bad("peer %s: endpoint address %v is not a free address of %v", p.Name, a, spec.Subnet)
			case len(ep.MAC) != 6 || ep.MAC[0]&1 != 0 || ep.MAC.String() == zeroMAC:
				return bad("peer %s: endpoint %v: bad MAC %v (want a unicast Ethernet address)", p.Name, a, ep.MAC)
			case addrs[a]:
				return bad("peer %s: endpoint address %v listed twice", p.Name, a)
			case macs[ep.MAC.String()]:
				return bad("peer %s: endpoint MAC %v listed twice", p.Name, ep.MAC)
			}
			addrs[a], macs[ep.MAC.String()] = true, true
		}
	}
	return nil
}

// SetPeers makes network id's forwarding entries and neighbours exactly
// those of peers (see the package doc). On error it restores the previous
// entries.
func (d *Driver) SetPeers(ctx context.Context, id string, peers []driver.Peer) error {
	n, unlock, err := d.lockNetwork(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if n.br == nil || n.vx == nil {
		return errcode.New(errcode.NotFound, "vxlan: network %s not found", id)
	}
	st, err := d.status(n)
	if err != nil {
		return err
	}
	if err := driver.ValidatePeers(&st.Spec, peers); err != nil {
		return err
	}
	if err := checkPeers(&st.Spec, peers); err != nil {
		return err
	}
	wantF := map[fdbEntry]bool{}
	wantA := map[netip.Addr]string{}
	for _, p := range peers {
		wantF[fdbEntry{mac: zeroMAC, dst: p.Underlay}] = true
		for _, ep := range p.Endpoints {
			wantF[fdbEntry{mac: ep.MAC.String(), dst: p.Underlay}] = true
			wantA[ep.Address] = ep.MAC.String()
		}
	}
	curF, curA, err := d.entries(n)
	if err != nil {
		return err
	}
	if err := d.sync(ctx, n, curF, curA, wantF, wantA); err != nil {
		if nowF, nowA, derr := d.entries(n); derr != nil {
			err = errors.Join(err, derr)
		} else if rerr := d.sync(context.Background(), n, nowF, nowA, curF, curA); rerr != nil {
			err = errors.Join(err, rerr)
		}
		d.log.Warn("vxlan: setting peers failed", "network", id, "err", err)
		return err
	}
	names := map[netip.Addr]string{}
	for _, p := range peers {
		names[p.Underlay] = p.Name
	}
	d.names[id] = names
	if !maps.Equal(curF, wantF) || !maps.Equal(curA, wantA) {
		d.log.Info("vxlan: peers set", "network", id, "peers", len(peers), "fdb", len(wantF), "neighbours", len(wantA))
	}
	return nil
}

func (d *Driver) entries(n network) (map[fdbEntry]bool, map[netip.Addr]string, error) {
	list, err := d.fdb(n.vx)
	if err != nil {
		return nil, nil, err
	}
	f := map[fdbEntry]bool{}
	for _, e := range list {
		f[e] = true
	}
	a, err := d.arp(n.br)
	if err != nil {
		return nil, nil, err
	}
	return f, a, nil
}

// sync turns the entries cur into want: deletions first, then additions, so
// that an endpoint moving between peers never has two destinations.
func (d *Driver) sync(ctx context.Context, n network, curF map[fdbEntry]bool, curA map[netip.Addr]string, wantF map[fdbEntry]bool, wantA map[netip.Addr]string) error {
	for _, e := range sortedEntries(curF) {
		if !wantF[e] {
			if err := d.delFDB(n.vx, e); err != nil {
				return err
			}
		}
	}
	for _, a := range sortedAddrs(curA) {
		if _, ok := wantA[a]; !ok {
			if err := d.delARP(n.br, a); err != nil {
				return err
			}
		}
	}
	for i, e := range sortedEntries(wantF) {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if !curF[e] {
			if err := d.addFDB(n.vx, e); err != nil {
				return err
			}
		}
	}
	for _, a := range sortedAddrs(wantA) {
		if curA[a] != wantA[a] {
			if err := d.setARP(n.br, a, wantA[a]); err != nil {
				return err
			}
		}
	}
	return nil
}

func sortedEntries(m map[fdbEntry]bool) []fdbEntry {
	out := slices.Collect(maps.Keys(m))
	slices.SortFunc(out, func(a, b fdbEntry) int {
		if c := strings.Compare(a.mac, b.mac); c != 0 {
			return c
		}
		return a.dst.Compare(b.dst)
	})
	return out
}

func sortedAddrs(m map[netip.Addr]string) []netip.Addr {
	return slices.SortedFunc(maps.Keys(m), netip.Addr.Compare)
}
