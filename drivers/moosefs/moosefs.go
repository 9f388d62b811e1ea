// Package moosefs is a storage driver (storage/driver) that runs MooseFS 3:
// one Driver is one server's part in one pool.
//
// The pool's coordinator (Pool.Members[0]) runs mfsmaster; every member
// runs an mfschunkserver with one chunk directory; a server that only
// mounts runs no daemon. A volume is a directory at the top of the pool's
// namespace with its own goal (Volume.Copies, else the pool's: 1 for
// Distribute, Layout.Copies for Replicate) and a hard length quota
// (mfssetquota -L), and mfsexports.cfg lines for its clients. Mounts are
// mfsmount processes (FUSE, allow_other) at <dir>/mounts/<volume>, so a
// privileged container can bind-mount them.
//
// Everything lives under the directory Open is given: the rendered
// configuration (Render), each daemon's DATA_PATH (its lock file and
// metadata or chunks), pid files and logs, and the mounts. Daemons run in
// the foreground as managed children (internal/daemon), in the network
// namespace Options.NetNS through nsenter; mounts are made there too, so
// that they connect from the server's address while they land in the
// caller's mount namespace. The coordinator also mounts the whole
// namespace at <dir>/admin from 127.0.0.1, an export no other server can
// match, to create volumes and set their goals and quotas with the
// MooseFS tools (which speak to the master through the mount).
//
// Close stops the daemons but leaves every mount: an mfsmount outlives
// the program that started it, so containers' bind mounts stay valid
// while an agent restarts, and an Apply of the same config on a driver
// opened again adopts each healthy mount. Opening a directory ends the
// daemons an earlier run left running (internal/orphan), never a mount.
//
// Requirements: the Debian packages moosefs-master, moosefs-chunkserver
// and moosefs-client (3.0), util-linux (nsenter), FUSE (/dev/fuse), and
// root. MooseFS 3 speaks IPv4 only.
package moosefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"github.com/vishvananda/netns"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/confpath"
	"github.com/musterkit/muster/internal/daemon"
	"github.com/musterkit/muster/internal/mountinfo"
	"github.com/musterkit/muster/namespace"
	"github.com/musterkit/muster/storage/driver"
)

var _ driver.Driver = (*Driver)(nil)

// Programs are the MooseFS and system programs the driver runs.
type Programs struct {
	Master      string // mfsmaster; empty means /usr/sbin/mfsmaster
	ChunkServer string // mfschunkserver; empty means /usr/sbin/mfschunkserver
	Mount       string // mfsmount; empty means /usr/bin/mfsmount
	// Tools is the directory of mfssetgoal, mfssetquota, mfsdelquota,
	// mfssettrashtime, mfsdirinfo and mfscheckfile; empty means /usr/bin.
	Tools string
	// EmptyMetadata is the empty metadata file a new master starts from;
	// empty means /var/lib/mfs/metadata.mfs.empty.
	EmptyMetadata string
	Nsenter       string // empty means /usr/bin/nsenter
}

func (p Programs) withDefaults() Programs {
	set := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	set(&p.Master, "/usr/sbin/mfsmaster")
	set(&p.ChunkServer, "/usr/sbin/mfschunkserver")
	set(&p.Mount, "/usr/bin/mfsmount")
	set(&p.Tools, "/usr/bin")
	set(&p.EmptyMetadata, "/var/lib/mfs/metadata.mfs.empty")
	set(&p.Nsenter, "/usr/bin/nsenter")
	return p
}

