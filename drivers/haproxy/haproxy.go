// Package haproxy is a load-balancer driver (lb/driver) that runs HAProxy.
//
// Each Driver manages one HAProxy instance in master-worker mode
// (haproxy -W -S <dir>/master.sock), with everything it owns in its own
// directory: the configuration, the pid file, the master and stats sockets
// and the certificate files. Several instances run side by side.
//
// A configuration goes through the shared validation (driver.Config.Validate),
// a pure Render, HAProxy's own check (haproxy -c -f on a candidate file), an
// atomic swap of the file (renameio) and a seamless reload through the master
// CLI ("reload"): the stats socket exposes its listeners (expose-fd
// listeners), so the master passes the listening sockets to the new worker
// (-x) and no connection is refused during a reload. A configuration that
// fails the check never replaces the running one.
//
// Server operations (add, remove, weight, drain, maintenance) go through the
// runtime API on the stats socket (add server, del server, set weight, set
// server state) without a reload; the file is rewritten to match, so a later
// reload keeps them. Where the runtime API cannot do it (a pool with
// Algorithm Weighted, which is static-rr, or a server given by DNS name, or
// a server still holding connections when removed) the driver reloads
// instead. Drained servers are written as disabled and set to drain through
// the runtime API after each start or reload, since HAProxy's configuration
// has no drain keyword. Before each reload the servers' states are saved
// ("show servers state") and the new worker loads them
// (load-server-state-from-file), so a server its health check took out
// stays out across reloads. Stats come from "show stat".
//
// Requirements: the Debian package haproxy (2.6, /usr/sbin/haproxy).
// Binding ports below 1024 needs CAP_NET_BIND_SERVICE (root); otherwise any
// user that can write the directory can run an instance. The driver passes
// the conformance suite in lb/drivertest; its traffic tests run as root.
package haproxy

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/daemon"
	"github.com/musterkit/muster/lb/driver"
)

var _ driver.Driver = (*Driver)(nil)

// DefaultBinary is where Debian installs HAProxy.
const DefaultBinary = "/usr/sbin/haproxy"

// logFile, in the instance directory, receives HAProxy's output.
const logFile = "haproxy.log"

// Options configure a Driver. The zero value is usable.
type Options struct {
	// Binary is the haproxy program; empty means DefaultBinary.
	Binary string
	// Logger receives one record per start, reload and runtime change;
	// nil discards.
	Logger *slog.Logger
	// Command builds the command that runs the long-lived master process,
	// for example inside a network namespace; nil means exec.Command. It
	// must run the program directly (or exec it: the pid is the master's).
	// The sockets are files in the instance directory, reachable from any
	// namespace.
	Command func(name string, args ...string) *exec.Cmd
	// ReloadTimeout bounds a start or reload; 0 means 15s.
	ReloadTimeout time.Duration
	// Listen opens a listener where the master runs (in its network
	// namespace, with Command); nil means net.Listen. The driver uses it
	// to check that new frontends can bind before it reloads: HAProxy
	// pauses the old worker's listeners while a reload tries to bind, so
	// a reload that fails to bind would refuse connections meanwhile.
	Listen func(network, addr string) (net.Listener, error)
}

// Driver runs one HAProxy instance. It is safe for concurrent use.
type Driver struct {
	dir  string
	log  *slog.Logger
	lis  func(string, string) (net.Listener, error)
	inst *daemon.Instance

	mu     sync.Mutex
	cfg    *driver.Config // in force, normalized
	closed bool
}

