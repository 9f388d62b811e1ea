// Package testhost builds N simulated servers on one machine, for privileged tests
// and the demo.
//
// It needs root, iproute2 (the ip program) and a kernel with network namespaces,
// veth and the Linux bridge. Tests get a cluster with [New], which gates on
// [roottest.Require]; programs use [Build] and [Cluster.Close].
//
// The shape of one cluster named mst<pid>c<k> (pid of the creating process, k a
// per-process counter):
//
//	root namespace                switch namespace mst<pid>c<k>sw       host namespace mst<pid>c<k>h<i>
//	  mst<pid>c<k> (.254/24) ---- root ┐
//	                                   br0 ┬ h0 ------------------------- eth0 (.1/24), lo
//	                                       ├ h1 ------------------------- eth0 (.2/24), lo
//	                                       └ ...
//
// Every cluster takes its own /24 of 198.18.0.0/15, chosen with a lock file under
// /run/muster-testhost/, so clusters of concurrent processes never clash. Host i
// has address .(i+1); the root namespace has .254 and only the connected /24
// route; hosts have only their connected /24 route and no default route, so no
// traffic leaves the machine. Host namespaces are named (they appear under
// /run/netns), so `ip netns exec NAME cmd` works for them.
//
// Everything a cluster creates carries the prefix "mst" and the creator's pid;
// [Sweep] removes what dead processes left behind.
package testhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/namespace"
	"github.com/musterkit/muster/roottest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	// Prefix starts the name of every namespace and root-namespace link this
	// package creates, followed by the creating process's pid.
	Prefix = "mst"

	lockDir   = "/run/muster-testhost"
	netnsDir  = "/run/netns"
	bridge    = "br0"  // bridge inside the switch namespace
	rootPeer  = "root" // switch-side end of the root veth
	hostLink  = "eth0" // host-side end of a host veth
	maxHosts  = 253    // .1 .. .253; .254 is the root namespace
	numSubnet = 512    // /24s in 198.18.0.0/15
)

var (
	underlay = netip.MustParsePrefix("198.18.0.0/15")
	// ownedName matches names this package gives; group 1 is the creator's pid.
	ownedName = regexp.MustCompile(`^` + Prefix + `([0-9]+)c[0-9]+`)
	seq       atomic.Int64
	sweepOnce sync.Once
	sweepErr  error
)

// Options tunes [Build]. A nil *Options means the defaults.
type Options struct {
	// MTU of every underlay link; 0 keeps the kernel default (1500). A larger
	// underlay MTU lets overlays built on top keep 1500 inside.
	MTU int
}

// Cluster is a set of simulated servers on one bridge. Its fields are read-only.
type Cluster struct {
	// Name is the cluster's base name, mst<pid>c<k>; it is also the name of the
	// root namespace's link to the cluster. Use it to make per-cluster names unique.
	Name string
	// Subnet is the cluster's /24 in 198.18.0.0/15.
	Subnet netip.Prefix
	// RootAddr is the root namespace's address on Subnet (.254).
	RootAddr netip.Addr
	// Hosts are the simulated servers; Hosts[i] has address .(i+1).
	Hosts []*Host

	switchNS   string // name of the switch namespace
	switchH    netns.NsHandle
	namespaces []string // every named namespace created, in creation order
	rootLink   string   // root-namespace veth, "" until created
	lock       *os.File // held flock on the subnet's lock file
	closeOnce  sync.Once
	closeErr   error
}

// Host is one simulated server: a named network namespace with one link, Link,
// on the cluster's bridge.
type Host struct {
	// Name is the host's short name, "h0", "h1", ...
	Name string
	// Netns is the namespace name under /run/netns (for `ip netns exec`).
	Netns string
	// Addr is the host's address on the cluster subnet.
	Addr netip.Addr
	// Link is the name of the host's underlay link inside its namespace ("eth0").
	Link string

	ns netns.NsHandle // open until the cluster is closed

	mntOnce sync.Once
	mntFile string // the host's own mount namespace, bound here; "" until made
	mntErr  error
}

