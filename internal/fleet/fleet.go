// Package fleet starts a cluster of simulated servers on one machine, each a
// network namespace (testhost) running a real muster-agent process
// that joined the cluster with a one-time token bound to its name and
// address (given in a file, never in its arguments), and returns a
// container.Cluster of agent clients. The demo, the end-to-end tests and
// the benchmarks use it. It needs root, iproute2 and, for the lxc driver,
// LXC.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/drivers/lxc"
	"github.com/musterkit/muster/internal/orphan"
	"github.com/musterkit/muster/storage"
	storagedriver "github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/testhost"
)

// AgentPort is the port every agent serves on, at its server's address.
const AgentPort = 7444

// Bridge is the bridge every server has for its containers, holding
// BridgeAddr. Every server's bridge has the same subnet, so a container
// keeps its address when it moves.
const Bridge = "br0"

// BridgeAddr is the bridge's address and the containers' subnet.
var BridgeAddr = netip.MustParsePrefix("198.19.0.1/24")

// Options configure Start.
type Options struct {
	// AgentBinary is the muster-agent program to run.
	AgentBinary string
	// Driver is the agents' container driver: "lxc" (default) or "memory".
	Driver string
	// AgentLog receives the agents' logs; nil discards them.
	AgentLog io.Writer
	// Networks are the network drivers the agents serve (muster-agent
	// --network); nil means the agent's default.
	Networks []string
	// Storage are the storage kinds the agents offer (muster-agent
	// --storage); nil means the agent's default.
	Storage []string
}

// Fleet is a running cluster of simulated servers.
type Fleet struct {
	Hosts   *testhost.Cluster
	Cluster *container.Cluster
	// Storage are the fleet's storage pools; Cluster mounts a moving
	// container's volumes through it.
	Storage *storage.Pools
	Servers []*Server

	dir     string
	opts    Options
	ca      *pki.CA
	keys    *pki.Keyring       // the orchestrator's client credentials and CRL
	revoked map[string]bool    // servers whose certificates Revoke revoked
	stop    context.CancelFunc // stops the join server
	done    chan error
}

// Server is one simulated server and its agent.
type Server struct {
	Name string
	Host *testhost.Host
	Dir  string // the agent's state directory
	Addr string // the agent's host:port
	// Client is the orchestrator's connection to the agent.
	Client *agent.Client
	// ExtraArgs are more arguments for `muster-agent serve`, taken from
	// the next start (Restart) on.
	ExtraArgs []string

	fleet *Fleet
	mu    sync.Mutex
	agent *process // nil while the agent is not running
}

// process is a running agent.
type process struct {
	cmd  *exec.Cmd
	exit chan error // receives Wait's result
}

// Start builds n servers named s0, s1, ... and starts their agents.
func Start(ctx context.Context, n int, opts Options) (f *Fleet, err error) {
	if opts.Driver == "" {
		opts.Driver = "lxc"
	}
	if err := Sweep(); err != nil {
		return nil, fmt.Errorf("sweeping leftovers of killed runs: %w", err)
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	pools := storage.New(nil)
	f = &Fleet{dir: dir, opts: opts, Cluster: container.NewCluster(&container.ClusterOptions{Volumes: pools}), Storage: pools, done: make(chan error, 1)}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.Close())
		}
	}()
	if f.Hosts, err = testhost.Build(ctx, n, nil); err != nil {
		return f, err
	}
	ca, err := pki.NewCA("muster-fleet", nil)
	if err != nil {
		return f, err
	}
	creds, err := ca.Issue("orchestrator", nil, 24*time.Hour, pki.UsageClient)
	if err != nil {
		return f, err
	}
	if f.keys, err = pki.NewKeyring(creds); err != nil {
		return f, err
	}
	f.ca, f.revoked = ca, map[string]bool{}
	joinCreds, err := ca.Issue("join", []netip.Addr{f.Hosts.RootAddr}, 24*time.Hour, pki.UsageServer)
	if err != nil {
		return f, err
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Hosts.RootAddr, 0).String())
	if err != nil {
		return f, err
	}
	authority := pki.NewAuthority(ca, nil)
	jctx, stop := context.WithCancel(context.Background())
	f.stop = stop
	go func() { f.done <- authority.Serve(jctx, l, joinCreds) }()
	joinURL := "https://" + l.Addr().String()

	for i, h := range f.Hosts.Hosts {
		s := &Server{
			Name:  "s" + strconv.Itoa(i),
			Host:  h,
			Dir:   filepath.Join(dir, "s"+strconv.Itoa(i)),
			Addr:  netip.AddrPortFrom(h.Addr, AgentPort).String(),
			fleet: f,
		}
		f.Servers = append(f.Servers, s)
		if err := addBridge(h); err != nil {
			return f, fmt.Errorf("server %s: %w", s.Name, err)
		}
		if err := s.join(ctx, authority, joinURL); err != nil {
			return f, err
		}
		if err := f.Cluster.AddServer(s.Name, container.NewServer(s.Client, nil)); err != nil {
			return f, err
		}
		open := func(kind, pool string) (storagedriver.Driver, error) { return s.Client.StoragePool(kind, pool), nil }
		if err := f.Storage.AddServer(ctx, s.Name, h.Addr, open); err != nil {
			return f, err
		}
	}
	return f, nil
}

