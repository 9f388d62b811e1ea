// Package nfs is a storage driver (storage/driver) that serves a pool's
// volumes over NFSv4 with nfs-ganesha.
//
// An NFS pool has layout Single and one member, the NFS server; a volume
// is a directory it exports. On the member, Apply runs ganesha.nfsd (FSAL
// VFS, NFSv4 and NFSv3 on TCP, graceless, so a restart serves at once)
// and rpcbind in the server's network namespace (Options.NetNS), both in a
// private mount namespace with a tmpfs on /run, where rpcbind keeps its
// socket and lock: so several servers, each in its own network namespace,
// run side by side on one machine. Everything else is in the instance
// directory: ganesha.conf, the pid file, the log, the client records
// (recovery/) and the volumes (exports/<volume>). Mounts use NFSv4, which
// needs no rpcbind (ganesha 4.3 serves NFSv4 without one). NFSv3 is served
// for userspace clients: libnfs before 5.0 (Debian 12's libnfs-utils
// 4.0.0) fails NFSv4 writes of more than 4 KiB (libnfs pull request 319),
// and writes over NFSv3 instead, finding ganesha's MOUNT service through
// rpcbind. rpcbind is one per network namespace (port 111): a second
// pool served from the same namespace (another Port) serves NFSv4 clients
// only.
//
// A configuration goes through the shared validation
// (driver.Config.Validate), a pure Render, a check, an atomic swap
// (renameio) and a start or a reload. ganesha has no check mode (no -t),
// so the check is the nearest real one, a parse-only start: ganesha runs
// on the candidate file in a network, mount and pid namespace of its own
// (where it cannot serve anyone and dies with the check), until it logs
// that it initialized or exits, and the check fails if it logged a
// configuration error (a syntax error, an unknown key, an export it could
// not create). This matters: a reload of a file with a syntax error makes
// ganesha 4.3 drop every export. The reload is SIGHUP, which in ganesha 4
// re-reads the EXPORT blocks, adding, updating and removing exports by
// Export_Id without touching the others; the driver waits for "Reread
// exports complete" in the log and treats configuration errors logged with
// it as a failed reload, after which the previous file goes back and is
// reloaded. ganesha's DBus interface (exportmgr AddExport, RemoveExport,
// ShowClients) is not used: it needs a system bus in each server's mount
// namespace, and SIGHUP does the same for a whole file. Each volume keeps
// its Export_Id for its life (recorded in record.json), since clients'
// file handles carry it.
//
// Export rules become CLIENT blocks in the rules' order (ganesha uses the
// first that matches, as driver.Allows does) with Access_Type RW or RO;
// the export itself allows nothing, and no rules means one CLIENT block
// giving every client RW. Volumes have no quota (FSAL VFS has none:
// Capabilities().Quota is false). Status reports the member up when
// ganesha answers an NFSv4 NULL call on the member's address, and each
// volume's Source as nfs://addr:port/pool/volume.
//
// Mounts use the kernel NFSv4 client (mount -t nfs4 addr:/pool/volume,
// ro or rw, port=Port, made in the server's network namespace and visible
// in the caller's mount namespace), so Capabilities().Mount says whether
// /proc/filesystems lists nfs4; without it Mounts are
// errcode.Unimplemented, and a volume is read and written by a userspace
// client (libnfs: nfs-cp, nfs-cat) at its Source.
//
// RemoveVolume refuses a volume whose directory holds files, or that this
// server mounts, unless Force. Without DBus the coordinator does not know
// which other servers mount a volume, so it refuses only on its own mounts
// and on the files.
//
// Requirements: root, the Debian packages nfs-ganesha and
// nfs-ganesha-vfs (ganesha.nfsd 4.3), rpcbind, util-linux (nsenter,
// unshare, mount) and a POSIX sh; libnfs-utils for the tests.
package nfs

import (
	"bytes"
	"context"
	"encoding/json"
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
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"github.com/vishvananda/netns"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/confpath"
	"github.com/musterkit/muster/internal/daemon"
	"github.com/musterkit/muster/internal/orphan"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/namespace"
	"github.com/musterkit/muster/storage/driver"
)

var _ driver.Driver = (*Driver)(nil)

// Default programs, where Debian installs them.
const (
	DefaultGanesha = "/usr/bin/ganesha.nfsd"
	DefaultRPCBind = "/usr/sbin/rpcbind"
)

