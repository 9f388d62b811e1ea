package bgp

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
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

func TestBridgeName(t *testing.T) {
	if got := bridgeName("net-a"); got != "mbg-net-a" {
		t.Errorf("bridgeName(net-a) = %q", got)
	}
	long := bridgeName("a-very-long-network-name")
	if len(long) != 15 || long[:8] != "mbg-a-ve" || long == bridgeName("a-very-long-network-other") {
		t.Errorf("bridgeName of a long ID = %q", long)
	}
}

func TestCapabilities(t *testing.T) {
	c := (&Driver{}).Capabilities()
	if !slices.Equal(c.Modes, []driver.Mode{driver.BGP}) || c.Encrypted {
		t.Fatalf("Capabilities() = %+v", c)
	}
}

// testPort gives each network ID of the suite its own BGP port, so that
// networks coexist on one server.
func testPort(id string) uint16 {
	h := fnv.New32a()
	h.Write([]byte(id))
	return uint16(20000 + h.Sum32()%10000)
}

func TestConformance(t *testing.T) {
	roottest.Require(t, roottest.Kernel(roottest.Bridge))
	var underlay netip.Addr
	var cluster *testhost.Cluster
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Mode: driver.BGP,
		Open: func(t *testing.T) driver.Driver {
			cluster = testhost.New(t, 1)
			underlay = cluster.Hosts[0].Addr
			return startRemote(t, cluster.Hosts[0])
		},
		Spec: func(id string) *driver.Spec {
			s := drivertest.NewSpec(driver.BGP, id, underlay)
			s.Port = testPort(id)
			s.HoldTime = 3 * time.Second
			return s
		},
		Peers: func() []driver.Peer {
			// Addresses on the cluster's subnet where no host answers.
			a := cluster.Subnet.Addr().As4()
			a[3] = 200
			b := netip.AddrFrom4(a)
			return drivertest.NewPeers(driver.BGP, b, b.Next())
		},
	})
}

// ourRoutes lists h's main-table routes of RouteProtocol, as dst -> gw.
func ourRoutes(t *testing.T, h *testhost.Host, proto netlink.RouteProtocol) map[netip.Prefix]netip.Addr {
	t.Helper()
	nh, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	rs, err := nh.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: proto, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	m := map[netip.Prefix]netip.Addr{}
	for _, r := range rs {
		dst, gw := routeKey(&r)
		m[dst] = gw
	}
	return m
}

// checkConnected checks that d's one network reports exactly the peers
// named as connected (sessions established).
func checkConnected(t *testing.T, d driver.Driver, names ...string) {
	t.Helper()
	sts, err := d.Networks(context.Background())
	if err != nil || len(sts) != 1 {
		t.Fatalf("Networks: %v, %v", sts, err)
	}
	if !slices.Equal(sts[0].Connected, names) {
		t.Fatalf("connected peers %q, want %q", sts[0].Connected, names)
	}
}

// waitRoutes waits until h's routes of proto are exactly want.
func waitRoutes(t *testing.T, h *testhost.Host, proto netlink.RouteProtocol, within time.Duration, want map[netip.Prefix]netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := ourRoutes(t, h, proto)
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: routes of protocol %d are %v after %v, want %v", h.Name, proto, got, within, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func bgpSpec(h *testhost.Host, local string, asn uint32) *driver.Spec {
	return &driver.Spec{
		ID: "net", Mode: driver.BGP,
		Subnet: netip.MustParsePrefix("198.19.0.0/16"), Local: netip.MustParsePrefix(local),
		Underlay: h.Addr, Port: 1179, ASN: asn, HoldTime: 3 * time.Second,
	}
}

// usePassword gives specs a TCP MD5 password if this kernel takes MD5
// keys. If it does not, it checks that a spec with a password is
// errcode.Unimplemented on d (and changes nothing), and leaves specs
// without one.
func usePassword(t *testing.T, h *testhost.Host, d driver.Driver, specs ...*driver.Spec) {
	t.Helper()
	if err := h.Do(func() error { return probeMD5(h.Addr) }); err != nil {
		t.Logf("no TCP MD5 on this kernel: %v", err)
		bad := *specs[0]
		bad.Password = "s3cret-md5"
		_, err := d.EnsureNetwork(context.Background(), &bad)
		if !errors.Is(err, errcode.Unimplemented) {
			t.Fatalf("EnsureNetwork with a password on a kernel without TCP MD5: %v, want code %v", err, errcode.Unimplemented)
		}
		if sts, err := d.Networks(context.Background()); err != nil || len(sts) != 0 {
			t.Fatalf("after a refused spec Networks = %v, %v", sts, err)
		}
		return
	}
	for _, s := range specs {
		s.Password = "s3cret-md5"
	}
}

