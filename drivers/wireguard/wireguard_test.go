package wireguard

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func require(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.Kernel(roottest.TUN), roottest.Kernel(roottest.Bridge))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openOn opens a driver for host h, closed in t.Cleanup.
func openOn(t testing.TB, h *testhost.Host) (*Driver, *netlink.Handle) {
	t.Helper()
	hh, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hh.Close)
	d, err := Open(testCtx(t), &Options{Handle: hh, Do: h.Do})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d, hh
}

// TestConformance runs the suite in both modes, in subtests named after
// them.
func TestConformance(t *testing.T) {
	require(t)
	for _, mode := range []driver.Mode{driver.WireGuard, driver.VXLANOverWireGuard} {
		t.Run(string(mode), func(t *testing.T) {
			var under netip.Addr
			drivertest.RunConformanceTests(t, drivertest.Harness{
				Mode: mode,
				Open: func(t *testing.T) driver.Driver {
					c := testhost.New(t, 1)
					under = c.Hosts[0].Addr
					d, _ := openOn(t, c.Hosts[0])
					return d
				},
				Spec: func(id string) *driver.Spec {
					s := drivertest.NewSpec(mode, id, under)
					f := fnv.New32a()
					f.Write([]byte(id))
					s.Port = uint16(40000 + f.Sum32()%20000) // distinct per network on one server
					return s
				},
				Peers: func() []driver.Peer {
					// Addresses of the cluster's subnet that no host
					// holds: the peers' keepalives go nowhere outside
					// the test's switch.
					a := under.As4()
					a[3] = 200
					b := netip.AddrFrom4(a)
					return drivertest.NewPeers(mode, b, b.Next())
				},
			})
		})
	}
}

// TestKernel runs the kernel suite in both modes, in subtests named after
// them.
func TestKernel(t *testing.T) {
	require(t)
	for _, mode := range []driver.Mode{driver.WireGuard, driver.VXLANOverWireGuard} {
		t.Run(string(mode), func(t *testing.T) {
			drivertest.RunKernelTests(t, drivertest.KernelHarness{
				Mode: mode,
				Open: func(t *testing.T, host *testhost.Host) driver.Driver {
					d, _ := openOn(t, host)
					return d
				},
			})
		})
	}
}

// server is one host of a traffic test with its driver and spec.
type server struct {
	h    *testhost.Host
	d    *Driver
	nl   *netlink.Handle
	spec *driver.Spec
	name string
}

const netID = "wgnet"

func newKey(t testing.TB) string {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

// servers builds n hosts, each with network netID in mode WireGuard on
// range 198.19.<i+1>.0/24.
func servers(t testing.TB, n int) []*server {
	t.Helper()
	c := testhost.New(t, n)
	var ss []*server
	for i, h := range c.Hosts {
		d, nl := openOn(t, h)
		s := &server{h: h, d: d, nl: nl, name: fmt.Sprintf("server-%d", i), spec: &driver.Spec{
			ID:         netID,
			Mode:       driver.WireGuard,
			Subnet:     netip.MustParsePrefix("198.19.0.0/16"),
			Local:      netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i + 1), 1}), 24),
			Underlay:   h.Addr,
			PrivateKey: newKey(t),
		}}
		s.ensure(t)
		ss = append(ss, s)
	}
	return ss
}

func (s *server) ensure(t testing.TB) *driver.Status {
	t.Helper()
	st, err := s.d.EnsureNetwork(testCtx(t), s.spec)
	if err != nil {
		t.Fatalf("%s: EnsureNetwork: %v", s.name, err)
	}
	return st
}

func (s *server) peer(t testing.TB) driver.Peer {
	t.Helper()
	st := s.ensure(t)
	p := driver.Peer{Name: s.name, Underlay: s.h.Addr, PublicKey: st.PublicKey}
	if s.spec.Mode == driver.WireGuard {
		p.Range = s.spec.Local.Masked()
	}
	return p
}

// setPeers makes s's peers exactly others.
func (s *server) setPeers(t testing.TB, others ...*server) {
	t.Helper()
	var ps []driver.Peer
	for _, o := range others {
		ps = append(ps, o.peer(t))
	}
	if err := s.d.SetPeers(testCtx(t), netID, ps); err != nil {
		t.Fatalf("%s: SetPeers: %v", s.name, err)
	}
}

