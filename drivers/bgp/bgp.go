package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// DefaultPort is the BGP TCP port used when Spec.Port is zero.
	DefaultPort = 179
	// DefaultHoldTime is the hold time used when Spec.HoldTime is zero.
	DefaultHoldTime = 90 * time.Second
	// RouteProtocol is the protocol of the kernel routes the driver
	// installs ("bgp" in iproute2's rt_protos). Routes of other protocols
	// are never touched.
	RouteProtocol netlink.RouteProtocol = 186

	bridgePrefix = "mbg-"
	// aliasPrefix starts the alias of every bridge the driver makes,
	// followed by the network's ID: a bridge without it is not adopted.
	aliasPrefix = "muster-bgp id="
	// resyncInterval is how often the kernel routes are compared with the
	// speakers' tables even when no event says they changed.
	resyncInterval = 2 * time.Second
)

var _ driver.Driver = (*Driver)(nil)

// Options configures Open. A nil *Options means the defaults.
type Options struct {
	// Handle is a netlink handle of the server's namespace, the one the
	// process runs in (see the package doc). Nil opens one, which Close
	// closes; a given handle stays the caller's.
	Handle *netlink.Handle
	// Logger receives the driver's and the speakers' log; nil discards it.
	Logger *slog.Logger
}

// Driver is the BGP network driver of one server. It is safe for
// concurrent use.
type Driver struct {
	h         *netlink.Handle
	ownHandle bool
	log       *slog.Logger

	kick chan struct{} // a speaker's table or sessions changed
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the resync loop ends

	mu       sync.Mutex
	closed   bool
	networks map[string]*network // by ID
	idle     []*speaker          // stopped speakers to reuse
}

// network is one network's state on this server.
type network struct {
	spec  driver.Spec
	mtu   int
	peers []driver.Peer // sorted by name
	sp    *speaker
}

// Open returns a driver for the server whose namespace the process runs
// in. It removes every route of RouteProtocol from the main table, the
// leftovers of an earlier driver.
func Open(ctx context.Context, opts *Options) (*Driver, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &Options{}
	}
	d := &Driver{
		h: opts.Handle, log: opts.Logger,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		networks: map[string]*network{},
	}
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
	d.mu.Lock()
	err := d.syncRoutesLocked(ctx)
	d.mu.Unlock()
	if err != nil {
		if d.ownHandle {
			d.h.Close()
		}
		return nil, err
	}
	go d.resync()
	return d, nil
}

// resync installs and removes routes as the speakers learn and lose them.
func (d *Driver) resync() {
	defer close(d.done)
	t := time.NewTicker(resyncInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-d.kick:
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		d.mu.Lock()
		if !d.closed {
			if err := d.syncRoutesLocked(ctx); err != nil {
				d.log.Warn("bgp: syncing kernel routes", "err", err)
			}
		}
		d.mu.Unlock()
		cancel()
	}
}

