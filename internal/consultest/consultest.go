// Package consultest runs real Consul agents for tests: `consul agent -dev`
// with ports of its own, so that several run side by side. The consul
// program comes from `make consul` (Consul 1.13.9 built from the Go module
// proxy), found on PATH.
package consultest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/roottest"
)

// Require gates t on the consul program.
func Require(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.Binary("consul"))
}

// Log is what an agent writes, safe to read while it writes.
type Log struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freePorts returns n TCP ports of ip that nothing listened on a moment
// ago.
func freePorts(t testing.TB, ip string, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
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

// StartDev runs `consul agent -dev` whose HTTP API listens on ip (an
// address of the calling process's namespace, "127.0.0.1" for loopback)
// until the test ends, waits until it has a leader, and returns the API's
// host:port. The agent is killed with the test process if that dies. An
// agent that exits at start (a port chosen free was taken meanwhile by
// another test) is started again on other ports, up to three times.
func StartDev(t testing.TB, ip string) string {
	t.Helper()
	Require(t)
	for attempt := 1; ; attempt++ {
		addr, log, ok := startDev(t, ip)
		if ok {
			return addr
		}
		if attempt == 3 {
			t.Fatalf("consul at %s did not come up:\n%s", addr, log.String())
		}
	}
}

// startDev makes one attempt of StartDev: it reports false if the agent
// exited before it had a leader.
func startDev(t testing.TB, ip string) (string, *Log, bool) {
	p := freePorts(t, ip, 4)
	cmd := exec.Command("consul", "agent", "-dev", "-bind", ip, "-client", ip,
		"-node", fmt.Sprintf("dev%d", p[0]), "-http-port", fmt.Sprint(p[0]), "-dns-port", "-1", "-grpc-port", "-1",
		"-serf-lan-port", fmt.Sprint(p[1]), "-serf-wan-port", fmt.Sprint(p[2]), "-server-port", fmt.Sprint(p[3]))
	log := &Log{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	addr := net.JoinHostPort(ip, fmt.Sprint(p[0]))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case <-exited:
			return addr, log, false
		default:
		}
		if leaderKnown(context.Background(), client, addr) {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("consul logged:\n%s", log.String())
				}
			})
			return addr, log, true
		}
		if time.Now().After(deadline) {
			stop()
			return addr, log, false
		}
	}
}

func leaderKnown(ctx context.Context, c *http.Client, addr string) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/status/leader", nil)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode == http.StatusOK && len(bytes.Trim(b.Bytes(), "\"\n ")) > 0
}
