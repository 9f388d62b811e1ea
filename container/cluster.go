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
	"sync"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
)

// Cluster is a set of named servers. It lists containers across them and
// copies or moves containers and images between them. It is safe for
// concurrent use.
type Cluster struct {
	log *slog.Logger

	mu      sync.Mutex
	servers map[string]*Server
}

// ClusterOptions configure a Cluster. The zero value is usable.
type ClusterOptions struct {
	// Logger receives one record per transfer step; nil discards.
	Logger *slog.Logger
}

// NewCluster returns an empty cluster. opts may be nil.
func NewCluster(opts *ClusterOptions) *Cluster {
	c := &Cluster{servers: map[string]*Server{}, log: slog.New(slog.DiscardHandler)}
	if opts != nil && opts.Logger != nil {
		c.log = opts.Logger
	}
	return c
}

// Add joins a server to the cluster under name, a DNS label.
func (c *Cluster) Add(name string, s *Server) error {
	if err := image.ValidName(name); err != nil {
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

// Remove takes a server out of the cluster and returns it; its containers
// are untouched.
func (c *Cluster) Remove(name string) (*Server, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.servers[name]
	if !ok {
		return nil, errcode.New(errcode.NotFound, "remove server %q: no such server", name)
	}
	delete(c.servers, name)
	return s, nil
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

// ServerStatus is a server's health and capacity.
type ServerStatus struct {
	Name string
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
	out := make([]ServerStatus, len(servers))
	var wg sync.WaitGroup
	for i, name := range slices.Sorted(maps.Keys(servers)) {
		wg.Go(func() {
			began := time.Now()
			h, err := servers[name].HostInfo(ctx)
			out[i] = ServerStatus{Name: name, Host: h, Err: err, Latency: time.Since(began)}
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

// CopyImage copies an image from one server's store to another's unless
// the target already holds it (then no event is reported). progress, if
// not nil, receives events from the copying goroutine as the blob streams;
// it must not block for long.
func (c *Cluster) CopyImage(ctx context.Context, ref, from, to string, progress func(ImageEvent)) (*image.Manifest, error) {
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
	Err   error // set on PhaseRollback
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
}

// Copy puts a copy of a container on another server, leaving the source
// in place: a running source is stopped for the transfer and started again
// after, and the copy is started if the source was running. On any failure
// the target is cleaned up and the source is left as it was. Only the
// streaming step depends on TransferOptions.Mode.
func (c *Cluster) Copy(ctx context.Context, name, from, to string, opts *TransferOptions) (*Info, error) {
	return c.transfer(ctx, name, from, to, opts, false)
}

// Move moves a container to another server: stop, stream, import, start
// on the target if it was running, then delete the source. On any failure
// the target is cleaned up and the source is restored as it was, running
// if it ran.
func (c *Cluster) Move(ctx context.Context, name, from, to string, opts *TransferOptions) (*Info, error) {
	return c.transfer(ctx, name, from, to, opts, true)
}

func (c *Cluster) transfer(ctx context.Context, name, from, to string, opts *TransferOptions, move bool) (info *Info, err error) {
	op := "copy"
	if move {
		op = "move"
	}
	var o TransferOptions
	if opts != nil {
		o = *opts
	}
	if o.Rename != "" {
		if err := image.ValidName(o.Rename); err != nil {
			return nil, fmt.Errorf("%s container %q: %w", op, name, err)
		}
	}
	src, dst, err := c.pair(from, to)
	if err != nil {
		return nil, fmt.Errorf("%s container %q: %w", op, name, err)
	}
	t := &transfer{c: c, name: name, from: from, to: to, src: src, dst: dst, opts: o}
	if t.stream, err = t.streamer(); err != nil {
		return nil, fmt.Errorf("%s container %q from %q to %q: %w", op, name, from, to, err)
	}
	info, err = t.run(ctx, move)
	if err != nil {
		return nil, fmt.Errorf("%s container %q from %q to %q: %w", op, name, from, to, err)
	}
	return info, nil
}

// transfer is one Copy or Move in progress.
type transfer struct {
	c              *Cluster
	name, from, to string
	src, dst       *Server
	opts           TransferOptions
	bytes          atomic.Int64 // archive bytes streamed so far (see Event.Bytes)
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

func (t *transfer) run(ctx context.Context, move bool) (_ *Info, err error) {
	before, err := t.src.Get(ctx, t.name)
	if err != nil {
		return nil, err
	}
	if before.State == Frozen {
		return nil, errcode.New(errcode.FailedPrecondition, "container is frozen; unfreeze it first")
	}
	wasRunning := before.State == Running
	target := t.name
	if t.opts.Rename != "" {
		target = t.opts.Rename
	}
	if _, err := t.dst.Get(ctx, target); err == nil {
		return nil, errcode.New(errcode.AlreadyExists, "the target already has a container %q", target)
	} else if !errors.Is(err, errcode.NotFound) {
		return nil, err
	}

	// Once streaming began the target may hold a partial or complete
	// copy; the import itself guarantees nothing half-created, and the
	// rollback deletes a complete one.
	streamed := false
	defer func() {
		if err == nil {
			return
		}
		t.emit(PhaseRollback, err)
		// Undo with a context of its own: ctx may be what failed.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if streamed {
			if e := t.dst.Stop(rctx, target, t.opts.StopTimeout); e != nil && !errors.Is(e, errcode.NotFound) {
				err = errors.Join(err, fmt.Errorf("rollback: %w", e))
			}
			if e := t.dst.Delete(rctx, target); e != nil && !errors.Is(e, errcode.NotFound) {
				err = errors.Join(err, fmt.Errorf("rollback: %w", e))
			}
		}
		if wasRunning {
			if info, e := t.src.Get(rctx, t.name); e == nil && info.State == Stopped {
				if e := t.src.Start(rctx, t.name); e != nil {
					err = errors.Join(err, fmt.Errorf("rollback: restart source: %w", e))
				}
			}
		}
	}()

	if wasRunning {
		t.emit(PhaseStop, nil)
		if err := t.src.Stop(ctx, t.name, t.opts.StopTimeout); err != nil {
			return nil, err
		}
	}
	t.emit(PhaseTransfer, nil)
	streamed = true
	if err := t.stream(ctx, target); err != nil {
		return nil, err
	}
	if wasRunning {
		t.emit(PhaseStart, nil)
		if err := t.dst.Start(ctx, target); err != nil {
			return nil, err
		}
	}
	if move {
		t.emit(PhaseCleanup, nil)
		if err := t.src.Delete(ctx, t.name); err != nil {
			return nil, err
		}
		wasRunning = false // the source is gone by design; nothing to restart
	} else if wasRunning {
		if err := t.src.Start(ctx, t.name); err != nil {
			return nil, fmt.Errorf("restart source: %w", err)
		}
	}
	info, err := t.dst.Get(ctx, target)
	if err != nil {
		return nil, err
	}
	t.emit(PhaseDone, nil)
	return info, nil
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
