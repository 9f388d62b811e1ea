package vxlan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func requireKernel(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.Kernel(roottest.VXLAN), roottest.Kernel(roottest.Bridge))
}

func tctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// openOn opens a driver on host's namespace; both close in t.Cleanup.
func openOn(t testing.TB, host *testhost.Host) (*Driver, *netlink.Handle) {
	t.Helper()
	h, err := host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	d, err := Open(tctx(t), &Options{Handle: h, Logger: nil})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, h
}

func vniOf(id string) uint32 {
	f := fnv.New32a()
	f.Write([]byte(id))
	return f.Sum32()%(1<<24-2) + 1
}

func nth(a netip.Addr, n byte) netip.Addr {
	b := a.As4()
	b[3] = n
	return netip.AddrFrom4(b)
}

func TestConformance(t *testing.T) {
	requireKernel(t)
	var underlay netip.Addr // of the host the current subtest opened
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Mode: driver.VXLAN,
		Open: func(t *testing.T) driver.Driver {
			c := testhost.New(t, 1)
			underlay = c.Hosts[0].Addr
			d, _ := openOn(t, c.Hosts[0])
			return d
		},
		Spec: func(id string) *driver.Spec {
			return &driver.Spec{
				ID: id, Mode: driver.VXLAN,
				Subnet:   netip.MustParsePrefix("198.19.1.0/24"),
				Local:    netip.MustParsePrefix("198.19.1.1/24"),
				Underlay: underlay, VNI: vniOf(id),
			}
		},
		Peers: func() []driver.Peer {
			return []driver.Peer{
				{Name: "peer-a", Underlay: nth(underlay, 100), Endpoints: []driver.Endpoint{
					{Address: netip.MustParseAddr("198.19.1.10"), MAC: net.HardwareAddr{2, 0, 0, 0, 1, 10}},
					{Address: netip.MustParseAddr("198.19.1.11"), MAC: net.HardwareAddr{2, 0, 0, 0, 1, 11}},
				}},
				{Name: "peer-b", Underlay: nth(underlay, 101), Endpoints: []driver.Endpoint{
					{Address: netip.MustParseAddr("198.19.1.20"), MAC: net.HardwareAddr{2, 0, 0, 0, 2, 20}},
				}},
			}
		},
	})
}

func TestLinkNames(t *testing.T) {
	for _, id := range []string{"a", "net-a", "abcdefghijk", "abcdefghijkl", "a-very-long-network-name-of-sixty-three-characters-abcdefghijkl"} {
		br, vx := LinkNames(id)
		if len(br) > 15 || len(vx) > 15 || br[4:] != vx[4:] {
			t.Errorf("LinkNames(%q) = %q, %q", id, br, vx)
		}
		if b2, _ := LinkNames(id); b2 != br {
			t.Errorf("LinkNames(%q) is not deterministic", id)
		}
	}
	if a, _ := LinkNames("abcdefghijkl"); a == "mbr-abcdefghijk" {
		t.Errorf("long ID shortened to a short ID's name %q", a)
	}
}

// kernelState dumps what the driver may touch in a namespace: links
// (index, name, type, master, MTU, alias, up), addresses, FDB and permanent
// neighbours.
func kernelState(t testing.TB, h *netlink.Handle) []string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		out = append(out, fmt.Sprintf("link %d %s %s master=%d mtu=%d alias=%q up=%v", a.Index, a.Name, l.Type(), a.MasterIndex, a.MTU, a.Alias, a.Flags&net.FlagUp != 0))
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			out = append(out, fmt.Sprintf("addr %s %s", a.Name, ad.IPNet))
		}
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range fdb {
		if (n.State&netlink.NUD_PERMANENT != 0 || n.IP != nil) && n.HardwareAddr[0]&1 == 0 {
			out = append(out, fmt.Sprintf("fdb %d %s dst %s state %#x flags %#x", n.LinkIndex, n.HardwareAddr, n.IP, n.State, n.Flags))
		}
	}
	arp, err := h.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range arp {
		if n.State&netlink.NUD_PERMANENT != 0 {
			out = append(out, fmt.Sprintf("neigh %d %s %s", n.LinkIndex, n.IP, n.HardwareAddr))
		}
	}
	slices.Sort(out)
	return out
}

