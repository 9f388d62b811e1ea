package keepalived_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/keepalived"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha"
	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

// startPair applies cfg0 (priority 150) on host 0 and cfg1 (100) on host 1
// and waits for host 0 to be master.
func startPair(t *testing.T, d0, d1 *keepalived.Driver, cfg0, cfg1 *driver.Config) {
	t.Helper()
	if err := d0.Apply(t.Context(), cfg0); err != nil {
		t.Fatal(err)
	}
	waitState(t, d0, driver.Master, 5*time.Second)
	if err := d1.Apply(t.Context(), cfg1); err != nil {
		t.Fatal(err)
	}
	waitState(t, d1, driver.Backup, 5*time.Second)
}

// trackedProcess starts a copy of sleep named name in h and returns it;
// the cleanup kills it by pid.
func trackedProcess(t *testing.T, h *testhost.Host, name string) *exec.Cmd {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	src, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), bin, "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return cmd
}

// TestTrackProcess: killing the process the master tracks moves the VIP;
// starting it again moves it back (preempt).
func TestTrackProcess(t *testing.T) {
	requireRoot(t)
	c := testhost.New(t, 3)
	serve(t, c.Hosts[0], 8080)
	serve(t, c.Hosts[1], 8080)
	d0, d1 := openIn(t, c.Hosts[0]), openIn(t, c.Hosts[1])
	// The pid namespace is the machine's: each host tracks its own name.
	n0, n1 := fmt.Sprintf("mstA%d", os.Getpid()%100000), fmt.Sprintf("mstB%d", os.Getpid()%100000)
	p0 := trackedProcess(t, c.Hosts[0], n0)
	trackedProcess(t, c.Hosts[1], n1)
	cfg0, cfg1 := config(c, 0, 2, 150), config(c, 1, 2, 100)
	cfg0.Track.Process, cfg1.Track.Process = n0, n1
	startPair(t, d0, d1, cfg0, cfg1)
	waitServed(t, c.Hosts[2], vip(c), 8080, "h0", 5*time.Second)

	killed := time.Now()
	p0.Process.Kill()
	back := waitServed(t, c.Hosts[2], vip(c), 8080, "h1", 5*time.Second)
	t.Logf("outage after the tracked process died: %v", back.Sub(killed).Round(time.Millisecond))
	waitState(t, d0, driver.Fault, 2*time.Second)
	waitState(t, d1, driver.Master, time.Second)

	trackedProcess(t, c.Hosts[0], n0)
	waitState(t, d0, driver.Master, 5*time.Second)
	waitServed(t, c.Hosts[2], vip(c), 8080, "h0", 5*time.Second)
}

// TestTrackTCP: closing the listener of the port the master tracks moves
// the VIP.
func TestTrackTCP(t *testing.T) {
	requireRoot(t)
	c := testhost.New(t, 3)
	l0 := serve(t, c.Hosts[0], 8080)
	serve(t, c.Hosts[1], 8080)
	d0, d1 := openIn(t, c.Hosts[0]), openIn(t, c.Hosts[1])
	cfg0, cfg1 := config(c, 0, 2, 150), config(c, 1, 2, 100)
	cfg0.Track.TCPPort, cfg1.Track.TCPPort = 8080, 8080
	startPair(t, d0, d1, cfg0, cfg1)
	waitServed(t, c.Hosts[2], vip(c), 8080, "h0", 5*time.Second)

	stopped := time.Now()
	l0.Close()
	back := waitServed(t, c.Hosts[2], vip(c), 8080, "h1", 5*time.Second)
	t.Logf("outage after the tracked port closed (check every 1s): %v", back.Sub(stopped).Round(time.Millisecond))
	waitState(t, d0, driver.Fault, 3*time.Second)
	waitState(t, d1, driver.Master, time.Second)
}

func nft(t *testing.T, h *testhost.Host, args ...string) {
	t.Helper()
	if out, err := h.Command(context.Background(), "nft", args...).CombinedOutput(); err != nil {
		t.Fatalf("nft %v: %v: %s", args, err, out)
	}
}

