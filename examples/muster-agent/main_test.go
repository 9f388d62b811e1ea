package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
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

// testCA is a cluster CA in a directory, its join server, and a client
// certificate to check agents with.
type testCA struct {
	dir     string
	admin   *pki.Credentials
	joinURL string
}

// startCA makes a CA with ca init and serves joins with join-server, on a
// port p picks.
func startCA(t *testing.T, p *freeport.Picker) *testCA {
	t.Helper()
	ctx := context.Background()
	c := &testCA{dir: t.TempDir()}
	if _, err := run(ctx, "ca", "init", "--dir", c.dir); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, "ca", "init", "--dir", c.dir); err == nil {
		t.Fatal("ca init overwrote an existing CA")
	}
	ca, err := pki.LoadCA(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.admin, err = ca.Issue("admin", nil, time.Hour, pki.UsageClient); err != nil {
		t.Fatal(err)
	}
	// The join server's certificate chains to the CA: nothing else that
	// took the port passes. (A socket that took it may accept and not
	// answer: each check is short.)
	joinUp := func(addr string) bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 500 * time.Millisecond}, "tcp", addr, &tls.Config{RootCAs: c.admin.CAPool})
		if err == nil {
			conn.Close()
		}
		return err == nil
	}
	_, joinAddr := serve(t, p, joinUp, "join-server", "--dir", c.dir)
	c.joinURL = "https://" + joinAddr
	return c
}

// agentUp reports whether an agent of the CA answers admin at addr.
func (c *testCA) agentUp(addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	a, err := agent.Dial(ctx, addr, c.admin, nil)
	if err == nil {
		a.Close()
	}
	return err == nil
}

// tokenFile makes a token with muster-agent token and args, written to a
// new file (--out), and returns the file's path.
func (c *testCA) tokenFile(t *testing.T, args ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "join.token")
	if out, err := run(context.Background(), slices.Concat([]string{"token", "--dir", c.dir, "--ttl", "1m", "--out", path}, args)...); err != nil {
		t.Fatalf("muster-agent token %v: %v\n%s", args, err, out)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token --out: mode %v, %v; want 0600", st.Mode(), err)
	}
	return path
}

// joinServeRestart joins an agent, checks it serves, and restarts it, each
// start on ports p picks.
func joinServeRestart(t *testing.T, p *freeport.Picker) {
	ctx := context.Background()
	c := startCA(t, p)
	stateDir := t.TempDir()
	tokenFile := c.tokenFile(t, "--name", "node1", "--ip", "127.0.0.1")
	first, agentAddr := serve(t, p, c.agentUp, "serve", "--dir", stateDir, "--name", "node1",
		"--driver", "memory", "--join", c.joinURL, "--token-file", tokenFile)
	client := dial(t, agentAddr, c.admin)
	host, err := client.HostInfo(ctx)
	if err != nil || host.Hostname != "node1" || host.Driver != "memory" {
		t.Fatalf("HostInfo: %+v, %v", host, err)
	}
	client.Close()
	first.stop(t)
	cert, err := os.ReadFile(filepath.Join(stateDir, "pki", "agent.crt"))
	if err != nil {
		t.Fatal(err)
	}

	// A restart reuses the credentials: the token is spent, and not needed.
	_, agentAddr = serve(t, p, c.agentUp, "serve", "--dir", stateDir, "--driver", "memory")
	dial(t, agentAddr, c.admin).Close()
	if again, err := os.ReadFile(filepath.Join(stateDir, "pki", "agent.crt")); err != nil || !bytes.Equal(again, cert) {
		t.Fatalf("the restart changed the agent's certificate (%v)", err)
	}
}

