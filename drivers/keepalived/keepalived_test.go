package keepalived_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/keepalived"
	"github.com/vishvananda/netlink"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/ha/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

func requireRoot(t testing.TB, more ...roottest.Need) {
	roottest.Require(t, append([]roottest.Need{roottest.BinaryFrom("keepalived", "keepalived"), roottest.BinaryFrom("busybox", "busybox-static"),
		roottest.BinaryFrom("ip", "iproute2")}, more...)...)
}

// openIn opens a driver whose keepalived runs in host h's namespace.
func openIn(t testing.TB, h *testhost.Host) *keepalived.Driver {
	t.Helper()
	dir, err := os.MkdirTemp("", "mka")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	nl, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	d, err := keepalived.Open(t.Context(), filepath.Join(dir, h.Name), &keepalived.Options{
		Command: func(name string, args ...string) *exec.Cmd { return h.Command(context.Background(), name, args...) },
		Handle:  nl,
	})
	if err != nil {
		nl.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
		nl.Close()
	})
	return d
}

// vip is the floating address of the tests: .200 of the cluster's /24.
func vip(c *testhost.Cluster) netip.Addr {
	b := c.Subnet.Addr().As4()
	b[3] = 200
	return netip.AddrFrom4(b)
}

// config is member i's configuration in a group of hosts 0..n-1.
func config(c *testhost.Cluster, i, n, prio int) *driver.Config {
	cfg := &driver.Config{Name: "web", VirtualRouterID: 51, Interface: c.Hosts[i].Link,
		Addresses: []netip.Addr{vip(c)}, Source: c.Hosts[i].Addr, Priority: prio,
		AdvertInterval: 100 * time.Millisecond}
	for j := range n {
		if j != i {
			cfg.Peers = append(cfg.Peers, c.Hosts[j].Addr)
		}
	}
	return cfg
}

// serve runs a TCP server on h at 0.0.0.0:port that writes h's name to
// every connection. Closing the returned listener stops it.
func serve(t testing.TB, h *testhost.Host, port int) net.Listener {
	t.Helper()
	l, err := h.Listen("tcp", net.JoinHostPort("0.0.0.0", itoa(port)))
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
			c.Write([]byte(h.Name))
			c.Close()
		}
	}()
	return l
}

