package vxlan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
	"github.com/vishvananda/netlink"
)

// DefaultPort is the VXLAN UDP port used when Spec.Port is zero (IANA).
const DefaultPort = 4789

const (
	bridgePrefix = "mbr-"
	vxlanPrefix  = "mvx-"
	aliasPrefix  = "muster-vxlan "
	overheadV4   = 50 // outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
	overheadV6   = 70 // outer IPv6 40 + ...
)

var _ driver.Driver = (*Driver)(nil)

// Options configures Open. A nil *Options means the defaults.
type Options struct {
	// Handle is a netlink handle bound to the namespace of the server the
	// driver manages (netlink.NewHandleAt). Every kernel call goes through
	// it. Nil opens a handle in the calling thread's current namespace,
	// which Close closes; a given handle stays the caller's.
	Handle *netlink.Handle
	// Logger receives the driver's log; nil discards it.
	Logger *slog.Logger
	// Over names the tunnel under the networks when another driver layers
	// VXLAN over its own devices (drivers/wireguard sets "wireguard" for
	// mode VXLANOverWireGuard); empty for plain VXLAN. It is recorded in
	// the links' alias: a driver sees only the networks of its own Over,
	// and a network of another is errcode.AlreadyExists to it.
	Over string
}

// Driver is the VXLAN network driver of one server (one network namespace).
// It is safe for concurrent use.
type Driver struct {
	h         *netlink.Handle
	ownHandle bool
	log       *slog.Logger
	over      string

	mu     sync.Mutex
	closed bool
	// names remembers peer names: network ID -> peer underlay -> name.
	names map[string]map[netip.Addr]string
}

// Open returns a driver for the namespace of opts.Handle.
func Open(ctx context.Context, opts *Options) (*Driver, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &Options{}
	}
	if opts.Over != "" {
		if err := names.Label(opts.Over); err != nil {
			return nil, fmt.Errorf("vxlan: Options.Over: %w", err)
		}
	}
	d := &Driver{h: opts.Handle, log: opts.Logger, over: opts.Over, names: map[string]map[netip.Addr]string{}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.h == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, kernelErr("opening a netlink handle", err)
		}
		d.h, d.ownHandle = h, true
	}
	if _, err := d.h.LinkList(); err != nil {
		if d.ownHandle {
			d.h.Close()
		}
		return nil, kernelErr("listing links", err)
	}
	return d, nil
}

// Capabilities reports mode VXLAN, unencrypted.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{Modes: []driver.Mode{driver.VXLAN}}
}

// Close releases the driver's netlink handle if Open made it. Networks stay.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.ownHandle {
		d.h.Close()
	}
	return nil
}

func (d *Driver) checkOpen() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "vxlan: driver is closed")
	}
	return nil
}

// LinkNames returns the names of network id's bridge and VXLAN device, by
// the link scheme of package names.
func LinkNames(id string) (bridge, vxlan string) {
	return names.Link(bridgePrefix, id), names.Link(vxlanPrefix, id)
}

// meta is what the links' alias records: what the kernel's attributes do
// not say about the spec.
type meta struct {
	id   string
	mtu  int    // requested MTU, 0 = derived
	port int    // requested port, 0 = default
	over string // Options.Over
}

func (m meta) String() string {
	s := fmt.Sprintf("%sid=%s mtu=%d port=%d", aliasPrefix, m.id, m.mtu, m.port)
	if m.over != "" {
		s += " over=" + m.over
	}
	return s
}

func parseAlias(alias string) (meta, bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return meta{}, false
	}
	var m meta
	for f := range strings.FieldsSeq(rest) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "id":
			m.id = v
		case "mtu":
			m.mtu, _ = strconv.Atoi(v)
		case "port":
			m.port, _ = strconv.Atoi(v)
		case "over":
			m.over = v
		}
	}
	return m, m.id != ""
}

// network is the kernel state of one network; either link may be nil.
type network struct {
	br *netlink.Bridge
	vx *netlink.Vxlan
}

