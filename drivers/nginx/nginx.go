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

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/daemon"
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
	inst *daemon.Instance

	mu     sync.Mutex
	cfg    *driver.Config
	closed bool
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
	bin := opts.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	command := opts.Command
	if command == nil {
		command = exec.Command
	}
	d := &Driver{dir: dir, cfg: &driver.Config{}}
	if _, err := os.Stat(bin); err != nil {
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
	// New ends a master of an earlier run whose manager died (and its
	// workers), which still serves and holds the ports, so that this
	// driver's can bind them.
	args := func(conf string) []string {
		return []string{"-p", dir + "/", "-c", conf, "-e", filepath.Join(dir, ErrorLog)}
	}
	d.inst = daemon.New(daemon.Spec{
		Name: "nginx", Dir: dir, ConfigFile: ConfigFile, PidFile: PidFile, LogFile: ErrorLog, FilesDir: CertDir,
		Timeout: opts.ReloadTimeout, Logger: opts.Logger,
		// nginx -t binds the listeners: it runs where the master runs.
		Check: func(path string) *exec.Cmd { return command(bin, append(args(path), "-t", "-q")...) },
		Command: func() (*exec.Cmd, error) {
			os.Remove(filepath.Join(dir, PidFile))
			return command(bin, args(filepath.Join(dir, ConfigFile))...), nil
		},
		Ready: func(p *daemon.Process) bool {
			b, _ := os.ReadFile(filepath.Join(dir, PidFile))
			return strings.TrimSpace(string(b)) == strconv.Itoa(p.Pid()) && len(children(p.Pid())) > 0
		},
		Reload: d.reload,
	})
	return d, nil
}

// Dir returns the instance directory.
func (d *Driver) Dir() string { return d.dir }

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{TLS: true, Layer7: true, RawSnippets: true}
}

// Reloads counts starts and reloads, for drivertest.Reloader.
func (d *Driver) Reloads() int { return d.inst.Reloads() }

// Pid returns the master's pid, or 0 if none runs.
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
	if err := driver.CheckCapabilities(cfg, d.Capabilities()); err != nil {
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
	return d.install(ctx, cfg.Normalized())
}

// install renders and hands the configuration to the instance (check,
// swap, reload or start). Called with d.mu held.
func (d *Driver) install(ctx context.Context, cfg *driver.Config) error {
	r, err := Render(cfg, d.dir)
	if err != nil {
		return err
	}
	if err := d.inst.Apply(ctx, []byte(r.Config), r.Files); err != nil {
		return err
	}
	d.cfg = cfg
	return nil
}

// reload sends SIGHUP and waits until new workers run and old ones
// stopped accepting (daemon.Spec.Reload).
func (d *Driver) reload(ctx context.Context, master *daemon.Process) error {
	before := children(master.Pid())
	// A configuration the master cannot load (nginx -t passed, but a bind
	// failed since, say) is logged as [emerg]; the old workers keep
	// serving.
	return d.inst.AwaitReload(ctx, master, "[emerg]", func() error {
		return errcode.Wrap(errcode.Unavailable, master.Signal(syscall.SIGHUP))
	}, func() bool {
		fresh, accepting := 0, 0
		for _, c := range children(master.Pid()) {
			if !slices.Contains(before, c) {
				fresh++
			} else if !shuttingDown(c) {
				accepting++
			}
		}
		return fresh >= 2 && accepting == 0 // worker_processes
	})
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
	if d.inst.Config() == nil {
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
			if !d.inst.Running() {
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

// Close implements driver.Driver: it stops Nginx. The directory stays.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.inst.Stop() // SIGTERM: fast shutdown
	return nil
}
