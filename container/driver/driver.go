// Package driver defines what container backends implement.
//
// Application code uses package container; this package is for driver authors.
// A driver manages the containers of one server. Drivers return raw errors that
// carry an errcode; the portable type validates input before calling a driver,
// so drivers may assume names and specs passed Spec.Validate, and wraps errors
// once with the container's name.
//
// Every driver passes the conformance suite in package container/drivertest.
package driver

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
)

// Driver manages the containers of one server.
type Driver interface {
	// Create makes a stopped container from spec.Image, an image reference in
	// the server's image store. errcode.AlreadyExists if the name is taken,
	// errcode.NotFound if the image is unknown. On any error nothing of the
	// container is left behind.
	Create(ctx context.Context, spec *Spec) (*Info, error)
	// Delete removes a stopped or frozen-then-stopped container and its
	// snapshots. errcode.NotFound if unknown, errcode.FailedPrecondition if
	// it is running or frozen.
	Delete(ctx context.Context, name string) error
	// Start starts a stopped container and returns once it is running.
	// errcode.FailedPrecondition if it is not stopped.
	Start(ctx context.Context, name string) error
	// Stop asks the container's init to shut down and waits up to timeout,
	// then kills it. Stopping a stopped container is a no-op; a frozen one is
	// thawed first.
	Stop(ctx context.Context, name string, timeout time.Duration) error
	// Freeze suspends every process of a running container; Unfreeze resumes
	// them. errcode.FailedPrecondition if the container is not running
	// (Freeze) or not frozen (Unfreeze).
	Freeze(ctx context.Context, name string) error
	Unfreeze(ctx context.Context, name string) error
	// Get returns the container's current state. errcode.NotFound if unknown.
	Get(ctx context.Context, name string) (*Info, error)
	// List returns every container, sorted by name.
	List(ctx context.Context) ([]*Info, error)
	// Exec runs a process in a running container and returns its exit code.
	// errcode.FailedPrecondition if the container is not running. A program
	// that does not exist in the container exits with code 127, as in a
	// shell. Exec returns once the process has exited and its output is
	// copied. Cancelling ctx kills the process and returns ctx's error.
	Exec(ctx context.Context, name string, p *Process) (exitCode int, err error)
	// Close releases the driver's resources; containers keep running.
	// Closing again returns nil; every other method, of the optional
	// interfaces below too, then fails with errcode.FailedPrecondition.
	Close() error
}

// Images is a server's image store as drivers expose it.
type Images interface {
	// PutImage stores an image blob (an archive, see package image) under
	// m.Name. If m.Digest is set the blob must match it. Idempotent for an
	// equal digest; errcode.AlreadyExists if the name holds another digest.
	PutImage(ctx context.Context, m *image.Manifest, blob io.Reader) (*image.Manifest, error)
	// Image returns the manifest of a name or digest. errcode.NotFound.
	Image(ctx context.Context, ref string) (*image.Manifest, error)
	// ListImages returns every image, sorted by name.
	ListImages(ctx context.Context) ([]*image.Manifest, error)
	// OpenImage streams an image's blob. errcode.NotFound.
	OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error)
	// DeleteImage removes an image. errcode.NotFound.
	DeleteImage(ctx context.Context, ref string) error
}

// Snapshotter is implemented by drivers that keep point-in-time copies of a
// container's filesystem and clone containers.
type Snapshotter interface {
	// Snapshot records the filesystem of a stopped container under snapshot.
	// errcode.FailedPrecondition if it is running, errcode.AlreadyExists if
	// the snapshot name is taken.
	Snapshot(ctx context.Context, name, snapshot string) error
	// Snapshots lists a container's snapshots, oldest first.
	Snapshots(ctx context.Context, name string) ([]SnapshotInfo, error)
	// Restore replaces a stopped container's filesystem with a snapshot.
	Restore(ctx context.Context, name, snapshot string) error
	// Clone copies a stopped container (its filesystem, limits, mounts,
	// labels) into a new stopped container named dst. Network addresses are
	// not copied, since two containers may not share one.
	Clone(ctx context.Context, src, dst string) (*Info, error)
}

