package schedule

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/memcontainer"
	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/memdiscovery"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/memlb"
	"github.com/musterkit/muster/network"
	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
)

// TestRollingUpgradeBehindBalancer: replicas on a network behind a
// balancer's pool and published in a registry. Through an upgrade, at every step the pool has at
// least 6 servers taking traffic, each a running, healthy replica at its
// address, and removed ones leave the pool (drained first).
func TestRollingUpgradeBehindBalancer(t *testing.T) {
	ctx := t.Context()
	fab, err := network.Open(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, blob := drivertest.BaseImage(t)
	cl := container.NewCluster(nil)
	for i := range 3 {
		name := fmt.Sprintf("s%d", i)
		d := memcontainer.New(&memcontainer.Options{Hostname: name, CPUs: 4, MemoryBytes: 8 << 30, Bridges: []string{memnetwork.BridgeName("apps")}})
		if _, err := d.PutImage(ctx, m, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		cl.AddServer(name, container.NewServer(d, nil))
		if err := fab.AddServer(ctx, name, network.Local{Driver: memnetwork.New(nil)}, netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fab.Ensure(ctx, &network.Spec{ID: "apps", Mode: netdriver.VXLAN, Subnet: netip.MustParsePrefix("198.19.128.0/24"), VNI: 7}); err != nil {
		t.Fatal(err)
	}
	lb := memlb.New()
	if err := lb.Apply(ctx, &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "198.18.0.1", Port: 80, DefaultPool: "web"}},
		Pools:     []lbdriver.Pool{{Name: "web"}},
	}); err != nil {
		t.Fatal(err)
	}
	var bad error
	check := func(ev Event) {
		cfg, _ := lb.Config(ctx)
		all, _ := cl.Containers(ctx)
		running := map[string]netip.Addr{}
		for _, p := range all {
			if p.State == container.Running && len(p.Spec.Networks) > 0 {
				running[p.Spec.Name] = p.Spec.Networks[0].Address.Addr()
			}
		}
		ready := 0
		for _, s := range cfg.Pools[0].Servers {
			if s.State == lbdriver.Drain {
				continue
			}
			ready++
			if addr, ok := running[s.Name]; !ok || addr.String() != s.Address || s.Port != 8080 {
				bad = fmt.Errorf("after %s %s: the pool sends traffic to %+v, which is not a running replica there", ev.Action, ev.Replica, s)
			}
		}
		if ready < 6 && bad == nil {
			bad = fmt.Errorf("after %s %s: %d servers take traffic", ev.Action, ev.Replica, ready)
		}
	}
	reg := memdiscovery.New(nil)
	t.Cleanup(func() { reg.Close() })
	checking := false
	c := NewController(cl, &ControllerOptions{Networks: fab, Traffic: []Traffic{BalancerPool(lb, 0), Registry(reg, nil)}, Events: func(ev Event) {
		if checking {
			check(ev)
		}
	}})
	d := web(6, "1")
	d.Network, d.Port, d.Health = "apps", 8080, []string{"true"}
	if err := c.Reconcile(ctx, []Deployment{d}); err != nil {
		t.Fatal(err)
	}
	check(Event{Action: "deployed"})
	if bad != nil {
		t.Fatal(bad)
	}
	checking = true
	d2 := d
	d2.Labels = map[string]string{"app": "web", "release": "2"}
	if err := c.Reconcile(ctx, []Deployment{d2}); err != nil {
		t.Fatal(err)
	}
	if bad != nil {
		t.Fatal(bad)
	}
	cfg, _ := lb.Config(ctx)
	if n := len(cfg.Pools[0].Servers); n != 6 {
		t.Fatalf("after the upgrade the pool has %d servers: %+v", n, cfg.Pools[0].Servers)
	}
	// The registry lists the same 6 replicas.
	insts, err := reg.Resolve(ctx, discdriver.Query{Service: "web"})
	if err != nil || len(insts) != 6 {
		t.Fatalf("the registry resolves web to %+v, %v", insts, err)
	}
	inPool := map[string]string{}
	for _, s := range cfg.Pools[0].Servers {
		inPool[s.Name] = s.Address
	}
	for _, in := range insts {
		if inPool[in.ID] != in.Address || in.Port != 8080 {
			t.Fatalf("registered %+v; the pool has %v", in, inPool)
		}
	}
	// Scaling to zero drains and removes every replica from the pool.
	zero := d2
	zero.Replicas = 0
	if err := c.Reconcile(ctx, []Deployment{zero}); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := lb.Config(ctx); len(cfg.Pools[0].Servers) != 0 {
		t.Fatalf("after scaling to zero the pool has %+v", cfg.Pools[0].Servers)
	}
	if insts, _ := reg.Resolve(ctx, discdriver.Query{Service: "web", Critical: true}); len(insts) != 0 {
		t.Fatalf("after scaling to zero the registry has %+v", insts)
	}
}