// Options configure a Driver. The zero value is usable.
type Options struct {
	// NetNS is the network namespace file (/run/netns/NAME) the daemons,
	// mounts and tools run in; empty means the caller's.
	NetNS string
	// Logger receives a record per start, reload, mount and unmount; nil
	// discards.
	Logger *slog.Logger
	// Ports of the pool's daemons; every server of a pool must use the
	// same. Zero values mean MooseFS's defaults.
	Ports Ports
	// LeaveSpace is what a chunk server leaves free on its disk, in
	// bytes; 0 means DefaultLeaveSpace.
	LeaveSpace int64
	Programs   Programs
	// StartTimeout bounds a daemon's start or reload; 0 means 15s.
	StartTimeout time.Duration
	// JoinTimeout bounds the coordinator's wait for every member's chunk
	// server to connect; 0 means 30s.
	JoinTimeout time.Duration
	// MountTimeout bounds an mfsmount, and the wait for an adopted mount
	// to answer; 0 means 15s.
	MountTimeout time.Duration
	// HealthTimeout bounds the check that a mount answers; 0 means 2s.
	HealthTimeout time.Duration
}

// Driver is one server's part in one MooseFS pool. It is safe for
// concurrent use.
type Driver struct {
	dir    string
	opts   Options
	prog   Programs
	log    *slog.Logger
	ns     netns.NsHandle // Options.NetNS, open; -1 for the caller's
	master *daemon.Instance
	cs     *daemon.Instance

	mu     sync.Mutex
	cfg    *driver.Config // in force; nil before the first Apply
	files  *Rendered      // the files of cfg (or of the Apply under way)
	closed bool

	logMu   sync.Mutex
	logFrom map[string]int64 // log size at each daemon's last start
}

// Open returns a driver keeping everything in dir (created if missing,
// mode 0700; an absolute path of at most 200 bytes of letters, digits and
// /._-+, since it appears in configuration files). It ends the daemons an
// earlier run on dir left running; nothing starts until Apply.
func Open(ctx context.Context, dir string, opts *Options) (*Driver, error) {
	if opts == nil {
		opts = &Options{}
	}
	if err := confpath.Plain("instance directory", dir); err != nil {
		return nil, err
	}
	d := &Driver{dir: dir, opts: *opts, prog: opts.Programs.withDefaults(), log: opts.Logger, ns: -1, logFrom: map[string]int64{}}
	d.opts.Ports = d.opts.Ports.withDefaults()
	if opts.NetNS != "" {
		if err := confpath.Plain("network namespace", opts.NetNS); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{d.prog.Master, d.prog.ChunkServer, d.prog.Mount, d.prog.Tools, d.prog.EmptyMetadata, d.prog.Nsenter} {
		if err := confpath.Plain("program", p); err != nil {
			return nil, err
		}
	}
	if d.opts.LeaveSpace < 0 {
		return nil, errcode.New(errcode.InvalidArgument, "leave space %d is negative", d.opts.LeaveSpace)
	}
	def := func(v *time.Duration, x time.Duration) {
		if *v <= 0 {
			*v = x
		}
	}
	def(&d.opts.StartTimeout, 15*time.Second)
	def(&d.opts.JoinTimeout, 30*time.Second)
	def(&d.opts.MountTimeout, 15*time.Second)
	def(&d.opts.HealthTimeout, 2*time.Second)
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if opts.NetNS != "" {
		ns, err := netns.GetFromPath(opts.NetNS)
		if err != nil {
			return nil, errcode.Syscall(err, "moosefs: network namespace %q", opts.NetNS)
		}
		d.ns = ns
	}
	for _, sub := range []string{"", MasterDir, ChunkServerDir, MountsDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			d.closeNS()
			return nil, errcode.Syscall(err, "moosefs: directory")
		}
	}
	// Mount points are entered by the FUSE clients' users too.
	os.Chmod(filepath.Join(dir, MountsDir), 0o755)
	d.master = daemon.New(daemon.Spec{
		Name: "mfsmaster", Dir: filepath.Join(dir, MasterDir), ConfigFile: ExportsConfig,
		PidFile: "mfsmaster.pid", LogFile: "mfsmaster.log", Timeout: d.opts.StartTimeout, Logger: d.log,
		// mfsmaster has no check mode; Render is strict, and the master's
		// own parse at reload is the check (see reloadExports).
		Check:   func(string) *exec.Cmd { return exec.Command("true") },
		Command: d.masterCommand,
		Started: d.writePid(MasterDir, "mfsmaster.pid"),
		Ready:   d.logSays(MasterDir, "mfsmaster.log", "mfsmaster daemon initialized properly"),
		Reload:  d.reloadExports,
	})
	d.cs = daemon.New(daemon.Spec{
		Name: "mfschunkserver", Dir: filepath.Join(dir, ChunkServerDir), ConfigFile: ChunkServerConfig,
		PidFile: "mfschunkserver.pid", LogFile: "mfschunkserver.log", Timeout: d.opts.StartTimeout, Logger: d.log,
		Check:   func(string) *exec.Cmd { return exec.Command("true") },
		Command: d.chunkServerCommand,
		Started: d.writePid(ChunkServerDir, "mfschunkserver.pid"),
		Ready:   d.logSays(ChunkServerDir, "mfschunkserver.log", "mfschunkserver daemon initialized properly"),
		// A chunk server's configuration never changes while it runs.
		Reload: func(context.Context, *daemon.Process) error { return nil },
	})
	return d, nil
}