// lockNetwork checks id and ctx, takes the driver's lock and looks network
// id up; the caller calls unlock when done.
func (d *Driver) lockNetwork(ctx context.Context, id string) (n network, unlock func(), err error) {
	if err := checkID(id); err != nil {
		return n, nil, err
	}
	if err := ctx.Err(); err != nil {
		return n, nil, err
	}
	d.mu.Lock()
	if err := d.checkOpen(); err != nil {
		d.mu.Unlock()
		return n, nil, err
	}
	if n, err = d.lookup(id); err != nil {
		d.mu.Unlock()
		return n, nil, err
	}
	return n, d.mu.Unlock, nil
}

// lookup finds network id's links. A link holding one of the names that is
// not this network's is errcode.AlreadyExists.
func (d *Driver) lookup(id string) (network, error) {
	bn, vn := LinkNames(id)
	var n network
	l, err := d.linkByName(bn)
	if err != nil {
		return n, err
	}
	if l != nil {
		m, ok := parseAlias(l.Attrs().Alias)
		br, isBr := l.(*netlink.Bridge)
		if !ok || m.id != id || m.over != d.over || !isBr {
			return n, errcode.New(errcode.AlreadyExists, "vxlan: link %s exists and is not network %s's bridge", bn, id)
		}
		n.br = br
	}
	l, err = d.linkByName(vn)
	if err != nil {
		return n, err
	}
	if l != nil {
		m, ok := parseAlias(l.Attrs().Alias)
		vx, isVx := l.(*netlink.Vxlan)
		if !ok || m.id != id || m.over != d.over || !isVx {
			return n, errcode.New(errcode.AlreadyExists, "vxlan: link %s exists and is not network %s's VXLAN device", vn, id)
		}
		n.vx = vx
	}
	return n, nil
}

func (d *Driver) linkByName(name string) (netlink.Link, error) {
	l, err := d.h.LinkByName(name)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) || errors.Is(err, syscall.ENODEV) {
			return nil, nil
		}
		return nil, kernelErr("finding link "+name, err)
	}
	return l, nil
}

// checkSpec validates spec for this driver, on top of spec.Validate.
func checkSpec(spec *driver.Spec) error {
	if spec == nil {
		return errcode.New(errcode.InvalidArgument, "vxlan: nil spec")
	}
	if err := spec.Validate(); err != nil {
		return err
	}
	if spec.Mode != driver.VXLAN {
		return errcode.New(errcode.Unimplemented, "vxlan: network %s: mode %q is not supported by this driver (want %q)", spec.ID, spec.Mode, driver.VXLAN)
	}
	if spec.VNI < 1 || spec.VNI >= 1<<24 {
		return errcode.New(errcode.InvalidArgument, "vxlan: network %s: VNI %d out of range 1..16777215", spec.ID, spec.VNI)
	}
	if !spec.Underlay.IsValid() || spec.Underlay.IsUnspecified() || spec.Underlay.IsMulticast() || spec.Underlay.Zone() != "" {
		return errcode.New(errcode.InvalidArgument, "vxlan: network %s: bad underlay address %v", spec.ID, spec.Underlay)
	}
	if !spec.Subnet.IsValid() || !spec.Local.IsValid() || spec.Local.Bits() != spec.Subnet.Bits() ||
		!spec.Subnet.Contains(spec.Local.Addr()) || spec.Subnet.Masked() != spec.Subnet {
		return errcode.New(errcode.InvalidArgument, "vxlan: network %s: local %v is not an address of subnet %v with its length", spec.ID, spec.Local, spec.Subnet)
	}
	if spec.MTU != 0 && (spec.MTU < minMTU(spec) || spec.MTU > 65535) {
		return errcode.New(errcode.InvalidArgument, "vxlan: network %s: MTU %d out of range %d..65535", spec.ID, spec.MTU, minMTU(spec))
	}
	return nil
}

// minMTU is the smallest MTU of a network: 576 (as Spec.Validate), or
// IPv6's 1280 for an IPv6 subnet.
func minMTU(spec *driver.Spec) int {
	if spec.Subnet.Addr().Is4() {
		return 576
	}
	return 1280
}

func port(spec *driver.Spec) int {
	if spec.Port == 0 {
		return DefaultPort
	}
	return int(spec.Port)
}

