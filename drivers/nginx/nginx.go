// Package nginx is a load-balancer driver (lb/driver) that runs Nginx.
//
// Each Driver manages one Nginx master process (nginx -p <dir> -c
// <dir>/nginx.conf -e <dir>/error.log, "daemon off") with everything it owns
// in its own directory: the configuration, pid file, error log, temporary
// paths and certificate files. Several instances run side by side. HTTP
// frontends become http server blocks (one per host, chosen by Host header
// and by SNI for TLS); TCP frontends become stream servers over stream
// upstreams.
//
// A configuration goes through the shared validation
// (driver.Config.Validate), a pure Render, Nginx's own check (nginx -t on a
// candidate file), an atomic swap (renameio) and a graceful reload (SIGHUP
// to the master: new workers start with the new configuration while old
// ones finish their connections). A configuration that fails the check
// never replaces the running one. Nginx has no runtime API in its
// open-source edition: server operations re-render and reload
// (Capabilities.RuntimeAPI is false).
//
// Open-source Nginx has no active health checks either
// (Capabilities.ActiveHealthChecks is false): a pool's HealthCheck becomes
// passive checking. A server fails when a connection or request to it
// fails; after Fall failures within Interval*Fall (rounded up to whole
// seconds) it is taken out for as long (max_fails, fail_timeout), then
// tried again with live traffic; the request that met the failure is
// retried on another server (proxy_next_upstream). Path, ExpectStatus, Timeout and Rise are not used.
// Drain acts as Maintenance (Capabilities.Drain is false), and Stats report
// the administrative state and weight from the configuration, without
// session counts (Capabilities.SessionStats is false).
//
// Requirements: the Debian packages nginx-light (or any nginx 1.22 with
// SSL) and libnginx-mod-stream (for TCP frontends; the configuration loads
// /usr/lib/nginx/modules/ngx_stream_module.so). Running as root, workers
// run as the user nobody, which the driver gives the instance's temporary
// directory; binding ports below 1024 needs root. The driver passes the
// conformance suite in lb/drivertest; its traffic tests run as root.
package nginx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/daemon"
	"github.com/musterkit/muster/internal/orphan"
	"github.com/musterkit/muster/lb/driver"
)

var _ driver.Driver = (*Driver)(nil)

// DefaultBinary is where Debian installs Nginx.
const DefaultBinary = "/usr/sbin/nginx"

// Options configure a Driver. The zero value is usable.
type Options struct {
	// Binary is the nginx program; empty means DefaultBinary.
	Binary string
	// Logger receives one record per start and reload; nil discards.
	Logger *slog.Logger
	// Command builds the commands that run the master process and
	// nginx -t (which binds the listeners), for example inside a network
	// namespace; nil means exec.Command. It must run the program directly
	// (or exec it: the pid is the master's).
	Command func(name string, args ...string) *exec.Cmd
	// ReloadTimeout bounds a start or reload; 0 means 15s.
	ReloadTimeout time.Duration
}

// Driver runs one Nginx instance. It is safe for concurrent use.
type Driver struct {
	dir  string
	bin  string
	log  *slog.Logger
	cmd  func(string, ...string) *exec.Cmd
	wait time.Duration

	mu      sync.Mutex
	cfg     *driver.Config
	text    string
	proc    *daemon.Process
	reloads int
	closed  bool
}

// Open returns a driver for an instance kept in dir (created if missing).
// Nothing runs until the first Apply. Nginx processes an earlier run left
// in dir (its pid file's master and its workers, whose manager died) are
// ended, by pid. The directory must be free of what the configuration
// cannot hold (control characters, invalid UTF-8, '$', which Nginx would
// read as a variable; see internal/confpath.Quotable): otherwise
// errcode.InvalidArgument, naming it. Spaces, quotes and backslashes are
// fine. A relative dir is made absolute.
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
	d := &Driver{dir: dir, bin: opts.Binary, log: opts.Logger, cmd: opts.Command, wait: opts.ReloadTimeout, cfg: &driver.Config{}}
	if d.bin == "" {
		d.bin = DefaultBinary
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.cmd == nil {
		d.cmd = exec.Command
	}
	if d.wait == 0 {
		d.wait = 15 * time.Second
	}
	if _, err := os.Stat(d.bin); err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("nginx binary (Debian package nginx-light): %w", err))
	}
	if _, err := os.Stat(StreamModule); err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("nginx stream module (Debian package libnginx-mod-stream): %w", err))
	}
	// Workers (user nobody under root) traverse dir to reach tmp.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, CertDir), 0o700); err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, TempDir)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("nobody"); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			if err := os.Chown(tmp, uid, gid); err != nil {
				return nil, err
			}
		}
	}
	// A master of an earlier run whose manager died (and its workers)
	// still serves and holds the ports: end it, so that this driver's can
	// bind them.
	orphan.Reap(filepath.Join(dir, PidFile), "nginx", d.log)
	return d, nil
}

