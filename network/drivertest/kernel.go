package drivertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/testhost"
)

// KernelHarness opens a real driver on simulated servers for
// RunKernelTests.
type KernelHarness struct {
	// Mode is the mode of the suite's networks; the driver supports it.
	Mode driver.Mode
	// Open returns a driver that manages the networks of host, a simulated
	// server of package testhost: its kernel calls, sockets and processes
	// act in host's network namespace (host.Handle, host.Do,
	// host.Command). It registers its own cleanup with t.Cleanup, which
	// closes the driver whether or not the suite closed it already. The
	// suite keeps one driver open per host; to model an agent restart it
	// closes one and opens another on the same host.
	Open func(t *testing.T, host *testhost.Host) driver.Driver
}

// RunKernelTests runs a real driver on three simulated servers (it needs
// root: see testhost.New; the caller checks the kernel features its driver
// needs with roottest.Require first) and checks what the conformance suite
// cannot see: packets, and the servers' kernel state (State). The same
// subtests run on every real driver, in this order, on one network
// across the three servers and one more on h1:
//
//   - Traffic: nothing crosses before peers are set; then TCP flows
//     between every pair of servers' Local addresses, and a payload that
//     crosses the underlay is seen there in clear unless the driver's
//     Capabilities say Encrypted, and only then.
//   - ApplyAgainChangesNothing: ensuring every server's spec and setting
//     its peers again changes no link (nor its index), address, route,
//     forwarding entry or neighbour.
//   - RemovePeer: dropping a peer from one server's set cuts the two
//     servers apart, removes every entry of that peer and keeps every other
//     one; declaring it again restores the state as it was.
//   - ChangeInPlace: a new MTU changes MTUs only, and the old one restores
//     the state exactly; a new port on every server keeps the bridge, its
//     address and the peers, and traffic flows again once the peers are
//     declared anew.
//   - BadInputLeavesNothing: invalid specs and peers (InvalidArgument), a
//     mode the driver lacks (Unimplemented), an underlay the server lacks,
//     an MTU the underlay cannot carry and a port another program holds
//     (FailedPrecondition), a foreign link holding the bridge's name
//     (AlreadyExists): each fails with its code and leaves the state as it
//     was, for a new network and an existing one. Creating and deleting a
//     network leaves nothing.
//   - Delete: DeleteNetwork puts a server back as it was before the network,
//     and cuts it from the others.
//   - Restart: Close (twice) leaves the bridge and its address in place; a
//     new driver that ensures the spec and sets the peers adopts the
//     bridge, carries traffic again, and changes nothing when they are
//     applied once more.
//
// The specs are NewSpec's, with server i's Local 198.19.0.<i+1>/16 (layer
// 2) or 198.19.<i+1>.1/24 (layer 3), a private key of its own, ASN
// 64512+i and a hold time of 3s (BGP), and the mode's default port
// (ChangeInPlace moves it to the next port; BadInputLeavesNothing's
// network uses the one after). Layer-2 peers declare the server's bridge
// address as an endpoint, with the bridge's MAC.
func RunKernelTests(t *testing.T, h KernelHarness) {
	if h.Open == nil {
		t.Fatal("drivertest: KernelHarness.Open is nil; it is required")
	}
	if !slices.Contains(allModes, h.Mode) {
		t.Fatalf("drivertest: KernelHarness.Mode %q is not one of %q", h.Mode, allModes)
	}
	k := &kernel{h: h, c: testhost.New(t, 3)}
	for i, host := range k.c.Hosts {
		k.empty = append(k.empty, Snapshot(t, host))
		k.d = append(k.d, h.Open(t, host))
		k.specs = append(k.specs, k.spec(i, meshID, h.Mode))
		k.st = append(k.st, nil)
		k.peersOf = append(k.peersOf, nil)
		k.last = append(k.last, driver.Peer{})
		k.deleted = append(k.deleted, false)
		k.echo(t, host)
	}
	if modes := k.d[0].Capabilities().Modes; !slices.Contains(modes, h.Mode) {
		t.Fatalf("Capabilities().Modes = %v, want it to list %s", modes, h.Mode)
	}
	for _, tt := range []struct {
		name     string
		needMesh bool
		run      func(*testing.T, *kernel)
	}{
		{"Traffic", false, testTraffic},
		{"ApplyAgainChangesNothing", true, testApplyAgain},
		{"RemovePeer", true, testRemovePeer},
		{"ChangeInPlace", true, testChangeInPlace},
		{"BadInputLeavesNothing", false, testBadInput},
		{"Delete", true, testKernelDelete},
		{"Restart", true, testRestart},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needMesh && !k.meshUp {
				t.Skip("the Traffic subtest failed: there is no network to check")
			}
			tt.run(t, k)
		})
	}
}

