package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Cluster is a set of named servers. It lists containers across them and
// copies or moves containers and images between them. It is safe for
// concurrent use.
type Cluster struct {
	log     *slog.Logger
	volumes VolumeMounter

	mu      sync.Mutex
	servers map[string]*Server
	labels  map[string]map[string]string // by server
}

// ClusterOptions configure a Cluster. The zero value is usable.
type ClusterOptions struct {
	// Logger receives one record per transfer step; nil discards.
	Logger *slog.Logger
	// Volumes mounts the storage volumes a container names
	// (Mount.Volume) on the server it moves or is copied to, before it
	// arrives there: the volume is mounted again, never copied.
	// storage.Pools is one. Without it, moving such a container is
	// errcode.FailedPrecondition.
	Volumes VolumeMounter
}

// VolumeMounter mounts storage volumes on servers.
type VolumeMounter interface {
	// MountVolume makes sure server has volume of pool mounted, for
	// containers to bind-mount; one already mounted there is no error.
	MountVolume(ctx context.Context, server, pool, volume string) error
}

// NewCluster returns an empty cluster. opts may be nil.
func NewCluster(opts *ClusterOptions) *Cluster {
	c := &Cluster{servers: map[string]*Server{}, labels: map[string]map[string]string{}, log: slog.New(slog.DiscardHandler)}
	if opts != nil && opts.Logger != nil {
		c.log = opts.Logger
	}
	if opts != nil {
		c.volumes = opts.Volumes
	}
	return c
}

// AddServer joins a server to the cluster under name, a DNS label.
func (c *Cluster) AddServer(name string, s *Server) error {
	if err := names.Label(name); err != nil {
		return fmt.Errorf("add server %q: %w", name, err)
	}
	if s == nil {
		return errcode.New(errcode.InvalidArgument, "add server %q: nil server", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.servers[name]; ok {
		return errcode.New(errcode.AlreadyExists, "add server %q: a server has that name", name)
	}
	c.servers[name] = s
	return nil
}

// RemoveServer takes a server out of the cluster and returns it; its
// containers are untouched.
func (c *Cluster) RemoveServer(name string) (*Server, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.servers[name]
	if !ok {
		return nil, errcode.New(errcode.NotFound, "remove server %q: no such server", name)
	}
	delete(c.servers, name)
	delete(c.labels, name)
	return s, nil
}

// SetLabels replaces server name's labels (a scheduler's constraints and
// spread read them: "rack", "zone", ...), with the rules of container
// labels (driver.ValidLabels).
func (c *Cluster) SetLabels(name string, labels map[string]string) error {
	if err := driver.ValidLabels(labels); err != nil {
		return fmt.Errorf("labels of server %q: %w", name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.servers[name]; !ok {
		return errcode.New(errcode.NotFound, "server %q is not in the cluster", name)
	}
	c.labels[name] = maps.Clone(labels)
	return nil
}

// Server returns the server named name.
func (c *Cluster) Server(name string) (*Server, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.servers[name]
	if !ok {
		return nil, errcode.New(errcode.NotFound, "server %q is not in the cluster", name)
	}
	return s, nil
}

// ServerStatus is a server's health, capacity and labels.
type ServerStatus struct {
	Name   string
	Labels map[string]string
	// Host is nil when the server did not answer; Err says why.
	Host    *HostInfo
	Err     error
	Latency time.Duration
}

// Healthy reports whether the server answered.
func (s ServerStatus) Healthy() bool { return s.Err == nil }

// Servers asks every server, in parallel, for its health and capacity,
// and returns them sorted by name.
func (c *Cluster) Servers(ctx context.Context) []ServerStatus {
	servers := c.snapshot()
	c.mu.Lock()
	labels := maps.Clone(c.labels)
	c.mu.Unlock()
	out := make([]ServerStatus, len(servers))
	var wg sync.WaitGroup
	for i, name := range slices.Sorted(maps.Keys(servers)) {
		wg.Go(func() {
			began := time.Now()
			h, err := servers[name].HostInfo(ctx)
			out[i] = ServerStatus{Name: name, Labels: maps.Clone(labels[name]), Host: h, Err: err, Latency: time.Since(began)}
		})
	}
	wg.Wait()
	return out
}

// Placement is a container and the server it is on.
type Placement struct {
	Server string
	*Info
}

// Containers lists the containers of every server, sorted by server then
// name. Servers that fail are skipped, and their errors joined in err.
func (c *Cluster) Containers(ctx context.Context) ([]Placement, error) {
	servers := c.snapshot()
	names := slices.Sorted(maps.Keys(servers))
	lists := make([][]*Info, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			lists[i], errs[i] = servers[name].List(ctx)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("server %q: %w", name, errs[i])
			}
		})
	}
	wg.Wait()
	var out []Placement
	for i, name := range names {
		for _, info := range lists[i] {
			out = append(out, Placement{Server: name, Info: info})
		}
	}
	return out, errors.Join(errs...)
}

// Find returns the server that holds the container named name.
// errcode.NotFound if none does.
func (c *Cluster) Find(ctx context.Context, name string) (Placement, error) {
	all, err := c.Containers(ctx)
	for _, p := range all {
		if p.Spec.Name == name {
			return p, nil
		}
	}
	return Placement{}, errors.Join(errcode.New(errcode.NotFound, "container %q is on no server", name), err)
}

func (c *Cluster) snapshot() map[string]*Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.servers)
}