// Options configure a Driver. The zero value is usable.
type Options struct {
	// NetNS is the path of the network namespace file (/run/netns/NAME)
	// that ganesha, rpcbind and mounts run in; empty means the caller's.
	NetNS string
	// Port is the NFS port ganesha listens on and mounts use; 0 means
	// DefaultPort. Two pools served from one network namespace need two
	// ports.
	Port uint16
	// Ganesha and RPCBind are the programs; empty means the defaults.
	Ganesha, RPCBind string
	// Logger receives a record per start, reload and stop; nil discards.
	Logger *slog.Logger
	// StartTimeout bounds a start, a reload and a check; 0 means 15s.
	StartTimeout time.Duration
}

// Driver is one server's part in one NFS pool. It is safe for concurrent
// use.
type Driver struct {
	dir, bin, rpcbind, netnsPath string
	port                         uint16
	log                          *slog.Logger
	ns                           netns.NsHandle // -1: the caller's
	timeout                      time.Duration
	kernelClient                 bool

	mu     sync.Mutex
	inst   *daemon.Instance
	reaped chan struct{}  // closed once the group of the ganesha started last is gone
	cfg    *driver.Config // in force; nil before the first Apply
	rec    record         // as on disk
	start  int64          // the log's size when ganesha last started
	closed bool
}

// record is what survives a restart (RecordFile): the config last
// applied and the volumes' export ids.
type record struct {
	Config *driver.Config    `json:"config,omitempty"`
	IDs    map[string]uint16 `json:"ids,omitempty"`
}