func (d *Driver) closeNS() {
	if d.ns >= 0 {
		d.ns.Close()
		d.ns = -1
	}
}

// Dir returns the instance directory.
func (d *Driver) Dir() string { return d.dir }

// MountPath returns where this server mounts volume.
func (d *Driver) MountPath(volume string) string { return filepath.Join(d.dir, MountsDir, volume) }

// ChunkServerPid returns the pid of the chunk server this driver runs, 0
// if none.
func (d *Driver) ChunkServerPid() int { return d.cs.Pid() }

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	_, err := os.Stat("/dev/fuse")
	return driver.Capabilities{
		Layouts: []driver.LayoutKind{driver.Distribute, driver.Replicate},
		Quota:   true, VolumeCopies: true, Exports: true, Grow: true,
		Mount: err == nil, Client: driver.FUSE,
	}
}

// cmd returns a command that runs name in the driver's network namespace.
func (d *Driver) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	if d.opts.NetNS == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, d.prog.Nsenter, append([]string{"--net=" + d.opts.NetNS, name}, args...)...)
}

// tool runs a MooseFS tool (or mfsmount) to its end within timeout and
// returns its output; a failure quotes it, coded by what it says.
func (d *Driver) tool(parent context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	if !filepath.IsAbs(name) {
		name = filepath.Join(d.prog.Tools, name)
	}
	c := d.cmd(ctx, name, args...)
	c.WaitDelay = time.Second
	out, err := c.CombinedOutput()
	if err == nil {
		return string(out), nil
	}
	if parent.Err() != nil {
		return "", parent.Err()
	}
	msg := fmt.Sprintf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(out))
	switch {
	case ctx.Err() != nil:
		return "", errcode.New(errcode.Unavailable, "%s (no answer within %v)", msg, timeout)
	case bytes.Contains(out, []byte("Permission denied")), bytes.Contains(out, []byte("EACCES")), bytes.Contains(out, []byte("EPERM")):
		return "", errcode.New(errcode.PermissionDenied, "%s", msg)
	case bytes.Contains(out, []byte("No such file")), bytes.Contains(out, []byte("ENOENT")):
		return "", errcode.New(errcode.NotFound, "%s", msg)
	}
	return "", errcode.New(errcode.Unavailable, "%s", msg)
}

// masterOf returns the master of cfg's pool, reached from the driver's
// namespace.
func (d *Driver) masterOf(cfg *driver.Config) *master {
	return &master{dial: func(ctx context.Context) (net.Conn, error) { return d.dialMasterOf(ctx, cfg) }}
}

