// Package gluster is a storage driver (storage/driver) for GlusterFS 10:
// one Driver is one server's part in one pool, a trusted storage pool of
// glusterd peers.
//
// # Layout
//
// Open(ctx, dir, opts) keeps everything under dir: run/, state/ and log/
// (glusterd's /run, /var/lib/glusterd and /var/log/glusterfs), bricks/
// (the member's bricks), mounts/ (this server's FUSE mounts, mounts/<volume>,
// with the client's pid in mounts/<volume>.pid), glusterd.vol and
// config.json (the config in force).
//
// glusterd is one per filesystem view, so a member runs it in a mount
// namespace of its own (unshare -m, private propagation) in Options.NetNS,
// where dir's run/, state/ and log/ are bind-mounted on /run,
// /var/lib/glusterd and /var/log/glusterfs and dir/bricks on BrickRoot.
// Gluster therefore knows every brick as <member address>:BrickRoot/
// <volume>.<id>, the same path on every member whatever its dir. The gluster
// CLI runs in glusterd's namespaces (nsenter). Every process of that
// namespace (glusterd, its bricks glusterfsd, the self-heal and quota
// daemons) is found by its /run being dir/run: Close ends them all, and
// Open ends those an earlier run left.
//
// Mounts are FUSE clients (glusterfs --process-name fuse) started in
// Options.NetNS but in the caller's mount namespace, so the mount is visible
// to the caller (and to containers that bind-mount it), with allow_other,
// the coordinator as volfile server and the other members as backups. A
// client runs in a process group of its own and outlives Close, so that
// containers' bind mounts stay valid while the agent restarts; Apply
// after Open adopts a healthy mount of the same volume instead of mounting
// again. An Apply that no longer names the mount, Leave and RemoveVolume
// end them.
//
// Volumes get network.ping-timeout Options.PingTimeout, 2 s by default:
// when a brick's server is cut off, I/O on a mount stalls about twice
// that (3.9 s measured) before it goes on without the brick, where
// Gluster's default of 42 s stalls it over a minute. glusterd gives up on
// an unanswering peer after 5 s (Debian's glusterd.vol never does). Quotas use
// features.quota with limit-usage on / and hard and soft timeouts of 0,
// so a write over the limit fails at once (EDQUOT). Export rules are
// errcode.Unimplemented (Capabilities().Exports is false): Gluster has no
// per-client read-only (features.read-only is for the whole volume), and
// it checks a member's own daemons (self-heal) against auth.allow too.
//
// Requirements: root, the Debian packages glusterfs-server (glusterd,
// gluster) on members and glusterfs-client (glusterfs) with /dev/fuse
// where volumes are mounted, and util-linux (nsenter, unshare, mount).
package gluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/confpath"
	"github.com/musterkit/muster/storage/driver"
)

var _ driver.Driver = (*Driver)(nil)

// BrickRoot is where glusterd and its bricks see dir/bricks.
const BrickRoot = "/run/muster-bricks"

// Defaults of Options.
const (
	DefaultGlusterd    = "/usr/sbin/glusterd"
	DefaultGluster     = "/usr/sbin/gluster"
	DefaultGlusterfs   = "/usr/sbin/glusterfs"
	DefaultPingTimeout = 2 * time.Second
	DefaultTimeout     = 60 * time.Second
)

// Options configure a Driver; the zero value is usable.
type Options struct {
	// NetNS is the network namespace file (/run/netns/NAME) that glusterd
	// and the mounts run in; empty means the caller's.
	NetNS string
	// Logger receives a record per daemon start and stop, volume change
	// and mount; nil discards.
	Logger *slog.Logger
	// Glusterd, Gluster and Glusterfs are the programs; empty means the
	// Default ones.
	Glusterd, Gluster, Glusterfs string
	// PingTimeout is how long a client waits for an unanswering brick
	// before it goes on without it (network.ping-timeout, whole seconds);
	// 0 means DefaultPingTimeout.
	PingTimeout time.Duration
	// Timeout bounds one gluster command, a glusterd start and a mount;
	// 0 means DefaultTimeout.
	Timeout time.Duration
}

// Driver is one server's part in one Gluster pool. It is safe for
// concurrent use.
type Driver struct {
	dir   string
	opts  Options
	log   *slog.Logger
	run   *runner
	mount *mounter

	mu       sync.Mutex
	cfg      *driver.Config // in force in this run; nil before the first Apply
	recorded *driver.Config // config.json: in force when the last run ended
	closed   bool
}