func mustEnsure(t *testing.T, d driver.Driver, spec *driver.Spec) {
	t.Helper()
	if _, err := d.EnsureNetwork(context.Background(), spec); err != nil {
		t.Fatalf("EnsureNetwork on %s: %v", spec.Underlay, err)
	}
}

func mustSetPeers(t *testing.T, d driver.Driver, peers ...driver.Peer) {
	t.Helper()
	if err := d.SetPeers(context.Background(), "net", peers); err != nil {
		t.Fatalf("SetPeers: %v", err)
	}
}

// TestKernel runs the kernel suite: traffic between simulated servers,
// leftovers of bad input, changes in place, a restart.
func TestKernel(t *testing.T) {
	roottest.Require(t, roottest.Kernel(roottest.Bridge))
	drivertest.RunKernelTests(t, drivertest.KernelHarness{
		Mode: driver.BGP,
		Open: func(t *testing.T, host *testhost.Host) driver.Driver { return startRemote(t, host) },
	})
}

// birdProto is the protocol of the routes BIRD installs ("bird").
const birdProto netlink.RouteProtocol = 12

// TestBIRDInterop peers our speaker on h0 with BIRD 2 on h1: each learns
// the other's range into its kernel; when BIRD stops answering, ours drops
// BIRD's route within the hold time; when ours drops BIRD from its peers,
// BIRD withdraws ours.
func TestBIRDInterop(t *testing.T) {
	roottest.Require(t, roottest.Binary("bird"), roottest.Kernel(roottest.Bridge))
	c := testhost.New(t, 2)
	h0, h1 := c.Hosts[0], c.Hosts[1]
	d0 := startRemote(t, h0)
	s0 := bgpSpec(h0, "198.19.1.1/24", 64512)
	usePassword(t, h0, d0, s0)
	mustEnsure(t, d0, s0)
	birdRange := netip.MustParsePrefix("198.19.99.0/24")
	birdPeer := driver.Peer{Name: "bird", Underlay: h1.Addr, Range: birdRange, ASN: 64600}
	mustSetPeers(t, d0, birdPeer)

	// BIRD's range on a bridge of its own.
	nh, err := h1.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "mbird0"}}
	if err := nh.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := nh.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 19, 99, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}

	conf, err := renderBird(&birdConfig{
		RouterID: h1.Addr, KernelExport: true,
		Static: []birdStatic{{Prefix: birdRange, Interface: "mbird0"}},
		Neighbors: []birdNeighbor{{
			Name: "muster_" + h0.Name, Local: h1.Addr, LocalASN: 64600,
			Address: h0.Addr, ASN: s0.ASN, Port: s0.Port, HoldTime: s0.HoldTime, Password: s0.Password,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	confPath, sock := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := birdParse(confPath); err != nil {
		t.Fatal(err)
	}
	bird := h1.Command(context.Background(), "bird", "-f", "-c", confPath, "-s", sock)
	bird.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // if the test binary dies
	birdLog := &syncBuffer{}
	bird.Stdout, bird.Stderr = birdLog, birdLog
	if err := bird.Start(); err != nil {
		t.Fatal(err)
	}
	pid := bird.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- bird.Wait() }()
	t.Cleanup(func() {
		// End BIRD by its pid (it may be stopped), and wait for it.
		syscall.Kill(pid, syscall.SIGCONT)
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("BIRD logged:\n%s", birdLog)
		}
	})

	// Each side learns the other's range.
	waitRoutes(t, h0, RouteProtocol, 30*time.Second, map[netip.Prefix]netip.Addr{birdRange: h1.Addr})
	waitRoutes(t, h1, birdProto, 10*time.Second, map[netip.Prefix]netip.Addr{s0.Local.Masked(): h0.Addr})
	checkConnected(t, d0, birdPeer.Name)

	// Ours drops BIRD from its peers: BIRD withdraws our range from its
	// kernel, ours BIRD's at once.
	mustSetPeers(t, d0)
	if got := ourRoutes(t, h0, RouteProtocol); len(got) != 0 {
		t.Fatalf("h0 still has routes %v after SetPeers(none)", got)
	}
	waitRoutes(t, h1, birdProto, s0.HoldTime, map[netip.Prefix]netip.Addr{})

	// Back again; then BIRD stops answering (SIGSTOP): ours drops BIRD's
	// route when the hold time expires.
	mustSetPeers(t, d0, birdPeer)
	waitRoutes(t, h0, RouteProtocol, 30*time.Second, map[netip.Prefix]netip.Addr{birdRange: h1.Addr})
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitRoutes(t, h0, RouteProtocol, s0.HoldTime+resyncInterval+time.Second, map[netip.Prefix]netip.Addr{})
	checkConnected(t, d0)
	t.Logf("BIRD's route left h0's kernel %v after BIRD stopped (hold time %v)", time.Since(start).Round(100*time.Millisecond), s0.HoldTime)
}

// TestOpenRemovesStaleRoutes checks, in-process and without speakers, that
// Open removes the routes of RouteProtocol a crashed driver left and no
// other, and that modes and families the driver lacks are Unimplemented.
func TestOpenRemovesStaleRoutes(t *testing.T) {
	roottest.Require(t, roottest.Kernel(roottest.Bridge))
	c := testhost.New(t, 1)
	h := c.Hosts[0]
	nh, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	gw := c.Subnet.Addr().As4()
	gw[3] = 200
	for _, r := range []struct {
		dst   string
		proto netlink.RouteProtocol
	}{{"198.19.5.0/24", RouteProtocol}, {"198.19.6.0/24", unix.RTPROT_STATIC}} {
		dst := netip.MustParsePrefix(r.dst)
		err := nh.RouteAdd(&netlink.Route{
			Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
			Gw:  net.IP(gw[:]), Protocol: r.proto,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(context.Background(), &Options{Handle: nh})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := ourRoutes(t, h, RouteProtocol); len(got) != 0 {
		t.Fatalf("routes of protocol %d after Open: %v", RouteProtocol, got)
	}
	if got := ourRoutes(t, h, unix.RTPROT_STATIC); len(got) != 1 {
		t.Fatalf("static routes after Open: %v, want the one added", got)
	}

	wg := drivertest.NewSpec(driver.WireGuard, "net-a", h.Addr)
	if _, err := d.EnsureNetwork(context.Background(), wg); !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("EnsureNetwork(wireguard) = %v, want code %v", err, errcode.Unimplemented)
	}
	v6 := drivertest.NewSpec(driver.BGP, "net-a", netip.MustParseAddr("2001:db8::1"))
	if _, err := d.EnsureNetwork(context.Background(), v6); !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("EnsureNetwork(IPv6 underlay) = %v, want code %v", err, errcode.Unimplemented)
	}
	if sts, err := d.Networks(context.Background()); err != nil || len(sts) != 0 {
		t.Fatalf("Networks = %v, %v; want none", sts, err)
	}
}

// TestPasswordMismatch checks that TCP MD5 is in force: speakers with
// different passwords exchange nothing, and do once the passwords agree.
func TestPasswordMismatch(t *testing.T) {
	roottest.Require(t, roottest.Kernel(roottest.Bridge))
	c := testhost.New(t, 2)
	h0, h1 := c.Hosts[0], c.Hosts[1]
	d0, d1 := startRemote(t, h0), startRemote(t, h1)
	s0, s1 := bgpSpec(h0, "198.19.1.1/24", 64512), bgpSpec(h1, "198.19.2.1/24", 64513)
	usePassword(t, h0, d0, s0, s1)
	if s0.Password == "" {
		return // usePassword checked that passwords are refused
	}
	s1.Password = "another-secret"
	mustEnsure(t, d0, s0)
	mustEnsure(t, d1, s1)
	mustSetPeers(t, d0, driver.Peer{Name: h1.Name, Underlay: h1.Addr, Range: s1.Local.Masked(), ASN: s1.ASN})
	mustSetPeers(t, d1, driver.Peer{Name: h0.Name, Underlay: h0.Addr, Range: s0.Local.Masked(), ASN: s0.ASN})
	time.Sleep(8 * time.Second) // several connection attempts
	for _, h := range c.Hosts {
		if got := ourRoutes(t, h, RouteProtocol); len(got) != 0 {
			t.Fatalf("%s learnt %v although the passwords differ", h.Name, got)
		}
	}
	s1.Password = s0.Password
	mustEnsure(t, d1, s1)
	waitRoutes(t, h0, RouteProtocol, 20*time.Second, map[netip.Prefix]netip.Addr{s1.Local.Masked(): h1.Addr})
	waitRoutes(t, h1, RouteProtocol, 20*time.Second, map[netip.Prefix]netip.Addr{s0.Local.Masked(): h0.Addr})
}
