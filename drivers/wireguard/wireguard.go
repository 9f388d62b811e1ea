package wireguard

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/musterkit/muster/drivers/vxlan"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const (
	// DefaultPort is the WireGuard UDP port used when Spec.Port is zero.
	DefaultPort = 51820
	// Keepalive is the persistent keepalive interval of every peer.
	Keepalive = 25 * time.Second
	// Overhead is what WireGuard adds to a packet, as wg-quick counts it
	// (outer IPv6 40 + UDP 8 + WireGuard 32), so that one rule suits both
	// underlay families.
	Overhead = 80

	bridgePrefix = "mwb-"
	devicePrefix = "mwg"
	aliasPrefix  = "muster-wireguard id="
)

var _ driver.Driver = (*Driver)(nil)

// Options configures Open. A nil *Options means the defaults.
type Options struct {
	// Handle is a netlink handle bound to the namespace of the server the
	// driver manages (netlink.NewHandleAt): links, addresses and routes go
	// through it. Nil opens a handle in the calling thread's namespace,
	// which Close closes; a given handle stays the caller's.
	Handle *netlink.Handle
	// Do runs fn on a locked OS thread inside the same namespace as
	// Handle, as testhost.Host.Do and namespace.Runner do. The driver creates
	// the TUN device and the WireGuard UDP socket through it, and writes
	// the namespace's forwarding sysctl. Nil runs fn on a locked thread
	// of the calling process's namespace.
	Do func(fn func() error) error
	// Logger receives the driver's and the WireGuard devices' log; nil
	// discards it.
	Logger *slog.Logger
}

// currentNamespace is Options.Do when none is given.
func currentNamespace(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return fn()
}

// Driver is the WireGuard network driver of one server (one network
// namespace). It is safe for concurrent use.
type Driver struct {
	h         *netlink.Handle
	ownHandle bool
	do        func(func() error) error
	log       *slog.Logger
	// vx layers the VXLANOverWireGuard networks' VXLAN over the tunnels.
	vx *vxlan.Driver

	mu       sync.Mutex
	closed   bool
	networks map[string]*network
}

// network is one network's in-process state.
type network struct {
	spec      driver.Spec
	mtu       int // the device's
	publicKey string
	bridge    string
	ifname    string
	dev       wgDevice
	peers     []driver.Peer // sorted by name
	// tunnel is this server's address on the device and vxMTU the VXLAN
	// network's MTU (mode VXLANOverWireGuard).
	tunnel netip.Prefix
	vxMTU  int
}

// layer2 reports whether n carries VXLAN over its tunnel.
func (n *network) layer2() bool { return n.spec.Mode == driver.VXLANOverWireGuard }

// Open returns a driver for the namespace of opts.Handle and opts.Do.
func Open(ctx context.Context, opts *Options) (*Driver, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &Options{}
	}
	d := &Driver{h: opts.Handle, do: opts.Do, log: opts.Logger, networks: map[string]*network{}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.do == nil {
		d.do = currentNamespace
	}
	if d.h == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, kernelErr("opening a netlink handle", err)
		}
		d.h, d.ownHandle = h, true
	}
	if _, err := d.h.LinkList(); err != nil {
		d.closeHandle()
		return nil, kernelErr("listing links", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		d.closeHandle()
		return nil, errcode.New(errcode.Unavailable, "wireguard: no TUN device: %v", err)
	}
	vx, err := vxlan.Open(ctx, &vxlan.Options{Handle: d.h, Logger: d.log, Over: "wireguard"})
	if err != nil {
		d.closeHandle()
		return nil, err
	}
	d.vx = vx
	return d, nil
}

func (d *Driver) closeHandle() {
	if d.ownHandle {
		d.h.Close()
	}
}

// Capabilities reports modes WireGuard and VXLANOverWireGuard, encrypted.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{Modes: []driver.Mode{driver.WireGuard, driver.VXLANOverWireGuard}, Encrypted: true}
}