// changed asks the resync loop to run soon. It never blocks.
func (d *Driver) changed() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// EnsureNetwork implements driver.Driver. Other modes than driver.BGP, and
// IPv6 underlays or ranges, are errcode.Unimplemented. The network's MTU is
// Spec.MTU, or if that is 0 the MTU of the underlay's link; an MTU above
// the underlay's is errcode.FailedPrecondition, and so is an underlay
// address that no link holds, a port another network of this server
// listens on, a subnet change and a spec that clashes with the peers in
// place. Changing the BGP options or Local restarts the network's speaker
// (its sessions start again); changing the MTU does not.
func (d *Driver) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Mode != driver.BGP {
		return nil, errcode.New(errcode.Unimplemented, "the bgp driver supports mode %s only, not %s", driver.BGP, spec.Mode)
	}
	if !spec.Underlay.Is4() || !spec.Local.Addr().Is4() {
		return nil, errcode.New(errcode.Unimplemented, "the bgp driver carries IPv4 only (underlay %s, local %s)", spec.Underlay, spec.Local)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	n := d.networks[spec.ID]
	if n != nil {
		if n.spec.Subnet != spec.Subnet {
			return nil, errcode.New(errcode.FailedPrecondition, "network %q has subnet %s; delete it to change its subnet", spec.ID, n.spec.Subnet)
		}
		if err := driver.ValidatePeers(spec, n.peers); err != nil {
			return nil, errcode.New(errcode.FailedPrecondition, "network %q: the spec clashes with the peers in place (set the peers first): %w", spec.ID, err)
		}
	}
	for id, o := range d.networks {
		if id != spec.ID && port(&o.spec) == port(spec) && o.spec.Underlay == spec.Underlay {
			return nil, errcode.New(errcode.FailedPrecondition, "network %q already listens on %s port %d", id, spec.Underlay, port(spec))
		}
	}
	limit, err := d.underlayMTU(spec.Underlay)
	if err != nil {
		return nil, err
	}
	mtu := spec.MTU
	if mtu == 0 {
		mtu = limit
	}
	if mtu > limit || mtu < 576 {
		return nil, errcode.New(errcode.FailedPrecondition, "MTU %d does not fit: the underlay's MTU is %d", mtu, limit)
	}

	if spec.Password != "" {
		if err := probeMD5(spec.Underlay); err != nil {
			return nil, err
		}
	}
	created, err := d.ensureBridge(spec, mtu)
	if err != nil {
		return nil, err
	}
	undo := func() {
		if created {
			if err := d.deleteBridge(spec.ID); err != nil {
				d.log.Warn("bgp: rolling back the bridge", "network", spec.ID, "err", err)
			}
		}
	}
	if err := enableForwarding(); err != nil {
		undo()
		return nil, err
	}

	if n == nil || speakerConfig(&n.spec) != speakerConfig(spec) {
		var old *driver.Spec
		var peers []driver.Peer
		if n != nil {
			old, peers = &n.spec, n.peers
			d.stopSpeaker(n.sp)
			n.sp = nil
		}
		sp, err := d.startSpeaker(ctx, spec, peers)
		if err != nil {
			if old != nil { // put the old speaker back
				if n.sp, err = d.startSpeaker(context.WithoutCancel(ctx), old, peers); err != nil {
					d.log.Error("bgp: restarting the old speaker", "network", spec.ID, "err", err)
				}
			}
			undo()
			return nil, err
		}
		if n == nil {
			n = &network{}
			d.networks[spec.ID] = n
		}
		n.sp = sp
	}
	n.spec, n.mtu = *spec, mtu
	if err := d.syncRoutesLocked(ctx); err != nil {
		d.log.Warn("bgp: syncing kernel routes", "network", spec.ID, "err", err)
	}
	return n.status(ctx)
}

// DeleteNetwork implements driver.Driver: it stops the network's speaker
// (its peers see the session close), removes the routes it installed and
// the bridge.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, err := d.network(id)
	if err != nil {
		return err
	}
	d.stopSpeaker(n.sp)
	delete(d.networks, id)
	return errors.Join(d.syncRoutesLocked(ctx), d.deleteBridge(id))
}

// SetPeers implements driver.Driver. Each peer is a BGP neighbour; removed
// peers' sessions are closed and their routes leave the kernel before
// SetPeers returns.
func (d *Driver) SetPeers(ctx context.Context, id string, peers []driver.Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, err := d.network(id)
	if err != nil {
		return err
	}
	if err := driver.ValidatePeers(&n.spec, peers); err != nil {
		return err
	}
	sorted := clonePeers(peers)
	slices.SortFunc(sorted, func(a, b driver.Peer) int { return strings.Compare(a.Name, b.Name) })
	if err := n.sp.setPeers(ctx, &n.spec, sorted); err != nil {
		return err
	}
	n.peers = sorted
	return d.syncRoutesLocked(ctx)
}