// underlayLink returns the link holding address a.
func (d *Driver) underlayLink(a netip.Addr) (netlink.Link, error) {
	family := netlink.FAMILY_V4
	if !a.Is4() {
		family = netlink.FAMILY_V6
	}
	addrs, err := d.h.AddrList(nil, family)
	if err != nil {
		return nil, kernelErr("listing addresses", err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == a {
			l, err := d.h.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return nil, kernelErr("finding the underlay link", err)
			}
			return l, nil
		}
	}
	return nil, errcode.New(errcode.FailedPrecondition, "vxlan: no link of this server holds underlay address %v", a)
}

// EnsureNetwork creates or repairs network spec.ID (see the package doc).
func (d *Driver) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	n, err := d.lookup(spec.ID)
	if err != nil {
		return nil, err
	}
	ul, err := d.underlayLink(spec.Underlay)
	if err != nil {
		return nil, err
	}
	over := overheadV4
	if !spec.Underlay.Is4() {
		over = overheadV6
	}
	limit := ul.Attrs().MTU - over
	mtu := spec.MTU
	if mtu == 0 {
		mtu = limit
		if mtu < minMTU(spec) {
			return nil, errcode.New(errcode.FailedPrecondition, "vxlan: network %s: underlay link %s's MTU %d leaves %d for the network, below %d",
				spec.ID, ul.Attrs().Name, ul.Attrs().MTU, mtu, minMTU(spec))
		}
	} else if mtu > limit {
		return nil, errcode.New(errcode.FailedPrecondition, "vxlan: network %s: MTU %d does not fit: underlay link %s's MTU %d leaves %d",
			spec.ID, mtu, ul.Attrs().Name, ul.Attrs().MTU, limit)
	}
	// What cannot change in place.
	if n.vx != nil && uint32(n.vx.VxlanId) != spec.VNI {
		return nil, errcode.New(errcode.FailedPrecondition, "vxlan: network %s has VNI %d, not %d; delete it first", spec.ID, n.vx.VxlanId, spec.VNI)
	}
	var addrs []netlink.Addr
	if n.br != nil {
		if addrs, err = d.bridgeAddrs(n.br); err != nil {
			return nil, err
		}
		for _, a := range addrs {
			if p := prefixOf(a); p.Masked() != spec.Subnet {
				return nil, errcode.New(errcode.FailedPrecondition, "vxlan: network %s has subnet %v, not %v; delete it first", spec.ID, p.Masked(), spec.Subnet)
			}
		}
	}

	m := meta{id: spec.ID, mtu: spec.MTU, port: int(spec.Port), over: d.over}
	bn, vn := LinkNames(spec.ID)
	var created []netlink.Link
	fail := func(err error) (*driver.Status, error) {
		for i := len(created) - 1; i >= 0; i-- {
			if derr := d.h.LinkDel(created[i]); derr != nil {
				err = errors.Join(err, kernelErr("rolling back "+created[i].Attrs().Name, derr))
			}
		}
		d.log.Warn("vxlan: ensuring network failed", "network", spec.ID, "err", err)
		return nil, err
	}
	changed := false

	if n.br == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bn, MTU: mtu}}
		if err := d.h.LinkAdd(br); err != nil {
			return fail(kernelErr("adding bridge "+bn, err))
		}
		created = append(created, br)
		l, err := d.h.LinkByName(bn)
		if err != nil {
			return fail(kernelErr("finding bridge "+bn, err))
		}
		n.br = l.(*netlink.Bridge)
		changed = true
	}
	if n.vx != nil && !vxlanMatches(n.vx, spec) {
		// Underlay address, port or flags differ: recreate the device,
		// keeping its forwarding entries.
		if err := d.recreateVxlan(&n, spec, mtu); err != nil {
			return fail(err)
		}
		changed = true
	}
	if n.vx == nil {
		vx := newVxlan(vn, spec, mtu)
		if err := d.h.LinkAdd(vx); err != nil {
			return fail(kernelErr("adding VXLAN device "+vn, err))
		}
		created = append(created, vx)
		l, err := d.h.LinkByName(vn)
		if err != nil {
			return fail(kernelErr("finding VXLAN device "+vn, err))
		}
		n.vx = l.(*netlink.Vxlan)
		changed = true
	}
	for _, l := range []netlink.Link{n.vx, n.br} {
		a := l.Attrs()
		if a.Alias != m.String() {
			if err := d.h.LinkSetAlias(l, m.String()); err != nil {
				return fail(kernelErr("setting the alias of "+a.Name, err))
			}
			changed = true
		}
		if a.MTU != mtu {
			if err := d.h.LinkSetMTU(l, mtu); err != nil {
				return fail(kernelErr("setting the MTU of "+a.Name, err))
			}
			changed = true
		}
	}
	if n.vx.MasterIndex != n.br.Index {
		if err := d.h.LinkSetMasterByIndex(n.vx, n.br.Index); err != nil {
			return fail(kernelErr("attaching "+vn+" to "+bn, err))
		}
		changed = true
	}
	// The bridge's address: exactly spec.Local. Removing the bridge's last
	// address flushes its neighbours, the endpoints' entries among them:
	// they are put back.
	if len(addrs) != 1 || prefixOf(addrs[0]) != spec.Local {
		neigh, err := d.arp(n.br)
		if err != nil {
			return fail(err)
		}
		for _, a := range addrs {
			if err := d.h.AddrDel(n.br, &a); err != nil {
				return fail(kernelErr("removing address "+prefixOf(a).String()+" from "+bn, err))
			}
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: spec.Local.Addr().AsSlice(), Mask: net.CIDRMask(spec.Local.Bits(), spec.Local.Addr().BitLen())}}
		if err := d.h.AddrAdd(n.br, a); err != nil {
			return fail(kernelErr("adding address "+spec.Local.String()+" to "+bn, err))
		}
		for ip, mac := range neigh {
			if ip != spec.Local.Addr() {
				if err := d.setARP(n.br, ip, mac); err != nil {
					return fail(err)
				}
			}
		}
		changed = true
	}
	for _, l := range []netlink.Link{n.vx, n.br} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := d.h.LinkSetUp(l); err != nil {
				return fail(kernelErr("bringing up "+l.Attrs().Name, err))
			}
			changed = true
		}
	}
	if changed {
		d.log.Info("vxlan: network ensured", "network", spec.ID, "bridge", bn, "vxlan", vn, "vni", spec.VNI, "mtu", mtu)
	}
	if n, err = d.lookup(spec.ID); err != nil {
		return nil, err
	}
	return d.status(n)
}

