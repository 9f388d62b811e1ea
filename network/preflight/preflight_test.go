package preflight

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
)

// freePort returns a port no socket of proto holds on loopback now.
func freePort(t *testing.T, proto Proto) uint16 {
	t.Helper()
	if proto == TCP {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return uint16(l.Addr().(*net.TCPAddr).Port)
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func loopbackTargets() []Target {
	return []Target{
		{Name: "a", Underlay: netip.MustParseAddr("127.0.0.1"), Server: NewLocal(nil)},
		{Name: "b", Underlay: netip.MustParseAddr("127.0.0.2"), Server: NewLocal(nil)},
	}
}

func TestRunOnLoopback(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []driver.Mode{driver.VXLAN, driver.BGP} {
		t.Run(string(mode), func(t *testing.T) {
			proto := PortsOf(mode, 0)[0].Proto
			plan := Plan{Mode: mode, Port: freePort(t, proto)}
			r, err := Run(ctx, plan, loopbackTargets())
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Err(); err != nil {
				t.Fatalf("problems on loopback: %v", err)
			}
			if len(r.Pairs) != 2 || r.Pairs[0].From != "a" || r.Pairs[1].From != "b" {
				t.Fatalf("pairs %+v", r.Pairs)
			}
			for _, p := range r.Pairs {
				// Loopback's MTU is 65536; the largest UDP datagram
				// makes a 65535-byte packet.
				if !p.Reachable || p.RTT <= 0 || p.PathMTU != 65535 || len(p.Ports) != 1 || !p.Ports[0].Reachable || p.Ports[0].Number != plan.Port {
					t.Fatalf("pair %+v", p)
				}
			}
			if r.MTU != 65535-r.Overhead || r.NeedMTU != 576+r.Overhead {
				t.Fatalf("MTU %d, need %d", r.MTU, r.NeedMTU)
			}
		})
	}
}

func TestPortInUse(t *testing.T) {
	ctx := context.Background()
	port := freePort(t, UDP)
	held, err := net.ListenPacket("udp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	r, err := Run(ctx, Plan{Mode: driver.VXLAN, Port: port}, loopbackTargets())
	if err != nil {
		t.Fatal(err)
	}
	want := Port{Proto: UDP, Number: port}
	if len(r.Servers[1].InUse) != 1 || r.Servers[1].InUse[0] != want || len(r.Servers[0].InUse) != 0 {
		t.Fatalf("servers %+v", r.Servers)
	}
	// a's probe of b skips the held port; b's probe of a tries it.
	if len(r.Pairs[0].Ports) != 0 || len(r.Pairs[1].Ports) != 1 {
		t.Fatalf("pairs %+v", r.Pairs)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("a port in use is reported, not a problem: %v", err)
	}
}

func TestMTUProblem(t *testing.T) {
	r, err := Run(context.Background(), Plan{Mode: driver.VXLAN, Port: freePort(t, UDP), MTU: 65500}, loopbackTargets())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "path MTU 65535, the network needs 65550") {
		t.Fatalf("Err() = %v", err)
	}
}

func TestRespondersClose(t *testing.T) {
	ctx := context.Background()
	l := NewLocal(nil)
	port := freePort(t, TCP)
	resp, err := l.Respond(ctx, &RespondRequest{Addr: netip.MustParseAddr("127.0.0.1"), Ports: []Port{{TCP, port}}, TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()); err != nil {
		t.Fatalf("responder not listening: %v", err)
	} else {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("responder still listening after its TTL")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.StopResponding(ctx, resp.ID); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("StopResponding after the TTL: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	l := NewLocal(nil)
	good := loopbackTargets()
	for _, tc := range []struct {
		what    string
		plan    Plan
		targets []Target
	}{
		{"unknown mode", Plan{Mode: "gre"}, good},
		{"MTU too small", Plan{Mode: driver.VXLAN, MTU: 100}, good},
		{"one server", Plan{Mode: driver.VXLAN}, good[:1]},
		{"bad name", Plan{Mode: driver.VXLAN}, []Target{good[0], {Name: "b;rm", Underlay: good[1].Underlay, Server: l}}},
		{"same underlay", Plan{Mode: driver.VXLAN}, []Target{good[0], {Name: "b", Underlay: good[0].Underlay, Server: l}}},
		{"no server", Plan{Mode: driver.VXLAN}, []Target{good[0], {Name: "b", Underlay: good[1].Underlay}}},
		{"mixed families", Plan{Mode: driver.VXLAN}, []Target{good[0], {Name: "b", Underlay: netip.MustParseAddr("::1"), Server: l}}},
	} {
		if _, err := Run(ctx, tc.plan, tc.targets); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: %v", tc.what, err)
		}
	}
	if _, err := l.Respond(ctx, &RespondRequest{Addr: netip.MustParseAddr("127.0.0.1"), Ports: []Port{{"sctp", 1}}}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("bad proto: %v", err)
	}
	if _, err := l.Respond(ctx, &RespondRequest{Addr: netip.MustParseAddr("198.18.255.254")}); !errors.Is(err, errcode.FailedPrecondition) {
		t.Errorf("address no link holds: %v", err)
	}
	if _, err := l.Probe(ctx, &ProbeRequest{From: netip.MustParseAddr("127.0.0.1"), To: netip.MustParseAddr("::1"), ProbePort: 9}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("mixed families: %v", err)
	}
}
