package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/ha"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/roottest"
)

// TestHAPairThroughAgents deploys, in one call and entirely through the
// servers' agents, an HA pair of HAProxy balancers on s0 and s1 behind a
// floating IP (keepalived, 100 ms adverts) in front of a web server in an
// LXC container on s2. Killing the master's HAProxy moves the address to
// s1, and a client in the root namespace keeps being served; the outage is
// logged.
func TestHAPairThroughAgents(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("keepalived", "keepalived"), roottest.BinaryFrom("haproxy", "haproxy"))
	f := startFleet(t, 3)
	ctx := context.Background()
	fab := fabricOf(t, f)
	ensureVXLAN(t, fab, "ha", "198.19.133.0/24", 4303)
	n := runOn(t, f, fab, "ha", "s2", "web", nil)
	s2, _ := f.Cluster.Server("s2")
	var out strings.Builder
	if code, err := s2.Exec(ctx, "web", &container.Process{Args: []string{"sh", "-c", "mkdir -p /www && echo web > /www/index.html && httpd -p 8080 -h /www"}, Stdout: &out, Stderr: &out}); err != nil || code != 0 {
		t.Fatalf("httpd: %d, %v: %s", code, err, out.String())
	}
	a4 := f.Servers[0].Host.Addr.As4()
	a4[3] = 200
	vip := netip.AddrFrom4(a4) // in the servers' /24, held by none
	member := func(i int, name string) ha.PairMember {
		s := f.Servers[i]
		return ha.PairMember{Name: name, Interface: s.Host.Link, Address: s.Host.Addr,
			HA: s.Client.FloatingIP("keepalived", "front"), LB: s.Client.Balancer("haproxy", "front")}
	}
	lbcfg := &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "0.0.0.0", Port: 8080, DefaultPool: "app"}},
		Pools:     []lbdriver.Pool{{Name: "app", Servers: []lbdriver.Server{{Name: "web", Address: n.Address.Addr().String(), Port: 8080}}}},
	}
	g, err := ha.DeployPair(ctx, ha.Spec{Name: "front", VirtualRouterID: 61, Addresses: []netip.Addr{vip}, AdvertInterval: 100 * time.Millisecond},
		lbcfg, member(0, "s0"), member(1, "s1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	holders := func() []string { return g.Status(ctx).Holders }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: holders %v", what, holders())
			}
		}
	}
	get := func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(vip.String(), "8080"), 300*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		buf := make([]byte, 512)
		m, _ := c.Read(buf)
		if !strings.Contains(string(buf[:m]), "200") {
			return fmt.Errorf("answer %q", buf[:m])
		}
		return nil
	}
	waitFor("s0 holding the floating IP", func() bool { h := holders(); return len(h) == 1 && h[0] == "s0" })
	waitFor("the service through the floating IP", func() bool { return get() == nil })

	// The master's HAProxy dies (its whole process group, by the pid its
	// driver recorded).
	b, err := os.ReadFile(filepath.Join(f.Servers[0].Dir, "balancers", "front", "haproxy.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor("s1 taking the floating IP over", func() bool { h := holders(); return len(h) == 1 && h[0] == "s1" })
	waitFor("the service through s1", func() bool { return get() == nil })
	t.Logf("served again through s1 %v after the master's HAProxy died (tracked with a TCP check every second, 100 ms adverts)", time.Since(killed).Round(10*time.Millisecond))
	if ev := g.Check(ctx); ev != nil {
		t.Fatalf("split brain after the failover: %+v", ev)
	}
}
