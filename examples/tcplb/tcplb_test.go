package tcplb_test

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/musterkit/muster/examples/tcplb"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

func open(t *testing.T, opts *tcplb.Options) *tcplb.Driver {
	t.Helper()
	d, err := tcplb.Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestConformance runs the public conformance suite; it needs no root.
func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) driver.Driver { return open(t, nil) },
		Bind: drivertest.LoopbackBind,
	})
}

// TestTraffic runs the public traffic suite: backends and clients on
// simulated servers (root), the balancer in the test process, in the root
// namespace or, through Options.Do, in a simulated server's.
func TestTraffic(t *testing.T) {
	roottest.Require(t)
	drivertest.RunTrafficTests(t, drivertest.TrafficHarness{
		Open:            func(t *testing.T) driver.Driver { return open(t, nil) },
		ZeroLossReloads: true,
		OpenIn: func(t *testing.T, h *testhost.Host) driver.Driver {
			return open(t, &tcplb.Options{Do: h.Do})
		},
	})
}

// echoServer listens on loopback; every connection gets name and a newline,
// then an echo of what it sends.
func echoServer(t *testing.T, name string) driver.Server {
	l, err := net.Listen("tcp", "127.0.0.1:0")
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
				io.WriteString(c, name+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	return driver.Server{Name: name, Address: "127.0.0.1", Port: uint16(l.Addr().(*net.TCPAddr).Port)}
}

// client is a connection through the balancer and the server it reached.
type client struct {
	net.Conn
	r      *bufio.Reader
	server string
}

func frontend(cfg *driver.Config) string {
	return net.JoinHostPort(cfg.Frontends[0].Address, strconv.Itoa(int(cfg.Frontends[0].Port)))
}

func dial(t *testing.T, cfg *driver.Config) *client {
	t.Helper()
	c, err := net.Dial("tcp", frontend(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	cl := &client{Conn: c, r: bufio.NewReader(c)}
	if cl.server, err = cl.r.ReadString('\n'); err != nil {
		t.Fatalf("no answer through the balancer: %v", err)
	}
	return cl
}

// echoes reports whether the connection still carries data both ways.
func (c *client) echoes() bool {
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return false
	}
	s, err := c.r.ReadString('\n')
	return err == nil && s == "ping\n"
}

// TestConnectionsAcrossChanges checks what the suites do not: open
// connections survive a drain and a configuration change, and end on
// maintenance and on Close.
func TestConnectionsAcrossChanges(t *testing.T) {
	ctx := t.Context()
	d := open(t, nil)
	cfg := &driver.Config{
		Pools:     []driver.Pool{{Name: "p", Servers: []driver.Server{echoServer(t, "a"), echoServer(t, "b")}}},
		Frontends: []driver.Frontend{{Name: "fe", Protocol: driver.TCP, DefaultPool: "p"}},
	}
	cfg.Frontends[0].Address, cfg.Frontends[0].Port = drivertest.LoopbackBind(t)
	if err := drivertest.ApplyRebinding(ctx, t, d, cfg, drivertest.LoopbackBind); err != nil {
		t.Fatal(err)
	}
	first := dial(t, cfg)
	if first.server != "a\n" {
		t.Fatalf("the first connection reached %q, want a", first.server)
	}
	if err := d.SetState(ctx, "p", "a", driver.Drain); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if c := dial(t, cfg); c.server != "b\n" {
			t.Fatalf("with a draining, a new connection reached %q", c.server)
		}
	}
	if !first.echoes() {
		t.Fatal("draining a ended its open connection")
	}

	// Another frontend and a weight: the first frontend keeps its
	// listener and its connections.
	second := cfg.Normalized()
	second.Pools[0].Servers[1].Weight = 3
	second.Pools[0].Servers[0].State = driver.Drain
	addr, port := drivertest.LoopbackBind(t)
	second.Frontends = append(second.Frontends, driver.Frontend{Name: "other", Protocol: driver.TCP, Address: addr, Port: port, DefaultPool: "p"})
	if err := drivertest.ApplyRebinding(ctx, t, d, second, drivertest.LoopbackBind); err != nil {
		t.Fatal(err)
	}
	if !first.echoes() {
		t.Fatal("a configuration change ended an open connection")
	}

	if err := d.SetState(ctx, "p", "a", driver.Maintenance); err != nil {
		t.Fatal(err)
	}
	if first.echoes() {
		t.Fatal("a connection to a server in maintenance goes on")
	}
	last := dial(t, cfg)
	st, err := d.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b := drivertest.Find(st, "p", "b"); b.CurrentSessions != 4 || b.TotalConnections != 4 {
		t.Fatalf("stats of b with 4 connections open: %+v", b)
	}
	d.Close()
	if last.echoes() {
		t.Fatal("a connection goes on after Close")
	}
	if _, err := net.DialTimeout("tcp", frontend(cfg), time.Second); err == nil {
		t.Fatal("the frontend accepts connections after Close")
	}
}