// New builds a cluster of n hosts for a test and tears it down in t.Cleanup,
// whether or not the test passes. It gates on [roottest.Require] (so it skips
// without MUSTER_ROOT_TESTS=1), runs [Sweep] once per process first, and fails
// the test if the cluster cannot be built (after removing what was built).
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	roottest.Require(t, roottest.BinaryFrom("ip", "iproute2"),
		roottest.Kernel(roottest.Veth), roottest.Kernel(roottest.Bridge))
	sweepOnce.Do(func() { sweepErr = Sweep() })
	if sweepErr != nil {
		t.Logf("testhost: sweeping leftovers of earlier runs: %v", sweepErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Build(ctx, n, nil)
	if err != nil {
		t.Fatalf("testhost: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("testhost: tearing down %s: %v", c.Name, err)
		}
	})
	return c
}

// Build creates a cluster of n hosts (1 <= n <= 253). On error it removes
// whatever it created and returns the error. The caller must Close the cluster.
// Build does not run [Sweep]; a long-lived program should call it once at start.
func Build(ctx context.Context, n int, opts *Options) (*Cluster, error) {
	if n < 1 || n > maxHosts {
		return nil, fmt.Errorf("testhost: %d hosts requested, want 1..%d", n, maxHosts)
	}
	if opts == nil {
		opts = &Options{}
	}
	name := fmt.Sprintf("%s%dc%d", Prefix, os.Getpid(), seq.Add(1)-1)
	if len(name) > 15 {
		return nil, fmt.Errorf("testhost: link name %q longer than 15 bytes", name)
	}
	c := &Cluster{Name: name, switchNS: name + "sw", switchH: -1}
	if err := c.build(ctx, n, opts); err != nil {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
		return nil, fmt.Errorf("testhost: building %s: %w", name, err)
	}
	return c, nil
}

func (c *Cluster) build(ctx context.Context, n int, opts *Options) error {
	var err error
	c.Subnet, c.lock, err = allocSubnet()
	if err != nil {
		return err
	}
	c.RootAddr = nthAddr(c.Subnet, 254)
	mask := net.CIDRMask(c.Subnet.Bits(), 32)

	// The switch: a namespace holding the bridge.
	if c.switchH, err = c.addNetns(ctx, c.switchNS); err != nil {
		return err
	}
	sw, err := netlink.NewHandleAt(c.switchH)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", c.switchNS, err)
	}
	defer sw.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge, MTU: opts.MTU}}
	if err := sw.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge in %s: %w", c.switchNS, err)
	}
	if err := sw.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing up bridge in %s: %w", c.switchNS, err)
	}
	// attach puts the switch-side end of a veth on the bridge and brings it up.
	attach := func(port string) error {
		l, err := sw.LinkByName(port)
		if err == nil {
			err = sw.LinkSetMaster(l, br)
		}
		if err == nil {
			err = sw.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("attaching %s to the bridge in %s: %w", port, c.switchNS, err)
		}
		return nil
	}

	// The root namespace's link to the switch.
	rootVeth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: c.Name, MTU: opts.MTU},
		PeerName:  rootPeer, PeerNamespace: netlink.NsFd(c.switchH), PeerMTU: uint32(opts.MTU),
	}
	if err := netlink.LinkAdd(rootVeth); err != nil {
		return fmt.Errorf("adding root link %s: %w", c.Name, err)
	}
	c.rootLink = c.Name
	if err := netlink.AddrAdd(rootVeth, &netlink.Addr{IPNet: &net.IPNet{IP: c.RootAddr.AsSlice(), Mask: mask}}); err != nil {
		return fmt.Errorf("addressing root link %s: %w", c.Name, err)
	}
	if err := netlink.LinkSetUp(rootVeth); err != nil {
		return fmt.Errorf("bringing up root link %s: %w", c.Name, err)
	}
	if err := attach(rootPeer); err != nil {
		return err
	}

	// The hosts.
	for i := range n {
		if err := ctx.Err(); err != nil {
			return err
		}
		h := &Host{
			Name:  fmt.Sprintf("h%d", i),
			Netns: fmt.Sprintf("%sh%d", c.Name, i),
			Addr:  nthAddr(c.Subnet, i+1),
			Link:  hostLink,
			ns:    -1,
		}
		if h.ns, err = c.addNetns(ctx, h.Netns); err != nil {
			return err
		}
		c.Hosts = append(c.Hosts, h)
		if err := c.setupHost(h, mask, opts); err != nil {
			return err
		}
		if err := attach(h.Name); err != nil {
			return err
		}
	}
	return nil
}