// addBridge creates the containers' bridge in the host.
func addBridge(h *testhost.Host) error {
	nh, err := h.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
	if err := nh.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge: %w", err)
	}
	addr, _ := netlink.ParseAddr(BridgeAddr.String())
	if err := nh.AddrAdd(br, addr); err != nil {
		return err
	}
	return nh.LinkSetUp(br)
}

// join starts the agent for the first time: it joins the cluster with a
// token made for its name and address, which it reads from a file (0600,
// in the fleet's 0700 directory) removed once the agent has joined or
// failed. Arguments are readable by every user in /proc/PID/cmdline.
func (s *Server) join(ctx context.Context, authority *pki.Authority, joinURL string) error {
	token, err := authority.NewToken(s.Name, time.Minute, &pki.TokenOptions{IPs: []netip.Addr{s.Host.Addr}})
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(s.fleet.dir, s.Name+".token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(tokenFile)
	return s.start(ctx, "--join", joinURL, "--token-file", tokenFile)
}

// start runs the agent and waits until it answers.
func (s *Server) start(ctx context.Context, joinArgs ...string) error {
	args := []string{"serve", "--dir", s.Dir, "--listen", s.Addr, "--name", s.Name, "--driver", s.fleet.opts.Driver}
	for _, n := range s.fleet.opts.Networks {
		args = append(args, "--network", n)
	}
	for _, k := range s.fleet.opts.Storage {
		args = append(args, "--storage", k)
	}
	args = append(append(args, s.ExtraArgs...), joinArgs...)
	// The server's own mount namespace, the same at every start: FUSE
	// mounts an agent made (storage) outlive it, as on a real server.
	cmd := s.Host.ServerCommand(context.WithoutCancel(ctx), s.fleet.opts.AgentBinary, args...)
	cmd.Stdout, cmd.Stderr = s.fleet.opts.AgentLog, s.fleet.opts.AgentLog
	if cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent %s: %w", s.Name, err)
	}
	p := &process{cmd: cmd, exit: make(chan error, 1)}
	go func() { p.exit <- cmd.Wait() }()
	s.mu.Lock()
	s.agent = p
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := agent.Dial(ctx, s.Addr, s.fleet.keys, nil)
		if err == nil {
			if s.Client == nil {
				s.Client = c
			} else {
				// Keep the Client the cluster holds; it reconnects by itself.
				c.Close()
			}
			return nil
		}
		select {
		case err := <-p.exit:
			s.mu.Lock()
			s.agent = nil
			s.mu.Unlock()
			return fmt.Errorf("agent %s exited: %v", s.Name, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s did not answer in time: %w", s.Name, err)
		}
	}
}

