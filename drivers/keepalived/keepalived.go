// Package keepalived is a floating-IP driver (ha/driver) that runs
// keepalived's VRRP speaker.
//
// Each Driver manages one keepalived process for one group on one server,
// with everything it owns in its own directory: the configuration, the pid
// files (-p, -r, -c), the notify FIFO and the log. Several instances run
// side by side on one machine (each in its own network namespace, through
// Options.Command). keepalived runs in the foreground as a managed child
// (-n -l -D -G -P), its output going to keepalived.log in the directory.
//
// A configuration goes through the shared validation
// (driver.Config.Validate), a check of the floating addresses against the
// interface's networks (netlink, in the server's namespace through
// Options.Handle), a pure Render, keepalived's own check (keepalived -t on
// a candidate file), an atomic swap of the file (renameio), and a start or
// a reload (SIGHUP). A configuration that fails a check never replaces the
// running one.
//
// The rendered instance speaks VRRPv3 by unicast to the peers (advert_int
// in centiseconds, so 100 ms works), starts as BACKUP, and tracks
// Track.Process with a vrrp_script running "busybox pidof NAME" every
// second (or keepalived's vrrp_track_process with
// Options.TrackProcessEvents, in the initial network namespace only) and
// Track.TCPPort with a vrrp_script running
// "busybox nc -w 1 127.0.0.1 PORT -e /bin/true" every second. keepalived
// runs them without a shell; BusyBox comes from the Debian package busybox
// or busybox-static. A failed track puts the instance in FAULT, which
// gives the addresses up.
//
// The driver learns state changes from keepalived's notify FIFO (global
// notify_fifo, lines `INSTANCE "name" MASTER 100`), so no notify script
// runs. It reports a SplitBrain event when keepalived, master, logs an
// advert received from another master. When the keepalived process dies on
// its own, the driver kills what is left of its process group and removes
// the floating addresses it left on the interface (orphans), so a dead
// speaker never keeps answering for the group; Apply and Close remove such
// orphans too (for example after the program driving keepalived crashed).
//
// Requirements: the Debian packages keepalived (2.2, /usr/sbin/keepalived)
// and busybox-static or busybox (/bin/busybox, for Track), and root
// (CAP_NET_ADMIN and CAP_NET_RAW in the server's network namespace: VRRP is
// a raw IP protocol and the addresses are managed by netlink). The driver
// passes the conformance suite in ha/drivertest; its tests run as root in
// testhost namespaces (MUSTER_ROOT_TESTS=1), the split-brain test
// also needs nftables, the HA-pair test haproxy.
package keepalived

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/fanout"
	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/internal/confpath"
	"github.com/musterkit/muster/internal/daemon"
)

var _ driver.Driver = (*Driver)(nil)

// DefaultBinary is where Debian installs keepalived.
const DefaultBinary = "/usr/sbin/keepalived"

// DefaultBusyBox is where Debian installs BusyBox (busybox, busybox-static).
const DefaultBusyBox = "/bin/busybox"

// Options configure a Driver. The zero value is usable.
type Options struct {
	// Binary is the keepalived program; empty means DefaultBinary.
	Binary string
	// BusyBox is the program of the TCP check; empty means DefaultBusyBox.
	BusyBox string
	// Logger receives one record per start, reload, state change and
	// orphan removal; nil discards.
	Logger *slog.Logger
	// Command builds the command that runs keepalived (the long-lived
	// process and the keepalived -t check), for example inside a network
	// namespace; nil means exec.Command. It must run the program directly
	// or exec it, so that the pid is keepalived's.
	Command func(name string, args ...string) *exec.Cmd
	// Handle is a netlink handle in the namespace keepalived runs in, used
	// to read the interface's addresses and remove orphans; nil means a
	// handle in the calling process's namespace. The caller keeps
	// ownership of a given handle.
	Handle *netlink.Handle
	// TrackProcessEvents tracks Track.Process with keepalived's
	// vrrp_track_process, which learns of process exits at once from the
	// kernel's process events connector; that connector works only in the
	// initial network namespace, so use it only when keepalived runs
	// there. The default polls with "busybox pidof" every second, which
	// works in any namespace.
	TrackProcessEvents bool
	// StartTimeout bounds a start or a reload; 0 means 10s.
	StartTimeout time.Duration
	// Now is the clock of event times; nil means time.Now.
	Now func() time.Time
}