// echo serves TCP echo on s's bridge address, port 7000, until the test ends.
func (s *server) echo(t testing.TB) netip.AddrPort {
	t.Helper()
	addr := netip.AddrPortFrom(s.spec.Local.Addr(), 7000)
	l, err := s.h.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return addr
}

// dial connects from s's bridge address to addr, inside s's namespace.
func (s *server) dial(addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := s.h.Do(func() error {
		var err error
		dl := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.spec.Local.Addr(), 0))}
		c, err = dl.Dial("tcp", addr.String())
		return err
	})
	return c, err
}

// firstDial connects like dial, retrying for up to a minute: the first
// contact between two servers waits for WireGuard's handshake. When both
// ends initiate at once (SetPeers on both sends a keepalive) the
// initiations cross and WireGuard retries after 5 seconds; rarely the
// first session is unusable one way and WireGuard re-handshakes after 15
// seconds of unanswered data.
func (s *server) firstDial(t testing.TB, addr netip.AddrPort) net.Conn {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := s.dial(addr, 5*time.Second)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s: %v", s.name, addr, err)
		}
	}
}

// roundTrip sends a line on c and waits for its echo.
func roundTrip(c net.Conn, r *bufio.Reader, msg string, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// peerState returns s's device's view of peer o.
func (s *server) peerState(t testing.TB, o *server) wgtypes.Peer {
	t.Helper()
	dev, err := s.d.Device(testCtx(t), netID)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := wgtypes.ParseKey(o.peer(t).PublicKey)
	for _, p := range dev.Peers {
		if p.PublicKey == pub {
			return p
		}
	}
	t.Fatalf("%s's device has no peer %s", s.name, o.name)
	return wgtypes.Peer{}
}

// TestRotateKeys checks the WireGuard side of a first contact (endpoint,
// keepalive, Connected after handshakes), then replaces two servers'
// private keys in place: an open TCP connection between them survives.
func TestRotateKeys(t *testing.T) {
	require(t)
	ss := servers(t, 3)
	a, b, c := ss[0], ss[1], ss[2]
	a.setPeers(t, b, c)
	b.setPeers(t, a, c)
	c.setPeers(t, a, b)
	toB, toC := b.echo(t), c.echo(t)
	conn := a.firstDial(t, toB)
	defer conn.Close()
	r := bufio.NewReader(conn)
	if err := roundTrip(conn, r, "before rotating", 20*time.Second); err != nil {
		t.Fatalf("A -> B through the tunnel: %v", err)
	}
	pb := a.peerState(t, b)
	if pb.LastHandshakeTime.IsZero() || pb.Endpoint.String() != netip.AddrPortFrom(b.h.Addr, DefaultPort).String() || pb.PersistentKeepaliveInterval != Keepalive {
		t.Fatalf("A's peer B: handshake %v, endpoint %v, keepalive %v", pb.LastHandshakeTime, pb.Endpoint, pb.PersistentKeepaliveInterval)
	}
	a.firstDial(t, toC).Close()
	if st := a.ensure(t); !slices.Equal(st.Connected, []string{b.name, c.name}) {
		t.Fatalf("A's connected peers %q after talking to both", st.Connected)
	}
	for _, s := range []*server{a, b} {
		rotated := time.Now()
		old := s.peer(t).PublicKey
		s.spec.PrivateKey = newKey(t)
		if st := s.ensure(t); st.PublicKey == old {
			t.Fatalf("%s: public key unchanged after rotation", s.name)
		}
		for _, o := range ss {
			if o != s {
				var others []*server
				for _, x := range ss {
					if x != o {
						others = append(others, x)
					}
				}
				o.setPeers(t, others...)
			}
		}
		if err := roundTrip(conn, r, "after rotating "+s.name, 30*time.Second); err != nil {
			t.Fatalf("the TCP connection A -> B did not survive %s's key rotation: %v", s.name, err)
		}
		if hs := a.peerState(t, b).LastHandshakeTime; hs.Before(rotated.Truncate(time.Second)) {
			t.Fatalf("A's last handshake with B at %v, before %s's rotation at %v", hs, s.name, rotated)
		}
	}
}

// routes lists the destinations routed through s's WireGuard device.
func (s *server) routes(t testing.TB) []string {
	t.Helper()
	s.d.mu.Lock()
	ifname := s.d.networks[netID].ifname
	s.d.mu.Unlock()
	l, err := s.nl.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := s.nl.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Dst != nil {
			out = append(out, r.Dst.String())
		}
	}
	return out
}