var allModes = []driver.Mode{driver.VXLAN, driver.WireGuard, driver.BGP, driver.VXLANOverWireGuard}

const (
	meshID   = "kt-mesh" // the network across the three servers
	badID    = "kt-bad"  // BadInputLeavesNothing's network on h1
	echoPort = 7000
	// firstContact bounds the wait for a first exchange between two
	// servers: WireGuard handshakes and BGP sessions take seconds.
	firstContact = time.Minute
	// cutTimeout is how long a server tries to reach one it must not: a
	// dropped packet shows only as a timeout, and an exchange between
	// simulated servers takes milliseconds.
	cutTimeout = 600 * time.Millisecond
)

type kernel struct {
	h       KernelHarness
	c       *testhost.Cluster
	d       []driver.Driver   // each host's open driver
	empty   []*State          // each host before the suite's networks
	specs   []*driver.Spec    // the mesh network on each host
	st      []*driver.Status  // what the last EnsureNetwork of it returned
	peersOf [][]int           // each host's peers in the mesh, by index
	meshUp  bool              // Traffic passed
	last    []driver.Peer     // each host's end as last declared
	deleted []bool            // the host deleted the mesh network
	mu      sync.Mutex        // guards conns
	conns   map[net.Conn]bool // accepted by the echo servers
}

func (k *kernel) layer2(m driver.Mode) bool {
	return m == driver.VXLAN || m == driver.VXLANOverWireGuard
}

// ports returns the suite's ports of its mode: the one ChangeInPlace moves
// the mesh to, and the bad network's.
func (k *kernel) ports() (moved, bad uint16) {
	p := driver.DefaultPort(k.h.Mode)
	return p + 1, p + 2
}

// spec returns host i's spec of network id in mode m: Local
// 198.19.0.<i+1>/16 in layer-2 modes and 198.19.<i+1>.1/24 in layer-3
// ones, a private key per host and network, ASN 64512+i and a hold time of
// 3s (BGP), so that a lost session shows in seconds.
func (k *kernel) spec(i int, id string, m driver.Mode) *driver.Spec {
	host := k.c.Hosts[i]
	s := NewSpec(m, id, host.Addr)
	if k.layer2(m) {
		s.Local = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(i + 1)}), 16)
	} else {
		s.Local = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i + 1), 1}), 24)
	}
	if s.PrivateKey != "" {
		seed := sha256.Sum256([]byte("muster drivertest kernel " + id + " " + host.Name))
		s.PrivateKey = base64.StdEncoding.EncodeToString(seed[:])
	}
	if m == driver.BGP {
		s.ASN, s.HoldTime = 64512+uint32(i), 3*time.Second
	}
	if id == badID {
		_, s.Port = k.ports()
	}
	return s
}

func kctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// ensure applies host i's mesh spec.
func (k *kernel) ensure(t *testing.T, i int) *driver.Status {
	t.Helper()
	st, err := k.d[i].EnsureNetwork(kctx(t), k.specs[i])
	if err != nil {
		t.Fatalf("%s: EnsureNetwork(%s): %v", k.c.Hosts[i].Name, meshID, err)
	}
	k.st[i] = st
	return st
}

// peer returns host j's end of the mesh as its peers declare it; once
// host j deleted the network, as they last declared it.
func (k *kernel) peer(t *testing.T, j int) driver.Peer {
	t.Helper()
	if k.deleted[j] {
		return k.last[j]
	}
	p := k.makePeer(t, j)
	k.last[j] = p
	return p
}

func (k *kernel) makePeer(t *testing.T, j int) driver.Peer {
	t.Helper()
	host, spec := k.c.Hosts[j], k.specs[j]
	p := driver.Peer{Name: host.Name, Underlay: host.Addr, PublicKey: k.st[j].PublicKey}
	if k.layer2(spec.Mode) {
		p.Endpoints = []driver.Endpoint{{Address: spec.Local.Addr(), MAC: k.bridgeMAC(t, j)}}
	} else {
		p.Range = spec.Local.Masked()
	}
	if spec.Mode == driver.BGP {
		p.ASN = spec.ASN
	}
	return p
}