func newVxlan(name string, spec *driver.Spec, mtu int) *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu},
		VxlanId:   int(spec.VNI),
		SrcAddr:   spec.Underlay.AsSlice(),
		Learning:  false,
		Port:      port(spec),
	}
}

// vxlanMatches reports whether vx has spec's underlay address and port,
// learning off and no group.
func vxlanMatches(vx *netlink.Vxlan, spec *driver.Spec) bool {
	src, _ := netip.AddrFromSlice(vx.SrcAddr)
	return src.Unmap() == spec.Underlay && vx.Port == port(spec) && !vx.Learning &&
		(len(vx.Group) == 0 || vx.Group.IsUnspecified()) && !vx.FlowBased
}

// recreateVxlan replaces n.vx with a device as spec says, copying its
// unicast forwarding entries.
func (d *Driver) recreateVxlan(n *network, spec *driver.Spec, mtu int) error {
	entries, err := d.fdb(n.vx)
	if err != nil {
		return err
	}
	// The bridge loses its neighbours when its last port goes.
	neigh, err := d.arp(n.br)
	if err != nil {
		return err
	}
	if err := d.h.LinkDel(n.vx); err != nil {
		return kernelErr("deleting "+n.vx.Name, err)
	}
	vx := newVxlan(n.vx.Name, spec, mtu)
	vx.MasterIndex = n.br.Index
	n.vx = nil
	if err := d.h.LinkAdd(vx); err != nil {
		return kernelErr("adding VXLAN device "+vx.Name, err)
	}
	l, err := d.h.LinkByName(vx.Name)
	if err != nil {
		return kernelErr("finding VXLAN device "+vx.Name, err)
	}
	n.vx = l.(*netlink.Vxlan)
	for _, e := range entries {
		if err := d.addFDB(n.vx, e); err != nil {
			return err
		}
	}
	for ip, mac := range neigh {
		if err := d.setARP(n.br, ip, mac); err != nil {
			return err
		}
	}
	return nil
}

