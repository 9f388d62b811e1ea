// Package container runs containers on servers: create them from images,
// start, stop, freeze, exec, snapshot, clone, export and import them, and
// across a Cluster of servers list them and copy or move them between
// servers.
//
// A Server wraps a driver for one server: drivers/lxc on the local machine,
// agent.Client for a remote server through its agent, or memcontainer in
// memory for tests. Every operation is the same call whichever the driver.
// Server validates all input before the driver sees it, and wraps driver
// errors once with the container's name; test them with errors.Is(err,
// errcode.NotFound) and friends.
package container

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// The portable names of the driver package's types.
type (
	Spec         = driver.Spec
	Limits       = driver.Limits
	Mount        = driver.Mount
	Network      = driver.Network
	State        = driver.State
	Info         = driver.Info
	Usage        = driver.Usage
	Process      = driver.Process
	SnapshotInfo = driver.SnapshotInfo
	HostInfo     = driver.HostInfo
)

// Container states.
const (
	Stopped = driver.Stopped
	Running = driver.Running
	Frozen  = driver.Frozen
)

// DefaultStopTimeout is how long Stop waits for a graceful shutdown when
// the caller gives no timeout.
const DefaultStopTimeout = 10 * time.Second

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives one debug record per operation; nil discards.
	Logger *slog.Logger
}

// Server manages the containers and images of one server through a driver.
// It is safe for concurrent use if the driver is, as every Muster driver is.
type Server struct {
	d   driver.Driver
	log *slog.Logger
}

// NewServer returns a Server over d. opts may be nil.
func NewServer(d driver.Driver, opts *Options) *Server {
	s := &Server{d: d, log: slog.New(slog.DiscardHandler)}
	if opts != nil && opts.Logger != nil {
		s.log = opts.Logger
	}
	return s
}

// Create makes a stopped container as spec says, from an image in this
// server's store.
func (s *Server) Create(ctx context.Context, spec *Spec) (*Info, error) {
	if spec == nil {
		return nil, errcode.New(errcode.InvalidArgument, "create: nil spec")
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("create container %q: %w", spec.Name, err)
	}
	info, err := s.d.Create(ctx, spec)
	return info, s.done(ctx, "create", spec.Name, err)
}

// Start starts a stopped container and returns once it runs.
func (s *Server) Start(ctx context.Context, name string) error {
	return s.call(ctx, "start", name, func() error { return s.d.Start(ctx, name) })
}

// Stop shuts a container down gracefully, killing it if it has not stopped
// after timeout (DefaultStopTimeout if zero). Stopping a stopped container
// does nothing.
func (s *Server) Stop(ctx context.Context, name string, timeout time.Duration) error {
	if timeout < 0 {
		return errcode.New(errcode.InvalidArgument, "stop container %q: negative timeout", name)
	}
	if timeout == 0 {
		timeout = DefaultStopTimeout
	}
	return s.call(ctx, "stop", name, func() error { return s.d.Stop(ctx, name, timeout) })
}

// Restart stops a container (as Stop does) and starts it again.
func (s *Server) Restart(ctx context.Context, name string, timeout time.Duration) error {
	if err := s.Stop(ctx, name, timeout); err != nil {
		return err
	}
	return s.Start(ctx, name)
}

// Freeze suspends every process of a running container.
func (s *Server) Freeze(ctx context.Context, name string) error {
	return s.call(ctx, "freeze", name, func() error { return s.d.Freeze(ctx, name) })
}

// Unfreeze resumes a frozen container.
func (s *Server) Unfreeze(ctx context.Context, name string) error {
	return s.call(ctx, "unfreeze", name, func() error { return s.d.Unfreeze(ctx, name) })
}

// Delete removes a stopped container and its snapshots.
func (s *Server) Delete(ctx context.Context, name string) error {
	return s.call(ctx, "delete", name, func() error { return s.d.Delete(ctx, name) })
}

// Get returns a container's state, addresses and resource use.
func (s *Server) Get(ctx context.Context, name string) (*Info, error) {
	var info *Info
	err := s.call(ctx, "get", name, func() (err error) { info, err = s.d.Get(ctx, name); return err })
	return info, err
}

// List returns every container on the server, sorted by name.
func (s *Server) List(ctx context.Context) ([]*Info, error) {
	infos, err := s.d.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return infos, nil
}

// Exec runs p in a running container and returns its exit code. A non-zero
// exit code is not an error.
func (s *Server) Exec(ctx context.Context, name string, p *Process) (int, error) {
	if p == nil || len(p.Args) == 0 || p.Args[0] == "" {
		return -1, errcode.New(errcode.InvalidArgument, "exec in container %q: no program given", name)
	}
	code := -1
	err := s.call(ctx, "exec", name, func() (err error) { code, err = s.d.Exec(ctx, name, p); return err })
	return code, err
}