// bridgeMAC reads the address of host j's mesh bridge: the MAC its
// address answers with, which layer-2 peers declare as an endpoint.
func (k *kernel) bridgeMAC(t *testing.T, j int) net.HardwareAddr {
	t.Helper()
	nh, err := k.c.Hosts[j].Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(k.st[j].Bridge)
	if err != nil {
		t.Fatalf("%s: the bridge %s that Status names: %v", k.c.Hosts[j].Name, k.st[j].Bridge, err)
	}
	return l.Attrs().HardwareAddr
}

// setPeers makes host i's mesh peers exactly hosts js.
func (k *kernel) setPeers(t *testing.T, i int, js ...int) {
	t.Helper()
	var ps []driver.Peer
	for _, j := range js {
		ps = append(ps, k.peer(t, j))
	}
	if err := k.d[i].SetPeers(kctx(t), meshID, ps); err != nil {
		t.Fatalf("%s: SetPeers(%s): %v", k.c.Hosts[i].Name, meshID, err)
	}
	k.peersOf[i] = js
}

// others returns the indexes of every host but i.
func (k *kernel) others(i int) []int {
	var js []int
	for j := range k.c.Hosts {
		if j != i {
			js = append(js, j)
		}
	}
	return js
}

// status returns host i's mesh network as Networks lists it.
func (k *kernel) status(t *testing.T, i int) *driver.Status {
	t.Helper()
	sts, err := k.d[i].Networks(kctx(t))
	if err != nil {
		t.Fatalf("%s: Networks: %v", k.c.Hosts[i].Name, err)
	}
	for _, st := range sts {
		if st.Spec.ID == meshID {
			return st
		}
	}
	t.Fatalf("%s: Networks does not list %s", k.c.Hosts[i].Name, meshID)
	return nil
}

// echo serves TCP echo on every address of host, port echoPort, until the
// suite ends.
func (k *kernel) echo(t *testing.T, host *testhost.Host) {
	t.Helper()
	l, err := host.Listen("tcp4", fmt.Sprintf(":%d", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			k.mu.Lock()
			if k.conns == nil {
				k.conns = map[net.Conn]bool{}
			}
			k.conns[c] = true
			k.mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c)
				c.Close()
				k.mu.Lock()
				delete(k.conns, c)
				k.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		k.mu.Lock()
		for c := range k.conns {
			c.Close()
		}
		k.mu.Unlock()
		wg.Wait()
	})
}

