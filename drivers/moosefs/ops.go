package moosefs

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/storage/driver"
)

// maxCheckedFiles bounds the files Status checks chunk by chunk in one
// volume, which it does only while the master counts chunks short of
// copies.
const maxCheckedFiles = 100000

// Status implements driver.Driver. Members are up while the master lists
// their chunk server as connected (with its disk's capacity and use);
// every member is down if the master cannot be reached. Volume health is
// known on the coordinator: while the master counts chunks with fewer
// valid copies than their goal, the volume's files are checked
// (mfscheckfile): Pending counts their chunks short of copies, Degraded
// if some, Down if a chunk has no copy left. A mount is healthy if it is
// a MooseFS mount that answers a statfs within Options.HealthTimeout.
func (d *Driver) Status(ctx context.Context) (*driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, d.errClosed()
	}
	cfg := d.cfg
	if cfg == nil {
		return nil, errcode.New(errcode.FailedPrecondition, "moosefs: no pool before the first Apply")
	}
	st := &driver.Status{Pool: cfg.Pool.Name, Members: []driver.MemberStatus{}, Volumes: []driver.VolumeStatus{}, Mounts: []driver.MountStatus{}}
	list, listErr := d.masterOf(cfg).chunkServers(ctx)
	for _, m := range cfg.Pool.Members {
		ms := driver.MemberStatus{Server: m.Server}
		for _, cs := range list {
			if cs.Addr == m.Addr && cs.Port == d.opts.Ports.Data && !cs.Disconnected {
				ms.Up, ms.CapacityBytes, ms.UsedBytes = true, cs.Total, cs.Used
			}
		}
		st.Members = append(st.Members, ms)
	}
	coord, _ := roles(cfg)
	var health chunkHealth
	var healthErr error
	if coord {
		health, healthErr = d.masterOf(cfg).chunkHealth(ctx)
	}
	for _, v := range cfg.Volumes {
		vs := driver.VolumeStatus{Volume: v, Health: driver.Unknown,
			Source: netip.AddrPortFrom(cfg.Pool.Coordinator().Addr, d.opts.Ports.Client).String() + ":/" + v.Name}
		if coord {
			d.volumeHealth(ctx, cfg, &vs, health, errors.Join(listErr, healthErr))
		}
		st.Volumes = append(st.Volumes, vs)
	}
	for _, m := range cfg.Mounts {
		path := d.MountPath(m.Volume)
		mi := d.mountedAt(path)
		st.Mounts = append(st.Mounts, driver.MountStatus{Mount: m, Path: path,
			Healthy: mi != nil && mi.ReadOnly == m.ReadOnly && d.healthy(ctx, path) == nil})
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return st, nil
}

// volumeHealth fills vs's health, pending chunks and use on the
// coordinator. masterErr says the master did not answer: the volume is
// down.
func (d *Driver) volumeHealth(ctx context.Context, cfg *driver.Config, vs *driver.VolumeStatus, h chunkHealth, masterErr error) {
	path := filepath.Join(d.adminPath(), vs.Name)
	if masterErr != nil || d.healthy(ctx, d.adminPath()) != nil {
		vs.Health = driver.Down
		return
	}
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		vs.Health = driver.Down
		return
	}
	if out, err := d.tool(ctx, d.opts.StartTimeout, "mfsdirinfo", "-n", "-l", path); err == nil {
		if f := strings.Fields(out); len(f) > 0 {
			vs.UsedBytes, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	vs.Health = driver.Healthy
	if h.Undergoal+h.Missing == 0 {
		return
	}
	pending, missing, err := d.checkFiles(ctx, path, copiesOf(cfg, vs.Volume))
	switch {
	case err != nil:
		vs.Health = driver.Unknown
	case missing > 0:
		vs.Health, vs.Pending = driver.Down, pending
	case pending > 0:
		vs.Health, vs.Pending = driver.Degraded, pending
	}
}

// checkFiles counts the chunks of the files under dir that have fewer
// than goal valid copies (pending) and none (missing), with mfscheckfile
// over batches of files.
func (d *Driver) checkFiles(ctx context.Context, dir string, goal int) (pending, missing int, err error) {
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		out, err := d.tool(ctx, d.opts.StartTimeout, "mfscheckfile", append([]string{"-n"}, batch...)...)
		batch = batch[:0]
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			// " chunks with 1 copy:              1"
			f := strings.Fields(sc.Text())
			if len(f) != 5 || f[0] != "chunks" || f[1] != "with" {
				continue
			}
			copies, err1 := strconv.Atoi(f[2])
			n, err2 := strconv.Atoi(f[4])
			if err1 != nil || err2 != nil {
				continue
			}
			if copies < goal {
				pending += n
			}
			if copies == 0 {
				missing += n
			}
		}
		return nil
	}
	files := 0
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		if files++; files > maxCheckedFiles {
			return filepath.SkipAll
		}
		if batch = append(batch, p); len(batch) == 200 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return pending, missing, err
}