// ImageEvent reports the progress of an image copy.
type ImageEvent struct {
	Image    string
	From, To string
	// Bytes of the image's blob streamed to the target so far, of Total
	// (the manifest's size). The last event has Bytes == Total.
	Bytes, Total int64
}

// ImageCopyOptions configure CopyImage. The zero value is usable.
type ImageCopyOptions struct {
	// Progress receives events from the copying goroutine as the blob
	// streams; it must not block for long.
	Progress func(ImageEvent)
}

// CopyImage copies an image from one server's store to another's unless
// the target already holds it (then no event is reported). opts may be
// nil.
func (c *Cluster) CopyImage(ctx context.Context, ref, from, to string, opts *ImageCopyOptions) (*image.Manifest, error) {
	var progress func(ImageEvent)
	if opts != nil {
		progress = opts.Progress
	}
	src, dst, err := c.pair(from, to)
	if err != nil {
		return nil, fmt.Errorf("copy image %q: %w", ref, err)
	}
	m, err := src.Image(ctx, ref)
	if err != nil {
		return nil, err
	}
	if have, err := dst.Image(ctx, m.Digest); err == nil && have.Name == m.Name {
		return have, nil
	}
	m, blob, err := src.OpenImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer blob.Close()
	var r io.Reader = blob
	if progress != nil {
		r = &imageProgress{r: blob, report: progress, ev: ImageEvent{Image: m.Name, From: from, To: to, Total: m.Size}}
	}
	return dst.PutImage(ctx, m, r)
}

// imageProgress reports the bytes read through it.
type imageProgress struct {
	r      io.Reader
	report func(ImageEvent)
	ev     ImageEvent
}

func (p *imageProgress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.ev.Bytes += int64(n)
		p.report(p.ev)
	}
	return n, err
}

func (c *Cluster) pair(from, to string) (*Server, *Server, error) {
	if from == to {
		return nil, nil, errcode.New(errcode.InvalidArgument, "source and target are both server %q", from)
	}
	src, err := c.Server(from)
	if err != nil {
		return nil, nil, err
	}
	dst, err := c.Server(to)
	return src, dst, err
}

// Phase is a step of a container transfer.
type Phase string

// The phases of a transfer, in order; a failed transfer ends with
// PhaseRollback.
const (
	PhasePreCopy  Phase = "precopy"  // copying the running source (PreCopy)
	PhaseStop     Phase = "stop"     // stopping the source container
	PhaseTransfer Phase = "transfer" // streaming it to the target
	PhaseStart    Phase = "start"    // starting it on the target
	PhaseCleanup  Phase = "cleanup"  // deleting the source (Move only)
	PhaseDone     Phase = "done"
	PhaseRollback Phase = "rollback" // undoing a failed transfer
)

// Event reports a transfer's progress.
type Event struct {
	Container string
	From, To  string
	Phase     Phase
	// Bytes is how many archive bytes have been streamed to the target so
	// far, as the streaming process counts them: the caller (Relay), the
	// source (Push) or the target (Pull).
	Bytes int64
	// Err is set on PhaseRollback, and on the PhaseDone of a committed
	// Move that did not finish cleanly.
	Err error
}

// TransferMode says which process streams a container between servers.
type TransferMode int