// reach connects from host from's Local address to host to's, sends
// payload (a line if nil) and waits for its echo, all within timeout.
func (k *kernel) reach(from, to int, timeout time.Duration, payload []byte) error {
	if payload == nil {
		payload = fmt.Appendf(nil, "from %s to %s\n", k.c.Hosts[from].Name, k.c.Hosts[to].Name)
	}
	deadline := time.Now().Add(timeout)
	var c net.Conn
	err := k.c.Hosts[from].Do(func() error {
		d := net.Dialer{Deadline: deadline, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(k.specs[from].Local.Addr(), 0))}
		var err error
		c, err = d.Dial("tcp4", netip.AddrPortFrom(k.specs[to].Local.Addr(), echoPort).String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(payload); errc <- err }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(bufio.NewReader(c), got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

// firstReach checks that each pair (from, to) reaches, trying each again
// for up to firstContact, all at once: the first exchange between two
// servers may wait for a handshake or a session.
func (k *kernel) firstReach(t *testing.T, pairs ...[2]int) {
	t.Helper()
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() {
			// Short tries: a SYN sent before the path was ready is
			// sent again only after seconds (TCP's backoff), a new
			// dial's at once.
			deadline := time.Now().Add(firstContact)
			for {
				errs[i] = k.reach(p[0], p[1], time.Second, nil)
				if errs[i] == nil || time.Now().After(deadline) {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	for i, p := range pairs {
		if errs[i] != nil {
			t.Errorf("%s -> %s over %s: %v", k.c.Hosts[p[0]].Name, k.c.Hosts[p[1]].Name, meshID, errs[i])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// pairs lists every ordered pair of hosts in hosts.
func pairs(hosts ...int) [][2]int {
	var ps [][2]int
	for _, a := range hosts {
		for _, b := range hosts {
			if a != b {
				ps = append(ps, [2]int{a, b})
			}
		}
	}
	return ps
}

// cut checks that none of the pairs (from, to) reaches, trying them at
// once: a packet that is dropped shows only as a timeout.
func (k *kernel) cut(t *testing.T, why string, pairs ...[2]int) {
	t.Helper()
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() { errs[i] = k.reach(p[0], p[1], cutTimeout, nil) })
	}
	wg.Wait()
	for i, p := range pairs {
		if errs[i] == nil {
			t.Errorf("%s reaches %s %s", k.c.Hosts[p[0]].Name, k.c.Hosts[p[1]].Name, why)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// waitState waits up to a minute for host i's state, seen through view,
// to equal want's, and fails with the difference if it does not: routes
// learnt from sessions come back in seconds.
func (k *kernel) waitState(t *testing.T, i int, what string, want *State, view func(*State) *State) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		diff := view(want).Diff(view(Snapshot(t, k.c.Hosts[i])))
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s: the state of %s differs:%s", k.c.Hosts[i].Name, what, meshID, diff)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func sameState(t *testing.T, what string, before, after *State) {
	t.Helper()
	if diff := before.Diff(after); diff != "" {
		t.Fatalf("%s changed the state:%s", what, diff)
	}
}

// sameLinks checks that before and after have the same links, with the
// same indexes.
func sameLinks(t *testing.T, what string, before, after *State) {
	t.Helper()
	if a, b := show(before.Index), show(after.Index); a != b {
		t.Fatalf("%s changed the links or their indexes from %s to %s", what, a, b)
	}
}

func identity(s *State) *State { return s }

// sniff captures the frames of host i's underlay link until the returned
// function is called, which says whether one held marker and how many
// bytes went by.
func (k *kernel) sniff(t *testing.T, i int, marker []byte) func() (seen bool, n int64) {
	t.Helper()
	host := k.c.Hosts[i]
	nh, err := host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	link, err := nh.LinkByName(host.Link)
	nh.Close()
	if err != nil {
		t.Fatal(err)
	}
	all := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8 // in network byte order
	var fd int
	err = host.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(all))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: link.Attrs().Index}); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.Timeval{Usec: 100_000}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		t.Fatalf("%s: capturing on %s: %v", host.Name, host.Link, err)
	}
	var stop, seen atomic.Bool
	var total atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(fd)
		buf := make([]byte, 1<<17)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil { // the timeout: nothing is queued
				if stop.Load() {
					return
				}
				continue
			}
			total.Add(int64(n))
			if bytes.Contains(buf[:n], marker) {
				seen.Store(true)
			}
		}
	}()
	return func() (bool, int64) {
		stop.Store(true)
		<-done
		return seen.Load(), total.Load()
	}
}

func testTraffic(t *testing.T, k *kernel) {
	for i := range k.c.Hosts {
		k.ensure(t, i)
	}
	if err := k.reach(1, 0, cutTimeout, nil); err == nil {
		t.Fatal("h1 reached h0 before any peer was set")
	}
	for i := range k.c.Hosts {
		k.setPeers(t, i, k.others(i)...)
	}
	k.firstReach(t, pairs(0, 1, 2)...)

	// A payload that crosses the underlay: in clear, or not at all.
	marker := fmt.Appendf(nil, "muster-drivertest-cleartext-%d|", time.Now().UnixNano())
	payload := bytes.Repeat(marker, 128<<10/len(marker))
	stop := k.sniff(t, 1, marker)
	err := k.reach(0, 1, 20*time.Second, payload)
	seen, n := stop()
	if err != nil {
		t.Fatalf("h0 -> h1, %d bytes: %v", len(payload), err)
	}
	if n < int64(len(payload)) {
		t.Fatalf("%d bytes went by h1's underlay link while %d crossed to it each way: the payload took another path", n, len(payload))
	}
	if enc := k.d[0].Capabilities().Encrypted; seen == enc {
		if enc {
			t.Fatal("the payload crossed the underlay in clear, but Capabilities().Encrypted is true")
		}
		t.Fatal("the payload was not seen in clear on the underlay, but Capabilities().Encrypted is false")
	}

	for i := range k.c.Hosts {
		var want []string
		for _, j := range k.others(i) {
			want = append(want, k.c.Hosts[j].Name)
		}
		var got []string
		for _, p := range k.status(t, i).Peers {
			got = append(got, p.Name)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: Status.Peers names %q, want %q", k.c.Hosts[i].Name, got, want)
		}
	}
	k.meshUp = true
}

// withoutConnected returns st without what comes and goes on its own:
// live sessions, their handshakes and byte counts.
func withoutConnected(st *driver.Status) driver.Status {
	c := *st
	c.Connected, c.Sessions = nil, nil
	return c
}

func testApplyAgain(t *testing.T, k *kernel) {
	var before []*State
	for _, host := range k.c.Hosts {
		before = append(before, Snapshot(t, host))
	}
	for i := range k.c.Hosts {
		old := withoutConnected(k.status(t, i))
		if st := withoutConnected(k.ensure(t, i)); show(st) != show(old) {
			t.Fatalf("%s: ensuring the spec again returned another status:\n%s\nnot\n%s", k.c.Hosts[i].Name, show(st), show(old))
		}
		k.setPeers(t, i, k.peersOf[i]...)
		if st := withoutConnected(k.status(t, i)); show(st) != show(old) {
			t.Fatalf("%s: setting the peers again changed the status:\n%s\nto\n%s", k.c.Hosts[i].Name, show(old), show(st))
		}
	}
	for i, host := range k.c.Hosts {
		sameState(t, host.Name+": ensuring the spec and setting the peers again", before[i], Snapshot(t, host))
	}
	if err := k.reach(0, 1, 5*time.Second, nil); err != nil {
		t.Fatalf("h0 -> h1 after applying again: %v", err)
	}
}

// tokens returns what names host j's end in other servers' state: its
// underlay address, and its range or its endpoints' addresses and MACs.
func (k *kernel) tokens(t *testing.T, j int) []string {
	p := k.peer(t, j)
	ts := []string{p.Underlay.String()}
	if p.Range.IsValid() {
		ts = append(ts, p.Range.String())
	}
	for _, e := range p.Endpoints {
		ts = append(ts, e.Address.String(), e.MAC.String())
	}
	return ts
}

func testRemovePeer(t *testing.T, k *kernel) {
	var before []*State
	for _, host := range k.c.Hosts {
		before = append(before, Snapshot(t, host))
	}
	k.setPeers(t, 0, 1)
	if ps := k.status(t, 0).Peers; len(ps) != 1 || ps[0].Name != k.c.Hosts[1].Name {
		t.Fatalf("h0: Status.Peers = %s after declaring h1 only", show(ps))
	}
	after := Snapshot(t, k.c.Hosts[0])
	h2, h1 := k.tokens(t, 2), k.tokens(t, 1)
	for _, l := range after.Lines {
		if !slices.Contains(before[0].Lines, l) {
			t.Errorf("h0: removing h2 added %s", l)
		}
		if hasToken(l, h2...) {
			t.Errorf("h0 still has an entry of h2: %s", l)
		}
	}
	for _, l := range before[0].Lines {
		if hasToken(l, h1...) && !slices.Contains(after.Lines, l) {
			t.Errorf("h0: removing h2 removed an entry of h1: %s", l)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	sameLinks(t, "h0: removing h2", before[0], after)
	k.cut(t, "after h0 dropped h2", [2]int{0, 2}, [2]int{2, 0})
	for _, p := range [][2]int{{1, 0}, {0, 1}, {2, 1}, {1, 2}} {
		if err := k.reach(p[0], p[1], 5*time.Second, nil); err != nil {
			t.Fatalf("%s -> %s after h0 dropped h2: %v", k.c.Hosts[p[0]].Name, k.c.Hosts[p[1]].Name, err)
		}
	}

	k.setPeers(t, 0, 1, 2)
	k.firstReach(t, pairs(0, 2)...)
	for i := range k.c.Hosts {
		k.waitState(t, i, "after h0 declared h2 again", before[i], identity)
	}
}

func testChangeInPlace(t *testing.T, k *kernel) {
	h0 := k.c.Hosts[0]
	before := Snapshot(t, h0)
	bridge := k.st[0].Bridge
	peers := show(k.st[0].Peers)

	// The MTU: MTUs change, nothing else; the old one restores everything.
	k.specs[0].MTU = 1300
	st := k.ensure(t, 0)
	if st.MTU != 1300 || st.Spec.MTU != 1300 || show(st.Peers) != peers {
		t.Fatalf("after changing the MTU to 1300: Status.MTU %d, Spec.MTU %d, Peers %s (were %s)", st.MTU, st.Spec.MTU, show(st.Peers), peers)
	}
	after := Snapshot(t, h0)
	if mtu := linkMTU(after, bridge); mtu != 1300 {
		t.Fatalf("the bridge %s has MTU %d after changing the network's to 1300", bridge, mtu)
	}
	if diff := before.masked("mtu", "alias").Diff(after.masked("mtu", "alias")); diff != "" {
		t.Fatalf("changing the MTU changed more than MTUs:%s", diff)
	}
	sameLinks(t, "changing the MTU", before, after)
	if err := k.reach(0, 1, 5*time.Second, nil); err != nil {
		t.Fatalf("h0 -> h1 after changing the MTU: %v", err)
	}
	k.specs[0].MTU = 0
	k.ensure(t, 0)
	sameState(t, "changing the MTU back", before, Snapshot(t, h0))

	// The port, on every server: the bridge, its address and the peers
	// stay; traffic flows again once the peers are declared anew (a
	// layer-2 bridge takes the address of a port made again).
	moved, _ := k.ports()
	for i := range k.c.Hosts {
		k.specs[i].Port = moved
		st := k.ensure(t, i)
		if st.Spec.Port != moved {
			t.Fatalf("%s: Status.Spec.Port = %d after moving to %d", k.c.Hosts[i].Name, st.Spec.Port, moved)
		}
	}
	if show(k.st[0].Peers) != peers {
		t.Fatalf("moving the port changed h0's peers from %s to %s", peers, show(k.st[0].Peers))
	}
	if idx := Snapshot(t, h0).Index[bridge]; idx != before.Index[bridge] {
		t.Fatalf("moving the port made the bridge %s again (index %d, was %d)", bridge, idx, before.Index[bridge])
	}
	for i := range k.c.Hosts {
		k.setPeers(t, i, k.peersOf[i]...)
	}
	k.firstReach(t, pairs(0, 1, 2)...)
	k.waitState(t, 0, "after moving the port", before, func(s *State) *State { return s.masked("alias", "mac", "lladdr") })
}

// lineOf returns the first line of s that starts with prefix.
func lineOf(s *State, prefix string) string {
	for _, l := range s.Lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// linkMTU returns the MTU of link name in s.
func linkMTU(s *State, name string) int {
	var mtu int
	f := strings.Fields(lineOf(s, "link "+name+" "))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "mtu" {
			fmt.Sscan(f[i+1], &mtu)
		}
	}
	return mtu
}

// ghosts returns two valid peers of host i's network spec whose underlay
// addresses no server holds: layer-3 ranges 198.19.200.0/24 and
// 198.19.201.0/24, or layer-2 endpoints 198.19.200.1 and 198.19.201.1.
func (k *kernel) ghosts(spec *driver.Spec) []driver.Peer {
	base := k.c.Subnet.Addr().As4()
	ps := NewPeers(spec.Mode, netip.Addr{}, netip.Addr{})
	for i := range ps {
		p := &ps[i]
		p.Name = fmt.Sprintf("ghost-%d", i)
		a := base
		a[3] = byte(200 + i)
		p.Underlay = netip.AddrFrom4(a)
		if p.Range.IsValid() {
			p.Range = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(200 + i), 0}), 24)
		}
		for j := range p.Endpoints {
			p.Endpoints[j].Address = netip.AddrFrom4([4]byte{198, 19, byte(200 + i), 1})
		}
		if p.ASN != 0 {
			p.ASN = 64600
		}
	}
	return ps
}

func testBadInput(t *testing.T, k *kernel) {
	const i = 1
	host, d, c := k.c.Hosts[i], k.d[i], kctx(t)
	mode := k.h.Mode
	networks := func() string {
		t.Helper()
		sts, err := d.Networks(c)
		if err != nil {
			t.Fatalf("Networks: %v", err)
		}
		var ss []driver.Status
		for _, st := range sts {
			ss = append(ss, withoutConnected(st))
		}
		return show(ss)
	}
	before, nets := Snapshot(t, host), networks()
	refused := func(what string, err error, code errcode.Code, want *State, wantNets string) {
		t.Helper()
		if !errors.Is(err, code) {
			t.Fatalf("%s: got error %v (code %v), want code %v", what, err, errcode.Of(err), code)
		}
		sameState(t, what, want, Snapshot(t, host))
		if got := networks(); got != wantNets {
			t.Fatalf("%s changed Networks from\n%s\nto\n%s", what, wantNets, got)
		}
	}

	// Specs that fail validation, for a new network and for the mesh's.
	invalid := []struct {
		name   string
		mutate func(*driver.Spec)
	}{
		{"unknown mode", func(s *driver.Spec) { s.Mode = "ipip" }},
		{"local outside the subnet", func(s *driver.Spec) { s.Local = netip.MustParsePrefix("203.0.113.1/24") }},
		{"VNI out of range or where none belongs", func(s *driver.Spec) {
			if s.VNI == 0 {
				s.VNI = 7
			} else {
				s.VNI = 1 << 24
			}
		}},
		{"MTU 100", func(s *driver.Spec) { s.MTU = 100 }},
		{"malformed private key or one where none belongs", func(s *driver.Spec) { s.PrivateKey = "not-a-key" }},
	}
	for _, bad := range invalid {
		for _, spec := range []*driver.Spec{k.spec(i, badID, mode), k.clone(i)} {
			bad.mutate(spec)
			_, err := d.EnsureNetwork(c, spec)
			refused(bad.name+" ("+spec.ID+")", err, errcode.InvalidArgument, before, nets)
		}
	}

	// Specs the server cannot carry out.
	for _, m := range allModes {
		if !slices.Contains(d.Capabilities().Modes, m) {
			_, err := d.EnsureNetwork(c, k.spec(i, badID, m))
			refused("mode "+string(m)+", which the driver lacks", err, errcode.Unimplemented, before, nets)
			break
		}
	}
	elsewhere := k.spec(i, badID, mode)
	a := k.c.Subnet.Addr().As4()
	a[3] = 200
	elsewhere.Underlay = netip.AddrFrom4(a)
	_, err := d.EnsureNetwork(c, elsewhere)
	refused("an underlay address no link of the server holds", err, errcode.FailedPrecondition, before, nets)
	tooBig := k.spec(i, badID, mode)
	tooBig.MTU = 1500 - driver.Overhead(mode, false) + 1
	_, err = d.EnsureNetwork(c, tooBig)
	refused(fmt.Sprintf("MTU %d over an underlay of MTU 1500", tooBig.MTU), err, errcode.FailedPrecondition, before, nets)

	// Creating and deleting a network leaves nothing.
	st, err := d.EnsureNetwork(c, k.spec(i, badID, mode))
	if err != nil {
		t.Fatalf("EnsureNetwork(%s): %v", badID, err)
	}
	if err := d.DeleteNetwork(c, badID); err != nil {
		t.Fatalf("DeleteNetwork(%s): %v", badID, err)
	}
	sameState(t, "creating and deleting a network", before, Snapshot(t, host))

	// A port another program holds: the call fails part way.
	release := k.holdPort(t, host, mode)
	_, err = d.EnsureNetwork(c, k.spec(i, badID, mode))
	release()
	refused("a port another program holds", err, errcode.FailedPrecondition, before, nets)

	// A foreign link holding the bridge's name is not adopted.
	nh, err := host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	foreign := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: st.Bridge}}
	if err := nh.LinkAdd(foreign); err != nil {
		t.Fatalf("adding a foreign bridge %s: %v", st.Bridge, err)
	}
	withForeign := Snapshot(t, host)
	_, err = d.EnsureNetwork(c, k.spec(i, badID, mode))
	refused("a foreign bridge holding the name "+st.Bridge, err, errcode.AlreadyExists, withForeign, nets)
	if err := nh.LinkDel(foreign); err != nil {
		t.Fatal(err)
	}

	// Peers that fail validation change nothing.
	spec := k.spec(i, badID, mode)
	if _, err := d.EnsureNetwork(c, spec); err != nil {
		t.Fatalf("EnsureNetwork(%s): %v", badID, err)
	}
	ghosts := k.ghosts(spec)
	if err := d.SetPeers(c, badID, ghosts[:1]); err != nil {
		t.Fatalf("SetPeers(%s, one peer): %v", badID, err)
	}
	withPeer, nets2 := Snapshot(t, host), networks()
	for _, bad := range []struct {
		name   string
		mutate func(p *driver.Peer)
	}{
		{"a duplicate name", func(p *driver.Peer) { p.Name = ghosts[0].Name }},
		{"the server's own underlay", func(p *driver.Peer) { p.Underlay = spec.Underlay }},
		{"an IPv6 underlay", func(p *driver.Peer) { p.Underlay = netip.MustParseAddr("2001:db8::1") }},
		{"a range or endpoint outside the subnet", func(p *driver.Peer) {
			if p.Range.IsValid() {
				p.Range = netip.MustParsePrefix("203.0.113.0/24")
			} else {
				p.Endpoints[0].Address = netip.MustParseAddr("203.0.113.1")
			}
		}},
		{"a range overlapping Local, or a multicast endpoint MAC", func(p *driver.Peer) {
			if p.Range.IsValid() {
				p.Range = spec.Local.Masked()
			} else {
				p.Endpoints[0].MAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
			}
		}},
		{"a duplicate public key or one where none belongs", func(p *driver.Peer) {
			if p.PublicKey != "" {
				p.PublicKey = ghosts[0].PublicKey
			} else {
				p.PublicKey = ghosts[0].Name
			}
		}},
	} {
		p := ghosts[1]
		p.Endpoints = slices.Clone(p.Endpoints)
		bad.mutate(&p)
		refused("peers with "+bad.name, d.SetPeers(c, badID, []driver.Peer{ghosts[0], p}), errcode.InvalidArgument, withPeer, nets2)
	}
	if err := d.DeleteNetwork(c, badID); err != nil {
		t.Fatalf("DeleteNetwork(%s): %v", badID, err)
	}
	sameState(t, "a network with peers, deleted", before, Snapshot(t, host))
}