// Close stops every network's embedded WireGuard device (its goroutines,
// socket and TUN link, with the routes through it) and releases the
// driver's netlink handle if Open made it. Bridges and their addresses
// stay; a driver opened later recreates the devices when the networks are
// ensured again. A userspace device cannot outlive the process that runs
// it, so unlike a kernel driver's, these networks carry no traffic between
// Close and the next EnsureNetwork.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	for id, n := range d.networks {
		if err := n.dev.stop(false); err != nil {
			d.log.Warn("wireguard: stopping the device", "network", id, "err", err)
		}
	}
	d.networks = nil
	d.vx.Close()
	d.closeHandle()
	return nil
}

func (d *Driver) checkOpen() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "wireguard: driver is closed")
	}
	return nil
}

// lockNetwork checks ctx, takes the driver's lock and looks network id
// up (errcode.NotFound if unknown); the caller calls unlock when done.
func (d *Driver) lockNetwork(ctx context.Context, id string) (_ *network, unlock func(), _ error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	d.mu.Lock()
	if err := d.checkOpen(); err != nil {
		d.mu.Unlock()
		return nil, nil, err
	}
	n := d.networks[id]
	if n == nil {
		d.mu.Unlock()
		return nil, nil, errcode.New(errcode.NotFound, "wireguard: network %q not found", id)
	}
	return n, d.mu.Unlock, nil
}

// BridgeName returns the name of network id's bridge, by the link scheme
// of package names with the prefix "mwb-".
func BridgeName(id string) string { return names.Link(bridgePrefix, id) }

// DeviceName returns the name of network id's WireGuard device in the
// namespace whose inode is nsInode: "mwg" and 12 hex digits of the SHA-256
// of both. Userspace WireGuard keeps its control socket at
// /var/run/wireguard/<name>.sock, a path every namespace shares, so the
// name is unique on the machine, not only in the namespace.
func DeviceName(nsInode uint64, id string) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], nsInode)
	sum := sha256.Sum256(append(b[:], id...))
	return devicePrefix + hex.EncodeToString(sum[:6])
}

// EnsureNetwork implements driver.Driver. See the package documentation
// for what a network is. What may change in place: the private key (the
// device's key is replaced, sessions re-handshake), the port, the MTU and
// Local. A spec.MTU above the underlay link's MTU minus Overhead, or an
// underlay address no link of the namespace holds, or a port another
// network of this driver uses, is errcode.FailedPrecondition.
func (d *Driver) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Mode != driver.WireGuard && spec.Mode != driver.VXLANOverWireGuard {
		return nil, errcode.New(errcode.Unimplemented, "wireguard: mode %s is not supported; only %s and %s", spec.Mode, driver.WireGuard, driver.VXLANOverWireGuard)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k := mustDecode(spec.PrivateKey)
	key, err := wgtypes.NewKey(k[:])
	if err != nil {
		return nil, errcode.Wrap(errcode.InvalidArgument, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	n := d.networks[spec.ID]
	if n != nil {
		old := n.spec
		if old.Mode != spec.Mode || old.Subnet != spec.Subnet || old.VNI != spec.VNI {
			return nil, errcode.New(errcode.FailedPrecondition, "wireguard: network %q is %s with subnet %s and VNI %d; delete it to change its mode, subnet or VNI", spec.ID, old.Mode, old.Subnet, old.VNI)
		}
		if err := driver.ValidatePeers(spec, n.peers); err != nil {
			return nil, errcode.New(errcode.FailedPrecondition, "wireguard: network %q: the spec clashes with the peers in place (set the peers first): %w", spec.ID, err)
		}
	}
	port := portOf(spec)
	for id, o := range d.networks {
		if id != spec.ID && portOf(&o.spec) == port {
			return nil, errcode.New(errcode.FailedPrecondition, "wireguard: network %q already uses UDP port %d", id, port)
		}
	}
	mtu, err := d.mtu(spec)
	if err != nil {
		return nil, err
	}
	if n == nil {
		if n, err = d.create(ctx, spec, key, mtu); err != nil {
			return nil, err
		}
		d.networks[spec.ID] = n
		d.log.Info("wireguard: network created", "network", spec.ID, "mode", spec.Mode, "device", n.ifname, "bridge", n.bridge, "port", port)
	} else if err := d.update(ctx, n, spec, key, mtu); err != nil {
		return nil, err
	}
	return n.status()
}

// portOf returns the UDP port spec says.
func portOf(spec *driver.Spec) int {
	if spec.Port == 0 {
		return DefaultPort
	}
	return int(spec.Port)
}

// mtu returns the MTU of the network's device after checking spec.MTU
// against the underlay's: in mode WireGuard the device's MTU is the
// network's, in mode VXLANOverWireGuard the device takes all the underlay
// leaves and the network VXLAN's overhead less.
func (d *Driver) mtu(spec *driver.Spec) (int, error) {
	addrs, err := d.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, kernelErr("listing addresses", err)
	}
	under := 0
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == spec.Underlay {
			l, err := d.h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, kernelErr("finding the underlay link", err)
			}
			under = l.Attrs().MTU
			break
		}
	}
	if under == 0 {
		return 0, errcode.New(errcode.FailedPrecondition, "wireguard: no link of this server holds underlay address %s", spec.Underlay)
	}
	limit := under - Overhead
	if spec.Mode == driver.VXLANOverWireGuard {
		if spec.MTU > limit-VXLANOverhead || limit-VXLANOverhead < 576 {
			return 0, errcode.New(errcode.FailedPrecondition, "wireguard: MTU %d does not fit: the underlay's MTU %d leaves %d for VXLAN over WireGuard", spec.MTU, under, limit-VXLANOverhead)
		}
		return limit, nil
	}
	mtu := spec.MTU
	if mtu == 0 {
		mtu = limit
	}
	if mtu > limit || mtu < 576 {
		return 0, errcode.New(errcode.FailedPrecondition, "wireguard: MTU %d does not fit: the underlay's MTU %d leaves %d", mtu, under, limit)
	}
	return mtu, nil
}

