package lxc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	golxc "github.com/lxc/go-lxc"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.Images      = (*Driver)(nil)
	_ driver.Snapshotter = (*Driver)(nil)
	_ driver.Transferer  = (*Driver)(nil)
	_ driver.Host        = (*Driver)(nil)
	_ driver.Autostarter = (*Driver)(nil)
)

const (
	// metaFile holds Muster's record of a container, next to LXC's config.
	metaFile = "muster.json"
	// stagingPrefix starts the directories in the lxcpath where containers,
	// imports, snapshots and restores are assembled before a rename makes
	// them visible. Open removes leftovers of a crash.
	stagingPrefix = ".staging-"
	// stateTimeout bounds the wait for LXC to report a state change that
	// is already under way.
	stateTimeout = 30 * time.Second
)

// Options configure a Driver. A nil *Options means the defaults.
type Options struct {
	// Logger receives the driver's records; nil discards them.
	Logger *slog.Logger
	// ArchiveLimits bound every archive the driver reads: images put
	// into its store and unpacked from it, and imported containers. Zero
	// fields take the image.DefaultLimits values.
	ArchiveLimits image.Limits
	// Volumes says where the server mounted storage volumes, for
	// containers that mount one (driver.Mount.Volume); nil refuses them
	// with errcode.Unimplemented.
	Volumes driver.VolumePaths
}

// Driver runs the LXC containers of one server. It is safe for concurrent
// use; operations that change a container are serialised per container.
type Driver struct {
	lxcpath  string // dir/containers: one directory per container
	images   *image.Store
	limits   image.Limits // of imports; the store has its own copy
	log      *slog.Logger
	cgroups  cgroupLayout
	lxcStart string // path of the lxc-start program
	locks    nameLocks
	volumes  driver.VolumePaths
	closed   atomic.Bool
}

// meta is Muster's record of a container, kept in metaFile.
type meta struct {
	Spec    driver.Spec `json:"spec"`
	Created time.Time   `json:"created"`
}