// clone returns a copy of host i's mesh spec.
func (k *kernel) clone(i int) *driver.Spec {
	s := *k.specs[i]
	return &s
}

// holdPort takes the bad network's port on host, as another program
// would: UDP in VXLAN and WireGuard modes, TCP in BGP mode.
func (k *kernel) holdPort(t *testing.T, host *testhost.Host, mode driver.Mode) (release func()) {
	t.Helper()
	_, port := k.ports()
	addr := fmt.Sprintf(":%d", port)
	var c io.Closer
	err := host.Do(func() (err error) {
		if mode == driver.BGP {
			c, err = net.Listen("tcp4", addr)
		} else {
			c, err = net.ListenPacket("udp4", addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: taking port %d: %v", host.Name, port, err)
	}
	return func() { c.Close() }
}

func testKernelDelete(t *testing.T, k *kernel) {
	const i = 2
	c := kctx(t)
	if err := k.d[i].DeleteNetwork(c, meshID); err != nil {
		t.Fatalf("h2: DeleteNetwork: %v", err)
	}
	k.deleted[i] = true
	sameState(t, "h2: deleting the network (against h2 before it)", k.empty[i], Snapshot(t, k.c.Hosts[i]))
	if sts, err := k.d[i].Networks(c); err != nil || len(sts) != 0 {
		t.Fatalf("h2: Networks after DeleteNetwork = %s, %v", show(sts), err)
	}
	if err := k.d[i].DeleteNetwork(c, meshID); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("h2: deleting the network again: %v, want code %v", err, errcode.NotFound)
	}
	k.cut(t, "after h2 deleted the network", [2]int{0, 2}, [2]int{2, 0})
	if err := k.reach(0, 1, 5*time.Second, nil); err != nil {
		t.Fatalf("h0 -> h1 after h2 deleted the network: %v", err)
	}
}

func testRestart(t *testing.T, k *kernel) {
	h0 := k.c.Hosts[0]
	bridge, local := k.st[0].Bridge, k.specs[0].Local
	before := Snapshot(t, h0)
	if err := k.d[0].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := k.d[0].Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	closed := Snapshot(t, h0)
	if closed.Index[bridge] != before.Index[bridge] || !slices.Contains(closed.Lines, fmt.Sprintf("addr %s %s", bridge, local)) {
		t.Fatalf("Close did not leave the bridge %s with %s in place:\n%s", bridge, local, closed)
	}
	k.d[0] = k.h.Open(t, h0)
	k.ensure(t, 0)
	k.setPeers(t, 0, k.peersOf[0]...)
	if idx := Snapshot(t, h0).Index[bridge]; idx != before.Index[bridge] {
		t.Fatalf("the new driver made the bridge %s again (index %d, was %d)", bridge, idx, before.Index[bridge])
	}
	k.firstReach(t, pairs(0, 1)...)
	again := Snapshot(t, h0)
	k.ensure(t, 0)
	k.setPeers(t, 0, k.peersOf[0]...)
	sameState(t, "applying the spec and peers again after the restart", again, Snapshot(t, h0))
	if err := k.d[0].DeleteNetwork(kctx(t), meshID); err != nil {
		t.Fatalf("DeleteNetwork after the restart: %v", err)
	}
	sameState(t, "deleting the network after the restart (against h0 before it)", k.empty[0], Snapshot(t, h0))
}