// RemoveVolume implements driver.Driver. A volume is mounted if the
// master has a connected session of it; it is removed with its files
// (the pool keeps no trash), its export lines, and this server's mount
// of it.
func (d *Driver) RemoveVolume(ctx context.Context, name string, opts *driver.RemoveOptions) error {
	force := opts != nil && opts.Force
	if err := names.Label(name); err != nil {
		return errcode.New(errcode.InvalidArgument, "volume name: %v", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.errClosed()
	}
	cfg := d.cfg
	if cfg == nil {
		return errcode.New(errcode.FailedPrecondition, "moosefs: no pool before the first Apply")
	}
	if coord, _ := roles(cfg); !coord {
		return errcode.New(errcode.FailedPrecondition, "pool %q: volumes are removed on its coordinator, %q", cfg.Pool.Name, cfg.Pool.Coordinator().Server)
	}
	path := filepath.Join(d.adminPath(), name)
	if _, listed := cfg.Volume(name); !listed {
		return errcode.New(errcode.NotFound, "pool %q has no volume %q", cfg.Pool.Name, name)
	}
	if !force {
		sessions, err := d.masterOf(cfg).sessions(ctx)
		if err != nil {
			return err
		}
		for _, s := range sessions {
			if s.Path == "/"+name || strings.HasPrefix(s.Path, "/"+name+"/") {
				return errcode.New(errcode.FailedPrecondition, "pool %q: volume %q is mounted by %s (session %d); unmount it or remove it with Force", cfg.Pool.Name, name, s.Addr, s.ID)
			}
		}
		entries, err := os.ReadDir(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return errcode.Syscall(err, "volume %q", name)
		}
		if len(entries) > 0 {
			return errcode.New(errcode.FailedPrecondition, "pool %q: volume %q holds %d entries; remove them or remove it with Force", cfg.Pool.Name, name, len(entries))
		}
	}
	next := cfg.Clone()
	next.Volumes = slices.DeleteFunc(next.Volumes, func(v driver.Volume) bool { return v.Name == name })
	next.Mounts = slices.DeleteFunc(next.Mounts, func(m driver.Mount) bool { return m.Volume == name })
	files, err := Render(Input{Config: next, Dir: d.dir, Ports: d.opts.Ports, LeaveSpace: d.opts.LeaveSpace})
	if err != nil {
		return err
	}
	if mp := d.MountPath(name); d.mountedAt(mp) != nil {
		if err := d.unmount(mp, force); err != nil {
			return err
		}
		os.Remove(mp)
	}
	prev := d.files
	d.files = files
	if err := d.master.Apply(ctx, files.Exports, nil); err != nil {
		d.files = prev
		return err
	}
	d.cfg = next
	if err := os.RemoveAll(path); err != nil {
		return errcode.Syscall(err, "volume %q: remove", name)
	}
	return nil
}

// Leave implements driver.Driver. The coordinator refuses while the
// namespace holds a volume (a directory at its top) unless opts.Force;
// it then deletes the pool's metadata. A member's chunks are deleted with
// opts.Force only.
func (d *Driver) Leave(ctx context.Context, opts *driver.RemoveOptions) error {
	force := opts != nil && opts.Force
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.errClosed()
	}
	cfg := d.cfg
	if cfg == nil {
		return nil // no part in force: nothing to leave
	}
	coord, _ := roles(cfg)
	if coord && !force {
		entries, err := os.ReadDir(d.adminPath())
		if err != nil {
			return errcode.Syscall(err, "pool %q: list volumes", cfg.Pool.Name)
		}
		var vols []string
		for _, e := range entries {
			if e.IsDir() {
				vols = append(vols, e.Name())
			}
		}
		if len(vols) > 0 {
			return errcode.New(errcode.FailedPrecondition, "pool %q still holds volumes %v; remove them or leave with Force", cfg.Pool.Name, vols)
		}
	}
	for _, m := range cfg.Mounts {
		if d.mountedAt(d.MountPath(m.Volume)) == nil {
			continue
		}
		if err := d.unmount(d.MountPath(m.Volume), force); err != nil {
			return err
		}
		os.Remove(d.MountPath(m.Volume))
	}
	if coord {
		if err := d.unmount(d.adminPath(), true); err != nil {
			return err
		}
		os.Remove(d.adminPath())
		d.master.Stop()
		if err := os.RemoveAll(filepath.Join(d.dir, MasterDir, DataDir)); err != nil {
			return errcode.Syscall(err, "pool %q: delete the metadata", cfg.Pool.Name)
		}
	}
	d.cs.Stop()
	if force {
		// The chunks, and the chunk server's identity in the pool (a
		// chunk server keeps to the master it first served).
		for _, sub := range []string{ChunksDir, DataDir} {
			if err := os.RemoveAll(filepath.Join(d.dir, ChunkServerDir, sub)); err != nil {
				return errcode.Syscall(err, "pool %q: delete the chunk server's data", cfg.Pool.Name)
			}
		}
	}
	d.cfg, d.files = nil, nil
	return nil
}

// Close implements driver.Driver: it stops the daemons and ends the
// coordinator's admin mount, and leaves every volume mount running.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.mountedAt(d.adminPath()) != nil {
		d.unmount(d.adminPath(), true)
	}
	d.cs.Stop()
	d.master.Stop()
	d.closeNS()
	return nil
}