// Dir returns the instance directory.
func (d *Driver) Dir() string { return d.dir }

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{TLS: true, Layer7: true, RawSnippets: true}
}

// Reloads counts starts and reloads, for drivertest.Reloader.
func (d *Driver) Reloads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloads
}

// Pid returns the master's pid, or 0 if none runs.
func (d *Driver) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running() {
		return d.proc.Pid()
	}
	return 0
}

func (d *Driver) running() bool { return d.proc != nil && d.proc.Running() }

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
	if err := driver.CheckCapabilities(cfg, d.Capabilities()); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	if driver.Equal(cfg, d.cfg) && (d.running() || len(d.cfg.Frontends)+len(d.cfg.Pools) == 0) {
		return nil
	}
	return d.install(ctx, cfg.Normalized())
}

// install renders, checks, swaps and (re)starts. Called with d.mu held.
func (d *Driver) install(ctx context.Context, cfg *driver.Config) error {
	r, err := Render(cfg, d.dir)
	if err != nil {
		return err
	}
	for path, data := range r.Files {
		if _, err := os.Stat(path); err == nil {
			continue // content-addressed: already there
		}
		if err := renameio.WriteFile(path, data, 0o600); err != nil {
			return err
		}
	}
	if err := d.check(ctx, r.Config); err != nil {
		return err
	}
	old := d.text
	conf := filepath.Join(d.dir, ConfigFile)
	if err := renameio.WriteFile(conf, []byte(r.Config), 0o600); err != nil {
		return err
	}
	if d.running() {
		err = d.reload(ctx)
	} else {
		err = d.start(ctx)
	}
	if err != nil {
		if old != "" {
			err = errors.Join(err, renameio.WriteFile(conf, []byte(old), 0o600))
		}
		return err
	}
	d.reloads++
	d.cfg, d.text = cfg, r.Config
	d.gcCerts(r)
	return nil
}

func (d *Driver) args(conf string) []string {
	return []string{"-p", d.dir + "/", "-c", conf, "-e", filepath.Join(d.dir, ErrorLog)}
}