func itoa(i int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(i)) }

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// ask dials addr:port from client and returns what the server wrote.
func ask(client *testhost.Host, addr netip.Addr, port int, timeout time.Duration) (string, error) {
	var got string
	err := client.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

// waitServed waits until the client reaches want through addr, and
// returns when.
func waitServed(t testing.TB, client *testhost.Host, addr netip.Addr, port int, want string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	var lastErr error
	for time.Now().Before(deadline) {
		got, err := ask(client, addr, port, 50*time.Millisecond)
		if err == nil && got == want {
			return time.Now()
		}
		last, lastErr = got, err
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("client did not reach %s through %v:%d within %v (last %q, %v)", want, addr, port, within, last, lastErr)
	return time.Time{}
}

// waitState waits until d reports state st (and, for Master, holds every
// floating address; otherwise none).
func waitState(t testing.TB, d driver.Driver, st driver.State, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var s *driver.Status
	var err error
	for time.Now().Before(deadline) {
		s, err = d.Status(context.Background())
		if err == nil && s.State == st && (st == driver.Master) == (len(s.Addresses) > 0) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	if k, ok := d.(*keepalived.Driver); ok {
		b, _ := os.ReadFile(filepath.Join(k.Dir(), keepalived.LogFile))
		t.Logf("log of %s:\n%s", k.Dir(), b)
	}
	t.Fatalf("state %v not reached within %v: %+v, %v", st, within, s, err)
}

func kill(t testing.TB, d *keepalived.Driver) {
	t.Helper()
	pid := d.Pid()
	if pid == 0 {
		t.Fatal("keepalived is not running")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// TestFailover: the VIP is on the master; a SIGKILL of its keepalived moves
// it to the backup while a client in a third host keeps reaching the
// service behind it; the master's return follows the preempt setting.
func TestFailover(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"preempt", "nopreempt"} {
		t.Run(mode, func(t *testing.T) {
			c := testhost.New(t, 3)
			h0, h1, client := c.Hosts[0], c.Hosts[1], c.Hosts[2]
			serve(t, h0, 8080)
			serve(t, h1, 8080)
			d0, d1 := openIn(t, h0), openIn(t, h1)
			cfg0, cfg1 := config(c, 0, 2, 150), config(c, 1, 2, 100)
			cfg0.NoPreempt = mode == "nopreempt"
			cfg1.NoPreempt = cfg0.NoPreempt
			ctx := t.Context()
			if err := d0.Apply(ctx, cfg0); err != nil {
				t.Fatal(err)
			}
			waitState(t, d0, driver.Master, 5*time.Second)
			if err := d1.Apply(ctx, cfg1); err != nil {
				t.Fatal(err)
			}
			waitState(t, d1, driver.Backup, 5*time.Second)
			waitServed(t, client, vip(c), 8080, "h0", 5*time.Second)
			ev, err := d1.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}

			killed := time.Now()
			kill(t, d0)
			back := waitServed(t, client, vip(c), 8080, "h1", 5*time.Second)
			t.Logf("outage after SIGKILL of the master's keepalived (advert 100ms): %v", back.Sub(killed).Round(time.Millisecond))
			waitState(t, d1, driver.Master, time.Second)
			waitState(t, d0, driver.Stopped, 2*time.Second) // and the orphaned VIP is gone
			sawMaster := false
			for len(ev) > 0 {
				if e := <-ev; e.Kind == driver.StateChanged && e.State == driver.Master {
					sawMaster = true
				}
			}
			if !sawMaster {
				t.Error("the backup's Watch did not report it becoming master")
			}

			// The master comes back.
			if err := d0.Apply(ctx, cfg0); err != nil {
				t.Fatal(err)
			}
			if mode == "preempt" {
				waitState(t, d0, driver.Master, 5*time.Second)
				waitState(t, d1, driver.Backup, 2*time.Second)
				waitServed(t, client, vip(c), 8080, "h0", 5*time.Second)
			} else {
				time.Sleep(2 * time.Second) // many adverts of the backup
				waitState(t, d0, driver.Backup, time.Second)
				waitState(t, d1, driver.Master, time.Second)
				waitServed(t, client, vip(c), 8080, "h1", time.Second)
			}
		})
	}
}

// TestBadInput: invalid input is errcode.InvalidArgument, renders nothing
// and starts nothing.
func TestBadInput(t *testing.T) {
	requireRoot(t)
	c := testhost.New(t, 2)
	d := openIn(t, c.Hosts[0])
	good := config(c, 0, 2, 100)
	outside := netip.MustParseAddr("203.0.113.7")
	for name, mut := range map[string]func(*driver.Config){
		"vrid 0":            func(c *driver.Config) { c.VirtualRouterID = 0 },
		"vrid 256":          func(c *driver.Config) { c.VirtualRouterID = 256 },
		"priority 0":        func(c *driver.Config) { c.Priority = 0 },
		"priority 255":      func(c *driver.Config) { c.Priority = 255 },
		"vip outside":       func(c *driver.Config) { c.Addresses = []netip.Addr{outside} },
		"no such interface": func(c *driver.Config) { c.Interface = "eth9" },
		"interface newline": func(c *driver.Config) { c.Interface = "eth0\n}" },
		"name quote":        func(c *driver.Config) { c.Name = `web"` },
		"name brace":        func(c *driver.Config) { c.Name = "web{" },
		"name hash":         func(c *driver.Config) { c.Name = "web#x" },
		"name space":        func(c *driver.Config) { c.Name = "web x" },
		"process newline":   func(c *driver.Config) { c.Track.Process = "sleep\nvrrp_script" },
		"process space":     func(c *driver.Config) { c.Track.Process = "a b" },
		"advert 5ms":        func(c *driver.Config) { c.AdvertInterval = 5 * time.Millisecond },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := *good
			cfg.Track = driver.Track{}
			mut(&cfg)
			err := d.Apply(t.Context(), &cfg)
			if !errors.Is(err, errcode.InvalidArgument) {
				t.Fatalf("Apply = %v, want InvalidArgument", err)
			}
			if d.Pid() != 0 {
				t.Fatal("keepalived started")
			}
			if _, err := os.Stat(filepath.Join(d.Dir(), keepalived.ConfigFile)); err == nil {
				t.Fatal("a configuration was written")
			}
		})
	}
}

func TestConformance(t *testing.T) {
	requireRoot(t)
	hosts := map[driver.Driver]*testhost.Host{}
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Pair: func(t *testing.T) (driver.Driver, driver.Driver, *driver.Config, *driver.Config) {
			c := testhost.New(t, 2)
			a, b := openIn(t, c.Hosts[0]), openIn(t, c.Hosts[1])
			hosts[a], hosts[b] = c.Hosts[0], c.Hosts[1]
			return a, b, config(c, 0, 2, 150), config(c, 1, 2, 100)
		},
		Kill: func(t *testing.T, d driver.Driver) { kill(t, d.(*keepalived.Driver)) },
		AddOrphan: func(t *testing.T, d driver.Driver, ifname string, p netip.Prefix) {
			addOrphan(t, hosts[d], ifname, p)
		},
	})
}

// addOrphan adds p to ifname in h, as a SIGKILLed keepalived leaves it.
func addOrphan(t testing.TB, h *testhost.Host, ifname string, p netip.Prefix) {
	t.Helper()
	nl, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
}