// The join token comes from the environment as well as from a file, and
// serve removes it from its environment so that its children do not
// inherit it.
func TestServeTokenFromEnvironment(t *testing.T) {
	c := startCA(t, nil)
	token, err := os.ReadFile(c.tokenFile(t, "--name", "node2", "--ip", "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(tokenEnv, string(token))
	_, addr := serve(t, nil, c.agentUp, "serve", "--dir", t.TempDir(), "--name", "node2", "--driver", "memory", "--join", c.joinURL)
	host, err := dial(t, addr, c.admin).HostInfo(context.Background())
	if err != nil || host.Hostname != "node2" {
		t.Fatalf("HostInfo: %+v, %v", host, err)
	}
	if v, ok := os.LookupEnv(tokenEnv); ok {
		t.Fatalf("serve left %s=%q in its environment", tokenEnv, v)
	}
}

// A token on the command line is refused, and so are a token file others
// may read and a token given two ways; each says what to do instead.
func TestServeRefusesTokenArguments(t *testing.T) {
	ctx := context.Background()
	c := startCA(t, nil)
	tokenFile := c.tokenFile(t, "--name", "node3", "--ip", "127.0.0.1")
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(t.TempDir(), "readable.token")
	if err := os.WriteFile(readable, token, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"serve", "--dir", t.TempDir(), "--name", "node3", "--driver", "memory", "--join", c.joinURL, "--listen", "127.0.0.1:0"}
	for _, tt := range []struct {
		name string
		args []string
		env  bool
		want string
	}{
		{"--token", []string{"--token", strings.TrimSpace(string(token))}, false, "/proc/PID/cmdline"},
		{"--token with a file", []string{"--token", "x", "--token-file", tokenFile}, false, "--token is refused"},
		{"a file others may read", []string{"--token-file", readable}, false, "chmod 600"},
		{"a file and the environment", []string{"--token-file", tokenFile}, true, "give it one way"},
		{"a file that holds no token", []string{"--token-file", os.DevNull}, false, "holds no join token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env {
				t.Setenv(tokenEnv, string(token))
			}
			out, err := run(ctx, slices.Concat(args, tt.args)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("serve %v: got %v, want an error naming %q\n%s", tt.args, err, tt.want, out)
			}
		})
	}
	// None of these spent the token.
	_, addr := serve(t, nil, c.agentUp, "serve", "--dir", t.TempDir(), "--name", "node3", "--driver", "memory", "--join", c.joinURL, "--token-file", tokenFile)
	dial(t, addr, c.admin).Close()

	help, err := run(ctx, "serve", "--help")
	if err != nil || !strings.Contains(help, "--token is refused") || !strings.Contains(help, tokenEnv) {
		t.Fatalf("serve --help does not say how to pass the token (%v):\n%s", err, help)
	}
}

// Through the commands: a server started with an existing server's name
// and address and a fresh token of its own is refused; a token for a name
// that joined needs --rejoin; the re-join the operator asked for works.
func TestServeImpersonationRefusedAndRejoin(t *testing.T) {
	ctx := context.Background()
	c := startCA(t, nil)
	_, addr := serve(t, nil, c.agentUp, "serve", "--dir", t.TempDir(), "--name", "node1", "--driver", "memory",
		"--join", c.joinURL, "--token-file", c.tokenFile(t, "--name", "node1", "--ip", "127.0.0.1"))
	dial(t, addr, c.admin).Close()

	if out, err := run(ctx, "token", "--dir", c.dir, "--name", "node1", "--ip", "127.0.0.1"); err == nil || !strings.Contains(err.Error(), "--rejoin") {
		t.Fatalf("token for node1, which joined: got %v, want an error naming --rejoin\n%s", err, out)
	}
	for _, ip := range []string{"0.0.0.0", "255.255.255.255", "224.0.0.1"} {
		if _, err := run(ctx, "token", "--dir", c.dir, "--name", "node7", "--ip", ip); err == nil || !strings.Contains(err.Error(), ip) {
			t.Fatalf("token --ip %s: got %v, want it refused", ip, err)
		}
	}
	// The impostor holds a token for node2 and says it is node1 at node1's address.
	impostor := c.tokenFile(t, "--name", "node2", "--ip", "127.0.0.2")
	stolenDir := t.TempDir()
	out, err := run(ctx, "serve", "--dir", stolenDir, "--name", "node1", "--ip", "127.0.0.1", "--driver", "memory",
		"--join", c.joinURL, "--token-file", impostor, "--listen", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), `made for server "node2", not "node1"`) {
		t.Fatalf("serve as node1 with node2's token: got %v, want the join refused\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(stolenDir, "pki", "agent.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the impostor got credentials (%v)", err)
	}

	// node1 lost its state: the operator asks for a re-join.
	rejoin := c.tokenFile(t, "--name", "node1", "--ip", "127.0.0.1", "--rejoin")
	_, addr = serve(t, nil, c.agentUp, "serve", "--dir", t.TempDir(), "--name", "node1", "--driver", "memory",
		"--join", c.joinURL, "--token-file", rejoin)
	host, err := dial(t, addr, c.admin).HostInfo(ctx)
	if err != nil || host.Hostname != "node1" {
		t.Fatalf("the re-joined node1: %+v, %v", host, err)
	}
}