const (
	// Relay, the default, streams through the caller: it reads the
	// source's export and writes it to the target's import. Both
	// servers' drivers must implement driver.Transferer.
	Relay TransferMode = iota
	// Push has the source server stream straight to the target server.
	// The source's driver must implement driver.Pusher, the target's
	// driver.Endpoint (agent.Client implements both).
	Push
	// Pull has the target server fetch straight from the source server.
	// The target's driver must implement driver.Puller, the source's
	// driver.Endpoint (agent.Client implements both).
	Pull
)

var transferModes = [...]string{Relay: "relay", Push: "push", Pull: "pull"}

// String returns the mode's name: "relay", "push" or "pull".
func (m TransferMode) String() string {
	if m < 0 || int(m) >= len(transferModes) {
		return fmt.Sprintf("TransferMode(%d)", int(m))
	}
	return transferModes[m]
}

// TransferOptions configure Copy and Move. The zero value is usable.
type TransferOptions struct {
	// Rename gives the container a new name on the target.
	Rename string
	// Mode says which process streams the container (Relay if zero). A
	// mode that a server's driver cannot take part in fails with
	// errcode.Unimplemented before anything changes.
	Mode TransferMode
	// StopTimeout bounds the graceful stop of a running source
	// (DefaultStopTimeout if zero).
	StopTimeout time.Duration
	// Progress receives events from the transferring goroutine; it must
	// not block for long.
	Progress func(Event)
	// PreCopy copies a running source while it runs, then stops it and
	// copies only what changed, so it is down only for that last pass.
	// Relay only, and both servers' drivers must implement
	// driver.PreCopier; else errcode.Unimplemented before anything
	// changes. The commit is the target's CommitStaged.
	PreCopy bool
	// FinishTimeout bounds the steps that ignore the caller's
	// cancellation: a Move's steps after its commit, and the rollback of
	// a failed transfer. They retry an unreachable server until then
	// (DefaultFinishTimeout if zero).
	FinishTimeout time.Duration
}

// Copy puts a copy of a container on another server, leaving the source
// in place: a running source is stopped for the transfer and started again
// after, and the copy is started if the source was running. Copy is
// all-or-nothing: on any failure the target's copy is deleted and the
// source is left as it was (see TransferError). Only the streaming step
// depends on TransferOptions.Mode.
func (c *Cluster) Copy(ctx context.Context, name, from, to string, opts *TransferOptions) (*Info, error) {
	return c.transfer(ctx, name, from, to, opts, false)
}

// Move moves a container to another server: stop, stream, import, start
// on the target if it was running, then delete the source.
//
// A move commits when the target holds a complete copy (the import
// succeeded). A failure before that undoes it: the target's copy is
// deleted and the source restored as it was, running if it ran. From the
// commit on nothing deletes the target's copy and cancelling ctx no longer
// undoes anything: starting the target and deleting the source run to
// their end, bounded by TransferOptions.FinishTimeout, and a failure of either is reported
// as a *TransferError whose At is the target. errors.As(err, &te) tells
// where the container is whatever happened.
func (c *Cluster) Move(ctx context.Context, name, from, to string, opts *TransferOptions) (*Info, error) {
	return c.transfer(ctx, name, from, to, opts, true)
}

// DefaultFinishTimeout is TransferOptions.FinishTimeout's default.
const DefaultFinishTimeout = 15 * time.Second

// TransferError is the error of a Copy or Move that failed after it began
// changing servers. It says where the container is.
type TransferError struct {
	Op        string // "copy" or "move"
	Container string
	From, To  string
	// At is the server that holds the container now: From when the
	// transfer was undone, To when a move had committed.
	At string
	// Leftover names the other server when it may still hold a copy that
	// could not be removed (a target the rollback could not reach, or the
	// source a committed move could not delete); empty when it holds none.
	Leftover string
	// Err is the failure; its errcode is the transfer's.
	Err error
}

func (e *TransferError) Error() string {
	msg := fmt.Sprintf("%s container %q from %q to %q: %v; the container is on %q", e.Op, e.Container, e.From, e.To, e.Err, e.At)
	if e.Leftover != "" {
		msg += fmt.Sprintf(", and %q may still hold a copy of it: delete that one", e.Leftover)
	}
	return msg
}

func (e *TransferError) Unwrap() error { return e.Err }