// Open returns a driver for an instance kept in dir (created if missing,
// mode 0700). Nothing runs until the first Apply. The directory must be
// private to this instance, short enough for socket paths (at most 90
// bytes), and free of what the configuration or the command line cannot
// hold (control characters, invalid UTF-8, '$', ','; see
// internal/confpath.Quotable): otherwise errcode.InvalidArgument, naming
// it. Spaces, quotes and backslashes are fine. A relative dir is made
// absolute.
func Open(ctx context.Context, dir string, opts *Options) (*Driver, error) {
	if opts == nil {
		opts = &Options{}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, errcode.Wrap(errcode.InvalidArgument, err)
	}
	if err := validDir(dir); err != nil {
		return nil, err
	}
	if len(dir) > 90 {
		return nil, errcode.New(errcode.InvalidArgument, "directory %q is too long for unix socket paths", dir)
	}
	bin := cmpOr(opts.Binary, DefaultBinary)
	command := opts.Command
	if command == nil {
		command = exec.Command
	}
	d := &Driver{dir: dir, log: opts.Logger, lis: opts.Listen, cfg: &driver.Config{}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.lis == nil {
		d.lis = net.Listen
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("haproxy binary (Debian package haproxy): %w", err))
	}
	if err := os.MkdirAll(filepath.Join(dir, CertDir), 0o700); err != nil {
		return nil, err
	}
	// New ends a master of an earlier run whose manager died, which still
	// serves and holds the ports, so that this driver's can bind them.
	d.inst = daemon.New(daemon.Spec{
		Name: "haproxy", Dir: dir, ConfigFile: ConfigFile, PidFile: PidFile, LogFile: logFile, FilesDir: CertDir,
		Timeout: opts.ReloadTimeout, Logger: d.log,
		Check: func(path string) *exec.Cmd { return exec.Command(bin, "-c", "-q", "-f", path) },
		Command: func() (*exec.Cmd, error) {
			for _, s := range []string{MasterSocket, StatsSocket} {
				os.Remove(filepath.Join(dir, s))
			}
			return command(bin, "-W", "-S", filepath.Join(dir, MasterSocket)+",mode,600",
				"-f", filepath.Join(dir, ConfigFile), "-p", filepath.Join(dir, PidFile)), nil
		},
		Ready: func(*daemon.Process) bool {
			pid, err := d.workerPid()
			return err == nil && pid != 0 && d.serves(pid)
		},
		Reload: d.reload,
	})
	return d, nil
}

// Dir returns the instance directory.
func (d *Driver) Dir() string { return d.dir }

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ActiveHealthChecks: true, RuntimeAPI: true, TLS: true, Layer7: true,
		SessionStats: true, Drain: true, RawSnippets: true}
}

// Reloads counts starts and reloads, for drivertest.Reloader.
func (d *Driver) Reloads() int { return d.inst.Reloads() }

// Pid returns the master process's pid, or 0 if none runs.
func (d *Driver) Pid() int { return d.inst.Pid() }

func (d *Driver) usable() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "balancer is closed")
	}
	return nil
}

// Apply implements driver.Driver.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	if driver.Equal(cfg, d.cfg) && (d.inst.Running() || len(d.cfg.Frontends)+len(d.cfg.Pools) == 0) {
		return nil
	}
	return d.install(ctx, cfg.Normalized(), nil)
}

// install renders, checks, swaps and (re)starts. runtime, if set, is
// tried first instead of a reload, and the reload happens only if it
// fails. Called with d.mu held.
func (d *Driver) install(ctx context.Context, cfg *driver.Config, runtime func() error) error {
	r, err := Render(cfg, d.dir)
	if err != nil {
		return err
	}
	if runtime != nil && d.inst.Running() {
		// The runtime change goes first, so that traffic moves without
		// waiting for haproxy -c; the file follows once checked. If the
		// check fails, a reload of the file in force (the one before the
		// change) undoes the runtime change.
		rerr := runtime()
		if rerr == nil {
			if err := d.inst.Check(ctx, []byte(r.Config)); err != nil {
				d.log.WarnContext(ctx, "haproxy rejects the file of a runtime change; reloading the previous one", "dir", d.dir, "err", err)
				if rerr := d.inst.Reload(ctx); rerr != nil {
					return errors.Join(err, rerr)
				}
				return errors.Join(err, d.reconcile(ctx, d.cfg))
			}
			if err := d.inst.Record([]byte(r.Config)); err != nil {
				return err
			}
			d.cfg = cfg
			d.log.InfoContext(ctx, "haproxy changed through the runtime API", "dir", d.dir)
			return nil
		}
		d.log.WarnContext(ctx, "haproxy runtime API change failed; reloading", "dir", d.dir, "err", rerr)
	}
	if err := d.checkBinds(cfg); err != nil {
		return err
	}
	if err := d.inst.Apply(ctx, []byte(r.Config), r.Files); err != nil {
		return err
	}
	d.cfg = cfg
	return d.reconcile(ctx, cfg)
}

// checkBinds tries to bind every frontend address cfg adds to the running
// configuration (HAProxy binds with SO_REUSEPORT, so addresses in use by
// this instance need no check). errcode.FailedPrecondition if one cannot.
func (d *Driver) checkBinds(cfg *driver.Config) error {
	running := map[string]bool{}
	if d.inst.Running() {
		for _, f := range d.cfg.Frontends {
			running[hostPort(f.Address, f.Port)] = true
		}
	}
	for _, f := range cfg.Frontends {
		a := hostPort(f.Address, f.Port)
		if running[a] {
			continue
		}
		l, err := d.lis("tcp", a)
		if err != nil {
			return errcode.New(errcode.FailedPrecondition, "frontend %q cannot bind %s: %v", f.Name, a, err)
		}
		l.Close()
	}
	return nil
}