// TestSplitBrain: with host 1 dropping VRRP, both hosts are master; the
// Group over both drivers reports a split brain, and host 0's driver
// reports the adverts of the other master it receives. Restoring the
// traffic ends it.
func TestSplitBrain(t *testing.T) {
	requireRoot(t, roottest.BinaryFrom("nft", "nftables"))
	c := testhost.New(t, 2)
	d0, d1 := openIn(t, c.Hosts[0]), openIn(t, c.Hosts[1])
	g, err := ha.New(ha.Spec{Name: "web", VirtualRouterID: 51, Addresses: []netip.Addr{vip(c)}, AdvertInterval: 100 * time.Millisecond},
		[]ha.Member{
			{Name: "h0", Interface: "eth0", Address: c.Hosts[0].Addr, Priority: 150, Driver: d0},
			{Name: "h1", Interface: "eth0", Address: c.Hosts[1].Addr, Priority: 100, Driver: d1},
		}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := g.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	waitState(t, d0, driver.Master, 5*time.Second)
	waitState(t, d1, driver.Backup, 5*time.Second)
	if e := g.Check(ctx); e != nil {
		t.Fatalf("split brain before the cut: %+v", e)
	}
	ev, err := g.Watch(ctx, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}

	h1 := c.Hosts[1]
	nft(t, h1, "add", "table", "ip", "mstvrrp")
	t.Cleanup(func() { h1.Command(context.Background(), "nft", "delete", "table", "ip", "mstvrrp").Run() })
	nft(t, h1, "add", "chain", "ip", "mstvrrp", "in", "{", "type", "filter", "hook", "input", "priority", "0", ";", "}")
	nft(t, h1, "add", "rule", "ip", "mstvrrp", "in", "ip", "protocol", "vrrp", "drop")

	var group, member bool
	deadline := time.After(10 * time.Second)
	for !group || !member {
		select {
		case e := <-ev:
			if e.Kind != driver.SplitBrain {
				continue
			}
			t.Logf("split-brain event: member %q holders %v peer %v: %s", e.Member, e.Holders, e.Peer, e.Detail)
			if len(e.Holders) == 2 {
				group = true
			}
			if e.Member == "h0" && e.Peer == c.Hosts[1].Addr {
				member = true
			}
		case <-deadline:
			t.Fatalf("split-brain events: group %v, member h0 %v; status %+v", group, member, g.Status(ctx))
		}
	}

	nft(t, h1, "delete", "table", "ip", "mstvrrp")
	waitState(t, d1, driver.Backup, 5*time.Second)
	waitState(t, d0, driver.Master, time.Second)
	if e := g.Check(ctx); e != nil {
		t.Fatalf("split brain after the restore: %+v", e)
	}
}

// TestRejectedConfigKeepsRunning: a configuration keepalived -t rejects
// (here a track script whose program does not exist) is
// errcode.InvalidArgument and never replaces the running one.
func TestRejectedConfigKeepsRunning(t *testing.T) {
	requireRoot(t)
	c := testhost.New(t, 2)
	h := c.Hosts[0]
	nl, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	d, err := keepalived.Open(t.Context(), filepath.Join(t.TempDir(), "ka"), &keepalived.Options{
		BusyBox: "/nonexistent/busybox",
		Command: func(name string, args ...string) *exec.Cmd { return h.Command(context.Background(), name, args...) },
		Handle:  nl,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cfg := config(c, 0, 2, 150)
	if err := d.Apply(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, driver.Master, 5*time.Second)
	pid, reloads := d.Pid(), d.Reloads()
	conf, _ := os.ReadFile(filepath.Join(d.Dir(), keepalived.ConfigFile))
	tracked := *cfg
	tracked.Track.TCPPort = 8080
	err = d.Apply(t.Context(), &tracked)
	if !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Apply = %v, want InvalidArgument from keepalived -t", err)
	}
	t.Logf("rejected: %v", err)
	after, _ := os.ReadFile(filepath.Join(d.Dir(), keepalived.ConfigFile))
	if string(after) != string(conf) || d.Pid() != pid || d.Reloads() != reloads {
		t.Fatal("the rejected configuration replaced the running one")
	}
	waitState(t, d, driver.Master, time.Second)
}

// TestReload: a changed configuration reaches the running keepalived by
// SIGHUP (same pid): lowering the master's priority below the backup's
// hands the address over, and an equal Apply afterwards changes nothing.
func TestReload(t *testing.T) {
	requireRoot(t)
	c := testhost.New(t, 3)
	serve(t, c.Hosts[0], 8080)
	serve(t, c.Hosts[1], 8080)
	d0, d1 := openIn(t, c.Hosts[0]), openIn(t, c.Hosts[1])
	cfg0, cfg1 := config(c, 0, 2, 150), config(c, 1, 2, 100)
	startPair(t, d0, d1, cfg0, cfg1)
	waitServed(t, c.Hosts[2], vip(c), 8080, "h0", 5*time.Second)
	pid, reloads := d0.Pid(), d0.Reloads()
	lower := *cfg0
	lower.Priority = 50
	if err := d0.Apply(t.Context(), &lower); err != nil {
		t.Fatal(err)
	}
	if d0.Pid() != pid || d0.Reloads() != reloads+1 {
		t.Fatalf("pid %d -> %d, reloads %d -> %d: want a reload of the same process", pid, d0.Pid(), reloads, d0.Reloads())
	}
	waitState(t, d1, driver.Master, 5*time.Second)
	waitState(t, d0, driver.Backup, 5*time.Second)
	waitServed(t, c.Hosts[2], vip(c), 8080, "h1", 5*time.Second)
	if err := d0.Apply(t.Context(), &lower); err != nil || d0.Reloads() != reloads+1 {
		t.Fatalf("equal Apply: %v, reloads %d", err, d0.Reloads())
	}
	conf, err := os.ReadFile(filepath.Join(d0.Dir(), keepalived.ConfigFile))
	if err != nil || !strings.Contains(string(conf), "priority 50\n") {
		t.Fatalf("config file: %v\n%s", err, conf)
	}
}
