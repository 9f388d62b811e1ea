package keepalived_test

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/haproxy"
	"github.com/musterkit/muster/ha"
	"github.com/musterkit/muster/ha/driver"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

func openHAProxy(t *testing.T, h *testhost.Host) *haproxy.Driver {
	t.Helper()
	dir, err := os.MkdirTemp("", "mhap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := haproxy.Open(t.Context(), filepath.Join(dir, "lb"), &haproxy.Options{
		Command: func(name string, args ...string) *exec.Cmd { return h.Command(context.Background(), name, args...) },
		Listen:  h.Listen,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestDeployPairHAProxy: ha.DeployPair puts HAProxy on hosts 0 and 1 with
// one floating address; killing the master's HAProxy moves the address
// (the group tracks the frontend's port) and a client on host 2 keeps
// reaching the backend through it.
func TestDeployPairHAProxy(t *testing.T) {
	requireRoot(t, roottest.BinaryFrom("haproxy", "haproxy"))
	c := testhost.New(t, 3)
	h0, h1, h2 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	serve(t, h2, 9000) // the backend, on host 2, answers "h2"
	lb0, lb1 := openHAProxy(t, h0), openHAProxy(t, h1)
	ka0, ka1 := openIn(t, h0), openIn(t, h1)
	cfg := &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "web", Protocol: lbdriver.TCP, Address: "0.0.0.0", Port: 8080, DefaultPool: "app"}},
		Pools:     []lbdriver.Pool{{Name: "app", Servers: []lbdriver.Server{{Name: "h2", Address: h2.Addr.String(), Port: 9000}}}},
	}
	g, err := ha.DeployPair(t.Context(),
		ha.Spec{Name: "lb", VirtualRouterID: 60, Addresses: []netip.Addr{vip(c)}, AdvertInterval: 100 * time.Millisecond},
		cfg,
		ha.PairMember{Name: "h0", Interface: h0.Link, Address: h0.Addr, HA: ka0, LB: lb0},
		ha.PairMember{Name: "h1", Interface: h1.Link, Address: h1.Addr, HA: ka1, LB: lb1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, ka0, driver.Master, 5*time.Second)
	waitState(t, ka1, driver.Backup, 5*time.Second)
	waitServed(t, h2, vip(c), 8080, "h2", 5*time.Second)

	pid := lb0.Pid()
	if pid == 0 {
		t.Fatal("haproxy is not running on h0")
	}
	killed := time.Now()
	// The balancer dies: its master and workers (its process group).
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, ka1, driver.Master, 5*time.Second)
	back := waitServed(t, h2, vip(c), 8080, "h2", 5*time.Second)
	t.Logf("outage after the master's HAProxy died (TCP check every 1s): %v", back.Sub(killed).Round(time.Millisecond))
	waitState(t, ka0, driver.Fault, time.Second)
	if st := g.Status(t.Context()); len(st.Holders) != 1 || st.Holders[0] != "h1" {
		t.Fatalf("holders %v", st.Holders)
	}
}