func sameState(t *testing.T, what string, before, after []string) {
	t.Helper()
	if !slices.Equal(before, after) {
		t.Errorf("%s changed the kernel state:\nbefore:\n%q\nafter:\n%q", what, before, after)
	}
}

// overlay is the 3-host cluster of the packet tests.
type overlay struct {
	c     *testhost.Cluster
	d     []*Driver
	h     []*netlink.Handle
	specs []*driver.Spec
	macs  []net.HardwareAddr // bridge MACs
}

const testVNI = 4242

func localAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 10, byte(i + 1)}) }

func newOverlay(t testing.TB, n int) *overlay {
	t.Helper()
	o := &overlay{c: testhost.New(t, n)}
	for i, host := range o.c.Hosts {
		d, h := openOn(t, host)
		spec := &driver.Spec{
			ID: "ovl", Mode: driver.VXLAN,
			Subnet:   netip.MustParsePrefix("198.19.10.0/24"),
			Local:    netip.PrefixFrom(localAddr(i), 24),
			Underlay: host.Addr, VNI: testVNI,
		}
		st, err := d.EnsureNetwork(tctx(t), spec)
		if err != nil {
			t.Fatalf("EnsureNetwork on %s: %v", host.Name, err)
		}
		if st.MTU != 1450 {
			t.Errorf("MTU on %s = %d, want 1500-50", host.Name, st.MTU)
		}
		br, err := h.LinkByName(st.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		o.d, o.h, o.specs = append(o.d, d), append(o.h, h), append(o.specs, spec)
		o.macs = append(o.macs, br.Attrs().HardwareAddr)
	}
	return o
}

// peers returns host i's view of hosts js.
func (o *overlay) peers(js ...int) []driver.Peer {
	var ps []driver.Peer
	for _, j := range js {
		ps = append(ps, driver.Peer{
			Name: o.c.Hosts[j].Name, Underlay: o.c.Hosts[j].Addr,
			Endpoints: []driver.Endpoint{{Address: localAddr(j), MAC: o.macs[j]}},
		})
	}
	return ps
}

func (o *overlay) setPeers(t testing.TB, i int, js ...int) {
	t.Helper()
	if err := o.d[i].SetPeers(tctx(t), "ovl", o.peers(js...)); err != nil {
		t.Fatalf("SetPeers on %s: %v", o.c.Hosts[i].Name, err)
	}
}

// echoServer listens on host's overlay address and echoes every connection.
func echoServer(t testing.TB, host *testhost.Host, addr netip.Addr, port int) {
	t.Helper()
	l, err := host.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// roundTrip dials addr from host and checks that 256 KiB come back.
func roundTrip(host *testhost.Host, addr string, timeout time.Duration) error {
	return host.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := bytes.Repeat([]byte("muster-vxlan "), 256<<10/13)
		errc := make(chan error, 1)
		go func() { _, err := c.Write(msg); errc <- err }()
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if err := <-errc; err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return errors.New("echo differs")
		}
		return nil
	})
}

func vxStats(t testing.TB, h *netlink.Handle) *netlink.LinkStatistics {
	t.Helper()
	_, vn := LinkNames("ovl")
	l, err := h.LinkByName(vn)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics
}