// bridgeAddrs returns the bridge's addresses except IPv6 link-local ones.
func (d *Driver) bridgeAddrs(br netlink.Link) ([]netlink.Addr, error) {
	all, err := d.h.AddrList(br, netlink.FAMILY_ALL)
	if err != nil {
		return nil, kernelErr("listing the addresses of "+br.Attrs().Name, err)
	}
	var out []netlink.Addr
	for _, a := range all {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

func prefixOf(a netlink.Addr) netip.Prefix {
	ip, _ := netip.AddrFromSlice(a.IP)
	ip = ip.Unmap()
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip, ones)
}

// DeleteNetwork removes network id's VXLAN device (with its forwarding
// entries) and bridge (with its neighbours). errcode.NotFound if neither
// exists.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	n, unlock, err := d.lockNetwork(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if n.br == nil && n.vx == nil {
		return errcode.New(errcode.NotFound, "vxlan: network %s not found", id)
	}
	if n.vx != nil {
		if err := d.h.LinkDel(n.vx); err != nil {
			return kernelErr("deleting "+n.vx.Name, err)
		}
	}
	if n.br != nil {
		if err := d.h.LinkDel(n.br); err != nil {
			return kernelErr("deleting "+n.br.Name, err)
		}
	}
	delete(d.names, id)
	d.log.Info("vxlan: network deleted", "network", id)
	return nil
}

// checkID validates a network ID as Spec.Validate does.
func checkID(id string) error {
	if err := names.Label(id); err != nil {
		return fmt.Errorf("vxlan: network ID: %w", err)
	}
	return nil
}

// Networks returns the state of every network of this driver in the
// namespace, sorted by ID.
func (d *Driver) Networks(ctx context.Context) ([]*driver.Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	links, err := d.h.LinkList()
	if err != nil {
		return nil, kernelErr("listing links", err)
	}
	var out []*driver.Status
	for _, l := range links {
		br, ok := l.(*netlink.Bridge)
		if !ok {
			continue
		}
		m, ok := parseAlias(br.Alias)
		if !ok || m.over != d.over {
			continue
		}
		if bn, _ := LinkNames(m.id); bn != br.Name {
			continue
		}
		n, err := d.lookup(m.id)
		if err != nil {
			return nil, err
		}
		st, err := d.status(n)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *driver.Status) int { return strings.Compare(a.Spec.ID, b.Spec.ID) })
	return out, nil
}

// status derives a network's Status from the kernel.
func (d *Driver) status(n network) (*driver.Status, error) {
	if n.br == nil {
		return nil, errcode.New(errcode.Internal, "vxlan: network has no bridge")
	}
	m, _ := parseAlias(n.br.Alias)
	st := &driver.Status{
		Spec:   driver.Spec{ID: m.id, Mode: driver.VXLAN, Port: uint16(m.port), MTU: m.mtu},
		Bridge: n.br.Name,
		MTU:    n.br.MTU,
	}
	addrs, err := d.bridgeAddrs(n.br)
	if err != nil {
		return nil, err
	}
	if len(addrs) > 0 {
		st.Spec.Local = prefixOf(addrs[0])
		st.Spec.Subnet = st.Spec.Local.Masked()
	}
	if n.vx == nil {
		return st, nil
	}
	st.MTU = n.vx.MTU
	st.Spec.VNI = uint32(n.vx.VxlanId)
	st.Spec.Underlay, _ = netip.AddrFromSlice(n.vx.SrcAddr)
	st.Spec.Underlay = st.Spec.Underlay.Unmap()
	peers, err := d.peers(n)
	if err != nil {
		return nil, err
	}
	names := d.names[m.id]
	for i := range peers {
		if name, ok := names[peers[i].Underlay]; ok {
			peers[i].Name = name
		}
	}
	slices.SortFunc(peers, func(a, b driver.Peer) int { return strings.Compare(a.Name, b.Name) })
	st.Peers = peers
	return st, nil
}

// kernelErr gives a netlink error its code, by errcode's errno table.
func kernelErr(op string, err error) error { return errcode.Syscall(err, "vxlan: %s", op) }