func (d *Driver) dialMasterOf(ctx context.Context, cfg *driver.Config) (net.Conn, error) {
	if cfg == nil {
		return nil, errors.New("no pool")
	}
	addr := netip.AddrPortFrom(cfg.Pool.Coordinator().Addr, d.opts.Ports.Client).String()
	var dl net.Dialer
	if d.ns < 0 {
		return dl.DialContext(ctx, "tcp", addr)
	}
	var c net.Conn
	err := namespace.Run(d.ns, func() (err error) {
		c, err = dl.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// writePid returns a daemon.Spec.Started that records the daemon's pid
// (its process group's) where orphan reaping looks.
func (d *Driver) writePid(sub, name string) func(*daemon.Process) {
	return func(p *daemon.Process) {
		os.WriteFile(filepath.Join(d.dir, sub, name), []byte(strconv.Itoa(p.Pid())+"\n"), 0o600)
	}
}

// logSays returns a daemon.Spec.Ready that waits for marker in what the
// log gained since the daemon's start.
func (d *Driver) logSays(sub, name, marker string) func(*daemon.Process) bool {
	path := filepath.Join(d.dir, sub, name)
	return func(*daemon.Process) bool {
		d.logMu.Lock()
		from := d.logFrom[path]
		d.logMu.Unlock()
		return bytes.Contains(readFrom(path, from), []byte(marker))
	}
}

// markLog records the current size of log path: what a start writes
// comes after it.
func (d *Driver) markLog(path string) {
	var size int64
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	d.logMu.Lock()
	d.logFrom[path] = size
	d.logMu.Unlock()
}

func readFrom(path string, offset int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(io.NewSectionReader(f, offset, 1<<62), 1<<20))
	return b
}

// masterCommand writes the master's configuration (exports aside, which
// daemon.Instance swaps), gives a new master its empty metadata, and
// returns mfsmaster in the foreground. Called with d.mu held.
func (d *Driver) masterCommand() (*exec.Cmd, error) {
	md := filepath.Join(d.dir, MasterDir)
	if err := os.MkdirAll(filepath.Join(md, DataDir), 0o700); err != nil {
		return nil, err
	}
	if err := renameio.WriteFile(filepath.Join(md, MasterConfig), d.files.Master, 0o600); err != nil {
		return nil, err
	}
	if err := renameio.WriteFile(filepath.Join(md, TopologyConfig), d.files.Topology, 0o600); err != nil {
		return nil, err
	}
	data := filepath.Join(md, DataDir)
	if !exists(filepath.Join(data, "metadata.mfs")) && !exists(filepath.Join(data, "metadata.mfs.back")) {
		empty, err := os.ReadFile(d.prog.EmptyMetadata)
		if err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("empty MooseFS metadata (Debian package moosefs-master): %w", err))
		}
		if err := renameio.WriteFile(filepath.Join(data, "metadata.mfs"), empty, 0o600); err != nil {
			return nil, err
		}
	}
	d.markLog(filepath.Join(md, "mfsmaster.log"))
	// -a replays the change logs a master that was killed left.
	return d.cmd(context.Background(), d.prog.Master, "-f", "-a", "-c", filepath.Join(md, MasterConfig)), nil
}

// chunkServerCommand writes mfshdd.cfg and the chunk directory and
// returns mfschunkserver in the foreground. Called with d.mu held.
func (d *Driver) chunkServerCommand() (*exec.Cmd, error) {
	cd := filepath.Join(d.dir, ChunkServerDir)
	for _, sub := range []string{DataDir, ChunksDir} {
		if err := os.MkdirAll(filepath.Join(cd, sub), 0o700); err != nil {
			return nil, err
		}
	}
	if err := renameio.WriteFile(filepath.Join(cd, HDDConfig), d.files.HDD, 0o600); err != nil {
		return nil, err
	}
	d.markLog(filepath.Join(cd, "mfschunkserver.log"))
	return d.cmd(context.Background(), d.prog.ChunkServer, "-f", "-c", filepath.Join(cd, ChunkServerConfig)), nil
}