// Open returns the driver of a pool's part kept in dir (created if
// missing, mode 0700; an absolute path of at most 200 bytes of letters,
// digits and /._-+, since its paths reach ganesha.conf and command lines).
// It ends a ganesha and rpcbind an earlier run left in dir. Nothing runs
// until the first Apply.
func Open(ctx context.Context, dir string, opts *Options) (*Driver, error) {
	if opts == nil {
		opts = &Options{}
	}
	d := &Driver{dir: dir, bin: cmpOr(opts.Ganesha, DefaultGanesha), rpcbind: cmpOr(opts.RPCBind, DefaultRPCBind),
		netnsPath: opts.NetNS, port: opts.Port, log: opts.Logger, ns: -1, timeout: opts.StartTimeout}
	if err := confpath.Plain("instance directory", dir); err != nil {
		return nil, err
	}
	for what, p := range map[string]string{"ganesha program": d.bin, "rpcbind program": d.rpcbind} {
		if err := confpath.Plain(what, p); err != nil {
			return nil, err
		}
		if _, err := os.Stat(p); err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("%s (Debian packages nfs-ganesha, rpcbind): %w", what, err))
		}
	}
	for _, p := range []string{"nsenter", "unshare", "mount", "sh"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w (Debian package util-linux or dash)", err))
		}
	}
	if d.port == 0 {
		d.port = DefaultPort
	}
	if d.timeout == 0 {
		d.timeout = daemon.DefaultTimeout
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.netnsPath != "" {
		if err := confpath.Plain("network namespace", d.netnsPath); err != nil {
			return nil, err
		}
		ns, err := netns.GetFromPath(d.netnsPath)
		if err != nil {
			return nil, errcode.Syscall(err, "nfs: network namespace %s", d.netnsPath)
		}
		d.ns = ns
	}
	fsys, _ := os.ReadFile("/proc/filesystems")
	d.kernelClient = slices.ContainsFunc(strings.Split(string(fsys), "\n"), func(l string) bool {
		f := strings.Fields(l)
		return len(f) > 0 && f[len(f)-1] == "nfs4"
	})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		d.closeNS()
		return nil, errcode.Syscall(err, "nfs: instance directory %s", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if err == nil {
		err = json.Unmarshal(b, &d.rec)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.closeNS()
		return nil, errcode.Wrap(errcode.Internal, fmt.Errorf("nfs: reading %s: %w", RecordFile, err))
	}
	// rpcbind is in ganesha's process group (see command).
	orphan.Reap(filepath.Join(dir, PidFile), "rpcbind", d.log)
	d.inst = d.newInstance()
	return d, nil
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func (d *Driver) closeNS() {
	if d.ns.IsOpen() {
		d.ns.Close()
	}
}

// newInstance returns the managed ganesha of dir (daemon.New ends one an
// earlier run left).
func (d *Driver) newInstance() *daemon.Instance {
	return daemon.New(daemon.Spec{
		Name: "ganesha.nfsd", Dir: d.dir, ConfigFile: ConfigFile, PidFile: PidFile, LogFile: LogFile,
		Timeout: d.timeout, Logger: d.log,
		Check:   d.checkCommand,
		Command: d.command,
		Started: d.started,
		Ready: func(*daemon.Process) bool {
			return bytes.Contains(readFrom(filepath.Join(d.dir, LogFile), d.start), []byte(initialized))
		},
		Reload: d.reload,
	})
}

const (
	initialized = "NFS SERVER INITIALIZED"
	reread      = "Reread exports complete"
)

// configErrors matches the lines of ganesha's log that report an error in
// its configuration: a syntax error, the errors of a block (an unknown
// key, a bad value, an export it could not create), an export whose root
// it cannot look up.
const configErrors = `ganesha_yyerror|config_errs_to_log|:(CONFIG|EXPORT) :(CRIT|MAJ|FATAL)`

// startRPCBind is the start of both scripts: a tmpfs on /run, and rpcbind
// ($1) started in the background, waited for (up to 4 s) until its socket
// exists. ganesha registers its NFSv3 and MOUNT services with it, and exits
// if it cannot.
const startRPCBind = `mount -t tmpfs muster-nfs /run || exit 1
"$1" -f -w &
i=0
while [ ! -S /run/rpcbind.sock ] && kill -0 $! 2>/dev/null && [ $i -lt 200 ]; do
	i=$((i+1))
	sleep 0.02
done
`

// checkScript is the parse-only start (Spec.Check), run by sh in fresh
// network, mount and pid namespaces: with rpcbind ($1) up, ganesha ($2)
// runs on the candidate ($3), logging to $4, until it logs that it
// initialized or exits; the check then fails, printing the lines, if the
// log reports a configuration error. The pid namespace ends ganesha and
// rpcbind with the check.
const checkScript = startRPCBind + `rm -f "$4"
"$2" -F -f "$3" -L "$4" -p "$5" &
until grep -q '` + initialized + `' "$4" 2>/dev/null; do
	kill -0 $! 2>/dev/null || break
	sleep 0.02
done
if grep -E '` + configErrors + `' "$4"; then exit 1; fi
grep -q '` + initialized + `' "$4" || { tail -n 20 "$4"; exit 1; }`

// runScript starts rpcbind ($1), then execs ganesha (the rest), in a
// mount namespace of their own.
const runScript = startRPCBind + `shift
exec "$@"`

// inNetNS prefixes args with what runs them in the server's network
// namespace.
func (d *Driver) inNetNS(args ...string) []string {
	if d.netnsPath == "" {
		return args
	}
	return append([]string{"nsenter", "--net=" + d.netnsPath}, args...)
}

func (d *Driver) checkCommand(path string) *exec.Cmd {
	check := filepath.Join(d.dir, CheckDir)
	os.MkdirAll(check, 0o700)
	return exec.Command("unshare", "--fork", "--pid", "--kill-child", "--net", "--mount", "--propagation", "private",
		"sh", "-c", checkScript, "sh", d.rpcbind, d.bin, path, filepath.Join(check, LogFile), filepath.Join(check, PidFile))
}

// command prepares a start of ganesha (daemon.Spec.Command): nsenter,
// unshare and sh exec, so the pid is ganesha's, and rpcbind is its child in
// its process group.
func (d *Driver) command() (*exec.Cmd, error) {
	if fi, err := os.Stat(filepath.Join(d.dir, LogFile)); err == nil {
		d.start = fi.Size()
	} else {
		d.start = 0
	}
	args := d.inNetNS("unshare", "--mount", "--propagation", "private", "sh", "-c", runScript, "sh", d.rpcbind,
		d.bin, "-F", "-f", filepath.Join(d.dir, ConfigFile), "-L", filepath.Join(d.dir, LogFile), "-p", filepath.Join(d.dir, PidFile))
	return exec.Command(args[0], args[1:]...), nil
}

// started watches a ganesha that just started: once it exits, asked to or
// not, what is left of its process group (rpcbind) is killed, so that the
// next start finds port 111 free.
func (d *Driver) started(p *daemon.Process) {
	reaped := make(chan struct{})
	d.reaped = reaped
	go func() {
		defer close(reaped)
		<-p.Done()
		// The group is gone once its last process (rpcbind) was reaped,
		// and with it port 111.
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && syscall.Kill(-p.Pid(), 0) == nil; {
			time.Sleep(5 * time.Millisecond)
		}
		if !p.Stopped() {
			d.log.Warn("ganesha exited", "dir", d.dir, "err", p.Err())
		}
	}()
}

// stop ends ganesha and rpcbind and waits until they are gone. Called
// with d.mu held.
func (d *Driver) stop() {
	d.inst.Stop()
	if d.reaped != nil {
		<-d.reaped
	}
}

// reload has ganesha re-read its exports (SIGHUP) and waits until it logs
// that it did, then 50 ms more for the errors it logs after; an error
// there fails the reload (ganesha may have dropped exports: the previous
// file is then reloaded).
func (d *Driver) reload(ctx context.Context, p *daemon.Process) error {
	log := filepath.Join(d.dir, LogFile)
	var off int64
	if fi, err := os.Stat(log); err == nil {
		off = fi.Size()
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		return errcode.Wrap(errcode.Unavailable, err)
	}
	deadline := time.Now().Add(d.timeout)
	var done time.Time
	for {
		msg := readFrom(log, off)
		if done.IsZero() && bytes.Contains(msg, []byte(reread)) {
			done = time.Now()
		}
		if !done.IsZero() && time.Since(done) >= 50*time.Millisecond {
			if bad := errorLines(msg); bad != "" {
				return errcode.New(errcode.Internal, "ganesha.nfsd failed to load its exports: %s", bad)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return errcode.New(errcode.Unavailable, "ganesha.nfsd did not re-read its exports within %v: %s", d.timeout, d.inst.Tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return errcode.New(errcode.Unavailable, "ganesha.nfsd exited during a reload: %s", d.inst.Tail())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

var configErrorLine = regexp.MustCompile(configErrors)

// errorLines returns the lines of a log excerpt that report a
// configuration error.
func errorLines(msg []byte) string {
	var out []string
	for l := range strings.Lines(string(msg)) {
		if configErrorLine.MatchString(l) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "; ")
}

// readFrom returns what file holds after offset (at most 64 KiB).
func readFrom(file string, offset int64) []byte {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(io.NewSectionReader(f, offset, 1<<62), 64<<10))
	return b
}

// Check runs the parse-only start (see the package doc) on conf, a
// ganesha.conf, without touching the running ganesha: nil if ganesha
// accepts it, else errcode.InvalidArgument quoting what it logged.
func (d *Driver) Check(ctx context.Context, conf []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return closedErr()
	}
	return d.inst.Check(ctx, conf)
}

// Dir returns the instance directory.
func (d *Driver) Dir() string { return d.dir }

// Port returns the NFS port.
func (d *Driver) Port() uint16 { return d.port }

// Reloads counts ganesha's starts and reloads (for tests: an equal Apply
// adds none).
func (d *Driver) Reloads() int { return d.inst.Reloads() }

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{Layouts: []driver.LayoutKind{driver.Single}, MaxMembers: 1, Exports: true,
		Mount: d.kernelClient, Client: driver.Kernel}
}

func closedErr() error { return errcode.New(errcode.FailedPrecondition, "nfs: the driver is closed") }

// coordinates reports whether cfg makes this server the NFS server.
func coordinates(cfg *driver.Config) bool { return cfg.Pool.Coordinator().Server == cfg.Self }

// Apply implements driver.Driver.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return closedErr()
	}
	old := d.cfg
	if old == nil {
		old = d.rec.Config
	}
	// A change Apply may not make is refused as such before asking
	// whether the driver could build the new config at all.
	plan, err := driver.PlanApply(old, cfg)
	if err != nil {
		return err
	}
	caps := d.Capabilities()
	if len(cfg.Mounts) > 0 && !caps.Mount {
		return errcode.New(errcode.Unimplemented, "pool %q: this kernel has no NFSv4 client (/proc/filesystems lists no nfs4), so this server cannot mount volumes; read and write them with a userspace NFS client (libnfs) at the Source Status gives", cfg.Pool.Name)
	}
	if err := caps.Check(cfg); err != nil {
		return err
	}
	serves := coordinates(cfg)
	if d.cfg != nil && plan.Empty() && reflect.DeepEqual(d.cfg, cfg) && (!serves || d.inst.Running()) {
		return nil
	}
	next := record{Config: cfg.Clone(), IDs: map[string]uint16{}}
	var created []string
	undo := func() {
		for _, p := range created {
			os.Remove(p) // only if still empty
		}
	}
	if serves {
		for _, v := range cfg.Volumes {
			id, err := d.exportID(next.IDs, v.Name)
			if err != nil {
				return err
			}
			next.IDs[v.Name] = id
			p := filepath.Join(d.dir, ExportsDir, v.Name)
			if err := os.MkdirAll(filepath.Join(d.dir, ExportsDir), 0o700); err != nil {
				return errcode.Syscall(err, "nfs: %s", ExportsDir)
			}
			if err := os.Mkdir(p, 0o755); err == nil {
				created = append(created, p)
			} else if !errors.Is(err, fs.ErrExist) {
				undo()
				return errcode.Syscall(err, "nfs: volume %q", v.Name)
			}
		}
		if err := os.MkdirAll(filepath.Join(d.dir, RecoveryDir), 0o700); err != nil {
			undo()
			return errcode.Syscall(err, "nfs: %s", RecoveryDir)
		}
		if err := d.serve(ctx, cfg, next.IDs); err != nil {
			undo()
			return err
		}
	}
	mounted, err := d.mountAll(ctx, cfg, plan)
	if err == nil {
		err = d.save(next)
	}
	if err != nil {
		d.unmountAll(ctx, mounted, true)
		switch {
		case serves && d.cfg != nil && coordinates(d.cfg):
			d.serve(context.WithoutCancel(ctx), d.cfg, d.rec.IDs)
		case serves:
			d.stop()
		}
		undo()
		return err
	}
	d.cfg = next.Config
	return nil
}

// exportID returns volume's export id: the recorded one, else the least
// id neither recorded nor taken in ids.
func (d *Driver) exportID(ids map[string]uint16, volume string) (uint16, error) {
	if id, ok := d.rec.IDs[volume]; ok {
		return id, nil
	}
	taken := map[uint16]bool{}
	for _, m := range []map[string]uint16{d.rec.IDs, ids} {
		for _, id := range m {
			taken[id] = true
		}
	}
	for id := uint16(1); id != 0; id++ {
		if !taken[id] {
			return id, nil
		}
	}
	return 0, errcode.New(errcode.Internal, "nfs: no export id left")
}

// serve renders cfg's exports and makes ganesha serve them (check, swap,
// reload or start; the previous file back on failure).
func (d *Driver) serve(ctx context.Context, cfg *driver.Config, ids map[string]uint16) error {
	in := Input{Pool: cfg.Pool.Name, Dir: d.dir, Port: d.port}
	for _, v := range cfg.Volumes {
		in.Exports = append(in.Exports, Export{Volume: v.Name, ID: ids[v.Name], Rules: v.Exports})
	}
	conf, err := Render(in)
	if err != nil {
		return err
	}
	return d.inst.Apply(ctx, conf, nil)
}

// save writes rec to RecordFile and makes it the record.
func (d *Driver) save(rec record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(filepath.Join(d.dir, RecordFile), b, 0o600); err != nil {
		return errcode.Syscall(err, "nfs: %s", RecordFile)
	}
	d.rec = rec
	return nil
}

// mountPath is where this server mounts volume.
func (d *Driver) mountPath(volume string) string { return filepath.Join(d.dir, MountsDir, volume) }

// mountAll ends the mounts plan unmounts and makes those it mounts (the
// kernel client), returning those it made.
func (d *Driver) mountAll(ctx context.Context, cfg *driver.Config, plan *driver.Plan) ([]driver.Mount, error) {
	if err := d.unmountAll(ctx, plan.Unmount, false); err != nil {
		return nil, err
	}
	var made []driver.Mount
	co := cfg.Pool.Coordinator()
	for _, m := range plan.Mount {
		p := d.mountPath(m.Volume)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return made, errcode.Syscall(err, "nfs: mount point of %q", m.Volume)
		}
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		host := co.Addr.String()
		if co.Addr.Is6() {
			host = "[" + host + "]"
		}
		args := d.inNetNS("mount", "-t", "nfs4", "-o", fmt.Sprintf("%s,port=%d", mode, d.port),
			host+":/"+cfg.Pool.Name+"/"+m.Volume, p)
		if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			return made, errcode.New(errcode.Unavailable, "nfs: mounting %q: %v: %s", m.Volume, err, bytes.TrimSpace(out))
		}
		made = append(made, m)
	}
	return made, nil
}