// setupHost creates the host's veth (eth0 inside, h<i> in the switch) and
// brings up lo and eth0 with the host's address.
func (c *Cluster) setupHost(h *Host, mask net.IPMask, opts *Options) error {
	hh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", h.Netns, err)
	}
	defer hh.Close()
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostLink, MTU: opts.MTU},
		PeerName:  h.Name, PeerNamespace: netlink.NsFd(c.switchH), PeerMTU: uint32(opts.MTU),
	}
	if err := hh.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding %s in %s: %w", hostLink, h.Netns, err)
	}
	if err := hh.AddrAdd(veth, &netlink.Addr{IPNet: &net.IPNet{IP: h.Addr.AsSlice(), Mask: mask}}); err != nil {
		return fmt.Errorf("addressing %s in %s: %w", hostLink, h.Netns, err)
	}
	lo, err := hh.LinkByName("lo")
	if err == nil {
		err = hh.LinkSetUp(lo)
	}
	if err == nil {
		err = hh.LinkSetUp(veth)
	}
	if err != nil {
		return fmt.Errorf("bringing up links in %s: %w", h.Netns, err)
	}
	return nil
}

// addNetns creates the named namespace with `ip netns add` and opens it.
func (c *Cluster) addNetns(ctx context.Context, name string) (netns.NsHandle, error) {
	if err := ipNetns(ctx, "add", name); err != nil {
		return -1, err
	}
	c.namespaces = append(c.namespaces, name)
	h, err := netns.GetFromName(name)
	if err != nil {
		return -1, fmt.Errorf("opening namespace %s: %w", name, err)
	}
	return h, nil
}

// Close tears the cluster down: it deletes the root namespace's link, every
// namespace the cluster created and its subnet lock file, and closes its
// namespace handles. It is safe to call more than once; later calls return the
// first result. Listeners and other sockets created in a host keep that
// namespace alive (unnamed) until they are closed; close them first.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.teardown() })
	return c.closeErr
}