// reloadExports has the master read mfsexports.cfg again (SIGHUP) and
// waits until it says so. A line it rejects is errcode.InvalidArgument;
// the master loaded the other lines, so the previous file is loaded again.
func (d *Driver) reloadExports(ctx context.Context, p *daemon.Process) error {
	log := filepath.Join(d.dir, MasterDir, "mfsmaster.log")
	var from int64
	if fi, err := os.Stat(log); err == nil {
		from = fi.Size()
	}
	err := d.master.AwaitReload(ctx, p, "mfsexports:",
		func() error { return errcode.Wrap(errcode.Unavailable, p.Signal(syscall.SIGHUP)) },
		func() bool { return bytes.Contains(readFrom(log, from), []byte("exports file has been loaded")) })
	if errcode.Of(err) == errcode.FailedPrecondition {
		return errcode.New(errcode.InvalidArgument, "%v", err)
	}
	return err
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func (d *Driver) errClosed() error {
	return errcode.New(errcode.FailedPrecondition, "moosefs driver on %s is closed", d.dir)
}

// roles returns whether self is the coordinator and whether a member.
func roles(cfg *driver.Config) (coordinator, member bool) {
	_, member = cfg.Pool.Member(cfg.Self)
	return cfg.Pool.Coordinator().Server == cfg.Self, member
}

// copiesOf is the goal of volume v.
func copiesOf(cfg *driver.Config, v driver.Volume) int {
	switch {
	case v.Copies > 0:
		return v.Copies
	case cfg.Pool.Layout.Kind == driver.Replicate:
		return cfg.Pool.Layout.Copies
	}
	return 1
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, d.errClosed()
	}
	return d.cfg.Clone(), nil
}

// running reports whether the daemons cfg gives this server run.
func (d *Driver) running(cfg *driver.Config) bool {
	coord, member := roles(cfg)
	return (!coord || d.master.Running() && d.mountedAt(d.adminPath()) != nil) && (!member || d.cs.Running())
}

func (d *Driver) adminPath() string { return filepath.Join(d.dir, AdminMount) }

// Apply implements driver.Driver. Members start their chunk server (a
// member new to a pool in force grows it); the coordinator starts the
// master, waits until every member's chunk server has connected, and
// creates volumes and sets their goals, quotas and exports; every server
// then mounts what cfg.Mounts name, adopting a healthy mount an earlier
// run left. Daemons that died are started again, even by an equal config.
// Mounts need the master: a member other than the coordinator mounts in an
// Apply after the coordinator's.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := d.Capabilities().Check(cfg); err != nil {
		return err
	}
	if err := checkIPv4(cfg); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.errClosed()
	}
	old := d.cfg
	if old != nil && old.Pool.Coordinator().Server != old.Self {
		// Volumes live on the coordinator, which removes them
		// (RemoveVolume); elsewhere a dropped one is just gone.
		old = old.Clone()
		old.Volumes = slices.DeleteFunc(old.Volumes, func(v driver.Volume) bool {
			_, ok := cfg.Volume(v.Name)
			return !ok
		})
	}
	plan, err := driver.PlanApply(old, cfg)
	if err != nil {
		return err
	}
	if plan.Empty() && d.running(cfg) {
		return nil
	}
	files, err := Render(Input{Config: cfg, Dir: d.dir, Ports: d.opts.Ports, LeaveSpace: d.opts.LeaveSpace})
	if err != nil {
		return err
	}
	prevFiles := d.files
	d.files = files
	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		d.files = prevFiles
		return err
	}
	coord, member := roles(cfg)
	if member && !d.cs.Running() {
		if err := d.cs.Apply(ctx, files.ChunkServer, nil); err != nil {
			return fail(err)
		}
		undo = append(undo, d.cs.Stop)
	}
	if coord {
		if err := d.applyCoordinator(ctx, cfg, plan, &undo); err != nil {
			return fail(err)
		}
	}
	if err := d.applyMounts(ctx, cfg, plan, &undo); err != nil {
		return fail(err)
	}
	d.cfg = cfg.Clone()
	return nil
}