// reload asks the master for a seamless reload and waits for the new
// worker to serve the stats socket (daemon.Spec.Reload).
func (d *Driver) reload(ctx context.Context, master *daemon.Process) error {
	before, err := d.workerPid()
	if err != nil {
		return err
	}
	// The master logs "Loading failure!" when the new configuration
	// cannot start (a bind haproxy -c does not try, say); the old worker
	// then resumes serving.
	return d.inst.AwaitReload(ctx, master, "Loading failure!", func() error {
		if err := d.saveServerState(); err != nil {
			d.log.WarnContext(ctx, "haproxy server state not saved; health restarts from scratch", "dir", d.dir, "err", err)
		}
		if _, err := d.master("reload"); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}, func() bool {
		pid, err := d.workerPid()
		return err == nil && pid != 0 && pid != before && d.serves(pid)
	})
}

// serves reports whether worker pid serves the stats socket.
func (d *Driver) serves(pid int) bool {
	out, err := d.runtime("show info")
	return err == nil && strings.Contains(out, fmt.Sprintf("Pid: %d\n", pid))
}

// workerPid returns the current worker's pid from the master's "show proc".
func (d *Driver) workerPid() (int, error) {
	out, err := d.master("show proc")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	section := ""
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "# ") {
			section = l
			continue
		}
		f := strings.Fields(l)
		if section == "# workers" && len(f) >= 2 && f[1] == "worker" {
			return strconv.Atoi(f[0])
		}
	}
	return 0, nil
}

// master sends one command to the master CLI and returns its answer.
func (d *Driver) master(cmd string) (string, error) {
	return send(filepath.Join(d.dir, MasterSocket), cmd)
}

// runtime sends one command to the worker's stats socket.
func (d *Driver) runtime(cmd string) (string, error) {
	return send(filepath.Join(d.dir, StatsSocket), cmd)
}

func send(path, cmd string) (string, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return "", errcode.Wrap(errcode.Unavailable, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", errcode.Wrap(errcode.Unavailable, err)
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), errcode.Wrap(errcode.Unavailable, err)
	}
	return string(b), nil
}

// runtimeCmds runs commands that answer nothing on success, or the given
// answer.
func (d *Driver) runtimeCmds(cmds ...[2]string) error {
	for _, c := range cmds {
		out, err := d.runtime(c[0])
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(out); got != c[1] {
			return errcode.New(errcode.Internal, "haproxy runtime API: %q answered %q", c[0], got)
		}
	}
	return nil
}

func stateWord(st driver.AdminState) string {
	switch st {
	case driver.Drain:
		return "drain"
	case driver.Maintenance:
		return "maint"
	}
	return "ready"
}

// reconcile sets every server's administrative state as the model says,
// in one runtime command line: the file cannot say drain, and the server
// state file restored across a reload may hold a state the model changed.
func (d *Driver) reconcile(ctx context.Context, cfg *driver.Config) error {
	var cmds []string
	for _, p := range cfg.Pools {
		for _, s := range p.Servers {
			cmds = append(cmds, fmt.Sprintf("set server %s/%s state %s", backendName(p.Name), s.Name, stateWord(s.State)))
		}
	}
	for len(cmds) > 0 {
		n := min(len(cmds), 50)
		if err := d.runtimeCmds([2]string{strings.Join(cmds[:n], ";"), ""}); err != nil {
			return err
		}
		cmds = cmds[n:]
	}
	return nil
}

// saveServerState dumps the running servers' states (health, weights,
// admin states) for the next worker to load (load-server-state-from-file).
func (d *Driver) saveServerState() error {
	out, err := d.runtime("show servers state")
	if err != nil {
		return err
	}
	return renameio.WriteFile(filepath.Join(d.dir, ServerStateFile), []byte(out), 0o600)
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return nil, err
	}
	return d.cfg.Normalized(), nil
}

// change applies a server operation: the new config is rendered, checked
// and written, then runtime is tried, then a reload.
func (d *Driver) change(ctx context.Context, next func(*driver.Config) (*driver.Config, error), runtime func(*driver.Config) func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	cfg, err := next(d.cfg)
	if err != nil {
		return err
	}
	if d.inst.Config() == nil {
		d.cfg = cfg // never started: the next Apply starts with it
		return nil
	}
	return d.install(ctx, cfg, runtime(cfg)) // (re)starts if the master died
}

// dynamic reports whether HAProxy 2.6 can add servers to pool at run time.
func dynamic(p *driver.Pool) bool { return p.Algorithm != driver.Weighted }

