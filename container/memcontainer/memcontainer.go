// Package memcontainer is an in-memory container driver for tests of
// programs built on package container. It keeps the semantics of a real
// driver (states, errors, image digests, snapshots, export archives that
// real drivers import) without a kernel: a container's filesystem is a map
// in memory and Exec runs a few built-in programs on it:
//
//	true, false, echo ARGS, cat [FILE...], tee FILE, sleep SECONDS, env, pwd, hostname
//
// A program is found through PATH in the container's filesystem, as in a
// shell; one that is missing exits 127, and one that exists but has no
// built-in returns an errcode.Unimplemented error. Bind mounts read and
// write the server's real directories, confined with os.Root.
//
// It needs no privileges. Archives are the format of package image, so a
// container exported here imports into drivers/lxc and back; they are
// read with image.ScanArchive, the reader every driver uses, so this
// driver refuses what the others refuse, within Options.ArchiveLimits.
package memcontainer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Options configure a Driver. The zero value is usable.
type Options struct {
	// Hostname, CPUs and MemoryBytes are what HostInfo reports:
	// the simulated server's capacity. Defaults: "memory", 4, 8 GiB.
	Hostname    string
	CPUs        int
	MemoryBytes int64
	// Bridges names the bridges that exist on the simulated server;
	// attaching to another is errcode.NotFound.
	Bridges []string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ArchiveLimits bound the archives the driver reads, image blobs
	// (PutImage) and imported containers (Import), which package image's
	// one reader checks as it does for every driver. Zero fields take
	// image.DefaultLimits values, except that MaxBytes defaults to 1 GiB
	// and MaxEntries to 100,000: this driver keeps every file in memory.
	ArchiveLimits image.Limits
	// Volumes says where the server mounted storage volumes, for
	// containers that mount one (driver.Mount.Volume); each must be a
	// directory, as any mount source. Nil refuses them with
	// errcode.Unimplemented.
	Volumes driver.VolumePaths
}

// Driver is an in-memory driver.Driver. It is safe for concurrent use.
type Driver struct {
	opts Options

	mu         sync.Mutex
	containers map[string]*ctr
	staged     map[string]*staged         // pre-copies in progress, by name
	images     map[string]*image.Manifest // by name
	blobs      map[string][]byte          // by digest
	nextPID    int

	closed atomic.Bool
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.Images      = (*Driver)(nil)
	_ driver.Snapshotter = (*Driver)(nil)
	_ driver.Transferer  = (*Driver)(nil)
	_ driver.PreCopier   = (*Driver)(nil)
	_ driver.Host        = (*Driver)(nil)
	_ driver.Autostarter = (*Driver)(nil)
)

type ctr struct {
	spec      driver.Spec
	state     driver.State
	pid       int
	created   time.Time
	fs        tree
	snapshots []snapshot
	// mounts are spec's mounts as resolved when it last started.
	mounts []driver.Mount
}

type snapshot struct {
	info driver.SnapshotInfo
	fs   tree
}

// New returns an empty in-memory server. opts may be nil.
func New(opts *Options) *Driver {
	d := &Driver{
		containers: map[string]*ctr{},
		staged:     map[string]*staged{},
		images:     map[string]*image.Manifest{},
		blobs:      map[string][]byte{},
		nextPID:    1000,
	}
	if opts != nil {
		d.opts = *opts
	}
	if d.opts.Hostname == "" {
		d.opts.Hostname = "memory"
	}
	if d.opts.CPUs == 0 {
		d.opts.CPUs = 4
	}
	if d.opts.MemoryBytes == 0 {
		d.opts.MemoryBytes = 8 << 30
	}
	if d.opts.Now == nil {
		d.opts.Now = time.Now
	}
	if d.opts.ArchiveLimits.MaxBytes <= 0 {
		d.opts.ArchiveLimits.MaxBytes = 1 << 30
	}
	if d.opts.ArchiveLimits.MaxEntries <= 0 {
		d.opts.ArchiveLimits.MaxEntries = 100_000
	}
	return d
}

// Create implements driver.Driver.
func (d *Driver) Create(ctx context.Context, spec *driver.Spec) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.containers[spec.Name]; ok {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", spec.Name)
	}
	m := d.lookupImage(spec.Image)
	if m == nil {
		return nil, errcode.New(errcode.NotFound, "image %q not found", spec.Image)
	}
	if _, err := d.checkHost(ctx, spec); err != nil {
		return nil, err
	}
	blob := d.blobs[m.Digest]
	fs, _, err := readTree(ctx, bytes.NewReader(blob), int64(len(blob)), d.opts.ArchiveLimits)
	if err != nil {
		return nil, errcode.New(errcode.Internal, "image %q: %w", spec.Image, err)
	}
	fs.writeFile("/etc/hostname", []byte(spec.Name+"\n"), 0o644)
	c := &ctr{spec: cloneSpec(spec), state: driver.Stopped, created: d.opts.Now(), fs: fs}
	d.containers[spec.Name] = c
	return d.info(c), nil
}

