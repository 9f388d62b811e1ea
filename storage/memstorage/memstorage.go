// Package memstorage is an in-memory storage driver (storage/driver) with
// real semantics and no daemons: the servers of one Cluster share pools
// whose volumes hold files in memory. The coordinator forms a pool only
// once every member has joined; a mount is refused to a server the
// volume's export rules leave out, and is read-only where they or the
// mount say so; quotas refuse writes past them; a volume that is mounted
// anywhere or holds files is removed only by force. SetDown takes a
// member's storage away: a replicated volume with a copy left is Degraded
// and serves, any other is Down and fails reads and writes.
//
// Mounts have no file system: MountStatus.Path is "mem:" followed by the
// server, pool and volume, and Files reads and writes through a server's
// mount. Containers of the in-memory container driver can name such a
// path as a mount source.
package memstorage

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/storage/driver"
)

// Cluster is the in-memory world the servers' drivers share. It is safe
// for concurrent use.
type Cluster struct {
	mu      sync.Mutex
	pools   map[string]*pool
	joined  map[string]map[string]bool // pool → servers whose drivers joined
	down    map[string]bool            // servers whose storage is away
	servers map[string]*server         // by name: what survives Close
}

type pool struct {
	spec    driver.Pool
	volumes map[string]*volume
}

type volume struct {
	spec  driver.Volume
	files map[string][]byte
}

// server is what a server keeps across its drivers' Close and Open: its
// mounts, by pool.
type server struct {
	addr   netip.Addr
	mounts map[string]map[string]driver.Mount // pool → volume → mount
}

// NewCluster returns an empty in-memory world.
func NewCluster() *Cluster {
	return &Cluster{pools: map[string]*pool{}, joined: map[string]map[string]bool{}, down: map[string]bool{}, servers: map[string]*server{}}
}

// Open returns server's driver for one pool; addr is the address export
// rules see it by. A driver opened again for a server (after Close, as an
// agent restarts) finds its mounts in place once given the same config.
func (c *Cluster) Open(server string, addr netip.Addr) *Driver {
	return &Driver{c: c, server: server, addr: addr}
}

// SetDown takes server's storage away (true) or gives it back, as a
// server cut off or returning would.
func (c *Cluster) SetDown(server string, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down[server] = down
}

// Driver is one server's part in one pool.
type Driver struct {
	c      *Cluster
	server string
	addr   netip.Addr

	// cfg and closed are guarded by c.mu.
	cfg    *driver.Config
	closed bool
}

var _ driver.Driver = (*Driver)(nil)

var caps = driver.Capabilities{
	Layouts:      []driver.LayoutKind{driver.Single, driver.Distribute, driver.Replicate, driver.Disperse},
	Arbiter:      true,
	Quota:        true,
	VolumeCopies: true,
	Exports:      true,
	Grow:         true,
	Mount:        true,
	Client:       driver.Memory,
}

// Capabilities implements driver.Driver: everything the model has.
func (d *Driver) Capabilities() driver.Capabilities { return caps }

// check fails after Close. c.mu is held.
func (d *Driver) check() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "storage driver of server %q: closed", d.server)
	}
	return nil
}

// Apply implements driver.Driver.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := caps.Check(cfg); err != nil {
		return err
	}
	if cfg.Self != d.server {
		return errcode.New(errcode.InvalidArgument, "config is for server %q; this driver is server %q's", cfg.Self, d.server)
	}
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	plan, err := driver.PlanApply(d.cfg, cfg)
	if err != nil {
		return err
	}
	name := cfg.Pool.Name
	p := c.pools[name]
	_, member := cfg.Pool.Member(d.server)
	coordinator := cfg.Pool.Coordinator().Server == d.server
	if p != nil && !sameStart(p.spec.Members, cfg.Pool.Members) || p != nil && p.spec.Layout != cfg.Pool.Layout {
		return errcode.New(errcode.FailedPrecondition, "pool %q exists with other members or another layout", name)
	}
	if coordinator {
		if p != nil {
			for vn := range p.volumes {
				if _, ok := cfg.Volume(vn); !ok {
					return errcode.New(errcode.FailedPrecondition, "pool %q: volume %q is in force and not in the config; remove it with RemoveVolume", name, vn)
				}
			}
		}
		for _, m := range cfg.Pool.Members[1:] {
			if !c.joined[name][m.Server] {
				return errcode.New(errcode.Unavailable, "pool %q: member %q has not joined; apply the pool on it first", name, m.Server)
			}
		}
	} else if len(cfg.Mounts) > 0 && p == nil {
		return errcode.New(errcode.Unavailable, "pool %q is not formed yet; apply it on its coordinator %q first", name, cfg.Pool.Coordinator().Server)
	}
	// Every check that can fail comes before the first change.
	for _, m := range plan.Mount {
		if err := c.canMount(cfg, p, d.addr, m); err != nil {
			return err
		}
	}
	if member {
		if c.joined[name] == nil {
			c.joined[name] = map[string]bool{}
		}
		c.joined[name][d.server] = true
	}
	if coordinator {
		if p == nil {
			p = &pool{volumes: map[string]*volume{}}
			c.pools[name] = p
		}
		p.spec = cfg.Pool
		p.spec.Members = slices.Clone(cfg.Pool.Members)
		for _, v := range cfg.Volumes {
			if have := p.volumes[v.Name]; have != nil {
				have.spec = v
			} else {
				p.volumes[v.Name] = &volume{spec: v, files: map[string][]byte{}}
			}
		}
	}
	srv := c.serverOf(d.server, d.addr)
	mounts := map[string]driver.Mount{}
	for _, m := range cfg.Mounts {
		mounts[m.Volume] = m
	}
	srv.mounts[name] = mounts
	d.cfg = cfg.Clone()
	return nil
}