// create builds a new network: device, then bridge and routes or the
// VXLAN network over the tunnel. On error it removes what it made.
func (d *Driver) create(ctx context.Context, spec *driver.Spec, key wgtypes.Key, mtu int) (_ *network, err error) {
	n := &network{spec: *spec, mtu: mtu, publicKey: key.PublicKey().String(), bridge: BridgeName(spec.ID)}
	if n.layer2() {
		n.bridge, _ = vxlan.LinkNames(spec.ID)
	}
	defer func() {
		if err != nil {
			if rerr := d.remove(context.WithoutCancel(ctx), n); rerr != nil {
				d.log.Warn("wireguard: rollback", "network", spec.ID, "err", rerr)
			}
		}
	}()
	port := portOf(spec)
	cfg := &wgtypes.Config{PrivateKey: &key, ListenPort: &port}
	err = d.do(func() error {
		// Everything here is bound to the calling thread's namespace:
		// the TUN link, the sockets the devices open, the sysctl.
		ino, err := nsInode()
		if err != nil {
			return err
		}
		n.ifname = DeviceName(ino, spec.ID)
		if k, err := newKernel(d.h, n.ifname, mtu, cfg); err != nil {
			return err
		} else if k != nil {
			n.dev = k
		} else {
			u, err := newUserspace(n.ifname, mtu, cfg, d.deviceLogger(spec.ID), d.do)
			if err != nil {
				return err
			}
			n.dev = u
			if err := checkSocket(port); err != nil {
				return err
			}
		}
		if n.layer2() {
			return nil
		}
		return enableForwarding(spec.Subnet.Addr().Is6())
	})
	if err != nil {
		return nil, err
	}
	link, err := d.h.LinkByName(n.ifname)
	if err != nil {
		return nil, kernelErr("finding "+n.ifname, err)
	}
	if err := d.h.LinkSetUp(link); err != nil {
		return nil, kernelErr("bringing up "+n.ifname, err)
	}
	if err := d.ensureInside(ctx, n, link, spec); err != nil {
		return nil, err
	}
	return n, nil
}