// Driver runs one keepalived instance for one group. It is safe for
// concurrent use.
type Driver struct {
	dir     string
	bin     string
	busybox string
	events  bool
	log     *slog.Logger
	cmd     func(string, ...string) *exec.Cmd
	nl      *netlink.Handle
	ownNL   bool
	now     func() time.Time
	inst    *daemon.Instance

	mu       sync.Mutex
	cfg      *driver.Config // in force, normalized; nil before the first Apply
	out      *output        // of the keepalived starting or started last
	done     chan struct{}  // closed once the exit of the keepalived started last was handled
	state    driver.State
	watchers *fanout.Hub[driver.Event]
	closed   bool
	fifo     *os.File
}

// output is a keepalived's output: the pipe's read end, and a channel
// closed once it was read to the end (every process of the group closed
// the pipe).
type output struct {
	r    *os.File
	read chan struct{}
}

// Open returns a driver for an instance kept in dir (created if missing,
// mode 0700; an absolute path of at most 200 bytes of letters, digits and
// /._-+ since it appears in the configuration). Nothing runs until the
// first Apply.
func Open(ctx context.Context, dir string, opts *Options) (*Driver, error) {
	if opts == nil {
		opts = &Options{}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, errcode.Wrap(errcode.InvalidArgument, err)
	}
	if err := confpath.Plain("instance directory", dir); err != nil {
		return nil, err
	}
	d := &Driver{dir: dir, bin: cmpOr(opts.Binary, DefaultBinary), busybox: cmpOr(opts.BusyBox, DefaultBusyBox),
		events: opts.TrackProcessEvents, log: opts.Logger, cmd: opts.Command, nl: opts.Handle, now: opts.Now,
		state: driver.Stopped, watchers: fanout.New[driver.Event](fanout.DefaultBuffer)}
	if err := confpath.Plain("busybox", d.busybox); err != nil {
		return nil, err
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.cmd == nil {
		d.cmd = exec.Command
	}
	wait := opts.StartTimeout
	if wait == 0 {
		wait = 10 * time.Second
	}
	if d.now == nil {
		d.now = time.Now
	}
	if _, err := os.Stat(d.bin); err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("keepalived binary (Debian package keepalived): %w", err))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if d.nl == nil {
		if d.nl, err = netlink.NewHandle(); err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, err)
		}
		d.ownNL = true
	}
	// New ends a keepalived of an earlier run whose manager died, which
	// still speaks for the group and holds its addresses (its process
	// group), so that this driver's takes over.
	d.inst = daemon.New(daemon.Spec{
		Name: "keepalived", Dir: dir, ConfigFile: ConfigFile, PidFile: PidFile, LogFile: LogFile,
		Timeout: wait, Logger: d.log,
		// keepalived -t runs where keepalived runs, so interfaces resolve.
		Check:   func(path string) *exec.Cmd { return d.cmd(d.bin, "-t", "-l", "-G", "-f", path) },
		Command: d.command,
		Started: d.started,
		// keepalived is up once its VRRP child wrote its pid file.
		Ready: func(*daemon.Process) bool {
			b, err := os.ReadFile(filepath.Join(dir, VRRPPidFile))
			return err == nil && len(bytes.TrimSpace(b)) > 0
		},
		Reload: func(_ context.Context, p *daemon.Process) error {
			return errcode.Wrap(errcode.Unavailable, p.Signal(syscall.SIGHUP))
		},
	})
	return d, nil
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Dir returns the instance directory.
func (d *Driver) Dir() string { return d.dir }

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{SubSecondAdvert: true, TrackProcess: true, TrackTCP: true, SplitBrainEvents: true}
}

// Reloads counts starts and reloads (for tests: an equal Apply adds none).
func (d *Driver) Reloads() int { return d.inst.Reloads() }

// Pid returns the pid of the keepalived process the driver started, or 0
// if none runs.
func (d *Driver) Pid() int { return d.inst.Pid() }

// settle waits until an exited keepalived is gone and cleaned up after.
// Called with d.mu held; it releases the lock while it waits.
func (d *Driver) settle(ctx context.Context) error {
	done := d.done
	if done == nil || d.inst.Running() {
		return nil
	}
	d.mu.Unlock()
	defer d.mu.Lock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
	if err := d.settle(ctx); err != nil {
		return err
	}
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "driver is closed")
	}
	ifAddrs, err := d.ifAddrs(cfg.Interface)
	if err != nil {
		return err
	}
	place, err := driver.Placement(cfg, ifAddrs)
	if err != nil {
		return err
	}
	if d.inst.Running() && driver.Equal(cfg, d.cfg) {
		return nil
	}
	n := cfg.Normalized()
	text, err := Render(Input{Config: n, Prefixes: place, Dir: d.dir, CheckProgram: d.busybox, ProcessEvents: d.events})
	if err != nil {
		return err
	}
	running := d.inst.Running()
	if !running {
		// Nothing runs: addresses on the interface are orphans of a dead
		// keepalived.
		if d.cfg != nil {
			d.removeOrphans(ctx, d.cfg)
		}
		d.removeOrphans(ctx, n)
	}
	if err := d.inst.Apply(ctx, []byte(text), nil); err != nil {
		return err
	}
	prev := d.cfg
	d.cfg = n
	// Addresses a reloaded configuration dropped are keepalived's to
	// remove; the ones of a renamed interface are not, so make sure.
	if running && prev != nil && prev.Interface != n.Interface {
		d.removeOrphans(ctx, prev)
	}
	return nil
}