func (c *Cluster) teardown() error {
	var errs []error
	for _, h := range c.Hosts {
		closeNs(&h.ns)
		if h.mntFile != "" {
			errs = append(errs, releaseMountNS(h.mntFile))
		}
	}
	closeNs(&c.switchH)
	if c.rootLink != "" {
		if l, err := netlink.LinkByName(c.rootLink); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("deleting root link %s: %w", c.rootLink, err))
			}
		} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
			errs = append(errs, fmt.Errorf("finding root link %s: %w", c.rootLink, err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(c.namespaces) - 1; i >= 0; i-- {
		if err := ipNetns(ctx, "delete", c.namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if c.lock != nil {
		if err := releaseLock(c.lock); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func closeNs(h *netns.NsHandle) {
	if h.IsOpen() {
		h.Close()
	}
	*h = -1
}

// Do runs fn on the calling goroutine with its OS thread switched into the
// host's network namespace, and returns fn's error. Sockets fn creates belong to
// the host's namespace for their whole life. Goroutines that fn starts do not
// run in the namespace.
func (h *Host) Do(fn func() error) error {
	return namespace.Run(h.ns, fn)
}

// Handle returns a netlink handle operating in the host's namespace. The caller
// closes it.
func (h *Host) Handle() (*netlink.Handle, error) {
	return netlink.NewHandleAt(h.ns)
}

// Listen is net.Listen inside the host's namespace. The listener may be used
// from any goroutine; the caller closes it.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ipNetns runs `ip netns <verb> <name>`.
func ipNetns(ctx context.Context, verb, name string) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", verb, name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns %s %s: %v: %s", verb, name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nthAddr returns the address with last octet n in the /24 p.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a)
}

// subnet returns the i-th /24 of the underlay range.
func subnet(i int) netip.Prefix {
	a := underlay.Addr().As4()
	a[1] += byte(i / 256) // 198.18, then 198.19
	a[2] = byte(i % 256)
	return netip.PrefixFrom(netip.AddrFrom4(a), 24)
}

func lockPath(i int) string { return filepath.Join(lockDir, fmt.Sprintf("subnet-%d.lock", i)) }

// allocSubnet takes the first /24 whose lock file it can lock and that the root
// namespace does not already use, and returns it with the held lock file.
func allocSubnet() (netip.Prefix, *os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return netip.Prefix{}, nil, err
	}
	used, err := rootPrefixes()
	if err != nil {
		return netip.Prefix{}, nil, err
	}
	for i := range numSubnet {
		p := subnet(i)
		if overlapsAny(p, used) {
			continue
		}
		f, err := tryLock(lockPath(i), true)
		if err != nil {
			return netip.Prefix{}, nil, err
		}
		if f == nil {
			continue
		}
		fmt.Fprintf(f, "%d\n", os.Getpid())
		return p, f, nil
	}
	return netip.Prefix{}, nil, fmt.Errorf("no free /24 in %s", underlay)
}

// tryLock opens path (creating it if create) and takes an exclusive flock
// without waiting. It returns nil, nil if the file is locked by someone else or
// (when !create) absent. The returned file is the one path names, so removing
// path while holding the lock is safe.
func tryLock(path string, create bool) (*os.File, error) {
	for {
		flag := os.O_RDWR
		if create {
			flag |= os.O_CREATE
		}
		f, err := os.OpenFile(path, flag, 0o644)
		if errors.Is(err, os.ErrNotExist) && !create {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		// The holder before us may have removed path after we opened it.
		fi, err1 := f.Stat()
		pi, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi, pi) {
			return f, nil
		}
		f.Close()
		if err2 != nil && !create {
			return nil, nil
		}
	}
}

// releaseLock removes a held lock file, then drops the lock.
func releaseLock(f *os.File) error {
	err := os.Remove(f.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, f.Close())
}

// rootPrefixes lists the IPv4 addresses and route destinations of the root
// namespace, as prefixes.
func rootPrefixes() ([]netip.Prefix, error) {
	var ps []netip.Prefix
	add := func(n *net.IPNet) {
		if n == nil {
			return
		}
		a, ok := netip.AddrFromSlice(n.IP)
		ones, _ := n.Mask.Size()
		if ok && ones > 0 {
			ps = append(ps, netip.PrefixFrom(a.Unmap(), ones).Masked())
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing root addresses: %w", err)
	}
	for _, a := range addrs {
		add(a.IPNet)
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing root routes: %w", err)
	}
	for _, r := range routes {
		add(r.Dst)
	}
	return ps, nil
}

func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	for _, q := range ps {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// ownerPid returns the creator pid encoded in a name this package gives.
func ownerPid(name string) (int, bool) {
	m := ownedName.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	pid, err := strconv.Atoi(m[1])
	return pid, err == nil && pid > 0
}

// alive reports whether process pid exists (if in doubt, it says yes).
func alive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// Sweep removes the leftovers of killed runs: named namespaces and
// root-namespace links whose name carries [Prefix] and the pid of a process that
// no longer exists, and subnet lock files that no process holds. It never
// touches anything of a live process. It returns the errors it met, after
// trying everything.
func Sweep() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if pid, ok := ownerPid(e.Name()); ok && !alive(pid) {
			if err := ipNetns(ctx, "delete", e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing root links: %w", err))
	}
	for _, l := range links {
		if pid, ok := ownerPid(l.Attrs().Name); ok && !alive(pid) {
			// The link may vanish meanwhile, with its peer's namespace.
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
				errs = append(errs, fmt.Errorf("deleting root link %s: %w", l.Attrs().Name, err))
			}
		}
	}
	mnts, err := filepath.Glob(filepath.Join(lockDir, mntPrefix+"*"))
	if err != nil {
		errs = append(errs, err)
	}
	for _, path := range mnts {
		if pid, ok := ownerPid(strings.TrimPrefix(filepath.Base(path), mntPrefix)); ok && !alive(pid) {
			errs = append(errs, releaseMountNS(path))
		}
	}
	locks, err := filepath.Glob(filepath.Join(lockDir, "subnet-*.lock"))
	if err != nil {
		errs = append(errs, err)
	}
	for _, path := range locks {
		f, err := tryLock(path, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f != nil {
			if err := releaseLock(f); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