// The join token never appears in the arguments of a real agent process
// (/proc/PID/cmdline, readable by every user), whether it comes from a
// file or from the environment; from a file, it is not in the process's
// environment either.
func TestTokenNotInProcessArguments(t *testing.T) {
	c := startCA(t, nil)
	for _, fromEnv := range []bool{false, true} {
		name := map[bool]string{false: "node10", true: "node20"}[fromEnv]
		t.Run(map[bool]string{false: "file", true: "environment"}[fromEnv], func(t *testing.T) {
			tokenFile := c.tokenFile(t, "--name", name, "--ip", "127.0.0.1")
			token, err := os.ReadFile(tokenFile)
			if err != nil {
				t.Fatal(err)
			}
			secret := strings.Split(strings.TrimSpace(string(token)), ".")[1]
			args := []string{"serve", "--dir", t.TempDir(), "--name", name, "--driver", "memory", "--join", c.joinURL}
			env := append(os.Environ(), asMainEnv+"=1")
			if fromEnv {
				env = append(env, tokenEnv+"="+string(token))
			} else {
				args = append(args, "--token-file", tokenFile)
			}
			pid, addr := serveProcess(t, c.agentUp, env, args...)
			dial(t, addr, c.admin).Close()
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(cmdline), "serve") {
				t.Fatalf("/proc/%d/cmdline is not the agent's: %q", pid, cmdline)
			}
			if strings.Contains(string(cmdline), secret) || strings.Contains(string(cmdline), "--token\x00") {
				t.Fatalf("the join token is in the agent's arguments: %q", cmdline)
			}
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil {
				t.Fatal(err)
			}
			if !fromEnv && strings.Contains(string(environ), secret) {
				t.Fatal("a token from a file is in the agent's environment")
			}
		})
	}
}

// asMainEnv, set to 1, makes the test binary run muster-agent's main:
// a real agent process for TestTokenNotInProcessArguments.
const asMainEnv = "MUSTER_AGENT_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveProcess runs this test binary as muster-agent with args and env,
// and --listen on a loopback port, until the test ends; it returns its pid
// and address once up says it serves.
func serveProcess(t *testing.T, up func(string) bool, env []string, args ...string) (int, string) {
	t.Helper()
	var pid int
	var addr string
	err := freeport.Retry(t, func() error {
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freeport.Pick(t, "tcp", "127.0.0.1", 1)[0]))
		cmd := exec.Command(os.Args[0], slices.Concat(args, []string{"--listen", addr})...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return err
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			select {
			case err := <-exited:
				if freeport.Taken(out.String(), addr) {
					return fmt.Errorf("%w: %v: %s", freeport.ErrInUse, err, out.String())
				}
				return fmt.Errorf("muster-agent exited: %v\n%s", err, out.String())
			default:
			}
			if up(addr) {
				pid = cmd.Process.Pid
				t.Cleanup(stop)
				return nil
			}
			if time.Now().After(deadline) {
				stop()
				return fmt.Errorf("muster-agent does not serve at %s:\n%s", addr, out.String())
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return pid, addr
}