func TestSocketInNamespace(t *testing.T) {
	require(t)
	s := servers(t, 1)[0]
	s.spec.Port = 51998
	s.ensure(t)
	// wireguard-go follows the TUN link's state from a goroutine of its
	// own, closing its socket when the link goes down and opening it again
	// when it comes up: that socket must land in the host's namespace too.
	// Do what that goroutine does, from this goroutine, which is not in
	// the host's namespace.
	s.d.mu.Lock()
	dev := s.d.networks[netID].dev.(*userspaceDevice).dev
	s.d.mu.Unlock()
	if err := dev.Down(); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	var inHost error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := s.h.Do(func() error { inHost = checkSocket(51998); return nil }); err != nil {
			t.Fatal(err)
		}
		if inHost == nil || time.Now().After(deadline) {
			break
		}
	}
	if inHost != nil {
		t.Fatalf("no WireGuard socket in the host's namespace after Down and Up from another namespace: %v", inHost)
	}
	if err := currentNamespace(func() error { return checkSocket(51998) }); err == nil {
		t.Fatal("the WireGuard socket is in the test process's namespace")
	}
	s.spec.Port = 51999
	s.ensure(t)
	if err := s.h.Do(func() error { return checkSocket(51999) }); err != nil {
		t.Fatalf("after moving the port: %v", err)
	}
	if dev, err := s.d.Device(testCtx(t), netID); err != nil || dev.ListenPort != 51999 {
		t.Fatalf("Device = %+v, %v; want port 51999", dev, err)
	}
	if err := currentNamespace(func() error { return checkSocket(51999) }); err == nil {
		t.Fatal("the WireGuard socket is in the test process's namespace")
	}

	// Moving to a port in use fails and keeps the old one.
	var udp net.PacketConn
	if err := s.h.Do(func() error {
		var err error
		udp, err = net.ListenPacket("udp4", ":52001")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	s.spec.Port = 52001
	if _, err := s.d.EnsureNetwork(testCtx(t), s.spec); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("moving to a port in use: %v", err)
	}
	if err := s.h.Do(func() error { return checkSocket(51999) }); err != nil {
		t.Fatalf("after failing to move the port: %v", err)
	}
	if sts, err := s.d.Networks(testCtx(t)); err != nil || sts[0].Spec.Port != 51999 {
		t.Fatalf("Networks after failing to move the port: %v, %v", sts, err)
	}
}

// TestDeleteAndCloseStopEverything checks that DeleteNetwork and Close stop
// the embedded devices' goroutines and remove their links.
func TestDeleteAndCloseStopEverything(t *testing.T) {
	require(t)
	s := servers(t, 1)[0]
	if err := s.d.DeleteNetwork(testCtx(t), netID); err != nil {
		t.Fatal(err)
	}
	before := drivertest.Snapshot(t, s.h)
	base := runtime.NumGoroutine()
	waitGoroutines := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > base; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%s: %d goroutines, %d before:\n%s", what, runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
			}
		}
		if diff := before.Diff(drivertest.Snapshot(t, s.h)); diff != "" {
			t.Fatalf("%s left state behind:%s", what, diff)
		}
	}
	peers := drivertest.NewPeers(driver.WireGuard, netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("198.18.255.2"))
	peers[0].Range, peers[1].Range = netip.MustParsePrefix("198.19.2.0/24"), netip.MustParsePrefix("198.19.3.0/24")
	s.ensure(t)
	if err := s.d.SetPeers(testCtx(t), netID, peers); err != nil {
		t.Fatal(err)
	}
	if len(s.routes(t)) != 2 {
		t.Fatalf("routes = %v", s.routes(t))
	}
	if err := s.d.DeleteNetwork(testCtx(t), netID); err != nil {
		t.Fatal(err)
	}
	waitGoroutines("DeleteNetwork")

	s.ensure(t)
	if err := s.d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.d.Networks(testCtx(t)); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Networks after Close: %v", err)
	}
	// Close leaves the bridge; a driver opened later (an agent restart)
	// adopts it and recreates the device.
	if _, err := s.nl.LinkByName(BridgeName(netID)); err != nil {
		t.Fatalf("Close removed the bridge: %v", err)
	}
	d2, err := Open(testCtx(t), &Options{Handle: s.nl, Do: s.h.Do})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	st, err := d2.EnsureNetwork(testCtx(t), s.spec)
	if err != nil {
		t.Fatalf("EnsureNetwork after a restart: %v", err)
	}
	if st.Bridge != BridgeName(netID) {
		t.Fatalf("bridge %s", st.Bridge)
	}
	if err := d2.DeleteNetwork(testCtx(t), netID); err != nil {
		t.Fatal(err)
	}
	waitGoroutines("Close, reopen, delete")
}