func TestPackets(t *testing.T) {
	requireKernel(t)
	o := newOverlay(t, 3)
	const port = 7000
	for i, host := range o.c.Hosts {
		echoServer(t, host, localAddr(i), port)
	}
	at := func(i int) string { return netip.AddrPortFrom(localAddr(i), port).String() }
	// Without peers nothing crosses.
	if err := roundTrip(o.c.Hosts[1], at(0), time.Second); err == nil {
		t.Fatal("h1 reached h0's bridge address before any peer was set")
	}
	o.setPeers(t, 0, 1, 2)
	o.setPeers(t, 1, 0, 2)
	o.setPeers(t, 2, 0, 1)

	txB, rxA := vxStats(t, o.h[1]).TxBytes, vxStats(t, o.h[0]).RxBytes
	if err := roundTrip(o.c.Hosts[1], at(0), 5*time.Second); err != nil {
		t.Fatalf("h1 -> h0 over the VXLAN: %v", err)
	}
	if tx, rx := vxStats(t, o.h[1]).TxBytes-txB, vxStats(t, o.h[0]).RxBytes-rxA; tx < 256<<10 || rx < 256<<10 {
		t.Errorf("the stream did not cross the VXLAN devices: h1 sent %d bytes, h0 received %d", tx, rx)
	}
	for _, p := range [][2]int{{2, 0}, {0, 1}, {0, 2}, {1, 2}} {
		if err := roundTrip(o.c.Hosts[p[0]], at(p[1]), 5*time.Second); err != nil {
			t.Fatalf("h%d -> h%d over the VXLAN: %v", p[0], p[1], err)
		}
	}
	st, err := o.d[0].Networks(tctx(t))
	if err != nil || len(st) != 1 {
		t.Fatalf("Networks = %v, %v", st, err)
	}
	if want := o.peers(1, 2); fmt.Sprint(st[0].Peers) != fmt.Sprint(want) {
		t.Errorf("Status.Peers = %v, want %v", st[0].Peers, want)
	}

	// Applying everything again, by these drivers and by new ones (an
	// agent restart), changes nothing.
	var before [][]string
	for i := range o.h {
		before = append(before, kernelState(t, o.h[i]))
	}
	for round := range 2 {
		ds := o.d
		if round == 1 {
			ds = nil
			for _, host := range o.c.Hosts {
				d, _ := openOn(t, host)
				ds = append(ds, d)
			}
		}
		for i, d := range ds {
			if _, err := d.EnsureNetwork(tctx(t), o.specs[i]); err != nil {
				t.Fatal(err)
			}
			var js []int
			for j := range o.c.Hosts {
				if j != i {
					js = append(js, j)
				}
			}
			if err := d.SetPeers(tctx(t), "ovl", o.peers(js...)); err != nil {
				t.Fatal(err)
			}
			sameState(t, fmt.Sprintf("re-applying on h%d (round %d)", i, round), before[i], kernelState(t, o.h[i]))
		}
	}

	// Removing h2 from h0's peers cuts h0 <-> h2 and nothing else.
	o.setPeers(t, 0, 1)
	for _, line := range kernelState(t, o.h[0]) {
		if bytes.Contains([]byte(line), []byte(o.c.Hosts[2].Addr.String()+" ")) || bytes.HasSuffix([]byte(line), []byte(o.c.Hosts[2].Addr.String())) {
			t.Errorf("h0 still has an entry for h2: %s", line)
		}
	}
	if err := roundTrip(o.c.Hosts[1], at(0), 5*time.Second); err != nil {
		t.Errorf("h1 -> h0 after removing h2 from h0's peers: %v", err)
	}
	if err := roundTrip(o.c.Hosts[0], at(1), 5*time.Second); err != nil {
		t.Errorf("h0 -> h1 after removing h2 from h0's peers: %v", err)
	}
	if err := roundTrip(o.c.Hosts[2], at(1), 5*time.Second); err != nil {
		t.Errorf("h2 -> h1 after removing h2 from h0's peers: %v", err)
	}
	if err := roundTrip(o.c.Hosts[2], at(0), 1500*time.Millisecond); err == nil {
		t.Error("h2 still reaches h0 after h0 dropped it")
	}
	if err := roundTrip(o.c.Hosts[0], at(2), 1500*time.Millisecond); err == nil {
		t.Error("h0 still reaches h2 after dropping it")
	}
	// And putting it back restores it.
	o.setPeers(t, 0, 1, 2)
	if err := roundTrip(o.c.Hosts[2], at(0), 5*time.Second); err != nil {
		t.Errorf("h2 -> h0 after restoring the peer: %v", err)
	}

	// Delete removes everything the network had.
	if err := o.d[0].DeleteNetwork(tctx(t), "ovl"); err != nil {
		t.Fatal(err)
	}
	bn, vn := LinkNames("ovl")
	for _, name := range []string{bn, vn} {
		if _, err := o.h[0].LinkByName(name); err == nil {
			t.Errorf("%s survived DeleteNetwork", name)
		}
	}
	if err := roundTrip(o.c.Hosts[1], at(0), time.Second); err == nil {
		t.Error("h1 reaches h0 after h0 deleted the network")
	}
}