// ifAddrs returns the IPv4 addresses of interface name.
func (d *Driver) ifAddrs(name string) ([]netip.Prefix, error) {
	l, err := d.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, errcode.New(errcode.InvalidArgument, "interface %q does not exist on this server", name)
		}
		return nil, errcode.Wrap(errcode.Unavailable, err)
	}
	as, err := d.nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, err)
	}
	var out []netip.Prefix
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, bits))
	}
	return out, nil
}

// removeOrphans deletes cfg's floating addresses from its interface.
// Called with d.mu held and no keepalived running.
func (d *Driver) removeOrphans(ctx context.Context, cfg *driver.Config) {
	l, err := d.nl.LinkByName(cfg.Interface)
	if err != nil {
		return
	}
	as, err := d.nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return
	}
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || !slices.Contains(cfg.Addresses, ip) {
			continue
		}
		if err := d.nl.AddrDel(l, &a); err != nil {
			d.log.WarnContext(ctx, "orphaned floating address not removed", "dir", d.dir, "group", cfg.Name, "address", ip, "err", err)
			continue
		}
		d.log.WarnContext(ctx, "orphaned floating address removed", "dir", d.dir, "group", cfg.Name, "address", ip, "interface", cfg.Interface)
	}
}

// command prepares a start of keepalived (daemon.Spec.Command): the
// notify FIFO, and a pipe for its output, which readLog copies to the log.
// Called with d.mu held.
func (d *Driver) command() (*exec.Cmd, error) {
	for _, f := range []string{PidFile, VRRPPidFile, CheckerPidFile} {
		os.Remove(filepath.Join(d.dir, f))
	}
	if d.fifo == nil {
		fifo := filepath.Join(d.dir, NotifyFIFO)
		os.Remove(fifo)
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			return nil, err
		}
		// Read-write, so that the FIFO never reports end of file between
		// two keepalived processes.
		f, err := os.OpenFile(fifo, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		d.fifo = f
		go d.readFIFO(f)
	}
	logf, err := os.OpenFile(filepath.Join(d.dir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	out := &output{r: pr, read: make(chan struct{})}
	go func() {
		defer close(out.read)
		defer logf.Close()
		d.readLog(pr, logf) // ends when the instance closed pw, at a failed start too
	}()
	d.out = out
	cmd := d.cmd(d.bin, "-n", "-l", "-D", "-G", "-P",
		"-f", filepath.Join(d.dir, ConfigFile),
		"-p", filepath.Join(d.dir, PidFile),
		"-r", filepath.Join(d.dir, VRRPPidFile),
		"-c", filepath.Join(d.dir, CheckerPidFile))
	cmd.Stdout, cmd.Stderr = pw, pw
	return cmd, nil
}

// started watches a keepalived that just started (daemon.Spec.Started)
// until all of it exited. Called with d.mu held.
func (d *Driver) started(p *daemon.Process) {
	out, done := d.out, make(chan struct{})
	d.done = done
	d.state = driver.Backup // keepalived starts every instance as BACKUP
	go func() {
		<-p.Done()
		// keepalived's VRRP child outlives a killed parent for a moment
		// (and keeps the output pipe open). SIGTERM lets it resign (a
		// priority-0 advert makes the backup take over at once, and it
		// removes the addresses); SIGKILL follows if it lingers.
		syscall.Kill(-p.Pid(), syscall.SIGTERM)
		select {
		case <-out.read:
		case <-time.After(time.Second):
			syscall.Kill(-p.Pid(), syscall.SIGKILL)
			select {
			case <-out.read:
			case <-time.After(2 * time.Second):
				out.r.Close()
			}
		}
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		d.exited(p, done)
	}()
	d.emit(driver.Event{Kind: driver.StateChanged, State: driver.Backup, Detail: "keepalived started"})
}

// exited runs when keepalived process p, started last if its done is
// d.done, ended.
func (d *Driver) exited(p *daemon.Process, done chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	close(done)
	if d.done != done {
		return
	}
	if !p.Stopped() {
		d.log.Warn("keepalived exited", "dir", d.dir, "err", p.Err())
		if d.cfg != nil {
			d.removeOrphans(context.Background(), d.cfg)
		}
	}
	d.setState(driver.Stopped, "keepalived exited")
}

var (
	fifoLine = regexp.MustCompile(`^INSTANCE "([^"]*)" (MASTER|BACKUP|FAULT|STOP|DELETED)\b`)
	// keepalived 2.2, master, on an advert of a master of lower (or
	// equal) priority: "(NAME) Received advert from ADDR with lower
	// priority 100, ours 150, forcing new election". An advert of higher
	// priority is the normal preemption and is not reported.
	advertLine = regexp.MustCompile(`\(([^)]*)\) Received advert from ([0-9.]+) with (lower|same) priority`)
)

func (d *Driver) readFIFO(f *os.File) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := fifoLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		st := map[string]driver.State{"MASTER": driver.Master, "BACKUP": driver.Backup, "FAULT": driver.Fault,
			"STOP": driver.Stopped, "DELETED": driver.Stopped}[m[2]]
		d.mu.Lock()
		if d.cfg != nil && d.cfg.Name == m[1] && d.inst.Running() {
			d.setState(st, "keepalived notify: "+sc.Text())
		}
		d.mu.Unlock()
	}
}

