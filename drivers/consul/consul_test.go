package consul

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/drivertest"
	"github.com/musterkit/muster/internal/roottest"
)

// requireConsul gates on the consul program (make consul builds it).
func requireConsul(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.Binary("consul"))
}

// freePorts returns n TCP ports nothing listened on a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// syncBuffer is a log the agent writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDevAgent runs `consul agent -dev` on loopback with ports of its own
// until the test ends, and returns a driver for it.
func startDevAgent(t testing.TB) *Driver {
	t.Helper()
	requireConsul(t)
	p := freePorts(t, 4)
	cmd := exec.Command("consul", "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", fmt.Sprintf("dev%d", p[0]), "-http-port", fmt.Sprint(p[0]), "-dns-port", "-1", "-grpc-port", "-1",
		"-serf-lan-port", fmt.Sprint(p[1]), "-serf-wan-port", fmt.Sprint(p[2]), "-server-port", fmt.Sprint(p[3]))
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("consul logged:\n%s", log.String())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", p[0])
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		d, err := Open(context.Background(), &Options{Address: addr})
		if err == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul at %s: %v\n%s", addr, err, log.String())
		}
	}
}

func TestConformance(t *testing.T) {
	requireConsul(t)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:          func(t *testing.T) driver.Driver { return startDevAgent(t) },
		CheckInterval: time.Second,
	})
}

func TestOpenRefuses(t *testing.T) {
	if _, err := Open(context.Background(), &Options{Address: "no port"}); err == nil || !strings.Contains(err.Error(), "address") {
		t.Fatalf("bad address: %v", err)
	}
	p := freePorts(t, 1)[0]
	if _, err := Open(context.Background(), &Options{Address: fmt.Sprintf("127.0.0.1:%d", p)}); err == nil {
		t.Fatal("Open with no agent listening succeeded")
	}
}

// TestLock runs two contenders for one key: one leads, the other waits
// until the first releases; a cancelled wait returns the context's error.
func TestLock(t *testing.T) {
	d := startDevAgent(t)
	ctx := context.Background()
	first, err := d.Lock(ctx, "muster/leader", &LockOptions{Holder: "a", TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := d.Lock(short, "muster/leader", &LockOptions{Holder: "b", TTL: 10 * time.Second}); err == nil {
		t.Fatal("a second contender took a held lock")
	}
	got := make(chan *Leadership, 1)
	go func() {
		l, err := d.Lock(ctx, "muster/leader", &LockOptions{Holder: "b", TTL: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-got:
		t.Fatal("the second contender leads while the first holds the lock")
	case <-time.After(300 * time.Millisecond):
	}
	kv, _, err := d.Client().KV().Get("muster/leader", nil)
	if err != nil || kv == nil || string(kv.Value) != "a" {
		t.Fatalf("the key holds %+v, %v", kv, err)
	}
	released := time.Now()
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	select {
	case second := <-got:
		t.Logf("the second contender led %v after the release", time.Since(released).Round(time.Millisecond))
		if second == nil {
			t.Fatal("no leadership")
		}
		defer second.Release()
		select {
		case <-second.Lost:
			t.Fatal("lost at once")
		default:
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second contender did not take the released lock")
	}
	for _, bad := range []string{"", "/abs", "a/../b", "a b", "a\nb"} {
		if _, err := d.Lock(ctx, bad, nil); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
}