// applyCoordinator runs the master and the admin mount and makes the
// volumes match cfg, adding to undo what reverts each step. Called with
// d.mu held.
func (d *Driver) applyCoordinator(ctx context.Context, cfg *driver.Config, plan *driver.Plan, undo *[]func()) error {
	md := filepath.Join(d.dir, MasterDir)
	wasRunning := d.master.Running()
	fresh := !exists(filepath.Join(md, DataDir, "metadata.mfs")) && !exists(filepath.Join(md, DataDir, "metadata.mfs.back"))
	prev := d.master.Config()
	if err := d.master.Apply(ctx, d.files.Exports, nil); err != nil {
		return err
	}
	switch {
	case !wasRunning:
		*undo = append(*undo, func() {
			d.master.Stop()
			if fresh {
				os.RemoveAll(filepath.Join(md, DataDir))
			}
		})
	case !bytes.Equal(prev, d.files.Exports):
		*undo = append(*undo, func() {
			if err := d.master.Apply(context.WithoutCancel(ctx), prev, nil); err != nil {
				d.log.Warn("moosefs: previous exports not restored", "dir", d.dir, "err", err)
			}
		})
	}
	admin := d.adminPath()
	if d.mountedAt(admin) == nil || d.healthy(ctx, admin) != nil {
		if err := d.mount(ctx, admin, "127.0.0.1", "/", false); err != nil {
			return err
		}
		*undo = append(*undo, func() { d.unmount(admin, true) })
		if fresh {
			// Deleted files free their chunks at once.
			if _, err := d.tool(ctx, d.opts.StartTimeout, "mfssettrashtime", "0", admin); err != nil {
				return err
			}
		}
	}
	if plan.Join || len(plan.Added) > 0 || !wasRunning {
		if err := d.awaitMembers(ctx, cfg); err != nil {
			return err
		}
	}
	vols := plan.Create
	if !wasRunning && !plan.Join {
		vols = cfg.Volumes // a master that died: make sure of every volume
	}
	for _, v := range append(slices.Clone(vols), plan.Update...) {
		var was driver.Volume
		if d.cfg != nil {
			was, _ = d.cfg.Volume(v.Name)
		}
		if err := d.ensureVolume(ctx, cfg, v, was, undo); err != nil {
			return err
		}
	}
	return nil
}

