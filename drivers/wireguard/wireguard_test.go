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
	"strings"
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
	return serversOf(t, driver.WireGuard, n)
}

// serversOf builds n hosts, each with network netID in mode: on range
// 198.19.<i+1>.0/24 in mode WireGuard, at 198.19.0.<i+1>/16 with VNI 4242
// in mode VXLANOverWireGuard.
func serversOf(t testing.TB, mode driver.Mode, n int) []*server {
	t.Helper()
	c := testhost.New(t, n)
	var ss []*server
	for i, h := range c.Hosts {
		d, nl := openOn(t, h)
		s := &server{h: h, d: d, nl: nl, name: fmt.Sprintf("server-%d", i), spec: &driver.Spec{
			ID:         netID,
			Mode:       mode,
			Subnet:     netip.MustParsePrefix("198.19.0.0/16"),
			Local:      netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i + 1), 1}), 24),
			Underlay:   h.Addr,
			PrivateKey: newKey(t),
		}}
		if mode == driver.VXLANOverWireGuard {
			s.spec.Local = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(i + 1)}), 16)
			s.spec.VNI = 4242
		}
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

func TestTraffic(t *testing.T) {
	require(t)
	ss := servers(t, 3)
	a, b, c := ss[0], ss[1], ss[2]
	a.setPeers(t, b, c)
	b.setPeers(t, a, c)
	c.setPeers(t, a, b)
	toB, toC := b.echo(t), c.echo(t)
	toA := a.echo(t)

	conn := a.firstDial(t, toB)
	defer conn.Close()
	r := bufio.NewReader(conn)
	payload := strings.Repeat("x", 100000)
	if err := roundTrip(conn, r, payload, 20*time.Second); err != nil {
		t.Fatalf("A -> B through the tunnel: %v", err)
	}
	pb := a.peerState(t, b)
	if pb.LastHandshakeTime.IsZero() || pb.TransmitBytes < int64(len(payload)) || pb.ReceiveBytes < int64(len(payload)) {
		t.Fatalf("A's peer B after %d bytes each way: handshake %v, tx %d, rx %d", len(payload), pb.LastHandshakeTime, pb.TransmitBytes, pb.ReceiveBytes)
	}
	if pb.Endpoint.String() != netip.AddrPortFrom(b.h.Addr, DefaultPort).String() || pb.PersistentKeepaliveInterval != Keepalive {
		t.Fatalf("A's peer B: endpoint %v, keepalive %v", pb.Endpoint, pb.PersistentKeepaliveInterval)
	}
	a.firstDial(t, toC).Close()
	if st := a.ensure(t); !slices.Equal(st.Connected, []string{b.name, c.name}) {
		t.Fatalf("A's connected peers %q after talking to both", st.Connected)
	}

	t.Run("RotateKeys", func(t *testing.T) {
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
	})

	t.Run("RemovePeer", func(t *testing.T) {
		a.setPeers(t, b)
		if cc, err := a.dial(toC, 2*time.Second); err == nil {
			cc.Close()
			t.Fatal("A reaches C after C was removed from A's peers")
		}
		if cc, err := c.dial(toA, 2*time.Second); err == nil {
			cc.Close()
			t.Fatal("C reaches A after C was removed from A's peers")
		}
		if err := roundTrip(conn, r, "after removing C", 10*time.Second); err != nil {
			t.Fatalf("A -> B after removing C: %v", err)
		}
		if st := a.ensure(t); !slices.Equal(st.Connected, []string{b.name}) {
			t.Fatalf("A's connected peers %q after removing C", st.Connected)
		}
		routes := a.routes(t)
		if !slices.Contains(routes, "198.19.2.0/24") || slices.Contains(routes, "198.19.3.0/24") {
			t.Fatalf("A's routes through the device = %v, want B's range and not C's", routes)
		}
	})
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

// snapshot describes the links and routes of a namespace.
func snapshot(t testing.TB, nl *netlink.Handle) string {
	t.Helper()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range links {
		lines = append(lines, "link "+l.Attrs().Name)
	}
	routes, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast()) {
			continue // IPv6 autoconfiguration on eth0 comes and goes on its own
		}
		lines = append(lines, "route "+r.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
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

func TestBadInputLeavesNothing(t *testing.T) {
	require(t)
	c := testhost.New(t, 1)
	h := c.Hosts[0]
	d, nl := openOn(t, h)
	before := snapshot(t, nl)
	ctx := testCtx(t)
	good := func() *driver.Spec {
		return &driver.Spec{ID: netID, Mode: driver.WireGuard, Subnet: netip.MustParsePrefix("198.19.0.0/16"),
			Local: netip.MustParsePrefix("198.19.1.1/24"), Underlay: h.Addr, PrivateKey: newKey(t), Port: 52000}
	}
	check := func(what string, err error, code errcode.Code) {
		t.Helper()
		if !errors.Is(err, code) {
			t.Fatalf("%s: error %v (code %v), want %v", what, err, errcode.Of(err), code)
		}
		if after := snapshot(t, nl); after != before {
			t.Fatalf("%s left links or routes behind:\nbefore\n%s\nafter\n%s", what, before, after)
		}
		if sts, _ := d.Networks(ctx); len(sts) != 0 {
			t.Fatalf("%s: Networks = %v", what, sts)
		}
	}

	s := good()
	s.PrivateKey = "AAAA"
	_, err := d.EnsureNetwork(ctx, s)
	check("malformed key", err, errcode.InvalidArgument)

	s = good()
	s.Mode = driver.VXLAN
	s.PrivateKey, s.VNI, s.Local = "", 7, netip.MustParsePrefix("198.19.1.1/16")
	_, err = d.EnsureNetwork(ctx, s)
	check("VXLAN mode", err, errcode.Unimplemented)

	s = good()
	s.MTU = 1500 // the underlay's 1500 leaves 1420
	_, err = d.EnsureNetwork(ctx, s)
	check("MTU above the underlay's", err, errcode.FailedPrecondition)

	s = good()
	s.Underlay = netip.MustParseAddr("198.18.255.1")
	_, err = d.EnsureNetwork(ctx, s)
	check("underlay not on this server", err, errcode.FailedPrecondition)

	// The port is taken in the host's namespace: the device fails to bind
	// after the bridge and the TUN link exist, and both are removed.
	var udp net.PacketConn
	if err := h.Do(func() error {
		var err error
		udp, err = net.ListenPacket("udp", ":52000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_, err = d.EnsureNetwork(ctx, good())
	udp.Close()
	check("port in use", err, errcode.FailedPrecondition)

	// A link holding the bridge's name that is not the network's.
	dummy := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName(netID)}}
	if err := nl.LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	withDummy := snapshot(t, nl)
	_, err = d.EnsureNetwork(ctx, good())
	if !errors.Is(err, errcode.AlreadyExists) || snapshot(t, nl) != withDummy {
		t.Fatalf("bridge name taken: error %v; links and routes %s", err, snapshot(t, nl))
	}
	if err := nl.LinkDel(dummy); err != nil {
		t.Fatal(err)
	}

	// Overlapping peer ranges are refused and change nothing.
	s = good()
	st, err := d.EnsureNetwork(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	withNet := snapshot(t, nl)
	peers := drivertest.NewPeers(driver.WireGuard, netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("198.18.255.2"))
	peers[0].Range = netip.MustParsePrefix("198.19.2.0/24")
	peers[1].Range = netip.MustParsePrefix("198.19.2.0/25")
	if err := d.SetPeers(ctx, netID, peers); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("overlapping ranges: %v", err)
	}
	peers[1].Range = netip.MustParsePrefix("198.19.1.0/24") // this server's
	if err := d.SetPeers(ctx, netID, peers); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("range overlapping Local: %v", err)
	}
	if after := snapshot(t, nl); after != withNet {
		t.Fatalf("rejected peers changed links or routes:\n%s\n%s", withNet, after)
	}
	if sts, _ := d.Networks(ctx); len(sts) != 1 || len(sts[0].Peers) != 0 || sts[0].PublicKey != st.PublicKey {
		t.Fatalf("Networks after rejected peers = %v", sts)
	}
	if err := d.DeleteNetwork(ctx, netID); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, nl); after != before {
		t.Fatalf("DeleteNetwork left links or routes behind:\nbefore\n%s\nafter\n%s", before, after)
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
	before := snapshot(t, s.nl)
	base := runtime.NumGoroutine()
	waitGoroutines := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > base; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%s: %d goroutines, %d before:\n%s", what, runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
			}
		}
		if after := snapshot(t, s.nl); after != before {
			t.Fatalf("%s left links or routes behind:\nbefore\n%s\nafter\n%s", what, before, after)
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

// TestChangeInPlaceAndRepair changes Local and the MTU in place and checks
// that ensuring again repairs a route removed behind the driver's back.
func TestChangeInPlaceAndRepair(t *testing.T) {
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
