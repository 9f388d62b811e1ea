package memcontainer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// Snapshot implements driver.Snapshotter.
func (d *Driver) Snapshot(ctx context.Context, name, snap string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.stopped(name)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(c.snapshots, func(s snapshot) bool { return s.info.Name == snap }) {
		return errcode.New(errcode.AlreadyExists, "container %q has a snapshot %q", name, snap)
	}
	c.snapshots = append(c.snapshots, snapshot{driver.SnapshotInfo{Name: snap, Created: d.opts.Now()}, c.fs.clone()})
	return nil
}

// Snapshots implements driver.Snapshotter.
func (d *Driver) Snapshots(ctx context.Context, name string) ([]driver.SnapshotInfo, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.get(name)
	if err != nil {
		return nil, err
	}
	out := []driver.SnapshotInfo{}
	for _, s := range c.snapshots {
		out = append(out, s.info)
	}
	return out, nil
}

// Restore implements driver.Snapshotter.
func (d *Driver) Restore(ctx context.Context, name, snap string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.stopped(name)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(c.snapshots, func(s snapshot) bool { return s.info.Name == snap })
	if i < 0 {
		return errcode.New(errcode.NotFound, "container %q has no snapshot %q", name, snap)
	}
	c.fs = c.snapshots[i].fs.clone()
	return nil
}

// Clone implements driver.Snapshotter.
func (d *Driver) Clone(ctx context.Context, src, dst string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.stopped(src)
	if err != nil {
		return nil, err
	}
	if _, ok := d.containers[dst]; ok {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", dst)
	}
	spec := cloneSpec(&c.spec)
	spec.Name = dst
	for i := range spec.Networks {
		spec.Networks[i].Address, spec.Networks[i].Gateway = netip.Prefix{}, netip.Addr{}
	}
	fs := c.fs.clone()
	fs.writeFile("/etc/hostname", []byte(dst+"\n"), 0o644)
	n := &ctr{spec: spec, state: driver.Stopped, created: d.opts.Now(), fs: fs}
	d.containers[dst] = n
	return d.info(n), nil
}

// Export implements driver.Transferer.
func (d *Driver) Export(ctx context.Context, name string, w io.Writer) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	c, err := d.stopped(name)
	var fs tree
	var meta []byte
	if err == nil {
		fs = c.fs.clone()
		meta, err = json.Marshal(c.spec)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	return writeArchive(w, fs, meta, nil)
}

// Import implements driver.Transferer.
func (d *Driver) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	fs, meta, err := readTree(ctx, r, 0, d.opts.ArchiveLimits)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	spec, err := importSpec(meta, rename)
	if err != nil {
		return nil, err
	}
	setHostname(fs, meta, spec.Name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.containers[spec.Name]; ok {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", spec.Name)
	}
	c := &ctr{spec: spec, state: driver.Stopped, created: d.opts.Now(), fs: fs}
	d.containers[spec.Name] = c
	return d.info(c), nil
}

// importSpec returns the spec of an imported container from the archive's
// metadata, named rename if that is not empty.
func importSpec(meta []byte, rename string) (driver.Spec, error) {
	var spec driver.Spec
	if meta == nil {
		return spec, errcode.New(errcode.InvalidArgument, "import: the archive holds no container spec")
	}
	if err := json.Unmarshal(meta, &spec); err != nil {
		return spec, errcode.New(errcode.InvalidArgument, "import: container spec: %w", err)
	}
	if rename != "" {
		spec.Name = rename
	}
	return spec, spec.Validate()
}

// setHostname writes name into fs's /etc/hostname if the container
// described by meta, a valid spec, had another name.
func setHostname(fs tree, meta []byte, name string) {
	var was driver.Spec
	if json.Unmarshal(meta, &was) == nil && was.Name != name {
		fs.writeFile("/etc/hostname", []byte(name+"\n"), 0o644)
	}
}

func (d *Driver) stopped(name string) (*ctr, error) {
	c, err := d.get(name)
	if err != nil {
		return nil, err
	}
	if c.state != driver.Stopped {
		return nil, errcode.New(errcode.FailedPrecondition, "container %q is %s; stop it first", name, c.state)
	}
	return c, nil
}
