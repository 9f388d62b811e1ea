package memha_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/ha/drivertest"
	"github.com/musterkit/muster/ha/memha"
)

var (
	addrA = netip.MustParsePrefix("198.18.0.1/24")
	addrB = netip.MustParsePrefix("198.18.0.2/24")
	vip   = netip.MustParseAddr("198.18.0.200")
)

func pair(t *testing.T) (*memha.Network, *memha.Driver, *memha.Driver, *driver.Config, *driver.Config) {
	n := memha.NewNetwork(nil)
	a := n.New(&memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {addrA}}})
	b := n.New(&memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {addrB}}})
	t.Cleanup(func() { a.Close(); b.Close() })
	ca := &driver.Config{Name: "web", VirtualRouterID: 7, Interface: "eth0", Addresses: []netip.Addr{vip},
		Source: addrA.Addr(), Peers: []netip.Addr{addrB.Addr()}, Priority: 150, AdvertInterval: 100 * time.Millisecond}
	cb := *ca
	cb.Source, cb.Peers, cb.Priority = addrB.Addr(), []netip.Addr{addrA.Addr()}, 100
	return n, a, b, ca, &cb
}

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Pair: func(t *testing.T) (driver.Driver, driver.Driver, *driver.Config, *driver.Config) {
			_, a, b, ca, cb := pair(t)
			return a, b, ca, cb
		},
		Kill: func(t *testing.T, d driver.Driver) { d.(*memha.Driver).Kill() },
		AddOrphan: func(t *testing.T, d driver.Driver, ifname string, p netip.Prefix) {
			d.(*memha.Driver).AddAddress(ifname, p)
		},
		Timeout: time.Second,
	})
}

func TestTrackAndSplitBrain(t *testing.T) {
	n, a, b, ca, cb := pair(t)
	ca.Track = driver.Track{Process: "haproxy", TCPPort: 8080}
	cb.Track = ca.Track
	for _, x := range []struct {
		d *memha.Driver
		c *driver.Config
	}{{a, ca}, {b, cb}} {
		if err := x.d.Apply(t.Context(), x.c); err != nil {
			t.Fatal(err)
		}
	}
	drivertest.WaitState(t, a, ca, driver.Master, time.Second)
	a.SetProcess("haproxy", false)
	drivertest.WaitState(t, a, ca, driver.Fault, time.Second)
	drivertest.WaitState(t, b, cb, driver.Master, time.Second)
	a.SetProcess("haproxy", true)
	drivertest.WaitState(t, a, ca, driver.Master, time.Second)
	a.SetPort(8080, false)
	drivertest.WaitState(t, b, cb, driver.Master, time.Second)
	a.SetPort(8080, true)
	drivertest.WaitState(t, a, ca, driver.Master, time.Second)

	ev, _ := b.Watch(t.Context())
	n.Cut(addrA.Addr(), addrB.Addr())
	drivertest.WaitState(t, a, ca, driver.Master, time.Second)
	drivertest.WaitState(t, b, cb, driver.Master, time.Second)
	found := false
	for len(ev) > 0 {
		if e := <-ev; e.Kind == driver.SplitBrain && e.Peer == addrA.Addr() {
			found = true
		}
	}
	if !found {
		t.Fatal("no split-brain event")
	}
	n.Heal(addrA.Addr(), addrB.Addr())
	drivertest.WaitState(t, a, ca, driver.Master, time.Second)
	drivertest.WaitState(t, b, cb, driver.Backup, time.Second)
}

func TestPreemptDelay(t *testing.T) {
	_, a, b, ca, cb := pair(t)
	ca.PreemptDelay = time.Second
	if err := b.Apply(t.Context(), cb); err != nil {
		t.Fatal(err)
	}
	drivertest.WaitState(t, b, cb, driver.Master, time.Second)
	start := time.Now()
	if err := a.Apply(t.Context(), ca); err != nil {
		t.Fatal(err)
	}
	drivertest.WaitState(t, a, ca, driver.Backup, 100*time.Millisecond)
	drivertest.WaitState(t, a, ca, driver.Master, 3*time.Second)
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("preempted after %v, before the 1s delay", d)
	}
}