// Dial returns another client of the agent, with the orchestrator's
// credentials, for a caller that closes it (Client stays the fleet's).
func (s *Server) Dial(ctx context.Context) (*agent.Client, error) {
	return agent.Dial(ctx, s.Addr, s.fleet.keys, nil)
}

// Kill kills the agent at once with SIGKILL, as a crash would. Its
// containers keep running.
func (s *Server) Kill() error { return s.halt(syscall.SIGKILL) }

// Stop stops the agent gracefully.
func (s *Server) Stop() error { return s.halt(syscall.SIGTERM) }

func (s *Server) halt(sig syscall.Signal) error {
	s.mu.Lock()
	p := s.agent
	s.agent = nil
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return err
	}
	select {
	case <-p.exit:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.exit
	}
	return nil
}

// Restart starts a stopped or killed agent again; it reuses the
// credentials it joined with.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.start(ctx)
}

// Close deletes every container of every server, stops the agents and
// removes the servers and their state.
func (f *Fleet) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for _, s := range f.Servers {
		errs = append(errs, s.removeContainers(ctx))
	}
	// The pools' daemons stop with the agents, but FUSE mounts outlive
	// them: remove the pools (and their data) while the agents run.
	if f.Storage != nil {
		for _, p := range f.Storage.List() {
			errs = append(errs, f.Storage.Remove(ctx, p.Name, &storage.RemoveOptions{Force: true}))
		}
	}
	for _, s := range f.Servers {
		errs = append(errs, s.Stop())
	}
	if f.stop != nil {
		f.stop()
		<-f.done
	}
	if f.Hosts != nil {
		errs = append(errs, f.Hosts.Close())
	}
	errs = append(errs, destroy(f.dir))
	return errors.Join(errs...)
}

// dirPrefix starts the name of a fleet's state directory in the temporary
// directory; the creating process's pid follows.
const dirPrefix = "muster-fleet-"

// destroy ends whatever containers the servers under dir still run and
// removes dir.
func destroy(dir string) error {
	servers, err := filepath.Glob(filepath.Join(dir, "s*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range servers {
		errs = append(errs, lxc.Destroy(s))
		// Balancers, floating-IP speakers, storage daemons and FUSE
		// clients outlive a killed agent: end them by their pid files,
		// and whatever names a path of the server's.
		for _, kind := range []string{"haproxy", "nginx", "keepalived"} {
			pids, _ := filepath.Glob(filepath.Join(s, "*", "*", kind+".pid"))
			for _, p := range pids {
				orphan.Reap(p, kind, nil)
			}
		}
		orphan.EndUnder(s)
	}
	errs = append(errs, orphan.UnmountUnder(dir))
	return errors.Join(append(errs, os.RemoveAll(dir))...)
}

// Sweep removes what fleets whose process died without closing them left
// behind: it ends their containers, destroys their state and, through
// testhost.Sweep, removes their simulated servers. Start calls it.
func Sweep() error {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	if err != nil {
		return err
	}
	errs := []error{testhost.Sweep()}
	for _, dir := range dirs {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), dirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue // not a fleet's, ours, or its process lives
		}
		errs = append(errs, destroy(dir))
	}
	return errors.Join(errs...)
}

// removeContainers stops and deletes the server's containers through its
// agent, restarting the agent first if it was killed.
func (s *Server) removeContainers(ctx context.Context) error {
	if s.Client == nil || s.fleet.revoked[s.Name] {
		return nil // a revoked server's containers go with its directory
	}
	s.mu.Lock()
	running := s.agent != nil
	s.mu.Unlock()
	if !running {
		if err := s.start(ctx); err != nil {
			return err
		}
	}
	srv := container.NewServer(s.Client, nil)
	list, err := srv.List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range list {
		errs = append(errs, srv.Stop(ctx, c.Spec.Name, 2*time.Second), srv.Delete(ctx, c.Spec.Name))
	}
	return errors.Join(errs...)
}

// BuildAgent compiles examples/muster-agent into dir and returns its path.
// It runs from the module's root, found from the working directory.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "muster-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/musterkit/muster/examples/muster-agent")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build muster-agent: %v\n%s", err, msg)
	}
	return out, nil
}