// AddServer implements driver.Driver: "add server" then "enable health"
// and "set server state", without a reload, where HAProxy allows it.
func (d *Driver) AddServer(ctx context.Context, pool string, srv driver.Server) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.AddServer(pool, srv) },
		func(c *driver.Config) func() error {
			p := c.Pool(pool)
			s := *p.Server(srv.Name)
			return func() error {
				if !dynamic(p) {
					return errcode.New(errcode.Unimplemented, "pool %q: static-rr has no dynamic servers", pool)
				}
				if _, err := netip.ParseAddr(s.Address); err != nil {
					return errcode.New(errcode.Unimplemented, "dynamic servers need an IP address")
				}
				name := backendName(pool) + "/" + s.Name
				check := ""
				if p.HealthCheck != nil {
					check = checkArgs(p.HealthCheck)
				}
				cmds := [][2]string{{"add server " + name + " " + serverArgs(s, check), "New server registered."}}
				if check != "" {
					cmds = append(cmds, [2]string{"enable health " + name, ""})
				}
				cmds = append(cmds, [2]string{"set server " + name + " state " + stateWord(s.State), ""})
				return d.runtimeCmds(cmds...)
			}
		})
}

// RemoveServer implements driver.Driver: maintenance then "del server",
// which HAProxy refuses while the server holds connections; the driver
// then reloads, and the old worker finishes them.
func (d *Driver) RemoveServer(ctx context.Context, pool, name string) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.RemoveServer(pool, name) },
		func(c *driver.Config) func() error {
			n := backendName(pool) + "/" + name
			return func() error {
				return d.runtimeCmds([2]string{"set server " + n + " state maint", ""}, [2]string{"del server " + n, "Server deleted."})
			}
		})
}

// SetWeight implements driver.Driver with "set weight".
func (d *Driver) SetWeight(ctx context.Context, pool, name string, weight int) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetWeight(pool, name, weight) },
		func(c *driver.Config) func() error {
			return func() error {
				if !dynamic(c.Pool(pool)) {
					return errcode.New(errcode.Unimplemented, "static-rr weights change by reload")
				}
				return d.runtimeCmds([2]string{fmt.Sprintf("set weight %s/%s %d", backendName(pool), name, weight), ""})
			}
		})
}

// SetState implements driver.Driver with "set server state".
func (d *Driver) SetState(ctx context.Context, pool, name string, st driver.AdminState) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetState(pool, name, st) },
		func(c *driver.Config) func() error {
			return func() error {
				return d.runtimeCmds([2]string{fmt.Sprintf("set server %s/%s state %s", backendName(pool), name, stateWord(st)), ""})
			}
		})
}

// Stats implements driver.Driver from "show stat".
func (d *Driver) Stats(ctx context.Context) ([]driver.ServerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return nil, err
	}
	var out []driver.ServerStats
	byName := map[string]*driver.ServerStats{}
	for _, p := range d.cfg.Pools {
		for _, s := range p.Servers {
			out = append(out, driver.ServerStats{Pool: p.Name, Server: s.Name, State: driver.Down, Weight: s.Weight})
		}
	}
	for i := range out {
		byName[backendName(out[i].Pool)+"/"+out[i].Server] = &out[i]
	}
	if !d.inst.Running() {
		return sortStats(out), nil
	}
	text, err := d.runtime("show stat")
	if err != nil {
		return nil, err
	}
	rows, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(text, "# "))).ReadAll()
	if err != nil || len(rows) == 0 {
		return nil, errcode.New(errcode.Internal, "show stat: unreadable answer: %v", err)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, row := range rows[1:] {
		if len(row) < len(rows[0])-1 {
			continue
		}
		st := byName[row[col["pxname"]]+"/"+row[col["svname"]]]
		if st == nil {
			continue
		}
		st.State = serverState(row[col["status"]])
		st.Weight, _ = strconv.Atoi(row[col["weight"]])
		st.CurrentSessions, _ = strconv.ParseInt(row[col["scur"]], 10, 64)
		st.TotalConnections, _ = strconv.ParseInt(row[col["stot"]], 10, 64)
	}
	return sortStats(out), nil
}

func sortStats(s []driver.ServerStats) []driver.ServerStats {
	slices.SortFunc(s, func(a, b driver.ServerStats) int {
		return strings.Compare(a.Pool+"\x00"+a.Server, b.Pool+"\x00"+b.Server)
	})
	return s
}

// serverState maps HAProxy's status column ("UP", "UP 1/3", "DOWN",
// "DRAIN", "MAINT", "MAINT (via x/y)", "no check", "NOLB") to the model.
func serverState(s string) driver.ServerState {
	switch {
	case strings.HasPrefix(s, "MAINT"):
		return driver.Maint
	case strings.HasPrefix(s, "DRAIN"):
		return driver.Draining
	case strings.HasPrefix(s, "DOWN"):
		return driver.Down
	}
	return driver.Up
}

// Close implements driver.Driver: it stops HAProxy. The directory stays.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.inst.Stop()
	return nil
}