// Transferer is implemented by drivers that move containers as a stream.
type Transferer interface {
	// Export writes a stopped container as an archive (see package image:
	// the Spec as JSON metadata plus the root filesystem) to w.
	// errcode.FailedPrecondition if it is not stopped.
	Export(ctx context.Context, name string, w io.Writer) error
	// Import creates a stopped container from an Export archive. The
	// container's name is the archive's unless rename is not empty. On any
	// error, including a truncated stream, nothing is left behind.
	Import(ctx context.Context, r io.Reader, rename string) (*Info, error)
}

// PreCopier is implemented by drivers that copy a container while it
// runs, in passes of package image's pre-copy format (image.WriteChanges),
// so that a move stops it only for the last pass.
type PreCopier interface {
	// ExportChanges writes a pass of the container name, running or not,
	// to w: the whole container if base is nil, else what changed against
	// base, the Index of the target's staged copy. The metadata wrapped in
	// the pass's image.Changes is the Spec as JSON.
	ExportChanges(ctx context.Context, name string, base *image.Index, w io.Writer) error
	// Stage applies a pass to the staged copy name, the container's name
	// here whatever the pass's spec says, and returns the copy's Index. A
	// first pass creates the staged copy: errcode.AlreadyExists if name
	// has a container or a staged copy. A later pass needs it:
	// errcode.FailedPrecondition if there is none. A staged copy is no
	// container: Get and List do not see it. On any other error the
	// staged copy is removed.
	Stage(ctx context.Context, r io.Reader, name string) (*image.Index, error)
	// CommitStaged makes the staged copy name a stopped container.
	// errcode.NotFound if there is none, errcode.AlreadyExists if the
	// name has a container.
	CommitStaged(ctx context.Context, name string) (*Info, error)
	// DropStaged removes the staged copy name; nil if there is none.
	DropStaged(ctx context.Context, name string) error
}

// Endpoint is implemented by remote drivers (agent.Client): drivers that
// reach their server over the network, at an address other servers of the
// cluster can reach it at too. Push and Pull are given such addresses.
type Endpoint interface {
	// Endpoint returns the server's address, host:port.
	Endpoint() string
}

// Pusher is implemented by drivers whose server can stream a container
// straight to another server, without the caller relaying the bytes.
type Pusher interface {
	// Push streams the stopped container name to the server at endpoint
	// target (an Endpoint of that server's driver), which imports it as
	// Import does, named rename if that is not empty, and returns the
	// copy, created stopped there. The container stays here. progress,
	// if not nil, is called as in Pipe with the archive bytes sent so
	// far, never after Push returns. errcode.NotFound if the container
	// is unknown, errcode.FailedPrecondition if it is not stopped,
	// errcode.AlreadyExists if the target has a container of that name,
	// errcode.InvalidArgument for a malformed target, errcode.Unavailable
	// if the target cannot be reached, errcode.PermissionDenied if it is
	// not of the cluster, errcode.Unimplemented if either server cannot
	// export or import. On any failure nothing is left on the target.
	Push(ctx context.Context, name, target, rename string, progress func(bytes int64)) (*Info, error)
}

// Puller is implemented by drivers whose server can fetch a container
// straight from another server, without the caller relaying the bytes.
type Puller interface {
	// Pull streams the stopped container name from the server at endpoint
	// source (an Endpoint of that server's driver) and imports it here as
	// Import does, named rename if that is not empty; the container stays
	// on the source. progress is as for Push, with the bytes received.
	// The errors are Push's, with the roles of the servers swapped; on
	// any failure nothing is left here.
	Pull(ctx context.Context, source, name, rename string, progress func(bytes int64)) (*Info, error)
}

// Host is implemented by drivers that report on the server they run on.
type Host interface {
	HostInfo(ctx context.Context) (*HostInfo, error)
}

// Autostarter is implemented by drivers that start the containers marked
// Autostart, as a server does when it boots.
type Autostarter interface {
	// StartAutostart starts every stopped container whose spec has
	// Autostart set and returns the names it started.
	StartAutostart(ctx context.Context) ([]string, error)
}