// Snapshot records the filesystem of a stopped container.
func (s *Server) Snapshot(ctx context.Context, name, snapshot string) error {
	return s.snapshotter(ctx, "snapshot", name, snapshot, func(sn driver.Snapshotter) error {
		return sn.Snapshot(ctx, name, snapshot)
	})
}

// Restore puts a stopped container's filesystem back as it was at snapshot.
func (s *Server) Restore(ctx context.Context, name, snapshot string) error {
	return s.snapshotter(ctx, "restore", name, snapshot, func(sn driver.Snapshotter) error {
		return sn.Restore(ctx, name, snapshot)
	})
}

// Snapshots lists a container's snapshots, oldest first.
func (s *Server) Snapshots(ctx context.Context, name string) ([]SnapshotInfo, error) {
	var out []SnapshotInfo
	err := s.snapshotter(ctx, "list snapshots of", name, "", func(sn driver.Snapshotter) (err error) {
		out, err = sn.Snapshots(ctx, name)
		return err
	})
	return out, err
}

// Clone copies a stopped container into a new stopped container named dst.
// Static addresses are not copied.
func (s *Server) Clone(ctx context.Context, src, dst string) (*Info, error) {
	var info *Info
	err := s.snapshotter(ctx, "clone", src, dst, func(sn driver.Snapshotter) (err error) {
		info, err = sn.Clone(ctx, src, dst)
		return err
	})
	return info, err
}

// Export writes a stopped container to w as an archive that Import reads.
func (s *Server) Export(ctx context.Context, name string, w io.Writer) error {
	t, ok := s.d.(driver.Transferer)
	if !ok {
		return unimplemented("export", name)
	}
	return s.call(ctx, "export", name, func() error { return t.Export(ctx, name, w) })
}

// Import creates a stopped container from an Export archive, named as in
// the archive or rename if that is not empty. Nothing is left behind on
// failure.
func (s *Server) Import(ctx context.Context, r io.Reader, rename string) (*Info, error) {
	t, ok := s.d.(driver.Transferer)
	if !ok {
		return nil, unimplemented("import", rename)
	}
	if rename != "" {
		if err := names.Label(rename); err != nil {
			return nil, fmt.Errorf("import container as %q: %w", rename, err)
		}
	}
	info, err := t.Import(ctx, r, rename)
	if err != nil {
		return nil, fmt.Errorf("import container: %w", err)
	}
	s.log.DebugContext(ctx, "import", "container", info.Spec.Name)
	return info, nil
}

// HostInfo describes the server and its capacity.
func (s *Server) HostInfo(ctx context.Context) (*HostInfo, error) {
	h, ok := s.d.(driver.Host)
	if !ok {
		return nil, unimplemented("host info", "")
	}
	info, err := h.HostInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("host info: %w", err)
	}
	return info, nil
}

// StartAutostart starts every stopped container marked Autostart, as a
// server does after it boots, and returns their names.
func (s *Server) StartAutostart(ctx context.Context) ([]string, error) {
	a, ok := s.d.(driver.Autostarter)
	if !ok {
		return nil, unimplemented("autostart", "")
	}
	names, err := a.StartAutostart(ctx)
	if err != nil {
		return names, fmt.Errorf("autostart: %w", err)
	}
	return names, nil
}

// Close closes the driver. Containers keep running.
func (s *Server) Close() error { return s.d.Close() }

func (s *Server) snapshotter(ctx context.Context, op, name, other string, f func(driver.Snapshotter) error) error {
	sn, ok := s.d.(driver.Snapshotter)
	if !ok {
		return unimplemented(op, name)
	}
	if other != "" {
		if err := names.Label(other); err != nil {
			return fmt.Errorf("%s container %q: %w", op, name, err)
		}
	}
	return s.call(ctx, op, name, func() error { return f(sn) })
}

// call validates name, runs f and wraps its error with the operation and
// the container's name.
func (s *Server) call(ctx context.Context, op, name string, f func() error) error {
	if err := names.Label(name); err != nil {
		return fmt.Errorf("%s container %q: %w", op, name, err)
	}
	return s.done(ctx, op, name, f())
}

func (s *Server) done(ctx context.Context, op, name string, err error) error {
	if err != nil {
		s.log.DebugContext(ctx, op+" failed", "container", name, "err", err)
		return fmt.Errorf("%s container %q: %w", op, name, err)
	}
	s.log.DebugContext(ctx, op, "container", name)
	return nil
}

func unimplemented(op, name string) error {
	return errcode.New(errcode.Unimplemented, "%s container %q: the driver does not support it", op, name)
}