// checkHost reports what spec needs of the server that it lacks, and
// returns spec's mounts with their volumes' paths on it.
func (d *Driver) checkHost(ctx context.Context, spec *driver.Spec) ([]driver.Mount, error) {
	for _, n := range spec.Networks {
		if !slices.Contains(d.opts.Bridges, n.Bridge) {
			return nil, errcode.New(errcode.NotFound, "bridge %q does not exist", n.Bridge)
		}
	}
	mounts, err := driver.ResolveMounts(ctx, spec, d.opts.Volumes)
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		st, err := os.Stat(m.Source)
		if err != nil {
			return nil, errcode.New(errcode.NotFound, "mount source %q: %w", m.Source, err)
		}
		if !st.IsDir() {
			return nil, errcode.New(errcode.InvalidArgument, "mount source %q is not a directory", m.Source)
		}
	}
	return mounts, nil
}

// Delete implements driver.Driver.
func (d *Driver) Delete(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get(name)
	if err != nil {
		return err
	}
	if c.state != driver.Stopped {
		return errcode.New(errcode.FailedPrecondition, "container %q is %s; stop it first", name, c.state)
	}
	delete(d.containers, name)
	return nil
}

// Start implements driver.Driver.
func (d *Driver) Start(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get(name)
	if err != nil {
		return err
	}
	if c.state != driver.Stopped {
		return errcode.New(errcode.FailedPrecondition, "container %q is already %s", name, c.state)
	}
	mounts, err := d.checkHost(ctx, &c.spec)
	if err != nil {
		return err
	}
	c.mounts = mounts
	d.nextPID++
	c.state, c.pid = driver.Running, d.nextPID
	return nil
}

// Stop implements driver.Driver. Built-in init always shuts down at once.
func (d *Driver) Stop(ctx context.Context, name string, timeout time.Duration) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get(name)
	if err != nil {
		return err
	}
	c.state, c.pid = driver.Stopped, 0
	return nil
}

// Freeze implements driver.Driver.
func (d *Driver) Freeze(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	return d.transition(name, driver.Running, driver.Frozen)
}

// Unfreeze implements driver.Driver.
func (d *Driver) Unfreeze(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	return d.transition(name, driver.Frozen, driver.Running)
}

func (d *Driver) transition(name string, from, to driver.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get(name)
	if err != nil {
		return err
	}
	if c.state != from {
		return errcode.New(errcode.FailedPrecondition, "container %q is %s, not %s", name, c.state, from)
	}
	c.state = to
	return nil
}

// Get implements driver.Driver.
func (d *Driver) Get(ctx context.Context, name string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get(name)
	if err != nil {
		return nil, err
	}
	return d.info(c), nil
}

// List implements driver.Driver.
func (d *Driver) List(ctx context.Context) ([]*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*driver.Info, 0, len(d.containers))
	for _, name := range slices.Sorted(maps.Keys(d.containers)) {
		out = append(out, d.info(d.containers[name]))
	}
	return out, nil
}

// Close implements driver.Driver. Closing again returns nil; every other
// method then fails with errcode.FailedPrecondition.
func (d *Driver) Close() error {
	d.closed.Store(true)
	return nil
}

// checkOpen returns errcode.FailedPrecondition once the driver is closed.
func (d *Driver) checkOpen() error {
	if d.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "memcontainer: the driver is closed")
	}
	return nil
}

// HostInfo implements driver.Host.
func (d *Driver) HostInfo(ctx context.Context) (*driver.HostInfo, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	h := &driver.HostInfo{
		Hostname:    d.opts.Hostname,
		CPUs:        d.opts.CPUs,
		MemoryBytes: d.opts.MemoryBytes,
		MemoryFree:  d.opts.MemoryBytes,
		Containers:  len(d.containers),
		Driver:      "memory",
	}
	for _, c := range d.containers {
		if c.state != driver.Stopped {
			h.Running++
			h.MemoryFree -= c.spec.Limits.MemoryBytes
		}
	}
	return h, nil
}

