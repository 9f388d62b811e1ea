package agent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	hadriver "github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/ha/drivertest"
	"github.com/musterkit/muster/ha/memha"
)

// memSpeakers hands an agent's FloatingIPs memha speakers of one network,
// keeping the next one at hand (for orphans left before a speaker runs).
type memSpeakers struct {
	net  *memha.Network
	opts *memha.Options
	next *memha.Driver
}

func (m *memSpeakers) open(context.Context, string) (hadriver.Driver, error) {
	d := m.next
	m.next = m.net.New(m.opts)
	return d, nil
}

// floatingServer runs an agent whose FloatingIPs speak on net with the
// server's interface eth0 holding addr, and returns a client of it and
// the agent's side.
func floatingServer(t *testing.T, net *memha.Network, addr netip.Prefix) (*Client, *FloatingIPs, *memSpeakers) {
	opts := &memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {addr}}}
	m := &memSpeakers{net: net, opts: opts, next: net.New(opts)}
	fs, err := OpenFloatingIPs(context.Background(), t.TempDir(), map[string]FloatingIPKind{"memory": m.open}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	cl := newCluster(t, nil)
	cl.floating = fs
	return cl.dial(t, cl.serve(t, memServer(t))), fs, m
}

// TestFloatingIPConformance runs the floating-IP suite on speakers
// deployed through two agents (memha behind them).
func TestFloatingIPConformance(t *testing.T) {
	addrA, addrB := netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.2/24")
	vip := netip.MustParseAddr("198.18.0.200")
	sides := map[hadriver.Driver]struct {
		fs *FloatingIPs
		m  *memSpeakers
	}{}
	onAgent := func(d hadriver.Driver, fn func(*memha.Driver)) {
		s := sides[d]
		if running := s.fs.List(); len(running) == 0 {
			fn(s.m.next) // not running yet: the speaker it will open
			return
		}
		md, err := s.fs.Driver(context.Background(), "web", "memory")
		if err != nil {
			t.Fatal(err)
		}
		fn(md.(*memha.Driver))
	}
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Pair: func(t *testing.T) (hadriver.Driver, hadriver.Driver, *hadriver.Config, *hadriver.Config) {
			net := memha.NewNetwork(nil)
			ca, fsa, ma := floatingServer(t, net, addrA)
			cb, fsb, mb := floatingServer(t, net, addrB)
			a, b := ca.FloatingIP("memory", "web"), cb.FloatingIP("memory", "web")
			t.Cleanup(func() { a.Close(); b.Close() })
			sides[a] = struct {
				fs *FloatingIPs
				m  *memSpeakers
			}{fsa, ma}
			sides[b] = struct {
				fs *FloatingIPs
				m  *memSpeakers
			}{fsb, mb}
			cfgA := &hadriver.Config{Name: "web", VirtualRouterID: 7, Interface: "eth0", Addresses: []netip.Addr{vip},
				Source: addrA.Addr(), Peers: []netip.Addr{addrB.Addr()}, Priority: 150, AdvertInterval: 100 * time.Millisecond}
			cfgB := *cfgA
			cfgB.Source, cfgB.Peers, cfgB.Priority = addrB.Addr(), []netip.Addr{addrA.Addr()}, 100
			return a, b, cfgA, &cfgB
		},
		Kill: func(t *testing.T, d hadriver.Driver) { onAgent(d, (*memha.Driver).Kill) },
		AddOrphan: func(t *testing.T, d hadriver.Driver, ifname string, p netip.Prefix) {
			onAgent(d, func(m *memha.Driver) { m.AddAddress(ifname, p) })
		},
		Timeout: 2 * time.Second,
	})
}