// unmountAll ends mounts; a busy one is errcode.FailedPrecondition unless
// force, which detaches it lazily.
func (d *Driver) unmountAll(ctx context.Context, mounts []driver.Mount, force bool) error {
	for _, m := range mounts {
		args := []string{"umount", d.mountPath(m.Volume)}
		if force {
			args = []string{"umount", "-l", d.mountPath(m.Volume)}
		}
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		switch {
		case err == nil, bytes.Contains(out, []byte("not mounted")):
		case bytes.Contains(out, []byte("busy")):
			return errcode.New(errcode.FailedPrecondition, "nfs: volume %q is busy on this server: %s", m.Volume, bytes.TrimSpace(out))
		default:
			return errcode.New(errcode.Unavailable, "nfs: unmounting %q: %v: %s", m.Volume, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, closedErr()
	}
	return d.cfg.Clone(), nil
}

// dial connects to addr from the server's network namespace.
func (d *Driver) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	var dialer net.Dialer
	if !d.ns.IsOpen() {
		return dialer.DialContext(ctx, "tcp", addr)
	}
	err := namespace.Run(d.ns, func() error {
		var err error
		c, err = dialer.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Status implements driver.Driver.
func (d *Driver) Status(ctx context.Context) (*driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, closedErr()
	}
	cfg := d.cfg
	if cfg == nil {
		return nil, errcode.New(errcode.FailedPrecondition, "nfs: no pool applied yet")
	}
	co := cfg.Pool.Coordinator()
	up := ping(ctx, d.dial, co.Addr, d.port) == nil
	ms := driver.MemberStatus{Server: co.Server, Up: up}
	st := &driver.Status{Pool: cfg.Pool.Name, Members: []driver.MemberStatus{ms}, Volumes: []driver.VolumeStatus{}, Mounts: []driver.MountStatus{}}
	serves := coordinates(cfg)
	if serves {
		var sfs syscall.Statfs_t
		if syscall.Statfs(filepath.Join(d.dir, ExportsDir), &sfs) == nil {
			st.Members[0].CapacityBytes = int64(sfs.Blocks) * sfs.Bsize
			st.Members[0].UsedBytes = int64(sfs.Blocks-sfs.Bfree) * sfs.Bsize
		}
	}
	for _, v := range cfg.Volumes {
		vs := driver.VolumeStatus{Volume: v, Health: driver.Unknown}
		if serves {
			vs.Health = driver.Down
			if _, err := os.Stat(filepath.Join(d.dir, ExportsDir, v.Name)); err == nil && up {
				vs.Health = driver.Healthy
			}
			vs.Source = Source(co.Addr, d.port, cfg.Pool.Name, v.Name)
		}
		st.Volumes = append(st.Volumes, vs)
	}
	for _, m := range cfg.Mounts {
		p := d.mountPath(m.Volume)
		st.Mounts = append(st.Mounts, driver.MountStatus{Mount: m, Path: p, Healthy: answers(p)})
	}
	return st, nil
}

// Source is volume's address in libnfs's URL notation, which nfs-ls,
// nfs-cp and nfs-cat take (a file of the volume is Source with "/name"
// before the "?"): nfs://addr/pool/volume?version=4&nfsport=port. With
// version=3 instead, libnfs 4.0 writes too (see the package doc).
func Source(addr netip.Addr, port uint16, pool, volume string) string {
	host := addr.String()
	if addr.Is6() {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("nfs://%s/%s/%s?version=4&nfsport=%d", host, pool, volume, port)
}

// answers reports whether the file system at path answers a statfs
// within two seconds (a hung NFS mount does not).
func answers(path string) bool {
	ok := make(chan bool, 1)
	go func() {
		var sfs syscall.Statfs_t
		ok <- syscall.Statfs(path, &sfs) == nil && sfs.Type == 0x6969 // NFS_SUPER_MAGIC
	}()
	select {
	case v := <-ok:
		return v
	case <-time.After(2 * time.Second):
		return false
	}
}

// RemoveVolume implements driver.Driver.
func (d *Driver) RemoveVolume(ctx context.Context, name string, opts *driver.RemoveOptions) error {
	if err := names.Label(name); err != nil {
		return errcode.New(errcode.InvalidArgument, "volume name: %v", err)
	}
	force := opts != nil && opts.Force
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return closedErr()
	}
	cfg := d.cfg
	if cfg == nil {
		return errcode.New(errcode.FailedPrecondition, "nfs: no pool applied yet")
	}
	if !coordinates(cfg) {
		return errcode.New(errcode.FailedPrecondition, "nfs: volumes of pool %q are removed on its NFS server %s, not on %s", cfg.Pool.Name, cfg.Pool.Coordinator().Server, cfg.Self)
	}
	if _, ok := cfg.Volume(name); !ok {
		return errcode.New(errcode.NotFound, "nfs: pool %q has no volume %q", cfg.Pool.Name, name)
	}
	path := filepath.Join(d.dir, ExportsDir, name)
	if !force {
		if slices.ContainsFunc(cfg.Mounts, func(m driver.Mount) bool { return m.Volume == name }) {
			return errcode.New(errcode.FailedPrecondition, "nfs: volume %q is mounted on this server; unmount it or force", name)
		}
		entries, err := os.ReadDir(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return errcode.Syscall(err, "nfs: volume %q", name)
		}
		if len(entries) > 0 {
			return errcode.New(errcode.FailedPrecondition, "nfs: volume %q holds files (%s, ...); remove them or force", name, entries[0].Name())
		}
	}
	next := record{Config: cfg.Clone(), IDs: map[string]uint16{}}
	next.Config.Volumes = slices.DeleteFunc(next.Config.Volumes, func(v driver.Volume) bool { return v.Name == name })
	var unmount []driver.Mount
	next.Config.Mounts = slices.DeleteFunc(next.Config.Mounts, func(m driver.Mount) bool {
		if m.Volume == name {
			unmount = append(unmount, m)
		}
		return m.Volume == name
	})
	for v, id := range d.rec.IDs {
		if v != name {
			next.IDs[v] = id
		}
	}
	if err := d.unmountAll(ctx, unmount, true); err != nil {
		return err
	}
	// Unexport first: data goes only once no client can reach it.
	if err := d.serve(ctx, next.Config, next.IDs); err != nil {
		return err
	}
	if err := d.save(next); err != nil {
		d.serve(context.WithoutCancel(ctx), cfg, d.rec.IDs)
		return err
	}
	d.cfg = next.Config
	if err := os.RemoveAll(path); err != nil {
		return errcode.Syscall(err, "nfs: removing the data of volume %q", name)
	}
	return nil
}

// Leave implements driver.Driver.
func (d *Driver) Leave(ctx context.Context, opts *driver.RemoveOptions) error {
	force := opts != nil && opts.Force
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return closedErr()
	}
	cfg := d.cfg
	if cfg == nil {
		cfg = d.rec.Config
	}
	if cfg == nil {
		return nil
	}
	if coordinates(cfg) && len(cfg.Volumes) > 0 && !force {
		return errcode.New(errcode.FailedPrecondition, "nfs: pool %q still has %d volumes; remove them or force", cfg.Pool.Name, len(cfg.Volumes))
	}
	if err := d.unmountAll(ctx, cfg.Mounts, force); err != nil {
		return err
	}
	d.stop()
	var errs []error
	for _, f := range []string{ConfigFile, RecordFile, PidFile} {
		if err := os.Remove(filepath.Join(d.dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, sub := range []string{MountsDir, RecoveryDir, CheckDir} {
		errs = append(errs, os.RemoveAll(filepath.Join(d.dir, sub)))
	}
	if force {
		errs = append(errs, os.RemoveAll(filepath.Join(d.dir, ExportsDir)))
	}
	d.cfg, d.rec = nil, record{}
	d.inst = d.newInstance()
	if err := errors.Join(errs...); err != nil {
		return errcode.Wrap(errcode.Internal, fmt.Errorf("nfs: leaving pool %q: %w", cfg.Pool.Name, err))
	}
	return nil
}

// Close implements driver.Driver: ganesha and rpcbind stop; volumes,
// mounts, ganesha.conf and the record stay.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.stop()
	d.closeNS()
	return nil
}