func (c *Cluster) transfer(ctx context.Context, name, from, to string, opts *TransferOptions, move bool) (*Info, error) {
	op := "copy"
	if move {
		op = "move"
	}
	var o TransferOptions
	if opts != nil {
		o = *opts
	}
	if o.Rename != "" {
		if err := names.Label(o.Rename); err != nil {
			return nil, fmt.Errorf("%s container %q: %w", op, name, err)
		}
	}
	src, dst, err := c.pair(from, to)
	if err != nil {
		return nil, fmt.Errorf("%s container %q: %w", op, name, err)
	}
	t := &transfer{c: c, op: op, name: name, from: from, to: to, src: src, dst: dst, opts: o, target: name}
	if o.Rename != "" {
		t.target = o.Rename
	}
	if o.PreCopy {
		err = t.preCopiers()
	}
	if err == nil {
		t.stream, err = t.streamer()
	}
	if err != nil {
		return nil, fmt.Errorf("%s container %q from %q to %q: %w", op, name, from, to, err)
	}
	wasRunning, err := t.check(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s container %q from %q to %q: %w", op, name, from, to, err)
	}
	if move {
		return t.move(ctx, wasRunning)
	}
	return t.copy(ctx, wasRunning)
}

// transfer is one Copy or Move in progress.
type transfer struct {
	c                  *Cluster
	op, name, from, to string
	target             string // the container's name on the target
	src, dst           *Server
	opts               TransferOptions
	bytes              atomic.Int64 // archive bytes streamed so far (see Event.Bytes)
	streamed           bool         // the target may hold some of the container
	// src and dst as PreCopiers if opts.PreCopy, else nil.
	preSrc, preDst driver.PreCopier
	// stream streams the stopped source to the target, named target
	// there, in the transfer's mode.
	stream func(ctx context.Context, target string) error
}

func (t *transfer) emit(phase Phase, err error) {
	n := t.bytes.Load()
	t.c.log.Info("container transfer", "container", t.name, "from", t.from, "to", t.to, "mode", t.opts.Mode, "phase", phase, "bytes", n, "err", err)
	if t.opts.Progress != nil {
		t.opts.Progress(Event{Container: t.name, From: t.from, To: t.to, Phase: phase, Bytes: n, Err: err})
	}
}

// check returns whether the source runs, and refuses a frozen source or
// a target that already has the name. It changes nothing but mounting the
// container's volumes on the target.
func (t *transfer) check(ctx context.Context) (wasRunning bool, err error) {
	before, err := t.src.Get(ctx, t.name)
	if err != nil {
		return false, err
	}
	if before.State == Frozen {
		return false, errcode.New(errcode.FailedPrecondition, "container is frozen; unfreeze it first")
	}
	if _, err := t.dst.Get(ctx, t.target); err == nil {
		return false, errcode.New(errcode.AlreadyExists, "the target already has a container %q", t.target)
	} else if !errors.Is(err, errcode.NotFound) {
		return false, err
	}
	for _, m := range before.Spec.Mounts {
		if m.Volume == "" {
			continue
		}
		if t.c.volumes == nil {
			return false, errcode.New(errcode.FailedPrecondition, "the container mounts volume %s, and the cluster was given no VolumeMounter (ClusterOptions.Volumes) to mount it on %q", m.Volume, t.to)
		}
		pool, volume := m.PoolVolume()
		if err := t.c.volumes.MountVolume(ctx, t.to, pool, volume); err != nil {
			return false, fmt.Errorf("mounting volume %s on %q: %w", m.Volume, t.to, err)
		}
	}
	return before.State == Running, nil
}

// copyToTarget stops the source if it runs and streams it to the target;
// with PreCopy, it copies a running source first and then what changed.
// On success the target holds a complete, stopped copy.
func (t *transfer) copyToTarget(ctx context.Context, wasRunning bool) error {
	preCopy := wasRunning && t.preSrc != nil
	var base *image.Index
	if preCopy {
		t.emit(PhasePreCopy, nil)
		t.streamed = true
		var err error
		if base, err = t.stage(ctx, nil); err != nil {
			return err
		}
	}
	if wasRunning {
		t.emit(PhaseStop, nil)
		if err := t.src.Stop(ctx, t.name, t.opts.StopTimeout); err != nil {
			return err
		}
	}
	t.emit(PhaseTransfer, nil)
	t.streamed = true
	if !preCopy {
		return t.stream(ctx, t.target)
	}
	if _, err := t.stage(ctx, base); err != nil {
		return err
	}
	return t.dst.call(ctx, "commit staged", t.target, func() error {
		_, err := t.preDst.CommitStaged(ctx, t.target)
		return err
	})
}

