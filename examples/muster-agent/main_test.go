package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/internal/freeport"
)

// run runs muster-agent with args and returns its output.
func run(ctx context.Context, args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// agentProc is muster-agent running in the background.
type agentProc struct {
	cancel  context.CancelFunc
	exited  chan struct{} // closed once it returned
	err     error         // what it returned
	stopped bool
}

// start runs muster-agent with args in the background until the test ends
// or stop is called.
func start(t *testing.T, args ...string) *agentProc {
	ctx, cancel := context.WithCancel(context.Background())
	a := &agentProc{cancel: cancel, exited: make(chan struct{})}
	go func() {
		out, err := run(ctx, args...)
		if err != nil {
			t.Logf("muster-agent %s: %s", args[0], out)
		}
		a.err = err
		close(a.exited)
	}()
	t.Cleanup(func() {
		if !a.stopped {
			a.stop(t)
		}
	})
	return a
}

// stop ends it and checks that it stopped cleanly.
func (a *agentProc) stop(t *testing.T) {
	a.stopped = true
	a.cancel()
	<-a.exited
	if a.err != nil {
		t.Errorf("muster-agent: %v", a.err)
	}
}

// serve starts muster-agent with args and --listen on a loopback port p
// picks, and returns it and its address once up says it serves there. A
// test running in parallel can take the port before the agent binds it: an
// agent that exits naming its address in use is started again on another
// (freeport.Retry).
func serve(t *testing.T, p *freeport.Picker, up func(addr string) bool, args ...string) (*agentProc, string) {
	t.Helper()
	var a *agentProc
	var addr string
	err := freeport.Retry(t, func() error {
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Pick(t, "tcp", "127.0.0.1", 1)[0]))
		a = start(t, slices.Concat(args, []string{"--listen", addr})...)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			select {
			case <-a.exited:
				a.stopped = true
				if a.err != nil && freeport.Taken(a.err.Error(), addr) {
					return fmt.Errorf("%w: muster-agent %s: %v", freeport.ErrInUse, args[0], a.err)
				}
				return fmt.Errorf("muster-agent %s exited: %v", args[0], a.err)
			default:
			}
			if up(addr) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("muster-agent %s does not serve at %s", args[0], addr)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, addr
}

// dial retries until the agent at addr answers.
func dial(t *testing.T, addr string, creds *pki.Credentials) *agent.Client {
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := agent.Dial(context.Background(), addr, creds, nil)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent at %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestJoinServeRestart(t *testing.T) { joinServeRestart(t, nil) }

// TestJoinServeRestartTakenPorts takes the port of the first try of each
// start (join server, agent, restarted agent) before it binds it, as a
// test running in parallel could: each starts again on another port, the
// agent with the credentials its first try saved when it joined.
func TestJoinServeRestartTakenPorts(t *testing.T) {
	picks := 0
	joinServeRestart(t, &freeport.Picker{AfterPick: func(ports []int) {
		if picks++; picks%2 == 1 {
			freeport.Hold(t, "tcp", "127.0.0.1", ports[0])
		}
	}})
	if picks != 6 {
		t.Fatalf("%d picks, want 6: two for each of three starts", picks)
	}
}

// joinServeRestart joins an agent, checks it serves, and restarts it, each
// start on ports p picks.
func joinServeRestart(t *testing.T, p *freeport.Picker) {
	ctx := context.Background()
	caDir, stateDir := t.TempDir(), t.TempDir()
	if _, err := run(ctx, "ca", "init", "--dir", caDir); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, "ca", "init", "--dir", caDir); err == nil {
		t.Fatal("ca init overwrote an existing CA")
	}
	out, err := run(ctx, "token", "--dir", caDir, "--ttl", "1m")
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(out)
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.Issue("admin", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	// The join server's certificate chains to the CA; an agent answers
	// admin: nothing else that took the port passes. (A socket that took
	// it may accept and not answer: each check is short.)
	joinUp := func(addr string) bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 500 * time.Millisecond}, "tcp", addr, &tls.Config{RootCAs: admin.CAPool})
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	agentUp := func(addr string) bool {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		c, err := agent.Dial(ctx, addr, admin, nil)
		if err == nil {
			c.Close()
		}
		return err == nil
	}

	_, joinAddr := serve(t, p, joinUp, "join-server", "--dir", caDir)
	first, agentAddr := serve(t, p, agentUp, "serve", "--dir", stateDir, "--name", "node1",
		"--driver", "memory", "--join", "https://"+joinAddr, "--token", token)
	c := dial(t, agentAddr, admin)
	host, err := c.HostInfo(ctx)
	if err != nil || host.Hostname != "node1" || host.Driver != "memory" {
		t.Fatalf("HostInfo: %+v, %v", host, err)
	}
	c.Close()
	first.stop(t)
	cert, err := os.ReadFile(filepath.Join(stateDir, "pki", "agent.crt"))
	if err != nil {
		t.Fatal(err)
	}

	// A restart reuses the credentials: the token is spent, and not needed.
	_, agentAddr = serve(t, p, agentUp, "serve", "--dir", stateDir, "--driver", "memory")
	dial(t, agentAddr, admin).Close()
	if again, err := os.ReadFile(filepath.Join(stateDir, "pki", "agent.crt")); err != nil || !bytes.Equal(again, cert) {
		t.Fatalf("the restart changed the agent's certificate (%v)", err)
	}
}