// readLog copies keepalived's output to the log file and watches for
// adverts a master receives: only another master sends them.
func (d *Driver) readLog(r io.ReadCloser, logf io.Writer) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		m := advertLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		peer, _ := netip.ParseAddr(m[2])
		d.mu.Lock()
		if d.cfg != nil && d.cfg.Name == m[1] {
			d.log.Warn("another master's advert received", "dir", d.dir, "group", m[1], "peer", peer)
			d.emit(driver.Event{Kind: driver.SplitBrain, State: d.state, Peer: peer, Detail: strings.TrimSpace(line)})
		}
		d.mu.Unlock()
	}
}

// setState records and announces a state. Called with d.mu held.
func (d *Driver) setState(st driver.State, detail string) {
	if st == d.state {
		return
	}
	d.state = st
	d.log.Info("keepalived state", "dir", d.dir, "state", st)
	d.emit(driver.Event{Kind: driver.StateChanged, State: st, Detail: detail})
}

// emit sends ev to every watcher (package fanout: a slow one loses its
// oldest events). Called with d.mu held.
func (d *Driver) emit(ev driver.Event) {
	ev.Time = d.now()
	if d.cfg != nil {
		ev.Group = d.cfg.Name
	}
	d.watchers.Publish(ev)
}

// Watch implements driver.Driver.
func (d *Driver) Watch(ctx context.Context) (<-chan driver.Event, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errcode.New(errcode.FailedPrecondition, "driver is closed")
	}
	return d.watchers.Subscribe(ctx)
}

// Status implements driver.Driver.
func (d *Driver) Status(ctx context.Context) (*driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &driver.Status{State: driver.Stopped}
	if d.inst.Running() {
		st.State = d.state
	}
	if d.cfg == nil || d.closed && d.ownNL {
		return st, nil
	}
	as, err := d.ifAddrs(d.cfg.Interface)
	if err != nil {
		if errcode.Of(err) == errcode.InvalidArgument {
			return st, nil // the interface is gone, and the addresses with it
		}
		return nil, err
	}
	for _, a := range as {
		if slices.Contains(d.cfg.Addresses, a.Addr()) {
			st.Addresses = append(st.Addresses, a.Addr())
		}
	}
	slices.SortFunc(st.Addresses, netip.Addr.Compare)
	return st, nil
}

// stop terminates keepalived (SIGTERM, which makes it give the addresses
// up and send a priority-0 advert so a backup takes over at once; SIGKILL
// of its group after daemon.StopGrace) and waits until its exit was
// handled. Called with d.mu held; it releases the lock while it waits.
func (d *Driver) stop() {
	done := d.done
	if done == nil {
		return
	}
	d.mu.Unlock()
	d.inst.Stop()
	<-done
	d.mu.Lock()
}

// Close implements driver.Driver.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.stop()
	if d.cfg != nil {
		d.removeOrphans(context.Background(), d.cfg)
	}
	d.state = driver.Stopped
	d.watchers.Close()
	if d.fifo != nil {
		d.fifo.Close()
	}
	if d.ownNL {
		d.nl.Close()
	}
	return nil
}