// check runs nginx -t on a candidate file; a rejection is
// errcode.InvalidArgument with Nginx's message.
func (d *Driver) check(ctx context.Context, text string) error {
	cand := filepath.Join(d.dir, "candidate.conf")
	if err := os.WriteFile(cand, []byte(text), 0o600); err != nil {
		return err
	}
	defer os.Remove(cand)
	// nginx -t binds the listeners: it runs where the master runs.
	out, err := run(ctx, d.cmd(d.bin, append(d.args(cand), "-t", "-q")...))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errcode.New(errcode.InvalidArgument, "nginx rejects the configuration: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// run runs cmd to completion and returns its combined output; it kills the
// command (by its pid) if ctx ends first.
func run(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return out.Bytes(), ctx.Err()
	}
}

func (d *Driver) start(ctx context.Context) error {
	os.Remove(filepath.Join(d.dir, PidFile))
	cmd := d.cmd(d.bin, d.args(filepath.Join(d.dir, ConfigFile))...)
	logf, err := os.OpenFile(filepath.Join(d.dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, d.dir
	p, err := daemon.Start(cmd)
	if err != nil {
		return errcode.Wrap(errcode.Unavailable, err)
	}
	d.proc = p
	pid := cmd.Process.Pid
	deadline := time.Now().Add(d.wait)
	for {
		select {
		case <-p.Done():
			d.proc = nil
			return errcode.New(errcode.FailedPrecondition, "nginx exited at start (%v): %s", p.Err(), d.tail())
		case <-ctx.Done():
			d.stop()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		b, _ := os.ReadFile(filepath.Join(d.dir, PidFile))
		if strings.TrimSpace(string(b)) == strconv.Itoa(pid) && len(children(pid)) > 0 {
			d.log.InfoContext(ctx, "nginx started", "dir", d.dir, "pid", pid)
			return nil
		}
		if time.Now().After(deadline) {
			d.stop()
			return errcode.New(errcode.Unavailable, "nginx did not start within %v: %s", d.wait, d.tail())
		}
	}
}

// reload sends SIGHUP and waits for the master to start new workers.
func (d *Driver) reload(ctx context.Context) error {
	pid := d.proc.Pid()
	before := children(pid)
	logPath := filepath.Join(d.dir, ErrorLog)
	var offset int64
	if fi, err := os.Stat(logPath); err == nil {
		offset = fi.Size()
	}
	if err := d.proc.Signal(syscall.SIGHUP); err != nil {
		return errcode.Wrap(errcode.Unavailable, err)
	}
	deadline := time.Now().Add(d.wait)
	for {
		fresh, accepting := 0, 0
		for _, c := range children(pid) {
			if !slices.Contains(before, c) {
				fresh++
			} else if !shuttingDown(c) {
				accepting++
			}
		}
		// New workers run and old ones stopped accepting.
		if fresh >= 2 && accepting == 0 { // worker_processes
			d.log.InfoContext(ctx, "nginx reloaded", "dir", d.dir, "pid", pid)
			return nil
		}
		// A configuration the master cannot load (nginx -t passed, but a
		// bind failed since, say) is logged as [emerg]; the old workers
		// keep serving.
		if b, err := os.ReadFile(logPath); err == nil && int64(len(b)) > offset && bytes.Contains(b[offset:], []byte("[emerg]")) {
			return errcode.New(errcode.FailedPrecondition, "nginx could not load the new configuration; the old one keeps serving: %s", bytes.TrimSpace(b[offset:]))
		}
		if time.Now().After(deadline) {
			return errcode.New(errcode.Unavailable, "nginx did not reload within %v: %s", d.wait, d.tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.proc.Done():
			return errcode.New(errcode.Unavailable, "nginx exited during a reload: %s", d.tail())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// shuttingDown reports whether an old worker has closed its listeners:
// Nginx then retitles it "worker process is shutting down".
func shuttingDown(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err != nil || bytes.Contains(b, []byte("shutting down"))
}

// children returns the pids whose parent is pid, from /proc.
func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

func (d *Driver) tail() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, ErrorLog))
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(bytes.TrimSpace(b))
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

// change applies a server operation by re-rendering and reloading.
func (d *Driver) change(ctx context.Context, next func(*driver.Config) (*driver.Config, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return err
	}
	cfg, err := next(d.cfg)
	if err != nil {
		return err
	}
	if d.text == "" {
		d.cfg = cfg // never started: the next Apply starts with it
		return nil
	}
	return d.install(ctx, cfg) // (re)starts if the master died
}

// AddServer implements driver.Driver (by reload).
func (d *Driver) AddServer(ctx context.Context, pool string, srv driver.Server) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.AddServer(pool, srv) })
}

// RemoveServer implements driver.Driver (by reload).
func (d *Driver) RemoveServer(ctx context.Context, pool, name string) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.RemoveServer(pool, name) })
}

// SetWeight implements driver.Driver (by reload).
func (d *Driver) SetWeight(ctx context.Context, pool, name string, weight int) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetWeight(pool, name, weight) })
}

// SetState implements driver.Driver (by reload). Drain acts as Maintenance.
func (d *Driver) SetState(ctx context.Context, pool, name string, st driver.AdminState) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetState(pool, name, st) })
}

// Stats implements driver.Driver from the configuration in force: open-source
// Nginx exposes no per-server state or counters. Servers are Up unless
// administratively down (Maint, also for Drain); counters are zero.
func (d *Driver) Stats(ctx context.Context) ([]driver.ServerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.usable(); err != nil {
		return nil, err
	}
	var out []driver.ServerStats
	for _, p := range d.cfg.Pools {
		for _, s := range p.Servers {
			st := driver.Up
			if s.State != driver.Ready {
				st = driver.Maint
			}
			if !d.running() {
				st = driver.Down
			}
			out = append(out, driver.ServerStats{Pool: p.Name, Server: s.Name, State: st, Weight: s.Weight})
		}
	}
	slices.SortFunc(out, func(a, b driver.ServerStats) int {
		return strings.Compare(a.Pool+"\x00"+a.Server, b.Pool+"\x00"+b.Server)
	})
	return out, nil
}

// stop ends the master (SIGTERM, fast shutdown; after 5s SIGKILL to it
// and its workers, its process group).
func (d *Driver) stop() {
	if d.proc != nil {
		d.proc.Stop(5 * time.Second)
		d.proc = nil
	}
}

// Close implements driver.Driver: it stops Nginx. The directory stays.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.stop()
	return nil
}

func (d *Driver) gcCerts(r *Rendered) {
	entries, _ := os.ReadDir(filepath.Join(d.dir, CertDir))
	for _, e := range entries {
		p := filepath.Join(d.dir, CertDir, e.Name())
		if _, ok := r.Files[p]; !ok {
			os.Remove(p)
		}
	}
}