// stage streams a pre-copy pass against base into the target's staged
// copy and returns its Index.
func (t *transfer) stage(ctx context.Context, base *image.Index) (ix *image.Index, err error) {
	err = t.dst.call(ctx, "stage", t.target, func() (err error) {
		ix, err = driver.PipeChanges(ctx, t.preSrc, t.name, base, t.preDst, t.target, t.progress)
		return err
	})
	return ix, err
}

// preCopiers sets preSrc and preDst, or returns errcode.Unimplemented.
func (t *transfer) preCopiers() (err error) {
	if t.opts.Mode != Relay {
		return errcode.New(errcode.Unimplemented, "PreCopy takes the relay mode only, not %v", t.opts.Mode)
	}
	if t.preSrc, err = capability[driver.PreCopier](Relay, t.from, t.src); err == nil {
		t.preDst, err = capability[driver.PreCopier](Relay, t.to, t.dst)
	}
	return err
}

func (t *transfer) copy(ctx context.Context, wasRunning bool) (*Info, error) {
	err := t.copyToTarget(ctx, wasRunning)
	if err == nil && wasRunning {
		t.emit(PhaseStart, nil)
		err = t.dst.Start(ctx, t.target)
		if err == nil {
			if err = t.src.Start(ctx, t.name); err != nil {
				err = fmt.Errorf("restart source: %w", err)
			}
		}
	}
	var info *Info
	if err == nil {
		info, err = t.dst.Get(ctx, t.target)
	}
	if err != nil {
		return nil, t.rollback(ctx, err, wasRunning)
	}
	t.emit(PhaseDone, nil)
	return info, nil
}

func (t *transfer) move(ctx context.Context, wasRunning bool) (*Info, error) {
	if err := t.copyToTarget(ctx, wasRunning); err != nil {
		return nil, t.rollback(ctx, err, wasRunning)
	}
	// Committed: the target holds the one copy that counts. Finish
	// whatever the caller's context does, and never delete the target.
	var errs []error
	startErr := error(nil)
	if wasRunning {
		t.emit(PhaseStart, nil)
		startErr = t.finish(ctx, func(ctx context.Context) error { return ensureRunning(ctx, t.dst, t.target) })
		if startErr != nil {
			errs = append(errs, fmt.Errorf("moved, but starting it on the target failed: %w", startErr))
		}
	}
	t.emit(PhaseCleanup, nil)
	leftover := ""
	if err := t.finish(ctx, func(ctx context.Context) error { return t.src.Delete(ctx, t.name) }); err != nil && !errors.Is(err, errcode.NotFound) {
		errs = append(errs, fmt.Errorf("moved, but deleting the source failed: %w", err))
		leftover = t.from
	}
	var info *Info
	if startErr == nil { // else the target's state is known well enough
		err := t.finish(ctx, func(ctx context.Context) (err error) { info, err = t.dst.Get(ctx, t.target); return err })
		if err != nil {
			errs = append(errs, fmt.Errorf("moved, but reading its state on the target failed: %w", err))
		}
	}
	if err := joinErrors(errs...); err != nil {
		t.emit(PhaseDone, err)
		return nil, t.fail(err, t.to, leftover)
	}
	t.emit(PhaseDone, nil)
	return info, nil
}

// rollback undoes a transfer that failed before its commit: it deletes
// whatever the target holds of the container and restarts the source if
// it ran. It runs with a context of its own, since ctx may be what failed.
func (t *transfer) rollback(ctx context.Context, cause error, wasRunning bool) error {
	t.emit(PhaseRollback, cause)
	errs := []error{cause}
	leftover := ""
	if t.streamed {
		if err := t.finish(ctx, t.removeTarget); err != nil && !errors.Is(err, errcode.NotFound) {
			errs = append(errs, fmt.Errorf("rollback: %w", err))
			leftover = t.to
		}
	}
	if wasRunning {
		if err := t.finish(ctx, func(ctx context.Context) error { return ensureRunning(ctx, t.src, t.name) }); err != nil {
			errs = append(errs, fmt.Errorf("rollback: restart source: %w", err))
		}
	}
	return t.fail(joinErrors(errs...), t.from, leftover)
}