// Open returns a driver whose state is kept in dir (created if missing,
// mode 0700; an absolute path of at most 200 bytes of letters, digits and
// /._-+, since it reaches command lines). It ends the gluster processes an
// earlier run on dir left, but not its mounts. Nothing starts until Apply.
func Open(ctx context.Context, dir string, opts *Options) (*Driver, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if err := confpath.Plain("instance directory", dir); err != nil {
		return nil, err
	}
	if o.NetNS != "" {
		if err := confpath.Plain("network namespace", o.NetNS); err != nil {
			return nil, err
		}
		if _, err := os.Stat(o.NetNS); err != nil {
			return nil, errcode.Syscall(err, "network namespace %q", o.NetNS)
		}
	}
	o.Glusterd = cmp(o.Glusterd, DefaultGlusterd)
	o.Gluster = cmp(o.Gluster, DefaultGluster)
	o.Glusterfs = cmp(o.Glusterfs, DefaultGlusterfs)
	for _, p := range []string{o.Glusterd, o.Gluster, o.Glusterfs} {
		if err := confpath.Plain("program", p); err != nil {
			return nil, err
		}
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = DefaultPingTimeout
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, sub := range []string{"", "run", "state", "log", "bricks", "mounts"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, errcode.Syscall(err, "gluster: instance directory %q", dir)
		}
	}
	d := &Driver{dir: dir, opts: o, log: log}
	d.run = &runner{dir: dir, opts: &d.opts, log: log}
	d.mount = &mounter{dir: filepath.Join(dir, "mounts"), logDir: filepath.Join(dir, "log"), opts: &d.opts, log: log}
	d.run.reap(ctx)
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	switch {
	case err == nil:
		d.recorded = new(driver.Config)
		if err := json.Unmarshal(b, d.recorded); err != nil || d.recorded.Validate() != nil {
			return nil, errcode.New(errcode.Internal, "gluster: %s/config.json is damaged: %v", dir, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, errcode.Syscall(err, "gluster: reading the config in force")
	}
	return d, nil
}

func cmp(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Dir returns the directory the driver was opened with.
func (d *Driver) Dir() string { return d.dir }

// Capabilities implements driver.Driver. Mount is false when the FUSE
// client or /dev/fuse is missing here.
func (d *Driver) Capabilities() driver.Capabilities {
	_, errClient := os.Stat(d.opts.Glusterfs)
	_, errFuse := os.Stat("/dev/fuse")
	return driver.Capabilities{
		Layouts: []driver.LayoutKind{driver.Single, driver.Distribute, driver.Replicate, driver.Disperse},
		Arbiter: true, Quota: true, Grow: true,
		Mount: errClient == nil && errFuse == nil, Client: driver.FUSE,
	}
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	return d.cfg.Clone(), nil
}

var errClosed = errcode.New(errcode.FailedPrecondition, "gluster: the driver is closed")

// Apply implements driver.Driver.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := d.Capabilities().Check(cfg); err != nil {
		return err
	}
	if err := checkBricks(&cfg.Pool, len(cfg.Pool.Members)); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	old := d.cfg
	if old == nil {
		old = d.recorded
	}
	if old != nil && old.Self != old.Pool.Coordinator().Server {
		// Volumes are removed on the coordinator (RemoveVolume); another
		// server only follows.
		old = old.Clone()
		old.Volumes = nil
	}
	if _, err := driver.PlanApply(old, cfg); err != nil {
		return err
	}
	var undo undoList
	err := d.apply(ctx, cfg, &undo)
	if err != nil {
		if uerr := undo.run(context.WithoutCancel(ctx), d.log); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return err
	}
	return d.record(cfg.Clone())
}

// apply reconciles this server with cfg, recording in undo how to take
// back what it created.
func (d *Driver) apply(ctx context.Context, cfg *driver.Config, undo *undoList) error {
	if _, member := cfg.Pool.Member(cfg.Self); member {
		started, err := d.run.ensure(ctx)
		if err != nil {
			return err
		}
		if started && d.cfg == nil && d.recorded == nil {
			undo.add("stop glusterd", func(ctx context.Context) error { d.run.stop(); return nil })
		}
		if cfg.Pool.Coordinator().Server == cfg.Self {
			if err := d.formPool(ctx, cfg, undo); err != nil {
				return err
			}
			if err := d.ensureVolumes(ctx, cfg, undo); err != nil {
				return err
			}
		}
	}
	return d.mount.reconcile(ctx, cfg, undo)
}

// undoList is what to do, last first, to take back a failed Apply.
type undoList struct {
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func(context.Context) error
}

func (u *undoList) add(what string, fn func(context.Context) error) {
	u.steps = append(u.steps, undoStep{what, fn})
}

func (u *undoList) run(ctx context.Context, log *slog.Logger) error {
	var errs []error
	for _, s := range slices.Backward(u.steps) {
		if err := s.fn(ctx); err != nil {
			log.WarnContext(ctx, "gluster: undoing a failed apply", "step", s.what, "err", err)
			errs = append(errs, fmt.Errorf("undo %s: %w", s.what, err))
		}
	}
	return errors.Join(errs...)
}

// Close implements driver.Driver: it ends glusterd and every process of its
// namespace, and leaves the mounts.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.run.stop()
	return nil
}

// Pid returns glusterd's pid, or 0 if it does not run.
func (d *Driver) Pid() int { return d.run.pid() }

// MountPath returns where this server mounts volume.
func (d *Driver) MountPath(volume string) string { return filepath.Join(d.dir, "mounts", volume) }

// usable returns the config in force, or an error if there is none or the
// driver is closed. Called with d.mu held.
func (d *Driver) usable() (*driver.Config, error) {
	if d.closed {
		return nil, errClosed
	}
	if d.cfg == nil {
		return nil, errcode.New(errcode.FailedPrecondition, "gluster: no config applied yet")
	}
	return d.cfg, nil
}