// awaitMembers waits until every member's chunk server is connected to
// the master: errcode.Unavailable naming those missing after
// Options.JoinTimeout.
func (d *Driver) awaitMembers(ctx context.Context, cfg *driver.Config) error {
	deadline := time.Now().Add(d.opts.JoinTimeout)
	m := d.masterOf(cfg)
	for {
		var missing []string
		list, err := m.chunkServers(ctx)
		for _, mem := range cfg.Pool.Members {
			if err != nil || !slices.ContainsFunc(list, func(cs chunkServer) bool { return cs.Addr == mem.Addr && !cs.Disconnected }) {
				missing = append(missing, mem.Server)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errcode.New(errcode.Unavailable, "pool %q: the chunk servers of %v did not connect to the master within %v (apply the members before the coordinator): %v", cfg.Pool.Name, missing, d.opts.JoinTimeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ensureVolume makes volume v's directory (if missing), goal and quota
// match v; was is the volume in force before (zero if none). Called with
// d.mu held.
func (d *Driver) ensureVolume(ctx context.Context, cfg *driver.Config, v, was driver.Volume, undo *[]func()) error {
	path := filepath.Join(d.adminPath(), v.Name)
	err := os.Mkdir(path, 0o755)
	switch {
	case err == nil:
		*undo = append(*undo, func() { os.Remove(path) })
		os.Chmod(path, 0o755) // whatever the umask
	case errors.Is(err, fs.ErrExist):
		if fi, err := os.Lstat(path); err != nil || !fi.IsDir() {
			return errcode.New(errcode.FailedPrecondition, "volume %q: %s holds something that is not a directory", v.Name, path)
		}
		if was.Name != "" {
			old := was
			*undo = append(*undo, func() { d.setVolume(context.WithoutCancel(ctx), cfg, old, path) })
		}
	default:
		return errcode.Syscall(err, "volume %q: mkdir", v.Name)
	}
	return d.setVolume(ctx, cfg, v, path)
}

// setVolume sets the goal (of everything in the volume) and the quota of
// volume v at path.
func (d *Driver) setVolume(ctx context.Context, cfg *driver.Config, v driver.Volume, path string) error {
	t := d.opts.StartTimeout
	if _, err := d.tool(ctx, t, "mfssetgoal", "-r", strconv.Itoa(copiesOf(cfg, v)), path); err != nil {
		return err
	}
	if v.QuotaBytes > 0 {
		_, err := d.tool(ctx, t, "mfssetquota", "-L", strconv.FormatInt(v.QuotaBytes, 10), path)
		return err
	}
	_, err := d.tool(ctx, t, "mfsdelquota", "-L", path)
	return err
}

// applyMounts unmounts what plan ends and mounts what it adds (adopting a
// healthy mount of an earlier run); at a join, mounts of an earlier run
// that cfg does not name are ended. Called with d.mu held.
func (d *Driver) applyMounts(ctx context.Context, cfg *driver.Config, plan *driver.Plan, undo *[]func()) error {
	if plan.Join {
		entries, _ := os.ReadDir(filepath.Join(d.dir, MountsDir))
		for _, e := range entries {
			if !slices.ContainsFunc(cfg.Mounts, func(m driver.Mount) bool { return m.Volume == e.Name() }) {
				if d.mountedAt(d.MountPath(e.Name())) != nil {
					if err := d.unmount(d.MountPath(e.Name()), false); err != nil {
						d.log.Warn("moosefs: an earlier run's mount not ended", "path", d.MountPath(e.Name()), "err", err)
						continue
					}
				}
				os.Remove(d.MountPath(e.Name()))
			}
		}
	}
	for _, m := range plan.Unmount {
		if err := d.unmount(d.MountPath(m.Volume), false); err != nil {
			return err
		}
		os.Remove(d.MountPath(m.Volume))
		was := m
		*undo = append(*undo, func() { d.mountVolume(context.WithoutCancel(ctx), cfg, was) })
	}
	mounts := plan.Mount
	if !plan.Join {
		// A mount that went away (its mfsmount died) is made again.
		for _, m := range cfg.Mounts {
			if !slices.Contains(mounts, m) && d.mountedAt(d.MountPath(m.Volume)) == nil {
				mounts = append(mounts, m)
			}
		}
	}
	for _, m := range mounts {
		adopted, err := d.adopt(ctx, m)
		if err != nil {
			return err
		}
		if adopted {
			continue
		}
		if err := d.mountVolume(ctx, cfg, m); err != nil {
			return err
		}
		path := d.MountPath(m.Volume)
		*undo = append(*undo, func() { d.unmount(path, true); os.Remove(path) })
	}
	return nil
}

// adopt takes over a mount of m that an earlier run left, if it is
// MooseFS, has m's access and answers within Options.MountTimeout (its
// master may have just started); one that does not is ended.
func (d *Driver) adopt(ctx context.Context, m driver.Mount) (bool, error) {
	path := d.MountPath(m.Volume)
	mi := d.mountedAt(path)
	if mi == nil {
		return false, nil
	}
	if mi.ReadOnly == m.ReadOnly {
		deadline := time.Now().Add(d.opts.MountTimeout)
		for {
			if d.healthy(ctx, path) == nil {
				d.log.Info("moosefs: mount adopted", "path", path)
				return true, nil
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := d.unmount(path, false); err != nil {
		return false, err
	}
	return false, nil
}

// mountVolume mounts volume m.Volume of cfg's pool at its path.
func (d *Driver) mountVolume(ctx context.Context, cfg *driver.Config, m driver.Mount) error {
	return d.mount(ctx, d.MountPath(m.Volume), cfg.Pool.Coordinator().Addr.String(), "/"+m.Volume, m.ReadOnly)
}

// mount runs mfsmount for subfolder sub of the master at host at path,
// in the driver's namespace. A master that refuses the client (no export
// rule lets it in) is errcode.PermissionDenied.
func (d *Driver) mount(ctx context.Context, path, host, sub string, ro bool) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return errcode.Syscall(err, "moosefs: mount point")
	}
	args := []string{path, "-H", host, "-P", strconv.Itoa(int(d.opts.Ports.Client)), "-S", sub}
	if ro {
		args = append(args, "-o", "ro")
	}
	if _, err := d.tool(ctx, d.opts.MountTimeout, d.prog.Mount, args...); err != nil {
		if d.mountedAt(path) == nil {
			os.Remove(path)
		}
		return err
	}
	if d.mountedAt(path) == nil {
		return errcode.New(errcode.Internal, "mfsmount of %s at %s succeeded, but nothing is mounted there", sub, path)
	}
	d.log.Info("moosefs: mounted", "path", path, "master", host, "volume", sub, "readOnly", ro)
	return nil
}

// unmount ends the mount at path; a busy one is
// errcode.FailedPrecondition unless force, which detaches it (it ends
// once its last user lets go). The mfsmount process exits by itself.
func (d *Driver) unmount(path string, force bool) error {
	err := syscall.Unmount(path, 0)
	if errors.Is(err, syscall.EBUSY) && force {
		err = syscall.Unmount(path, syscall.MNT_DETACH)
	}
	switch {
	case err == nil:
		d.log.Info("moosefs: unmounted", "path", path)
		awaitMountExit(path, 5*time.Second)
		return nil
	case errors.Is(err, syscall.EINVAL) && d.mountedAt(path) == nil:
		return nil
	case errors.Is(err, syscall.EBUSY):
		return errcode.New(errcode.FailedPrecondition, "moosefs: %s is busy; unmount it with Force", path)
	}
	return errcode.Syscall(err, "moosefs: unmount %s", path)
}

// awaitMountExit waits up to timeout until no mfsmount process serves
// path (mfsmount names it in its command line), so that the master has
// closed its session.
func awaitMountExit(path string, timeout time.Duration) {
	want := []byte("mfsmount (mounted on: " + path + ")")
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		found := false
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			if e.Name()[0] < '0' || e.Name()[0] > '9' {
				continue
			}
			cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if bytes.HasPrefix(cmd, want) {
				stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
				if !bytes.Contains(stat, []byte(") Z ")) {
					found = true
					break
				}
			}
		}
		if !found {
			return
		}
	}
}

// mountedAt returns the MooseFS mount that shows at path, if any.
func (d *Driver) mountedAt(path string) *mountinfo.Mount {
	m, ok := mountinfo.At("/proc/self/mountinfo", path)
	if !ok || m.FSType != "fuse" || !strings.HasPrefix(m.Source, "mfs#") {
		return nil
	}
	return &m
}

// healthy checks that the file system at path answers a statfs within
// Options.HealthTimeout, in a process of its own that is killed if it
// hangs (a FUSE request waits as long as its master does).
func (d *Driver) healthy(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.HealthTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, "stat", "-f", "-c", "%b", path)
	c.WaitDelay = 500 * time.Millisecond
	if out, err := c.CombinedOutput(); err != nil {
		return errcode.New(errcode.Unavailable, "mount %s does not answer: %v: %s", path, err, bytes.TrimSpace(out))
	}
	return nil
}
