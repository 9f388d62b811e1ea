package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
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

// start runs muster-agent in the background until the test ends or the
// returned stop is called, which checks that it stopped cleanly.
func start(t *testing.T, args ...string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		out, err := run(ctx, args...)
		if err != nil {
			t.Logf("muster-agent %s: %s", args[0], out)
		}
		done <- err
	}()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("muster-agent %s: %v", args[0], err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			stop()
		}
	})
	return stop
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitListening(t *testing.T, addr string) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

func TestJoinServeRestart(t *testing.T) {
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

	joinAddr, agentAddr := freeAddr(t), freeAddr(t)
	start(t, "join-server", "--dir", caDir, "--listen", joinAddr)
	waitListening(t, joinAddr)
	stopAgent := start(t, "serve", "--dir", stateDir, "--listen", agentAddr, "--name", "node1",
		"--driver", "memory", "--join", "https://"+joinAddr, "--token", token)

	ca, err := pki.LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.Issue("admin", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, agentAddr, admin)
	host, err := c.HostInfo(ctx)
	if err != nil || host.Hostname != "node1" || host.Driver != "memory" {
		t.Fatalf("HostInfo: %+v, %v", host, err)
	}
	c.Close()
	stopAgent()
	cert, err := os.ReadFile(filepath.Join(stateDir, "pki", "agent.crt"))
	if err != nil {
		t.Fatal(err)
	}

	// A restart reuses the credentials: the token is spent, and not needed.
	start(t, "serve", "--dir", stateDir, "--listen", agentAddr, "--driver", "memory")
	dial(t, agentAddr, admin).Close()
	if again, err := os.ReadFile(filepath.Join(stateDir, "pki", "agent.crt")); err != nil || !bytes.Equal(again, cert) {
		t.Fatalf("the restart changed the agent's certificate (%v)", err)
	}
}
