package vxlan

import (
	"context"
	"hash/fnv"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
	"github.com/vishvananda/netlink"
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

// TestKernel runs the kernel suite: traffic between simulated servers,
// leftovers of bad input, changes in place, a restart.
func TestKernel(t *testing.T) {
	requireKernel(t)
	drivertest.RunKernelTests(t, drivertest.KernelHarness{
		Mode: driver.VXLAN,
		Open: func(t *testing.T, host *testhost.Host) driver.Driver {
			d, _ := openOn(t, host)
			return d
		},
	})
}

// TestClashingDevice checks a failure only VXLAN has: a VXLAN device of
// another owner with the same VNI, port and local address makes the
// kernel refuse the network's device, and the bridge made before it is
// rolled back.
func TestClashingDevice(t *testing.T) {
	requireKernel(t)
	c := testhost.New(t, 1)
	d, h := openOn(t, c.Hosts[0])
	foreign := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, VxlanId: 100, SrcAddr: c.Hosts[0].Addr.AsSlice(), Port: DefaultPort}
	if err := h.LinkAdd(foreign); err != nil {
		t.Fatal(err)
	}
	before := drivertest.Snapshot(t, c.Hosts[0])
	spec := drivertest.NewSpec(driver.VXLAN, "net-x", c.Hosts[0].Addr)
	spec.VNI = 100
	_, err := d.EnsureNetwork(tctx(t), spec)
	if err == nil {
		t.Fatal("EnsureNetwork with a clashing VXLAN device succeeded")
	}
	t.Logf("EnsureNetwork with a clashing VXLAN device: %v (code %v)", err, errcode.Of(err))
	if diff := before.Diff(drivertest.Snapshot(t, c.Hosts[0])); diff != "" {
		t.Fatalf("the failed EnsureNetwork changed the state:%s", diff)
	}
}

// TestDevice checks the VXLAN device's attributes as the spec changes in
// place; the driver is opened with a nil handle inside the host's
// namespace, then used from any thread.
func TestDevice(t *testing.T) {
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
	spec := drivertest.NewSpec(driver.VXLAN, "device-test-net", c.Hosts[0].Addr)
	for _, change := range []struct {
		name   string
		mutate func(*driver.Spec)
	}{
		{"new", func(s *driver.Spec) {}},
		{"MTU", func(s *driver.Spec) { s.MTU = 1300 }},
		{"port", func(s *driver.Spec) { s.Port = 8472 }},
		{"port back to the default", func(s *driver.Spec) { s.Port = 0 }},
	} {
		change.mutate(spec)
		st, err := d.EnsureNetwork(tctx(t), spec)
		if err != nil {
			t.Fatalf("%s: %v", change.name, err)
		}
		_, vn := LinkNames(spec.ID)
		l, err := h.LinkByName(vn)
		if err != nil {
			t.Fatalf("%s: the VXLAN device is not in the host's namespace: %v", change.name, err)
		}
		vx := l.(*netlink.Vxlan)
		wantPort := int(spec.Port)
		if wantPort == 0 {
			wantPort = DefaultPort
		}
		src, _ := netip.AddrFromSlice(vx.SrcAddr)
		if vx.Port != wantPort || vx.Learning || vx.MTU != st.MTU || uint32(vx.VxlanId) != spec.VNI || src.Unmap() != spec.Underlay || len(vx.Group) != 0 && !vx.Group.IsUnspecified() {
			t.Errorf("%s: device has port %d (want %d), learning %v, MTU %d (status %d), VNI %d, local %v, group %v",
				change.name, vx.Port, wantPort, vx.Learning, vx.MTU, st.MTU, vx.VxlanId, src, vx.Group)
		}
	}
}