func TestBadInputLeavesNothing(t *testing.T) {
	requireKernel(t)
	c := testhost.New(t, 1)
	d, h := openOn(t, c.Hosts[0])
	good := func(id string) *driver.Spec {
		return &driver.Spec{ID: id, Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.10.0/24"),
			Local: netip.MustParsePrefix("198.19.10.1/24"), Underlay: c.Hosts[0].Addr, VNI: 100}
	}
	empty := kernelState(t, h)
	for _, bad := range []struct {
		name   string
		code   errcode.Code
		mutate func(*driver.Spec)
	}{
		{"VNI 0", errcode.InvalidArgument, func(s *driver.Spec) { s.VNI = 0 }},
		{"VNI 1<<24", errcode.InvalidArgument, func(s *driver.Spec) { s.VNI = 1 << 24 }},
		{"MTU too small", errcode.InvalidArgument, func(s *driver.Spec) { s.MTU = 100 }},
		{"MTU too large", errcode.InvalidArgument, func(s *driver.Spec) { s.MTU = 70000 }},
		{"other mode", errcode.InvalidArgument, func(s *driver.Spec) { s.Mode = driver.WireGuard }},
		{"bad ID", errcode.InvalidArgument, func(s *driver.Spec) { s.ID = "x;rm -rf" }},
		{"underlay not on this server", errcode.FailedPrecondition, func(s *driver.Spec) { s.Underlay = nth(c.Hosts[0].Addr, 200) }},
	} {
		s := good("net-x")
		bad.mutate(s)
		if _, err := d.EnsureNetwork(tctx(t), s); !errors.Is(err, bad.code) {
			t.Errorf("%s: got %v (code %v), want %v", bad.name, err, errcode.Of(err), bad.code)
		}
		sameState(t, bad.name, empty, kernelState(t, h))
	}

	// A VXLAN device that clashes with the new one (same VNI, port and
	// local address) makes the kernel refuse it; the bridge created before
	// is rolled back.
	foreign := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, VxlanId: 100, SrcAddr: c.Hosts[0].Addr.AsSlice(), Port: DefaultPort}
	if err := h.LinkAdd(foreign); err != nil {
		t.Fatal(err)
	}
	withForeign := kernelState(t, h)
	if _, err := d.EnsureNetwork(tctx(t), good("net-x")); err == nil {
		t.Error("EnsureNetwork with a clashing VXLAN device succeeded")
	} else {
		t.Logf("EnsureNetwork with a clashing VXLAN device: %v (code %v)", err, errcode.Of(err))
	}
	sameState(t, "a failing EnsureNetwork", withForeign, kernelState(t, h))
	// A foreign link holding the bridge's name is a clash, not adopted.
	bn, _ := LinkNames("net-y")
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bn}}); err != nil {
		t.Fatal(err)
	}
	withDummy := kernelState(t, h)
	if _, err := d.EnsureNetwork(tctx(t), good("net-y")); !errors.Is(err, errcode.AlreadyExists) {
		t.Errorf("EnsureNetwork over a foreign %s: %v, want AlreadyExists", bn, err)
	}
	sameState(t, "EnsureNetwork over a foreign link", withDummy, kernelState(t, h))
	for _, name := range []string{"foreign0", bn} {
		l, err := h.LinkByName(name)
		if err == nil {
			err = h.LinkDel(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	// Bad peers leave the FDB as it was.
	if _, err := d.EnsureNetwork(tctx(t), good("net-x")); err != nil {
		t.Fatal(err)
	}
	ok := driver.Peer{Name: "p1", Underlay: nth(c.Hosts[0].Addr, 101),
		Endpoints: []driver.Endpoint{{Address: netip.MustParseAddr("198.19.10.9"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}}}
	if err := d.SetPeers(tctx(t), "net-x", []driver.Peer{ok}); err != nil {
		t.Fatal(err)
	}
	withPeer := kernelState(t, h)
	other := driver.Peer{Name: "p2", Underlay: nth(c.Hosts[0].Addr, 102)}
	for _, bad := range []struct {
		name  string
		peers []driver.Peer
	}{
		{"duplicate peer", []driver.Peer{ok, ok}},
		{"overlapping underlay", []driver.Peer{ok, {Name: "p2", Underlay: ok.Underlay}}},
		{"duplicate endpoint", []driver.Peer{ok, {Name: "p2", Underlay: other.Underlay, Endpoints: ok.Endpoints}}},
		{"duplicate MAC", []driver.Peer{ok, {Name: "p2", Underlay: other.Underlay, Endpoints: []driver.Endpoint{{Address: netip.MustParseAddr("198.19.10.10"), MAC: ok.Endpoints[0].MAC}}}}},
		{"own underlay", []driver.Peer{ok, {Name: "p2", Underlay: c.Hosts[0].Addr}}},
		{"IPv6 underlay", []driver.Peer{ok, {Name: "p2", Underlay: netip.MustParseAddr("2001:db8::1")}}},
		{"endpoint outside the subnet", []driver.Peer{other, {Name: "p3", Underlay: ok.Underlay, Endpoints: []driver.Endpoint{{Address: netip.MustParseAddr("198.19.11.1"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}}}},
	} {
		if err := d.SetPeers(tctx(t), "net-x", bad.peers); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: got %v, want InvalidArgument", bad.name, err)
		}
		sameState(t, bad.name, withPeer, kernelState(t, h))
	}
	if err := d.DeleteNetwork(tctx(t), "net-x"); err != nil {
		t.Fatal(err)
	}
	sameState(t, "creating and deleting a network", empty, kernelState(t, h))
}

// TestChangeInPlace changes what may change (MTU, local address, port,
// underlay flags) and checks that peers survive; the driver is opened with
// a nil handle inside the host's namespace, then used from any thread.
func TestChangeInPlace(t *testing.T) {
	requireKernel(t)
	c := testhost.New(t, 1)
	var d *Driver
	if err := c.Hosts[0].Do(func() (err error) {
		d, err = Open(tctx(t), nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	h, err := c.Hosts[0].Handle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	spec := &driver.Spec{ID: "change-in-place-net", Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.10.0/24"),
		Local: netip.MustParsePrefix("198.19.10.1/24"), Underlay: c.Hosts[0].Addr, VNI: 7}
	st, err := d.EnsureNetwork(tctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(st.Bridge); err != nil {
		t.Fatalf("bridge %s not in the host's namespace: %v", st.Bridge, err)
	}
	peers := []driver.Peer{{Name: "p1", Underlay: nth(c.Hosts[0].Addr, 101),
		Endpoints: []driver.Endpoint{{Address: netip.MustParseAddr("198.19.10.9"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}}}}
	if err := d.SetPeers(tctx(t), spec.ID, peers); err != nil {
		t.Fatal(err)
	}
	for _, change := range []struct {
		name   string
		mutate func(*driver.Spec)
	}{
		{"MTU", func(s *driver.Spec) { s.MTU = 1300 }},
		{"local", func(s *driver.Spec) { s.Local = netip.MustParsePrefix("198.19.10.2/24") }},
		{"port", func(s *driver.Spec) { s.Port = 8472 }},
		{"port back to the default", func(s *driver.Spec) { s.Port = 0 }},
	} {
		change.mutate(spec)
		st, err := d.EnsureNetwork(tctx(t), spec)
		if err != nil {
			t.Fatalf("%s: %v", change.name, err)
		}
		if st.Spec != *spec {
			t.Errorf("%s: Status.Spec = %+v, want %+v", change.name, st.Spec, *spec)
		}
		if fmt.Sprint(st.Peers) != fmt.Sprint(peers) {
			t.Errorf("%s: peers = %v, want %v\n%q", change.name, st.Peers, peers, kernelState(t, h))
		}
		_, vn := LinkNames(spec.ID)
		l, err := h.LinkByName(vn)
		if err != nil {
			t.Fatal(err)
		}
		vx := l.(*netlink.Vxlan)
		if wantPort := max(int(spec.Port), DefaultPort*int(1-min(int(spec.Port), 1))); vx.Port != wantPort || vx.Learning || vx.MTU != st.MTU {
			t.Errorf("%s: device has port %d (want %d), learning %v, MTU %d (status %d)", change.name, vx.Port, wantPort, vx.Learning, vx.MTU, st.MTU)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Networks(tctx(t)); !errors.Is(err, errcode.FailedPrecondition) {
		t.Errorf("Networks after Close: %v, want FailedPrecondition", err)
	}
}