// removeTarget drops the target's staged copy, if any, and stops and
// deletes its copy.
func (t *transfer) removeTarget(ctx context.Context) error {
	if t.preDst != nil {
		if err := t.preDst.DropStaged(ctx, t.target); err != nil {
			return err
		}
	}
	if err := t.dst.Stop(ctx, t.target, t.opts.StopTimeout); err != nil {
		return err
	}
	return t.dst.Delete(ctx, t.target)
}

// ensureRunning starts the container on s unless it runs.
func ensureRunning(ctx context.Context, s *Server, name string) error {
	info, err := s.Get(ctx, name)
	if err != nil || info.State == Running {
		return err
	}
	return s.Start(ctx, name)
}

// errorList is errors joined on one line.
type errorList []error

// joinErrors joins the non-nil errs on one line; nil if there are none.
func joinErrors(errs ...error) error {
	var l errorList
	for _, err := range errs {
		if err != nil {
			l = append(l, err)
		}
	}
	if len(l) == 0 {
		return nil
	}
	return l
}

func (l errorList) Error() string {
	msgs := make([]string, len(l))
	for i, err := range l {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (l errorList) Unwrap() []error { return l }

// finish runs f, a step that ignores the caller's cancellation, until
// it returns anything but errcode.Unavailable or FinishTimeout passes.
func (t *transfer) finish(ctx context.Context, f func(context.Context) error) error {
	d := t.opts.FinishTimeout
	if d <= 0 {
		d = DefaultFinishTimeout
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	return retry(ctx, func() error { return f(ctx) })
}

// retry calls f until it returns anything but errcode.Unavailable, or ctx
// ends; it returns f's last error.
func retry(ctx context.Context, f func() error) error {
	wait := 50 * time.Millisecond
	for {
		err := f()
		if errcode.Of(err) != errcode.Unavailable {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func (t *transfer) fail(err error, at, leftover string) error {
	return &TransferError{Op: t.op, Container: t.name, From: t.from, To: t.to, At: at, Leftover: leftover, Err: err}
}

// streamer returns the stream function of the transfer's mode, or
// errcode.Unimplemented if a server's driver cannot take part in it.
func (t *transfer) streamer() (func(ctx context.Context, target string) error, error) {
	mode := t.opts.Mode
	switch mode {
	case Relay:
		if _, err := capability[driver.Transferer](mode, t.from, t.src); err != nil {
			return nil, err
		}
		if _, err := capability[driver.Transferer](mode, t.to, t.dst); err != nil {
			return nil, err
		}
		return func(ctx context.Context, target string) error {
			_, err := driver.Pipe(ctx, t.src, t.name, t.dst, renameTo(t.name, target), t.progress)
			return err
		}, nil
	case Push:
		p, err := capability[driver.Pusher](mode, t.from, t.src)
		if err != nil {
			return nil, err
		}
		e, err := capability[driver.Endpoint](mode, t.to, t.dst)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, target string) error {
			return t.src.call(ctx, "push", t.name, func() error {
				_, err := p.Push(ctx, t.name, e.Endpoint(), renameTo(t.name, target), t.progress)
				return err
			})
		}, nil
	case Pull:
		p, err := capability[driver.Puller](mode, t.to, t.dst)
		if err != nil {
			return nil, err
		}
		e, err := capability[driver.Endpoint](mode, t.from, t.src)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, target string) error {
			return t.dst.call(ctx, "pull", t.name, func() error {
				_, err := p.Pull(ctx, e.Endpoint(), t.name, renameTo(t.name, target), t.progress)
				return err
			})
		}, nil
	}
	return nil, errcode.New(errcode.InvalidArgument, "unknown transfer mode %v", mode)
}

// capability returns the driver of s, the server named name, as a D, or
// errcode.Unimplemented if it is none.
func capability[D any](mode TransferMode, name string, s *Server) (D, error) {
	d, ok := s.d.(D)
	if !ok {
		return d, errcode.New(errcode.Unimplemented, "%v mode: the driver of server %q does not implement %v", mode, name, reflect.TypeFor[D]())
	}
	return d, nil
}

// progress records that total archive bytes reached the target, and
// reports it.
func (t *transfer) progress(total int64) {
	t.bytes.Store(total)
	t.emit(PhaseTransfer, nil)
}

func renameTo(name, target string) string {
	if target == name {
		return ""
	}
	return target
}
