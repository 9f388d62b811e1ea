// Package consultest runs real Consul agents for tests: `consul agent -dev`
// with ports of its own, so that several run side by side. The consul
// program comes from `make consul` (Consul 1.13.9 built from the Go module
// proxy), found on PATH.
package consultest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/internal/freeport"
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

// StartDev runs `consul agent -dev` whose HTTP API listens on ip (an
// address of the calling process's namespace, "127.0.0.1" for loopback)
// until the test ends, waits until it has a leader, and returns the API's
// host:port. The agent is killed with the test process if that dies. A
// port picked free for it can be taken by a test running in parallel
// before the agent binds it: an agent that exits at start saying one of
// its addresses is in use is started again on other ports
// (freeport.Retry); any other failure fails t at once, with the agent's
// log.
func StartDev(t testing.TB, ip string) string {
	t.Helper()
	Require(t)
	addr, err := startDev(t, ip, nil)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// startDev is StartDev with the ports p picks.
func startDev(t testing.TB, ip string, p *freeport.Picker) (string, error) {
	var addr string
	err := freeport.Retry(t, func() error {
		var err error
		addr, err = startDevOnce(t, ip, p)
		return err
	})
	return addr, err
}

// startDevOnce makes one start of StartDev. The agent binds six sockets:
// TCP for the HTTP API and the server RPC, TCP and UDP for Serf LAN and
// WAN (DNS and gRPC are off); every port is picked free for both.
func startDevOnce(t testing.TB, ip string, p *freeport.Picker) (string, error) {
	ports := p.Pick(t, "tcp+udp", ip, 4)
	var id [4]byte
	rand.Read(id[:])
	node := "dev-" + hex.EncodeToString(id[:])
	cmd := exec.Command("consul", "agent", "-dev", "-bind", ip, "-client", ip,
		"-node", node, "-http-port", fmt.Sprint(ports[0]), "-dns-port", "-1", "-grpc-port", "-1",
		"-serf-lan-port", fmt.Sprint(ports[1]), "-serf-wan-port", fmt.Sprint(ports[2]), "-server-port", fmt.Sprint(ports[3]))
	log := &Log{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	addr := net.JoinHostPort(ip, fmt.Sprint(ports[0]))
	if err := cmd.Start(); err != nil {
		return addr, err
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
			for _, port := range ports {
				if a := net.JoinHostPort(ip, fmt.Sprint(port)); freeport.Taken(log.String(), a) {
					return addr, fmt.Errorf("%w: consul exited at start: %s in use", freeport.ErrInUse, a)
				}
			}
			return addr, fmt.Errorf("consul at %s exited at start:\n%s", addr, log.String())
		default:
		}
		// The node name tells this agent from another that took the
		// HTTP port (this one is then about to exit).
		if ready(context.Background(), client, addr, node) {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("consul logged:\n%s", log.String())
				}
			})
			return addr, nil
		}
		if time.Now().After(deadline) {
			stop()
			return addr, fmt.Errorf("consul at %s has no leader after 30s:\n%s", addr, log.String())
		}
	}
}

// ready reports whether the agent at addr is node and knows a leader.
func ready(ctx context.Context, c *http.Client, addr, node string) bool {
	var self struct{ Config struct{ NodeName string } }
	b, ok := get(ctx, c, "http://"+addr+"/v1/agent/self")
	if !ok || json.Unmarshal(b, &self) != nil || self.Config.NodeName != node {
		return false
	}
	b, ok = get(ctx, c, "http://"+addr+"/v1/status/leader")
	return ok && len(bytes.Trim(b, "\"\n ")) > 0
}

// get returns the body of a 200 answer to a GET of url.
func get(ctx context.Context, c *http.Client, url string) ([]byte, bool) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return b, err == nil && resp.StatusCode == http.StatusOK
}