// Spec describes a container.
type Spec struct {
	Name      string            `json:"name"`
	Image     string            `json:"image"`
	Limits    Limits            `json:"limits,omitzero"`
	Mounts    []Mount           `json:"mounts,omitempty"`
	Networks  []Network         `json:"networks,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Autostart bool              `json:"autostart,omitempty"`
}

// Limits caps a container's resources. Zero means unlimited.
type Limits struct {
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// MilliCPU is CPU time in thousandths of a core: 500 is half a core.
	MilliCPU int64 `json:"milliCPU,omitempty"`
	Pids     int64 `json:"pids,omitempty"`
}

// Mount bind-mounts a directory of the server, or a storage volume the
// server mounted, into the container.
type Mount struct {
	// Source is an absolute path on the server; empty for a Volume.
	Source string `json:"source,omitempty"`
	// Volume names a storage volume as pool/volume, instead of a Source:
	// the driver asks its VolumePaths where the server mounted it, on
	// whichever server the container is created, imported or started, so
	// a container that moves finds its volume mounted on the new server
	// (package storage mounts it; container.Cluster does so before it
	// creates or moves such a container).
	Volume   string `json:"volume,omitempty"`
	Target   string `json:"target"` // absolute path in the container
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// PoolVolume splits m.Volume into its pool and volume names.
func (m Mount) PoolVolume() (pool, volume string) {
	pool, volume, _ = strings.Cut(m.Volume, "/")
	return pool, volume
}

// VolumePaths says where a server mounted storage volumes; a container
// driver that takes Volume mounts is given one (the agent gives its
// storage service).
type VolumePaths interface {
	// VolumePath returns the path on this server where volume of pool is
	// mounted; errcode.FailedPrecondition if it is not mounted here.
	VolumePath(ctx context.Context, pool, volume string) (string, error)
}

// ResolveMounts returns spec's mounts with each Volume's Source set to
// where vp says the server mounted it. Without vp, a Volume mount is
// errcode.Unimplemented.
func ResolveMounts(ctx context.Context, spec *Spec, vp VolumePaths) ([]Mount, error) {
	out := slices.Clone(spec.Mounts)
	for i, m := range out {
		if m.Volume == "" {
			continue
		}
		if vp == nil {
			return nil, errcode.New(errcode.Unimplemented, "container %q mounts volume %s, and this server's container driver was given no storage volumes", spec.Name, m.Volume)
		}
		pool, volume := m.PoolVolume()
		src, err := vp.VolumePath(ctx, pool, volume)
		if err != nil {
			return nil, fmt.Errorf("container %q: volume %s: %w", spec.Name, m.Volume, err)
		}
		out[i].Source = src
	}
	return out, nil
}

// Network attaches the container to a bridge on the server through a veth.
type Network struct {
	Bridge    string       `json:"bridge"`              // existing bridge on the server
	Interface string       `json:"interface,omitempty"` // name inside; default eth<index>
	Address   netip.Prefix `json:"address,omitzero"`    // static address; zero means none
	Gateway   netip.Addr   `json:"gateway,omitzero"`    // default route; zero means none
	MTU       int          `json:"mtu,omitempty"`
}

// State is a container's lifecycle state.
type State string

const (
	Stopped State = "stopped"
	Running State = "running"
	Frozen  State = "frozen"
)

// Info is a container's observed state.
type Info struct {
	Spec      Spec         `json:"spec"`
	State     State        `json:"state"`
	PID       int          `json:"pid,omitempty"` // init's PID as the server sees it; 0 unless running or frozen
	Addresses []netip.Addr `json:"addresses,omitempty"`
	Usage     Usage        `json:"usage,omitzero"`
	Created   time.Time    `json:"created"`
}

// Usage is a container's resource use.
type Usage struct {
	CPU         time.Duration `json:"cpu"`         // CPU time used since start
	MemoryBytes int64         `json:"memoryBytes"` // current memory use
	Pids        int64         `json:"pids"`        // current number of processes
}

// Process is a program to run in a container. Nil streams read nothing or
// discard output.
type Process struct {
	Args   []string  `json:"args"`
	Env    []string  `json:"env,omitempty"` // KEY=value
	Dir    string    `json:"dir,omitempty"`
	Stdin  io.Reader `json:"-"`
	Stdout io.Writer `json:"-"`
	Stderr io.Writer `json:"-"`
}

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// HostInfo describes a server and its capacity.
type HostInfo struct {
	Hostname    string `json:"hostname"`
	CPUs        int    `json:"cpus"`
	MemoryBytes int64  `json:"memoryBytes"` // total
	MemoryFree  int64  `json:"memoryFree"`  // available
	Containers  int    `json:"containers"`
	Running     int    `json:"running"`
	Driver      string `json:"driver"` // "lxc", "memory", ...
}