// Networks implements driver.Driver.
func (d *Driver) Networks(ctx context.Context) ([]*driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	var sts []*driver.Status
	for _, id := range slices.Sorted(maps.Keys(d.networks)) {
		st, err := d.networks[id].status(ctx)
		if err != nil {
			return nil, err
		}
		sts = append(sts, st)
	}
	return sts, nil
}

// Capabilities implements driver.Driver: mode BGP, not encrypted.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{Modes: []driver.Mode{driver.BGP}}
}

// checkOpen returns errcode.FailedPrecondition once the driver is closed.
// d.mu is held.
func (d *Driver) checkOpen() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "the driver is closed")
	}
	return nil
}

// network returns network id: errcode.NotFound if unknown,
// errcode.FailedPrecondition once the driver is closed. d.mu is held.
func (d *Driver) network(id string) (*network, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	n := d.networks[id]
	if n == nil {
		return nil, errcode.New(errcode.NotFound, "network %q not found", id)
	}
	return n, nil
}

// Close implements driver.Driver. It stops the speakers and removes the
// routes they installed; the bridges stay. gobgp's server loop has no end,
// so each stopped speaker leaves one idle goroutine for the life of the
// process (a Driver reuses its stopped speakers for later networks). Later
// calls return nil; every other method but Capabilities then fails with
// errcode.FailedPrecondition.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for _, n := range d.networks {
		d.stopSpeaker(n.sp)
	}
	d.networks = map[string]*network{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := d.syncRoutesLocked(ctx)
	cancel()
	d.mu.Unlock()
	close(d.stop)
	<-d.done
	if d.ownHandle {
		d.h.Close()
	}
	return err
}

// status returns n's state, with the peers whose session is established.
func (n *network) status(ctx context.Context) (*driver.Status, error) {
	st := &driver.Status{Spec: n.spec, Bridge: bridgeName(n.spec.ID), MTU: n.mtu, Peers: clonePeers(n.peers)}
	up, err := n.sp.established(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range n.peers { // sorted by name
		if up[p.Underlay] {
			st.Connected = append(st.Connected, p.Name)
		}
	}
	return st, nil
}

// port returns the spec's TCP port.
func port(s *driver.Spec) uint16 {
	if s.Port == 0 {
		return DefaultPort
	}
	return s.Port
}

// underlayMTU returns the MTU of the link holding address a.
func (d *Driver) underlayMTU(a netip.Addr) (int, error) {
	addrs, err := d.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, kernelErr("listing addresses", err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == a {
			l, err := d.h.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return 0, kernelErr("finding the underlay's link", err)
			}
			return l.Attrs().MTU, nil
		}
	}
	return 0, errcode.New(errcode.FailedPrecondition, "no link of this server has the underlay address %s", a)
}

