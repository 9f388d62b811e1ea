package preflight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/freeport"
	"github.com/musterkit/muster/network/driver"
)

// runPicked runs a preflight of plan on loopback on a port p picks for
// plan's mode, and again on another (freeport.Retry) while a responder
// finds the port in use: a process running in parallel took it between
// the pick and the run.
func runPicked(t *testing.T, p *freeport.Picker, plan Plan) *Report {
	t.Helper()
	var r *Report
	err := freeport.Retry(t, func() error {
		proto := PortsOf(plan.Mode, 0)[0].Proto
		plan.Port = uint16(p.Pick(t, string(proto), "127.0.0.1", 1)[0])
		var err error
		if r, err = Run(context.Background(), plan, loopbackTargets()); err != nil {
			return err
		}
		for _, s := range r.Servers {
			if len(s.InUse) > 0 {
				return fmt.Errorf("%w: %s holds %v", freeport.ErrInUse, s.Name, s.InUse)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func loopbackTargets() []Target {
	return []Target{
		{Name: "a", Underlay: netip.MustParseAddr("127.0.0.1"), Server: NewLocal(nil)},
		{Name: "b", Underlay: netip.MustParseAddr("127.0.0.2"), Server: NewLocal(nil)},
	}
}

func TestRunOnLoopback(t *testing.T) {
	for _, mode := range []driver.Mode{driver.VXLAN, driver.BGP} {
		t.Run(string(mode), func(t *testing.T) {
			r := runPicked(t, nil, Plan{Mode: mode})
			checkLoopback(t, r)
		})
	}
}

// TestRunRetriesTakenPort takes the first picked port on b's address
// before the run: b's responder finds it in use, and the preflight runs
// again on another port, that both servers reach.
func TestRunRetriesTakenPort(t *testing.T) {
	var picks [][]int
	p := &freeport.Picker{AfterPick: func(ports []int) {
		if len(picks) == 0 {
			freeport.Hold(t, "udp", "127.0.0.2", ports[0])
		}
		picks = append(picks, ports)
	}}
	r := runPicked(t, p, Plan{Mode: driver.VXLAN})
	if len(picks) != 2 || r.Ports[0].Number != uint16(picks[1][0]) {
		t.Fatalf("picks %v, ran on %v; want the second pick", picks, r.Ports)
	}
	checkLoopback(t, r)
}

// checkLoopback checks a clean report of a run on loopbackTargets.
func checkLoopback(t *testing.T, r *Report) {
	t.Helper()
	if err := r.Err(); err != nil {
		t.Fatalf("problems on loopback: %v", err)
	}
	if len(r.Pairs) != 2 || r.Pairs[0].From != "a" || r.Pairs[1].From != "b" {
		t.Fatalf("pairs %+v", r.Pairs)
	}
	for _, p := range r.Pairs {
		// Loopback's MTU is 65536; the largest UDP datagram makes a
		// 65535-byte packet.
		if !p.Reachable || p.RTT <= 0 || p.PathMTU != 65535 || len(p.Ports) != 1 || !p.Ports[0].Reachable || p.Ports[0].Number != r.Ports[0].Number {
			t.Fatalf("pair %+v", p)
		}
	}
	if r.MTU != 65535-r.Overhead || r.NeedMTU != 576+r.Overhead {
		t.Fatalf("MTU %d, need %d", r.MTU, r.NeedMTU)
	}
}

// TestPortInUse runs a preflight with b's address holding the port (the
// test's own socket, bound before the run). A process running in parallel
// may hold it on a's address too: then again with another.
func TestPortInUse(t *testing.T) {
	var r *Report
	var port uint16
	err := freeport.Retry(t, func() error {
		held, err := net.ListenPacket("udp", "127.0.0.2:0")
		if err != nil {
			return err
		}
		t.Cleanup(func() { held.Close() })
		port = uint16(held.LocalAddr().(*net.UDPAddr).Port)
		if r, err = Run(context.Background(), Plan{Mode: driver.VXLAN, Port: port}, loopbackTargets()); err != nil {
			return err
		}
		if len(r.Servers[0].InUse) > 0 {
			return fmt.Errorf("%w: a holds %v", freeport.ErrInUse, r.Servers[0].InUse)
		}
		return nil
	})
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
	r := runPicked(t, nil, Plan{Mode: driver.VXLAN, MTU: 65500})
	if err := r.Err(); !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "path MTU 65535, the network needs 65550") {
		t.Fatalf("Err() = %v", err)
	}
}

// TestRespondersClose checks that a responder stops at its TTL. Its port
// is picked, and picked again if another process took it first; after the
// TTL another process may take it, so what is checked is that the
// responder no longer greets.
func TestRespondersClose(t *testing.T) {
	ctx := context.Background()
	l := NewLocal(nil)
	var resp *Responder
	var addr string
	err := freeport.Retry(t, func() error {
		port := uint16(freeport.Pick(t, "tcp", "127.0.0.1", 1)[0])
		addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
		var err error
		resp, err = l.Respond(ctx, &RespondRequest{Addr: netip.MustParseAddr("127.0.0.1"), Ports: []Port{{TCP, port}}, TTL: 200 * time.Millisecond})
		if err == nil && len(resp.InUse) > 0 {
			l.StopResponding(ctx, resp.ID)
			return fmt.Errorf("%w: %s", freeport.ErrInUse, addr)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	greets := func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		b, _ := io.ReadAll(c)
		return string(b) == banner
	}
	if !greets() {
		t.Fatal("the responder does not greet")
	}
	for deadline := time.Now().Add(5 * time.Second); greets(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("responder still listening after its TTL")
		}
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