// StartAutostart implements driver.Autostarter.
func (d *Driver) StartAutostart(ctx context.Context) ([]string, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	var names []string
	for _, name := range slices.Sorted(maps.Keys(d.containers)) {
		if c := d.containers[name]; c.spec.Autostart && c.state == driver.Stopped {
			names = append(names, name)
		}
	}
	d.mu.Unlock()
	for _, name := range names {
		if err := d.Start(ctx, name); err != nil {
			return nil, err
		}
	}
	return names, nil
}

func (d *Driver) get(name string) (*ctr, error) {
	c, ok := d.containers[name]
	if !ok {
		return nil, errcode.New(errcode.NotFound, "container %q not found", name)
	}
	return c, nil
}

func (d *Driver) info(c *ctr) *driver.Info {
	info := &driver.Info{Spec: cloneSpec(&c.spec), State: c.state, PID: c.pid, Created: c.created}
	if c.state != driver.Stopped {
		for _, n := range c.spec.Networks {
			if n.Address.IsValid() {
				info.Addresses = append(info.Addresses, n.Address.Addr())
			}
		}
		info.Usage.Pids = 1
	}
	return info
}

func cloneSpec(s *driver.Spec) driver.Spec {
	c := *s
	c.Mounts = slices.Clone(s.Mounts)
	c.Networks = slices.Clone(s.Networks)
	c.Labels = maps.Clone(s.Labels)
	return c
}

// PutImage implements driver.Images. Like image.Store.Put, it reads the
// blob once, checking it as an archive while keeping and hashing it, and
// validates the manifest, labels included.
func (d *Driver) PutImage(ctx context.Context, m *image.Manifest, blob io.Reader) (*image.Manifest, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := names.Label(m.Name); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	h := sha256.New()
	if _, err := image.ScanArchive(ctx, io.TeeReader(blob, io.MultiWriter(&buf, h)), 0, d.opts.ArchiveLimits, nil); err != nil {
		return nil, fmt.Errorf("image %q: %w", m.Name, err)
	}
	data := buf.Bytes()
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if m.Digest != "" && m.Digest != digest {
		return nil, errcode.New(errcode.InvalidArgument, "image %q: blob digest %s does not match %s", m.Name, digest, m.Digest)
	}
	if m.Size != 0 && m.Size != int64(len(data)) {
		return nil, errcode.New(errcode.InvalidArgument, "image %q: blob is %d bytes, not %d", m.Name, len(data), m.Size)
	}
	stored := *m
	stored.Digest, stored.Size, stored.Labels = digest, int64(len(data)), maps.Clone(m.Labels)
	if stored.Created.IsZero() {
		stored.Created = d.opts.Now()
	}
	if stored.Arch == "" {
		stored.Arch = runtime.GOARCH
	}
	if err := stored.Validate(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.images[m.Name]; ok {
		if old.Digest != digest {
			return nil, errcode.New(errcode.AlreadyExists, "image %q exists with digest %s", m.Name, old.Digest)
		}
		c := *old
		return &c, nil
	}
	d.images[m.Name] = &stored
	d.blobs[digest] = data
	c := stored
	return &c, nil
}

// Image implements driver.Images.
func (d *Driver) Image(ctx context.Context, ref string) (*image.Manifest, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.lookupImage(ref)
	if m == nil {
		return nil, errcode.New(errcode.NotFound, "image %q not found", ref)
	}
	c := *m
	return &c, nil
}

// ListImages implements driver.Images.
func (d *Driver) ListImages(ctx context.Context) ([]*image.Manifest, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*image.Manifest
	for _, name := range slices.Sorted(maps.Keys(d.images)) {
		c := *d.images[name]
		out = append(out, &c)
	}
	return out, nil
}

// OpenImage implements driver.Images.
func (d *Driver) OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error) {
	if err := d.checkOpen(); err != nil {
		return nil, nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.lookupImage(ref)
	if m == nil {
		return nil, nil, errcode.New(errcode.NotFound, "image %q not found", ref)
	}
	c := *m
	return &c, io.NopCloser(bytes.NewReader(d.blobs[m.Digest])), nil
}

// DeleteImage implements driver.Images.
func (d *Driver) DeleteImage(ctx context.Context, ref string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.lookupImage(ref)
	if m == nil {
		return errcode.New(errcode.NotFound, "image %q not found", ref)
	}
	delete(d.images, m.Name)
	for _, other := range d.images {
		if other.Digest == m.Digest {
			return nil
		}
	}
	delete(d.blobs, m.Digest)
	return nil
}

// lookupImage finds an image by name or digest; nil if none.
func (d *Driver) lookupImage(ref string) *image.Manifest {
	if m, ok := d.images[ref]; ok {
		return m
	}
	for _, m := range d.images {
		if m.Digest == ref {
			return m
		}
	}
	return nil
}