// TestKernelDevice runs traffic through kernel WireGuard devices where the
// kernel has the module; roottest skips it on machines that lack it.
func TestKernelDevice(t *testing.T) {
	roottest.Require(t, roottest.Kernel(roottest.WireGuard), roottest.Kernel(roottest.Bridge))
	ss := servers(t, 2)
	a, b := ss[0], ss[1]
	a.setPeers(t, b)
	b.setPeers(t, a)
	conn := a.firstDial(t, b.echo(t))
	defer conn.Close()
	if err := roundTrip(conn, bufio.NewReader(conn), "through the kernel device", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if dev, err := a.d.Device(testCtx(t), netID); err != nil || dev.Type != wgtypes.LinuxKernel {
		t.Fatalf("Device = %+v, %v; want a kernel device", dev, err)
	}
}

// TestRepairAndLocal checks what the kernel suite does not: ensuring again
// repairs a route removed behind the driver's back, a new Local becomes
// the routes' source, and the embedded device reads a new MTU from its
// TUN link although it runs outside the namespace.
func TestRepairAndLocal(t *testing.T) {
	require(t)
	s := servers(t, 1)[0]
	peers := drivertest.NewPeers(driver.WireGuard, netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("198.18.255.2"))
	peers[0].Range, peers[1].Range = netip.MustParsePrefix("198.19.2.0/24"), netip.MustParsePrefix("198.19.3.0/24")
	if err := s.d.SetPeers(testCtx(t), netID, peers); err != nil {
		t.Fatal(err)
	}
	s.d.mu.Lock()
	ifname := s.d.networks[netID].ifname
	s.d.mu.Unlock()
	link, err := s.nl.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := s.nl.RouteList(link, netlink.FAMILY_V4)
	if err != nil || len(rs) != 2 {
		t.Fatalf("routes %v, %v", rs, err)
	}
	if err := s.nl.RouteDel(&rs[0]); err != nil {
		t.Fatal(err)
	}
	s.spec.Local = netip.MustParsePrefix("198.19.1.2/24")
	s.spec.MTU = 1300
	st := s.ensure(t)
	if st.MTU != 1300 || st.Spec.Local != s.spec.Local || len(st.Peers) != 2 {
		t.Fatalf("status %+v", st)
	}
	rs, err = s.nl.RouteList(link, netlink.FAMILY_V4)
	if err != nil || len(rs) != 2 {
		t.Fatalf("routes after ensuring again: %v, %v", rs, err)
	}
	for _, r := range rs {
		if !r.Src.Equal(net.ParseIP("198.19.1.2")) {
			t.Fatalf("route %v does not have the new Local as its source", r)
		}
	}
	br, err := s.nl.LinkByName(st.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := s.nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "198.19.1.2/24" {
		t.Fatalf("bridge addresses %v, %v", addrs, err)
	}
	s.d.mu.Lock()
	u := s.d.networks[netID].dev.(*userspaceDevice)
	s.d.mu.Unlock()
	if mtu, err := u.tun.MTU(); err != nil || mtu != 1300 { // read from outside the namespace
		t.Fatalf("the device reads MTU %d, %v; want 1300", mtu, err)
	}
	for _, name := range []string{ifname, st.Bridge} {
		if l, err := s.nl.LinkByName(name); err != nil || l.Attrs().MTU != 1300 {
			t.Fatalf("%s: MTU %v, %v", name, l, err)
		}
	}
}
