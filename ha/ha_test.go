package ha_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha"
	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/ha/memha"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/memlb"
)

var (
	a1  = netip.MustParseAddr("198.18.0.1")
	a2  = netip.MustParseAddr("198.18.0.2")
	vip = netip.MustParseAddr("198.18.0.200")
)

func servers(link *memha.Network) (*memha.Driver, *memha.Driver) {
	mk := func(a netip.Addr) *memha.Driver {
		return link.New(&memha.Options{Interfaces: map[string][]netip.Prefix{"eth0": {netip.PrefixFrom(a, 24)}}})
	}
	return mk(a1), mk(a2)
}

func spec() ha.Spec {
	return ha.Spec{Name: "web", VirtualRouterID: 51, Addresses: []netip.Addr{vip}, AdvertInterval: 100 * time.Millisecond}
}

func members(d1, d2 driver.Driver) []ha.Member {
	return []ha.Member{
		{Name: "lb1", Interface: "eth0", Address: a1, Priority: 150, Driver: d1},
		{Name: "lb2", Interface: "eth0", Address: a2, Priority: 100, Driver: d2},
	}
}

func TestNewValidates(t *testing.T) {
	link := memha.NewNetwork(nil)
	d1, d2 := servers(link)
	for name, mut := range map[string]func(*ha.Spec, []ha.Member) []ha.Member{
		"vrid":      func(s *ha.Spec, m []ha.Member) []ha.Member { s.VirtualRouterID = 300; return m },
		"priority":  func(s *ha.Spec, m []ha.Member) []ha.Member { m[0].Priority = 255; return m },
		"one":       func(s *ha.Spec, m []ha.Member) []ha.Member { return m[:1] },
		"same name": func(s *ha.Spec, m []ha.Member) []ha.Member { m[1].Name = "lb1"; return m },
		"nil":       func(s *ha.Spec, m []ha.Member) []ha.Member { m[1].Driver = nil; return m },
		"iface":     func(s *ha.Spec, m []ha.Member) []ha.Member { m[1].Interface = "eth0 }"; return m },
		"name":      func(s *ha.Spec, m []ha.Member) []ha.Member { s.Name = "web\n"; return m },
	} {
		t.Run(name, func(t *testing.T) {
			s := spec()
			m := mut(&s, members(d1, d2))
			if _, err := ha.New(s, m, nil); !errors.Is(err, errcode.InvalidArgument) {
				t.Fatalf("New = %v, want InvalidArgument", err)
			}
		})
	}
}

func TestApplyWrapsAndLogs(t *testing.T) {
	link := memha.NewNetwork(nil)
	d1, d2 := servers(link)
	var logs bytes.Buffer
	g, err := ha.New(spec(), members(d1, d2), &ha.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx := context.Background()
	if err := g.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "ha group applied") {
		t.Fatalf("no log record: %s", logs.String())
	}
	// A floating address outside the members' network.
	s := spec()
	s.Addresses = []netip.Addr{netip.MustParseAddr("203.0.113.9")}
	bad, err := ha.New(s, members(d1, d2), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bad.Apply(ctx)
	if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), `ha group "web"`) || !strings.Contains(err.Error(), `"lb1"`) {
		t.Fatalf("Apply = %v, want InvalidArgument naming group and member", err)
	}
	if st := g.Status(ctx); len(st.Holders) != 1 || st.Holders[0] != "lb1" {
		t.Fatalf("holders %v", st.Holders)
	}
}

func TestWatchReportsSplitBrain(t *testing.T) {
	link := memha.NewNetwork(nil)
	d1, d2 := servers(link)
	g, err := ha.New(spec(), members(d1, d2), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := g.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err := g.Watch(ctx, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	link.Cut(a1, a2)
	deadline := time.After(2 * time.Second)
	for {
		select {
		case e := <-ev:
			if e.Kind == ha.SplitBrain && len(e.Holders) == 2 {
				link.Heal(a1, a2)
				if st := g.Status(ctx); st.SplitBrain() {
					t.Fatalf("still split after Heal: %+v", st)
				}
				return
			}
		case <-deadline:
			t.Fatal("no group split-brain event")
		}
	}
}

func TestDeployPair(t *testing.T) {
	link := memha.NewNetwork(nil)
	h1, h2 := servers(link)
	l1, l2 := memlb.New(), memlb.New()
	lb := &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "web", Protocol: lbdriver.TCP, Address: "0.0.0.0", Port: 8080, DefaultPool: "app"}},
		Pools:     []lbdriver.Pool{{Name: "app", Servers: []lbdriver.Server{{Name: "s1", Address: "198.18.0.3", Port: 9000}}}},
	}
	ctx := context.Background()
	g, err := ha.DeployPair(ctx, spec(), lb,
		ha.PairMember{Name: "lb1", Interface: "eth0", Address: a1, HA: h1, LB: l1},
		ha.PairMember{Name: "lb2", Interface: "eth0", Address: a2, HA: h2, LB: l2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, l := range []*memlb.Driver{l1, l2} {
		if c, _ := l.Config(ctx); !lbdriver.Equal(c, lb) {
			t.Fatalf("balancer config %+v", c)
		}
	}
	cfg, _ := g.Config("lb1")
	if cfg.Track.TCPPort != 8080 {
		t.Fatalf("track %+v, want the frontend's port", cfg.Track)
	}
	if st := g.Status(ctx); len(st.Holders) != 1 || st.Holders[0] != "lb1" {
		t.Fatalf("holders %v", st.Holders)
	}
	h1.SetPort(8080, false) // lb1's balancer stops accepting
	if st := g.Status(ctx); len(st.Holders) != 1 || st.Holders[0] != "lb2" {
		t.Fatalf("holders %v after the master's balancer died", st.Holders)
	}

	// A frontend bound to one address cannot be followed.
	bad := *lb
	bad.Frontends = []lbdriver.Frontend{lb.Frontends[0]}
	bad.Frontends[0].Address = "198.18.0.200"
	if _, err := ha.DeployPair(ctx, spec(), &bad,
		ha.PairMember{Name: "lb1", Interface: "eth0", Address: a1, HA: h1, LB: l1},
		ha.PairMember{Name: "lb2", Interface: "eth0", Address: a2, HA: h2, LB: l2}, nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("DeployPair = %v, want InvalidArgument", err)
	}
}