// remove stops n's device and deletes its bridge or its VXLAN network;
// each may be missing. A link with the bridge's name that is not this
// network's bridge stays.
func (d *Driver) remove(ctx context.Context, n *network) error {
	var errs []error
	if n.dev != nil {
		if err := n.dev.stop(true); err != nil {
			errs = append(errs, kernelErr("stopping the device of "+n.spec.ID, err))
		}
	}
	if n.layer2() {
		if err := d.vx.DeleteNetwork(ctx, n.spec.ID); err != nil && !errors.Is(err, errcode.NotFound) {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	l, err := d.h.LinkByName(n.bridge)
	if err == nil && l.Attrs().Alias == aliasPrefix+n.spec.ID { // only this network's
		err = d.h.LinkDel(l)
	}
	if err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		errs = append(errs, kernelErr("deleting bridge "+n.bridge, err))
	}
	return errors.Join(errs...)
}

// ensureInside makes what lies behind n's device as spec says: in mode
// WireGuard the bridge with its address and the peers' routes, in mode
// VXLANOverWireGuard the tunnel address on the device and the VXLAN
// network over it with the peers' forwarding entries. Each step changes
// nothing when all is in place, so it also repairs what others removed.
func (d *Driver) ensureInside(ctx context.Context, n *network, link netlink.Link, spec *driver.Spec) error {
	if !n.layer2() {
		br, err := d.ensureBridge(n)
		if err != nil {
			return err
		}
		if err := d.setBridgeAddr(br, spec.Local, n.spec.Local); err != nil {
			return err
		}
		n.spec.Local = spec.Local
		return d.syncRoutes(ctx, n)
	}
	tunnel := TunnelAddress(spec.ID, spec.Underlay)
	if n.tunnel.IsValid() && n.tunnel != tunnel {
		if err := d.h.AddrDel(link, &netlink.Addr{IPNet: ipNet(n.tunnel)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return kernelErr("removing "+n.tunnel.String()+" from "+n.ifname, err)
		}
	}
	if err := d.h.AddrReplace(link, &netlink.Addr{IPNet: ipNet(tunnel), Flags: syscall.IFA_F_NODAD}); err != nil {
		return kernelErr("adding tunnel address "+tunnel.String()+" to "+n.ifname+" (is IPv6 disabled in this namespace?)", err)
	}
	n.tunnel = tunnel
	st, err := d.vx.EnsureNetwork(ctx, innerSpec(spec))
	if err != nil {
		return err
	}
	n.vxMTU, n.spec.Local = st.MTU, spec.Local
	return d.syncRoutes(ctx, n)
}

// update changes an existing network in place to spec.
func (d *Driver) update(ctx context.Context, n *network, spec *driver.Spec, key wgtypes.Key, mtu int) error {
	link, err := d.h.LinkByName(n.ifname)
	if err != nil {
		return kernelErr("finding "+n.ifname, err)
	}
	if mtu != n.mtu {
		if err := d.h.LinkSetMTU(link, mtu); err != nil {
			return kernelErr("setting the MTU of "+n.ifname, err)
		}
		n.mtu = mtu
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(link); err != nil {
			return kernelErr("bringing up "+n.ifname, err)
		}
	}
	if err := d.ensureInside(ctx, n, link, spec); err != nil {
		return err
	}
	if port, oldPort := portOf(spec), portOf(&n.spec); port != oldPort {
		err := d.do(func() error {
			if err := n.dev.configure(&wgtypes.Config{ListenPort: &port}); err != nil {
				// Rebind the old port, so that the device keeps working.
				if rerr := n.dev.configure(&wgtypes.Config{ListenPort: &oldPort}); rerr != nil {
					d.log.Error("wireguard: restoring the listen port", "network", n.spec.ID, "err", rerr)
				}
				return err
			}
			if !n.dev.kernel() {
				return checkSocket(port)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if pub := key.PublicKey().String(); pub != n.publicKey {
		if err := n.dev.configure(&wgtypes.Config{PrivateKey: &key}); err != nil {
			return err
		}
		n.publicKey = pub
	}
	if spec.Port != n.spec.Port {
		// Peers' endpoints carry the network's port.
		n.spec.Port = spec.Port
		if err := d.configurePeers(ctx, n, n.peers, true); err != nil {
			return err
		}
	}
	n.spec = *spec
	return nil
}

// ensureBridge returns network n's bridge, creating it if absent. A link
// with its name that is not this network's bridge is
// errcode.AlreadyExists. A bridge left by an earlier process is adopted.
func (d *Driver) ensureBridge(n *network) (netlink.Link, error) {
	alias := aliasPrefix + n.spec.ID
	l, err := d.h.LinkByName(n.bridge)
	if err == nil {
		if _, ok := l.(*netlink.Bridge); !ok || l.Attrs().Alias != alias {
			return nil, errcode.New(errcode.AlreadyExists, "wireguard: link %s exists and is not network %s's bridge", n.bridge, n.spec.ID)
		}
		if l.Attrs().MTU != n.mtu {
			if err := d.h.LinkSetMTU(l, n.mtu); err != nil {
				return nil, kernelErr("setting the MTU of "+n.bridge, err)
			}
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := d.h.LinkSetUp(l); err != nil {
				return nil, kernelErr("bringing up "+n.bridge, err)
			}
		}
		return l, nil
	}
	if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, kernelErr("finding "+n.bridge, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge, MTU: n.mtu}}
	if err := d.h.LinkAdd(br); err != nil {
		return nil, kernelErr("adding bridge "+n.bridge, err)
	}
	for _, step := range []func() error{
		func() error { return d.h.LinkSetAlias(br, alias) },
		func() error { return d.h.LinkSetUp(br) },
	} {
		if err := step(); err != nil {
			d.h.LinkDel(br)
			return nil, kernelErr("setting up bridge "+n.bridge, err)
		}
	}
	return br, nil
}

// setBridgeAddr removes old (if valid and different) from the bridge and
// puts local on it. The old address goes first: deleting a primary address
// would take a new one of the same prefix (a secondary) with it.
func (d *Driver) setBridgeAddr(br netlink.Link, local, old netip.Prefix) error {
	if old.IsValid() && old != local {
		if err := d.h.AddrDel(br, &netlink.Addr{IPNet: ipNet(old)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return kernelErr("removing "+old.String()+" from "+br.Attrs().Name, err)
		}
	}
	if err := d.h.AddrReplace(br, &netlink.Addr{IPNet: ipNet(local)}); err != nil {
		return kernelErr("adding "+local.String()+" to "+br.Attrs().Name, err)
	}
	return nil
}

// DeleteNetwork implements driver.Driver: it closes the network's
// WireGuard device (its goroutines and socket stop, its TUN link and the
// routes through it vanish) and deletes the bridge.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	n, unlock, err := d.lockNetwork(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	delete(d.networks, id)
	if err := d.remove(ctx, n); err != nil {
		return err
	}
	d.log.Info("wireguard: network deleted", "network", id)
	return nil
}

// SetPeers implements driver.Driver. Every peer becomes a WireGuard peer
// with its public key, endpoint Underlay and the network's port, allowed
// IPs Range and a persistent keepalive of 25 seconds, and gets a route
// Range dev <device> src <Local>. Peers not listed are removed with their
// routes; peers that did not change are not touched, so their sessions
// go on.
func (d *Driver) SetPeers(ctx context.Context, id string, peers []driver.Peer) error {
	n, unlock, err := d.lockNetwork(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := driver.ValidatePeers(&n.spec, peers); err != nil {
		return err
	}
	want := slices.Clone(peers)
	slices.SortFunc(want, func(a, b driver.Peer) int { return strings.Compare(a.Name, b.Name) })
	old := n.peers
	if err := d.configurePeers(ctx, n, want, false); err != nil {
		// Put the old peers back, best effort.
		if rerr := d.configurePeers(context.WithoutCancel(ctx), n, old, false); rerr != nil {
			d.log.Error("wireguard: restoring peers after a failed SetPeers", "network", id, "err", rerr)
		}
		return err
	}
	return nil
}

// configurePeers makes the device's peers and the routes or forwarding
// entries want; force reconfigures peers that did not change too.
func (d *Driver) configurePeers(ctx context.Context, n *network, want []driver.Peer, force bool) error {
	have := map[string]driver.Peer{}
	for _, p := range n.peers {
		have[p.PublicKey] = p
	}
	wantKeys := map[string]bool{}
	var cfg wgtypes.Config
	keepalive := Keepalive
	for _, p := range want {
		wantKeys[p.PublicKey] = true
		if h, ok := have[p.PublicKey]; ok && !force && h.Underlay == p.Underlay && h.Range == p.Range {
			continue
		}
		allowed := p.Range
		if n.layer2() {
			allowed = netip.PrefixFrom(TunnelAddress(n.spec.ID, p.Underlay).Addr(), 128)
		}
		pc := wgtypes.PeerConfig{
			PublicKey:                   wgtypes.Key(mustDecode(p.PublicKey)),
			Endpoint:                    net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.Underlay, uint16(portOf(&n.spec)))),
			PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  []net.IPNet{prefixNet(allowed)},
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	var removed []wgtypes.PeerConfig
	for _, p := range n.peers {
		if !wantKeys[p.PublicKey] {
			removed = append(removed, wgtypes.PeerConfig{PublicKey: wgtypes.Key(mustDecode(p.PublicKey)), Remove: true})
		}
	}
	// Removals first, so that a range moving from a removed peer to a new
	// one ends with the new.
	cfg.Peers = append(removed, cfg.Peers...)
	if len(cfg.Peers) > 0 {
		if err := n.dev.configure(&cfg); err != nil {
			return err
		}
	}
	n.peers = slices.Clone(want)
	return d.syncRoutes(ctx, n)
}

// syncRoutes makes the routes through n's device exactly one per peer
// range, with source address Local; in mode VXLANOverWireGuard it gives
// the VXLAN network the peers, at their tunnel addresses.
func (d *Driver) syncRoutes(ctx context.Context, n *network) error {
	if n.layer2() {
		return d.vx.SetPeers(ctx, n.spec.ID, innerPeers(n.spec.ID, n.peers))
	}
	link, err := d.h.LinkByName(n.ifname)
	if err != nil {
		return kernelErr("finding "+n.ifname, err)
	}
	want := map[netip.Prefix]bool{}
	for _, p := range n.peers {
		want[p.Range] = true
	}
	src := n.spec.Local.Addr()
	routes, err := d.h.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return kernelErr("listing routes of "+n.ifname, err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Table != syscall.RT_TABLE_MAIN {
			continue
		}
		dst := netPrefix(r.Dst)
		rsrc, _ := netip.AddrFromSlice(r.Src)
		if want[dst] && rsrc.Unmap() == src {
			delete(want, dst)
			continue
		}
		if err := d.h.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
			return kernelErr("deleting route "+dst.String(), err)
		}
	}
	for _, dst := range slices.SortedFunc(maps.Keys(want), netip.Prefix.Compare) {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Src: src.AsSlice(), Scope: netlink.SCOPE_LINK}
		if err := d.h.RouteAdd(r); err != nil {
			return kernelErr("adding route "+dst.String()+" dev "+n.ifname, err)
		}
	}
	return nil
}

// Networks implements driver.Driver, from the driver's in-process state:
// the userspace devices live in this process.
func (d *Driver) Networks(ctx context.Context) ([]*driver.Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	var sts []*driver.Status
	for _, id := range slices.Sorted(maps.Keys(d.networks)) {
		st, err := d.networks[id].status()
		if err != nil {
			return nil, err
		}
		sts = append(sts, st)
	}
	return sts, nil
}

// Device returns the state of network id's WireGuard device (keys, port,
// peers with their endpoints, last handshakes and byte counters) in
// wgctrl's types, as wg show reports it.
func (d *Driver) Device(ctx context.Context, id string) (*wgtypes.Device, error) {
	n, unlock, err := d.lockNetwork(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	dev, err := n.dev.state()
	if err != nil {
		return nil, err
	}
	dev.Name = n.ifname
	return dev, nil
}

// status returns n's state, with the peers that had a handshake in the
// last RejectAfterTime.
func (n *network) status() (*driver.Status, error) {
	st := &driver.Status{Spec: n.spec, Bridge: n.bridge, MTU: n.mtu, PublicKey: n.publicKey}
	if n.layer2() {
		st.MTU = n.vxMTU
	}
	if len(n.peers) == 0 {
		return st, nil
	}
	st.Peers = slices.Clone(n.peers)
	dev, err := n.dev.state()
	if err != nil {
		return nil, err
	}
	byKey := map[string]wgtypes.Peer{}
	for _, p := range dev.Peers {
		byKey[p.PublicKey.String()] = p
	}
	for _, p := range n.peers { // sorted by name
		wp, ok := byKey[p.PublicKey]
		if !ok {
			continue
		}
		s := driver.Session{Peer: p.Name, ReceiveBytes: wp.ReceiveBytes, TransmitBytes: wp.TransmitBytes}
		if wp.Endpoint != nil {
			ap := wp.Endpoint.AddrPort()
			s.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		if !wp.LastHandshakeTime.IsZero() && wp.LastHandshakeTime.Unix() > 0 {
			s.LastHandshake = wp.LastHandshakeTime.UTC()
		}
		st.Sessions = append(st.Sessions, s)
		if time.Since(wp.LastHandshakeTime) < device.RejectAfterTime {
			st.Connected = append(st.Connected, p.Name)
		}
	}
	return st, nil
}

// deviceLogger sends a device's log to the driver's logger.
func (d *Driver) deviceLogger(id string) *device.Logger {
	l := d.log.With("network", id)
	return &device.Logger{
		Verbosef: func(format string, args ...any) { l.Debug("wireguard-go: " + fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { l.Error("wireguard-go: " + fmt.Sprintf(format, args...)) },
	}
}

// nsInode returns the inode of the calling thread's network namespace.
// Call it on a thread Options.Do locked.
func nsInode() (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, kernelErr("reading the namespace's inode", err)
	}
	return st.Ino, nil
}

// checkSocket reports an error unless the calling thread's network
// namespace has a UDP socket on port: the WireGuard bind must land in the
// server's namespace, not the process's. Call it on a thread Options.Do
// locked.
func checkSocket(port int) error {
	want := fmt.Sprintf(":%04X ", port)
	for _, f := range []string{"/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // no IPv6
		}
		for line := range strings.Lines(string(data)) {
			fields := strings.Fields(line)
			if len(fields) > 1 && strings.HasSuffix(fields[1]+" ", want) {
				return nil
			}
		}
	}
	return errcode.New(errcode.Internal, "wireguard: the device's UDP socket on port %d is not in the server's namespace", port)
}

// enableForwarding turns on IP forwarding in the calling thread's network
// namespace (per-namespace sysctls), so that containers' packets cross
// between the bridge and the WireGuard device.
func enableForwarding(ipv6 bool) error {
	path := "/proc/sys/net/ipv4/ip_forward"
	if ipv6 {
		path = "/proc/sys/net/ipv6/conf/all/forwarding"
	}
	if data, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(data)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return kernelErr("enabling forwarding", err)
	}
	return nil
}

func mustDecode(key string) [32]byte {
	var k [32]byte
	b, _ := base64.StdEncoding.DecodeString(key) // validated before
	copy(k[:], b)
	return k
}

func ipNet(p netip.Prefix) *net.IPNet {
	n := prefixNet(p)
	return &n
}

func netPrefix(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// kernelErr gives a kernel error its code, by errcode's errno table.
func kernelErr(what string, err error) error { return errcode.Syscall(err, "wireguard: %s", what) }

// deviceErr gives an error of the embedded device's UAPI its code.
func deviceErr(err error) error { return errcode.Syscall(err, "wireguard: configuring the device") }