// sameStart reports whether the shorter of a and b begins the other:
// members are only ever added at the end.
func sameStart(a, b []driver.Member) bool {
	n := min(len(a), len(b))
	return slices.Equal(a[:n], b[:n])
}

func (c *Cluster) serverOf(name string, addr netip.Addr) *server {
	srv := c.servers[name]
	if srv == nil {
		srv = &server{mounts: map[string]map[string]driver.Mount{}}
		c.servers[name] = srv
	}
	srv.addr = addr
	return srv
}

// canMount checks that a server at addr may mount m of pool p (nil if
// not formed). c.mu is held.
func (c *Cluster) canMount(cfg *driver.Config, p *pool, addr netip.Addr, m driver.Mount) error {
	spec, _ := cfg.Volume(m.Volume)
	if p != nil {
		if v := p.volumes[m.Volume]; v != nil {
			spec = v.spec
		} else if cfg.Pool.Coordinator().Server != cfg.Self {
			return errcode.New(errcode.NotFound, "pool %q has no volume %q", cfg.Pool.Name, m.Volume)
		}
	}
	if driver.Allows(spec.Exports, addr) == "" {
		return errcode.New(errcode.PermissionDenied, "volume %q: no export rule admits %s", m.Volume, addr)
	}
	return nil
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	if err := d.check(); err != nil {
		return nil, err
	}
	return d.cfg.Clone(), nil
}

// Status implements driver.Driver.
func (d *Driver) Status(ctx context.Context) (*driver.Status, error) {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.check(); err != nil {
		return nil, err
	}
	if d.cfg == nil {
		return nil, errcode.New(errcode.FailedPrecondition, "server %q has joined no pool", d.server)
	}
	name := d.cfg.Pool.Name
	st := &driver.Status{Pool: name, Members: []driver.MemberStatus{}, Volumes: []driver.VolumeStatus{}, Mounts: []driver.MountStatus{}}
	for _, m := range d.cfg.Pool.Members {
		st.Members = append(st.Members, driver.MemberStatus{Server: m.Server, Up: c.joined[name][m.Server] && !c.down[m.Server]})
	}
	p := c.pools[name]
	if p != nil {
		for _, vn := range slices.Sorted(maps.Keys(p.volumes)) {
			v := p.volumes[vn]
			vs := driver.VolumeStatus{Volume: v.spec, Health: c.health(p, v), Source: "mem:" + name + "/" + vn}
			for _, f := range v.files {
				vs.UsedBytes += int64(len(f))
			}
			st.Volumes = append(st.Volumes, vs)
		}
	}
	for _, m := range d.cfg.Mounts {
		healthy := p != nil && p.volumes[m.Volume] != nil && c.health(p, p.volumes[m.Volume]) != driver.Down
		st.Mounts = append(st.Mounts, driver.MountStatus{Mount: m, Path: MountPath(d.server, name, m.Volume), Healthy: healthy})
	}
	return st, nil
}

// health is v's health with the members that are down. c.mu is held.
func (c *Cluster) health(p *pool, v *volume) driver.Health {
	down := 0
	for _, m := range p.spec.Members {
		if c.down[m.Server] {
			down++
		}
	}
	copies := 1
	switch p.spec.Layout.Kind {
	case driver.Replicate:
		copies = p.spec.Layout.Copies
		if p.spec.Layout.Arbiter {
			copies-- // the arbiter holds no data
		}
	case driver.Disperse:
		copies = p.spec.Layout.Redundancy + 1
	}
	if v.spec.Copies > 0 {
		copies = v.spec.Copies
	}
	switch {
	case down == 0:
		return driver.Healthy
	case down < copies:
		return driver.Degraded
	default:
		return driver.Down
	}
}

// MountPath is where memstorage says server mounted volume of pool.
func MountPath(server, pool, volume string) string {
	return fmt.Sprintf("mem:%s/%s/%s", server, pool, volume)
}