// ensureBridge makes the network's bridge exist, up, with MTU mtu and
// spec.Local as its only IPv4 address. created says it did not exist.
func (d *Driver) ensureBridge(spec *driver.Spec, mtu int) (created bool, err error) {
	name := bridgeName(spec.ID)
	l, err := d.bridge(spec.ID)
	if err != nil {
		return false, err
	}
	if l == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
		if err := d.h.LinkAdd(br); err != nil {
			return false, kernelErr("adding bridge "+name, err)
		}
		created = true
		if l, err = d.h.LinkByName(name); err != nil {
			d.h.LinkDel(br)
			return false, kernelErr("finding bridge "+name, err)
		}
	}
	fail := func(what string, err error) (bool, error) {
		if created {
			d.h.LinkDel(l)
		}
		return false, kernelErr(what+" of bridge "+name, err)
	}
	if created {
		if err := d.h.LinkSetAlias(l, aliasPrefix+spec.ID); err != nil {
			return fail("setting the alias", err)
		}
	}
	if l.Attrs().MTU != mtu {
		if err := d.h.LinkSetMTU(l, mtu); err != nil {
			return fail("setting the MTU", err)
		}
	}
	addrs, err := d.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fail("listing the addresses", err)
	}
	want := spec.Local
	have := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip.Unmap(), ones) == want {
			have = true
			continue
		}
		if err := d.h.AddrDel(l, &a); err != nil {
			return fail("removing an old address", err)
		}
	}
	if !have {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
		if err := d.h.AddrAdd(l, addr); err != nil {
			return fail("adding address "+want.String(), err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(l); err != nil {
			return fail("bringing up", err)
		}
	}
	return created, nil
}

// bridge returns network id's bridge, nil if there is none. A link that
// holds its name without the network's alias (another program's, or
// another network's whose long ID hashes alike) is errcode.AlreadyExists:
// it is neither adopted nor deleted.
func (d *Driver) bridge(id string) (netlink.Link, error) {
	name := bridgeName(id)
	l, err := d.h.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, nil
	}
	if err != nil {
		return nil, kernelErr("finding bridge "+name, err)
	}
	if l.Type() != "bridge" || l.Attrs().Alias != aliasPrefix+id {
		return nil, errcode.New(errcode.AlreadyExists, "link %s exists and is not network %s's bridge", name, id)
	}
	return l, nil
}

// deleteBridge removes the network's bridge if it exists.
func (d *Driver) deleteBridge(id string) error {
	l, err := d.bridge(id)
	if err != nil || l == nil {
		return err
	}
	if err := d.h.LinkDel(l); err != nil {
		return kernelErr("deleting bridge "+l.Attrs().Name, err)
	}
	return nil
}

// enableForwarding turns on IPv4 forwarding in the process's namespace.
func enableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return errcode.Wrap(errcode.PermissionDenied, fmt.Errorf("enabling IPv4 forwarding: %w", err))
	}
	return nil
}

// probeMD5 checks that the kernel takes a TCP MD5 key on a listener
// opened as gobgp opens its own (net.ListenTCP, on the underlay address).
// gobgp only logs a warning when it cannot, and would then leave the
// listener without the key, so that no signed session could start. Since
// Go 1.24 listeners are MPTCP sockets by default, which refuse MD5 keys
// (ENOPROTOOPT): a program that uses passwords sets
// //go:debug multipathtcp=0 (or GODEBUG=multipathtcp=0).
func probeMD5(underlay netip.Addr) error {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: underlay.AsSlice()})
	if err != nil {
		return kernelErr("opening a listener to check TCP MD5", err)
	}
	defer l.Close()
	sc, err := l.SyscallConn()
	if err != nil {
		return kernelErr("checking TCP MD5", err)
	}
	sig := unix.TCPMD5Sig{Keylen: 4}
	sig.Addr.Family = unix.AF_INET
	a := underlay.As4()
	copy(sig.Addr.Data[2:6], a[:])
	copy(sig.Key[:], "test")
	var serr error
	if err := sc.Control(func(fd uintptr) {
		serr = unix.SetsockoptTCPMD5Sig(int(fd), unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig)
	}); err != nil {
		return kernelErr("checking TCP MD5", err)
	}
	if serr != nil {
		return errcode.Wrap(errcode.Unimplemented, fmt.Errorf("a password needs TCP MD5 signatures, which this listener refuses (an MPTCP listener does: set GODEBUG multipathtcp=0): %w", serr))
	}
	return nil
}

// bridgeName returns the bridge of network id, by the link scheme of
// package names with the prefix "mbg-".
func bridgeName(id string) string { return names.Link(bridgePrefix, id) }

func clonePeers(peers []driver.Peer) []driver.Peer {
	c := slices.Clone(peers)
	for i := range c {
		c[i].Endpoints = slices.Clone(c[i].Endpoints)
	}
	return c
}

// kernelErr gives a kernel error its code, by errcode's errno table.
func kernelErr(what string, err error) error { return errcode.Syscall(err, "%s", what) }