// Open returns the driver of the server whose state lives in dir, creating
// dir if needed. Containers live in dir/containers, the driver's own LXC
// path, and images in the store dir/images. Staging directories that a
// crashed operation left behind are removed.
func Open(ctx context.Context, dir string, opts *Options) (*Driver, error) {
	if opts == nil {
		opts = &Options{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, errcode.Wrap(errcode.InvalidArgument, err)
	}
	if err := configPath("state directory", dir); err != nil {
		return nil, err
	}
	lxcStart, err := exec.LookPath("lxc-start")
	if err != nil {
		return nil, errcode.New(errcode.FailedPrecondition, "lxc driver: %w (Debian package lxc)", err)
	}
	cg, err := detectCgroups()
	if err != nil {
		return nil, errcode.New(errcode.Internal, "lxc driver: reading the cgroup layout: %w", err)
	}
	lxcpath := filepath.Join(dir, "containers")
	if err := os.MkdirAll(lxcpath, 0o700); err != nil {
		return nil, err
	}
	store, err := image.OpenStore(filepath.Join(dir, "images"), &image.StoreOptions{Limits: opts.ArchiveLimits})
	if err != nil {
		return nil, err
	}
	d := &Driver{lxcpath: lxcpath, images: store, limits: opts.ArchiveLimits, log: log, cgroups: cg, lxcStart: lxcStart, volumes: opts.Volumes}
	entries, err := os.ReadDir(lxcpath)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stagingPrefix) {
			log.Info("removing leftover staging directory", "dir", e.Name())
			if err := os.RemoveAll(filepath.Join(lxcpath, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

// Close implements driver.Driver. Containers keep running, and a driver
// opened later on the same directory manages them. Closing again returns
// nil; every other method then fails with errcode.FailedPrecondition.
func (d *Driver) Close() error {
	d.closed.Store(true)
	return nil
}

// checkOpen returns errcode.FailedPrecondition once the driver is closed.
func (d *Driver) checkOpen() error {
	if d.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "lxc driver: closed")
	}
	return nil
}

func (d *Driver) path(name string, elem ...string) string {
	return filepath.Join(append([]string{d.lxcpath, name}, elem...)...)
}

// readMeta returns a container's record: errcode.NotFound if there is none.
func (d *Driver) readMeta(name string) (*meta, error) {
	if err := names.Label(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(d.path(name, metaFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errcode.New(errcode.NotFound, "container %q not found", name)
	}
	if err != nil {
		return nil, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, errcode.New(errcode.Internal, "container %q: %s: %w", name, metaFile, err)
	}
	return &m, nil
}

// open returns LXC's handle of an existing container and its record. The
// caller releases the handle.
func (d *Driver) open(name string) (*golxc.Container, *meta, error) {
	m, err := d.readMeta(name)
	if err != nil {
		return nil, nil, err
	}
	c, err := golxc.NewContainer(name, d.lxcpath)
	if err != nil {
		return nil, nil, errcode.New(errcode.Internal, "container %q: %w", name, err)
	}
	return c, m, nil
}

// openLocked locks name, opens it and reads its state; unlock releases
// the lock and the handle.
func (d *Driver) openLocked(ctx context.Context, name string) (*golxc.Container, *meta, driver.State, func(), error) {
	unlock, err := d.locks.lock(ctx, name)
	if err != nil {
		return nil, nil, "", nil, err
	}
	c, m, err := d.open(name)
	if err != nil {
		unlock()
		return nil, nil, "", nil, err
	}
	st, err := d.state(c, name)
	if err != nil {
		c.Release()
		unlock()
		return nil, nil, "", nil, err
	}
	return c, m, st, func() { c.Release(); unlock() }, nil
}

// initFile, in a container's directory, records the init that Start saw:
// "<pid> <start time in clock ticks>".
const initFile = "init"

// recordInit writes a started container's initFile.
func (d *Driver) recordInit(name string, pid int) error {
	start, err := procStart(pid)
	if err != nil {
		return err
	}
	return os.WriteFile(d.path(name, initFile), fmt.Appendf(nil, "%d %d\n", pid, start), 0o600)
}

// hiddenInit returns the PID of the init recorded in name's initFile if that
// process still runs, else 0.
func (d *Driver) hiddenInit(name string) int {
	b, err := os.ReadFile(d.path(name, initFile))
	if err != nil {
		return 0
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
		return 0
	}
	if now, err := procStart(pid); err != nil || now != start {
		return 0
	}
	return pid
}

// procStart returns when process pid started, in clock ticks since boot:
// with the PID, it names one process for good.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command, which is in parentheses: the start
	// time is the 20th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// state returns the container's state as LXC reports it. LXC's command
// socket is reachable only from the network namespace the container was
// started from; from another, a running container looks stopped. If LXC
// says stopped but the init that Start recorded still runs, state returns
// errcode.FailedPrecondition, so that the container is neither started
// twice nor deleted or changed under its running processes.
func (d *Driver) state(c *golxc.Container, name string) (driver.State, error) {
	st := stateOf(c)
	if st == driver.Stopped {
		if pid := d.hiddenInit(name); pid != 0 {
			return driver.Running, errcode.New(errcode.FailedPrecondition,
				"container %q runs (init PID %d) but was started from another network namespace, whose LXC command socket this one cannot reach; call from that namespace", name, pid)
		}
	}
	return st, nil
}

// writeFiles writes a container's LXC config and record into a staging
// directory, whose rename makes them visible together.
func (d *Driver) writeFiles(ctx context.Context, stage string, m *meta) error {
	conf, err := d.render(ctx, &m.Spec)
	if err != nil {
		return err
	}
	rec, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "config"), conf, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(stage, metaFile), append(rec, '\n'), 0o600)
}

// render renders spec's LXC config with its volumes' mounts on this
// server (the record keeps the volumes' names, so that another server
// finds its own mounts when the container moves there).
func (d *Driver) render(ctx context.Context, spec *driver.Spec) ([]byte, error) {
	mounts, err := driver.ResolveMounts(ctx, spec, d.volumes)
	if err != nil {
		return nil, err
	}
	resolved := *spec
	resolved.Mounts = mounts
	return renderConfig(&resolved, configEnv{LXCPath: d.lxcpath, Cgroups: d.cgroups})
}

// refreshConfig renders the LXC config of an existing container again and,
// if it changed, replaces it atomically.
func (d *Driver) refreshConfig(ctx context.Context, m *meta) error {
	conf, err := d.render(ctx, &m.Spec)
	if err != nil {
		return err
	}
	file := d.path(m.Spec.Name, "config")
	if old, err := os.ReadFile(file); err == nil && bytes.Equal(old, conf) {
		return nil
	}
	return renameio.WriteFile(file, conf, 0o600)
}

func stateOf(c *golxc.Container) driver.State {
	switch c.State() {
	case golxc.STOPPED, golxc.ABORTING:
		return driver.Stopped
	case golxc.FROZEN, golxc.FREEZING:
		return driver.Frozen
	}
	return driver.Running
}

func (d *Driver) info(c *golxc.Container, m *meta) *driver.Info {
	info := &driver.Info{Spec: m.Spec, State: stateOf(c), Created: m.Created}
	if info.State == driver.Stopped {
		if pid := d.hiddenInit(m.Spec.Name); pid != 0 {
			// Started from another network namespace: only its PID is known here.
			info.State, info.PID = driver.Running, pid
		}
		return info
	}
	info.PID = c.InitPid()
	if ips, err := c.IPAddresses(); err == nil {
		for _, s := range ips {
			if a, err := netip.ParseAddr(s); err == nil {
				info.Addresses = append(info.Addresses, a)
			}
		}
	}
	info.Usage = usage(c, d.cgroups)
	return info
}

func notState(name string, got driver.State, want string) error {
	return errcode.New(errcode.FailedPrecondition, "container %q is %s, not %s", name, got, want)
}

// checkBridges returns errcode.NotFound unless every network's bridge is a
// bridge in the calling thread's network namespace, the one LXC uses.
func checkBridges(spec *driver.Spec) error {
	for i, n := range spec.Networks {
		l, err := netlink.LinkByName(n.Bridge)
		var nf netlink.LinkNotFoundError
		switch {
		case errors.As(err, &nf):
			return errcode.New(errcode.NotFound, "network %d: bridge %q not found", i, n.Bridge)
		case err != nil:
			return fmt.Errorf("network %d: bridge %q: %w", i, n.Bridge, err)
		case l.Type() != "bridge":
			return errcode.New(errcode.FailedPrecondition, "network %d: %q is a %s link, not a bridge", i, n.Bridge, l.Type())
		}
	}
	return nil
}

// Create implements driver.Driver.
func (d *Driver) Create(ctx context.Context, spec *driver.Spec) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := checkBridges(spec); err != nil {
		return nil, err
	}
	if _, err := d.readMeta(spec.Name); err == nil {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", spec.Name)
	}
	return d.install(ctx, spec, func(rootfs string) error {
		_, err := d.images.Unpack(ctx, spec.Image, rootfs)
		return err
	})
}

// install makes a stopped container from spec: fill makes its root
// filesystem in a staging directory, then a rename moves the container into
// place, so it appears whole or not at all. install locks spec.Name.
func (d *Driver) install(ctx context.Context, spec *driver.Spec, fill func(rootfs string) error) (*driver.Info, error) {
	stage, err := os.MkdirTemp(d.lxcpath, stagingPrefix+"*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage) // a no-op once renamed into place
	if err := fill(filepath.Join(stage, "rootfs")); err != nil {
		return nil, err
	}
	return d.commit(ctx, stage, spec)
}

// commit finishes a staged container whose rootfs is in place: it writes
// /etc/hostname, the LXC config and the record, and renames stage to the
// container's directory.
func (d *Driver) commit(ctx context.Context, stage string, spec *driver.Spec) (*driver.Info, error) {
	unlock, err := d.locks.lock(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := d.readMeta(spec.Name); err == nil {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", spec.Name)
	}
	if err := setHostname(filepath.Join(stage, "rootfs"), spec.Name); err != nil {
		return nil, err
	}
	m := &meta{Spec: *spec, Created: time.Now().UTC().Truncate(time.Microsecond)}
	if err := d.writeFiles(ctx, stage, m); err != nil {
		return nil, err
	}
	if err := os.Rename(stage, d.path(spec.Name)); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return nil, errcode.New(errcode.AlreadyExists, "container %q exists", spec.Name)
		}
		return nil, err
	}
	d.log.Debug("created container", "name", spec.Name)
	return &driver.Info{Spec: m.Spec, State: driver.Stopped, Created: m.Created}, nil
}

// setHostname writes etc/hostname in rootfs, confined to it.
func setHostname(rootfs, name string) error {
	r, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.MkdirAll("etc", 0o755); err != nil {
		return err
	}
	if err := r.Remove("etc/hostname"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return r.WriteFile("etc/hostname", []byte(name+"\n"), 0o644)
}

// Delete implements driver.Driver.
func (d *Driver) Delete(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	_, _, st, unlock, err := d.openLocked(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if st != driver.Stopped {
		return notState(name, st, "stopped")
	}
	// Rename first, so a crash half way leaves a staging directory that
	// Open removes rather than half a container.
	trash, err := os.MkdirTemp(d.lxcpath, stagingPrefix+"*")
	if err != nil {
		return err
	}
	if err := os.Rename(d.path(name), filepath.Join(trash, name)); err != nil {
		os.Remove(trash)
		return err
	}
	d.log.Debug("deleted container", "name", name)
	return os.RemoveAll(trash)
}

// Start implements driver.Driver. The container starts through the
// lxc-start program rather than in this process: LXC moves the process
// that starts a container into the container's monitor cgroup, which a
// long-lived process must not join. Start returns once LXC reports the
// container running.
func (d *Driver) Start(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	c, m, st, unlock, err := d.openLocked(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if st != driver.Stopped {
		return notState(name, st, "stopped")
	}
	// The config follows this driver's version and the host's cgroup
	// layout, which may have changed since the container was created.
	if err := d.refreshConfig(ctx, m); err != nil {
		return err
	}
	logFile := d.path(name, "lxc.log")
	if err := os.Truncate(logFile, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	cmd := exec.Command(d.lxcStart, "-P", d.lxcpath, "-n", name)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return errcode.New(errcode.Internal, "start container %q: lxc-start: %v: %s%s", name, err, bytes.TrimSpace(out), logTail(logFile))
	}
	if !c.Wait(golxc.RUNNING, stateTimeout) {
		return errcode.New(errcode.Internal, "start container %q: not running after lxc-start (%s)%s", name, c.State(), logTail(logFile))
	}
	if err := d.attachNetworks(&m.Spec); err != nil {
		c.Stop()
		return fmt.Errorf("start container %q: %w", name, err)
	}
	pid := c.InitPid()
	if err := d.recordInit(name, pid); err != nil {
		c.Stop()
		return fmt.Errorf("start container %q: %w", name, err)
	}
	d.log.Debug("started container", "name", name, "pid", pid)
	return nil
}

// attachNetworks puts the host side of each veth of a started container
// on its bridge, in the calling thread's network namespace. LXC would do it
// when given lxc.net.N.link, but it looks bridges up under /sys/class/net,
// which shows the namespace of the process that mounted /sys: in a server's
// namespace entered with nsenter --net that is the root namespace.
func (d *Driver) attachNetworks(spec *driver.Spec) error {
	for i, n := range spec.Networks {
		br, err := netlink.LinkByName(n.Bridge)
		if err != nil {
			return errcode.New(errcode.NotFound, "network %d: bridge %q: %w", i, n.Bridge, err)
		}
		name := vethName(d.lxcpath, spec.Name, i)
		veth, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetMaster(veth, br)
		}
		if err == nil {
			err = netlink.LinkSetUp(veth)
		}
		if err != nil {
			return errcode.New(errcode.Internal, "network %d: attaching %s to bridge %s: %w", i, name, n.Bridge, err)
		}
	}
	return nil
}

// logTail returns the end of a container's LXC log, for error messages.
func logTail(file string) string {
	b, err := os.ReadFile(file)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return "; LXC log: " + string(bytes.TrimSpace(b))
}

// Stop implements driver.Driver: it sends the halt signal (SIGUSR2, on
// which busybox init powers off, or what LXC picks for systemd), waits up
// to timeout for init to exit, then kills the container.
func (d *Driver) Stop(ctx context.Context, name string, timeout time.Duration) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	c, _, st, unlock, err := d.openLocked(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	switch st {
	case driver.Stopped:
		return nil
	case driver.Frozen:
		if err := c.Unfreeze(); err != nil {
			return errcode.New(errcode.Internal, "stop container %q: thaw: %w", name, err)
		}
	}
	exited := false
	if timeout > 0 {
		// The pidfd names this init, so a recycled PID is never waited on.
		pidfd, err := c.InitPidFd()
		if err != nil {
			if stateOf(c) == driver.Stopped {
				return nil
			}
			return errcode.New(errcode.Internal, "stop container %q: %w", name, err)
		}
		defer pidfd.Close()
		halt := func() error {
			if err := c.Shutdown(0); err != nil && c.Running() {
				return errcode.New(errcode.Internal, "stop container %q: halt: %w", name, err)
			}
			return nil
		}
		if exited, err = waitExit(ctx, pidfd, timeout, halt); err != nil {
			return err
		}
	}
	if !exited {
		d.log.Info("killing container", "name", name, "timeout", timeout)
		if err := c.Stop(); err != nil && c.Running() {
			return errcode.New(errcode.Internal, "stop container %q: kill: %w", name, err)
		}
	}
	if !c.Wait(golxc.STOPPED, stateTimeout) {
		return errcode.New(errcode.Internal, "stop container %q: still %s", name, c.State())
	}
	os.Remove(d.path(name, initFile))
	d.log.Debug("stopped container", "name", name)
	return nil
}

// waitExit calls halt, then waits until the process of pidfd exits (true),
// timeout passes (false) or ctx is done. It calls halt again at growing
// intervals: a namespace's init ignores signals it has no handler for, so
// a halt signal that comes before init has installed its handler is lost.
func waitExit(ctx context.Context, pidfd *os.File, timeout time.Duration, halt func() error) (bool, error) {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return false, err
	}
	deadline := time.Now().Add(timeout)
	resend := 50 * time.Millisecond
	next := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		now := time.Now()
		if !now.Before(deadline) {
			return false, nil
		}
		if !now.Before(next) {
			if err := halt(); err != nil {
				return false, err
			}
			next, resend = now.Add(resend), min(2*resend, time.Second)
		}
		wait := min(deadline.Sub(now), next.Sub(now), 50*time.Millisecond)
		ms := int((wait + time.Millisecond - 1) / time.Millisecond)
		var n int
		var perr error
		if err := rc.Control(func(fd uintptr) {
			n, perr = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		}); err != nil {
			return false, err
		}
		if perr != nil && perr != unix.EINTR {
			return false, perr
		}
		if n > 0 {
			return true, nil
		}
	}
}

// Freeze implements driver.Driver.
func (d *Driver) Freeze(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	c, _, st, unlock, err := d.openLocked(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if st != driver.Running {
		return notState(name, st, "running")
	}
	if err := c.Freeze(); err != nil {
		return errcode.New(errcode.Internal, "freeze container %q: %w", name, err)
	}
	return nil
}

// Unfreeze implements driver.Driver.
func (d *Driver) Unfreeze(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	c, _, st, unlock, err := d.openLocked(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if st != driver.Frozen {
		return notState(name, st, "frozen")
	}
	if err := c.Unfreeze(); err != nil {
		return errcode.New(errcode.Internal, "unfreeze container %q: %w", name, err)
	}
	return nil
}

// Get implements driver.Driver.
func (d *Driver) Get(ctx context.Context, name string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	c, m, err := d.open(name)
	if err != nil {
		return nil, err
	}
	defer c.Release()
	return d.info(c, m), nil
}

// List implements driver.Driver.
func (d *Driver) List(ctx context.Context) ([]*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(d.lxcpath)
	if err != nil {
		return nil, err
	}
	infos := []*driver.Info{}
	for _, e := range entries { // sorted by name
		if !e.IsDir() || names.Label(e.Name()) != nil {
			continue
		}
		info, err := d.Get(ctx, e.Name())
		if errors.Is(err, errcode.NotFound) {
			continue // deleted meanwhile, or not a container
		}
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// HostInfo implements driver.Host.
func (d *Driver) HostInfo(ctx context.Context) (*driver.HostInfo, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, err
	}
	total, avail, err := memInfo()
	if err != nil {
		return nil, err
	}
	infos, err := d.List(ctx)
	if err != nil {
		return nil, err
	}
	h := &driver.HostInfo{Hostname: host, CPUs: runtime.NumCPU(), MemoryBytes: total, MemoryFree: avail,
		Containers: len(infos), Driver: "lxc"}
	for _, i := range infos {
		if i.State != driver.Stopped {
			h.Running++
		}
	}
	return h, nil
}

// memInfo reads MemTotal and MemAvailable from /proc/meminfo, in bytes.
func memInfo() (total, avail int64, err error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = kb << 10
		case "MemAvailable:":
			avail = kb << 10
		}
	}
	if total == 0 {
		return 0, 0, errcode.New(errcode.Internal, "/proc/meminfo has no MemTotal")
	}
	return total, avail, nil
}

// StartAutostart implements driver.Autostarter.
func (d *Driver) StartAutostart(ctx context.Context) ([]string, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	infos, err := d.List(ctx)
	if err != nil {
		return nil, err
	}
	started := []string{}
	var errs []error
	for _, i := range infos {
		if !i.Spec.Autostart || i.State != driver.Stopped {
			continue
		}
		if err := d.Start(ctx, i.Spec.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		started = append(started, i.Spec.Name)
	}
	return started, errors.Join(errs...)
}

// PutImage implements driver.Images.
func (d *Driver) PutImage(ctx context.Context, m *image.Manifest, blob io.Reader) (*image.Manifest, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	return d.images.Put(ctx, *m, blob)
}

// Image implements driver.Images.
func (d *Driver) Image(ctx context.Context, ref string) (*image.Manifest, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	return d.images.Get(ctx, ref)
}

// ListImages implements driver.Images.
func (d *Driver) ListImages(ctx context.Context) ([]*image.Manifest, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	return d.images.List(ctx)
}

// OpenImage implements driver.Images.
func (d *Driver) OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error) {
	if err := d.checkOpen(); err != nil {
		return nil, nil, err
	}
	return d.images.Open(ctx, ref)
}

// DeleteImage implements driver.Images.
func (d *Driver) DeleteImage(ctx context.Context, ref string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	return d.images.Delete(ctx, ref)
}

// nameLocks serialises the operations that change one container.
type nameLocks struct {
	mu sync.Mutex
	m  map[string]*nameLock
}

type nameLock struct {
	ch   chan struct{} // holds a token while locked
	refs int           // holders and waiters
}

// lock waits until it holds every name, taken in sorted order so that two
// callers never deadlock, or until ctx is done.
func (l *nameLocks) lock(ctx context.Context, names ...string) (unlock func(), err error) {
	names = slices.Clone(names)
	slices.Sort(names)
	names = slices.Compact(names)
	var held []string
	release := func() {
		for _, n := range held {
			l.release(n)
		}
	}
	for _, n := range names {
		l.mu.Lock()
		if l.m == nil {
			l.m = make(map[string]*nameLock)
		}
		e := l.m[n]
		if e == nil {
			e = &nameLock{ch: make(chan struct{}, 1)}
			l.m[n] = e
		}
		e.refs++
		l.mu.Unlock()
		select {
		case e.ch <- struct{}{}:
			held = append(held, n)
		case <-ctx.Done():
			l.mu.Lock()
			if e.refs--; e.refs == 0 {
				delete(l.m, n)
			}
			l.mu.Unlock()
			release()
			return nil, ctx.Err()
		}
	}
	return release, nil
}

func (l *nameLocks) release(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[name]
	<-e.ch
	if e.refs--; e.refs == 0 {
		delete(l.m, name)
	}
}