// RemoveVolume implements driver.Driver.
func (d *Driver) RemoveVolume(ctx context.Context, name string, opts *driver.RemoveOptions) error {
	if err := names.Label(name); err != nil {
		return err
	}
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	p, err := d.coordinated()
	if err != nil {
		return err
	}
	v := p.volumes[name]
	if v == nil {
		return errcode.New(errcode.NotFound, "pool %q has no volume %q", d.cfg.Pool.Name, name)
	}
	force := opts != nil && opts.Force
	if by := c.mountedBy(d.cfg.Pool.Name, name); len(by) > 0 && !force {
		return errcode.New(errcode.FailedPrecondition, "volume %q is mounted on %v; unmount it there or force", name, by)
	}
	if len(v.files) > 0 && !force {
		return errcode.New(errcode.FailedPrecondition, "volume %q holds %d files; empty it or force", name, len(v.files))
	}
	delete(p.volumes, name)
	d.cfg.Volumes = slices.DeleteFunc(d.cfg.Volumes, func(v driver.Volume) bool { return v.Name == name })
	for _, srv := range c.servers {
		delete(srv.mounts[d.cfg.Pool.Name], name)
	}
	return nil
}

// coordinated returns the pool if this driver is its coordinator.
// c.mu is held.
func (d *Driver) coordinated() (*pool, error) {
	if d.cfg == nil {
		return nil, errcode.New(errcode.FailedPrecondition, "server %q has joined no pool", d.server)
	}
	if co := d.cfg.Pool.Coordinator().Server; co != d.server {
		return nil, errcode.New(errcode.FailedPrecondition, "pool %q's volumes are managed on its coordinator %q, not on %q", d.cfg.Pool.Name, co, d.server)
	}
	return d.c.pools[d.cfg.Pool.Name], nil
}

// mountedBy lists the servers that mount volume of pool. c.mu is held.
func (c *Cluster) mountedBy(pool, volume string) []string {
	var by []string
	for _, name := range slices.Sorted(maps.Keys(c.servers)) {
		if _, ok := c.servers[name].mounts[pool][volume]; ok {
			by = append(by, name)
		}
	}
	return by
}

// Leave implements driver.Driver.
func (d *Driver) Leave(ctx context.Context, opts *driver.RemoveOptions) error {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	if d.cfg == nil {
		return nil
	}
	name := d.cfg.Pool.Name
	force := opts != nil && opts.Force
	if d.cfg.Pool.Coordinator().Server == d.server {
		if p := c.pools[name]; p != nil && len(p.volumes) > 0 && !force {
			return errcode.New(errcode.FailedPrecondition, "pool %q holds %d volumes; remove them or force", name, len(p.volumes))
		}
		delete(c.pools, name)
	}
	if srv := c.servers[d.server]; srv != nil {
		delete(srv.mounts, name)
	}
	delete(c.joined[name], d.server)
	d.cfg = nil
	return nil
}

// Close implements driver.Driver: the server's mounts and the pool stay.
func (d *Driver) Close() error {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	d.closed = true
	return nil
}

// Files reads and writes the top of volume through this server's mount
// of it, as a program on the server would through the mount path.
func (d *Driver) Files(volume string) *Files { return &Files{d: d, volume: volume} }

// Files is a mounted volume's top directory.
type Files struct {
	d      *Driver
	volume string
}

// open returns the mounted volume and whether writes are allowed, or
// the error a file system would give. c.mu is held.
func (f *Files) open() (*volume, bool, error) {
	d := f.d
	c := d.c
	if d.closed || d.cfg == nil {
		return nil, false, &fs.PathError{Op: "open", Path: f.volume, Err: syscall.ENOTCONN}
	}
	m, ok := c.servers[d.server].mounts[d.cfg.Pool.Name][f.volume]
	p := c.pools[d.cfg.Pool.Name]
	if !ok || p == nil || p.volumes[f.volume] == nil {
		return nil, false, &fs.PathError{Op: "open", Path: f.volume, Err: syscall.ENOTCONN}
	}
	v := p.volumes[f.volume]
	if c.health(p, v) == driver.Down {
		return nil, false, &fs.PathError{Op: "open", Path: f.volume, Err: syscall.EIO}
	}
	access := driver.Allows(v.spec.Exports, d.addr)
	if access == "" {
		return nil, false, &fs.PathError{Op: "open", Path: f.volume, Err: syscall.EACCES}
	}
	return v, !m.ReadOnly && access == driver.ReadWrite, nil
}

// WriteFile writes the file name: EROFS through a read-only mount or
// export, EDQUOT past the volume's quota.
func (f *Files) WriteFile(name string, data []byte) error {
	f.d.c.mu.Lock()
	defer f.d.c.mu.Unlock()
	v, writable, err := f.open()
	if err != nil {
		return err
	}
	if !writable {
		return &fs.PathError{Op: "write", Path: name, Err: syscall.EROFS}
	}
	if q := v.spec.QuotaBytes; q > 0 {
		used := int64(len(data))
		for n, b := range v.files {
			if n != name {
				used += int64(len(b))
			}
		}
		if used > q {
			return &fs.PathError{Op: "write", Path: name, Err: syscall.EDQUOT}
		}
	}
	v.files[name] = slices.Clone(data)
	return nil
}

// ReadFile returns the file name's contents.
func (f *Files) ReadFile(name string) ([]byte, error) {
	f.d.c.mu.Lock()
	defer f.d.c.mu.Unlock()
	v, _, err := f.open()
	if err != nil {
		return nil, err
	}
	b, ok := v.files[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return slices.Clone(b), nil
}
