package lxc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// A snapshot lives in <container>/snapshots/<name>/: its rootfs and a
// snapshotFile with its creation time.
const snapshotFile = "snapshot.json"

// lockStopped locks name, checks that it is stopped and returns its record.
func (d *Driver) lockStopped(ctx context.Context, name string) (*meta, func(), error) {
	_, m, st, unlock, err := d.openLocked(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if st != driver.Stopped {
		unlock()
		return nil, nil, notState(name, st, "stopped")
	}
	return m, unlock, nil
}

// copyTree copies the directory tree src to dst, which must not exist, with
// cp -a: symlinks are copied, never followed, and owners, modes, times,
// hard links, device nodes and extended attributes are kept; data is
// shared (reflinked) where the filesystem can.
func copyTree(ctx context.Context, src, dst string) error {
	out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", "--no-target-directory", "--", src, dst).CombinedOutput()
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("copy %s: %v: %s", src, err, bytes.TrimSpace(out))
	}
	return nil
}

// Snapshot implements driver.Snapshotter.
func (d *Driver) Snapshot(ctx context.Context, name, snapshot string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	if err := names.Label(snapshot); err != nil {
		return fmt.Errorf("snapshot name: %w", err)
	}
	_, unlock, err := d.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	dst := d.path(name, "snapshots", snapshot)
	if _, err := os.Lstat(dst); err == nil {
		return errcode.New(errcode.AlreadyExists, "container %q has a snapshot %q", name, snapshot)
	}
	stage, err := os.MkdirTemp(d.lxcpath, stagingPrefix+"*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := copyTree(ctx, d.path(name, "rootfs"), filepath.Join(stage, "rootfs")); err != nil {
		return err
	}
	rec, err := json.Marshal(driver.SnapshotInfo{Name: snapshot, Created: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, snapshotFile), rec, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return os.Rename(stage, dst)
}

// Snapshots implements driver.Snapshotter.
func (d *Driver) Snapshots(ctx context.Context, name string) ([]driver.SnapshotInfo, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if _, err := d.readMeta(name); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(d.path(name, "snapshots"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	out := []driver.SnapshotInfo{}
	for _, e := range entries {
		b, err := os.ReadFile(d.path(name, "snapshots", e.Name(), snapshotFile))
		if err != nil {
			return nil, err
		}
		var s driver.SnapshotInfo
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, errcode.New(errcode.Internal, "container %q snapshot %q: %w", name, e.Name(), err)
		}
		out = append(out, s)
	}
	slices.SortStableFunc(out, func(a, b driver.SnapshotInfo) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// Restore implements driver.Snapshotter. The snapshot's copy is made
// beside the container, then swapped in.
func (d *Driver) Restore(ctx context.Context, name, snapshot string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	if err := names.Label(snapshot); err != nil {
		return fmt.Errorf("snapshot name: %w", err)
	}
	_, unlock, err := d.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	src := d.path(name, "snapshots", snapshot, "rootfs")
	if _, err := os.Lstat(src); err != nil {
		return errcode.New(errcode.NotFound, "container %q has no snapshot %q", name, snapshot)
	}
	stage, err := os.MkdirTemp(d.lxcpath, stagingPrefix+"*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage) // takes the replaced rootfs with it
	if err := copyTree(ctx, src, filepath.Join(stage, "rootfs")); err != nil {
		return err
	}
	if err := os.Rename(d.path(name, "rootfs"), filepath.Join(stage, "old")); err != nil {
		return err
	}
	return os.Rename(filepath.Join(stage, "rootfs"), d.path(name, "rootfs"))
}

// Clone implements driver.Snapshotter: the copy keeps the spec but its
// network addresses and gateways, and gets no snapshots.
func (d *Driver) Clone(ctx context.Context, src, dst string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := names.Label(dst); err != nil {
		return nil, err
	}
	if _, err := d.readMeta(dst); err == nil {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", dst)
	}
	m, unlock, err := d.lockStopped(ctx, src)
	if err != nil {
		return nil, err
	}
	defer unlock()
	spec := m.Spec
	spec.Name = dst
	spec.Networks = slices.Clone(spec.Networks)
	for i := range spec.Networks {
		spec.Networks[i].Address, spec.Networks[i].Gateway = netip.Prefix{}, netip.Addr{}
	}
	return d.install(ctx, &spec, func(rootfs string) error {
		return copyTree(ctx, d.path(src, "rootfs"), rootfs)
	})
}

// Export implements driver.Transferer: an archive of package image whose
// metadata is the container's spec as JSON.
func (d *Driver) Export(ctx context.Context, name string, w io.Writer) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	m, unlock, err := d.lockStopped(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	spec, err := json.Marshal(m.Spec)
	if err != nil {
		return err
	}
	return image.WriteArchive(ctx, w, d.path(name, "rootfs"), spec, nil)
}

// Import implements driver.Transferer. The archive is extracted into a
// staging directory, which is removed on any error.
func (d *Driver) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if rename != "" {
		if err := names.Label(rename); err != nil {
			return nil, err
		}
	}
	stage, err := os.MkdirTemp(d.lxcpath, stagingPrefix+"*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	rec, err := image.ReadArchive(ctx, r, filepath.Join(stage, "rootfs"), d.limits, nil)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	var spec driver.Spec
	if rec == nil {
		return nil, errcode.New(errcode.InvalidArgument, "import: the archive holds no container spec")
	}
	if err := json.Unmarshal(rec, &spec); err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "import: container spec: %w", err)
	}
	if rename != "" {
		spec.Name = rename
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	if err := checkBridges(&spec); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return d.commit(ctx, stage, &spec)
}
