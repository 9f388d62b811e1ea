// Package storage gives a cluster's containers storage that spans
// servers: pools spread over chosen servers (Gluster bricks, MooseFS chunk
// servers, one NFS server), volumes in them with quotas and export rules,
// and mounts on servers that containers bind-mount by name
// (container.Mount{Volume: "pool/volume"}), so that a container that moves
// finds its data on the new server.
//
// Pools drives each server's part in a pool through a storage/driver
// Driver: a local one, or one served by the server's agent
// (agent.Client.StoragePool). It applies the same pool and volumes to
// every server taking part, in the order a backend needs (the members,
// then the coordinator, which forms the pool, then the servers that only
// mount), and undoes what a failed call started.
package storage

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/fanout"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/storage/driver"
)

// The model, re-exported from storage/driver.
type (
	Layout        = driver.Layout
	LayoutKind    = driver.LayoutKind
	Volume        = driver.Volume
	Export        = driver.Export
	Access        = driver.Access
	RemoveOptions = driver.RemoveOptions
	Capabilities  = driver.Capabilities
	MemberStatus  = driver.MemberStatus
	VolumeStatus  = driver.VolumeStatus
	MountStatus   = driver.MountStatus
	Health        = driver.Health
)

const (
	Single     = driver.Single
	Distribute = driver.Distribute
	Replicate  = driver.Replicate
	Disperse   = driver.Disperse
	ReadWrite  = driver.ReadWrite
	ReadOnly   = driver.ReadOnly
	Healthy    = driver.Healthy
	Degraded   = driver.Degraded
	Down       = driver.Down
	Unknown    = driver.Unknown
)

// Opener opens server's part in pool, of kind: a local driver, or
// agent.Client.StoragePool.
type Opener func(kind, pool string) (driver.Driver, error)

// Options configure Pools. The zero value is usable.
type Options struct {
	// Logger receives a record per change; nil discards.
	Logger *slog.Logger
	// Now is the clock of events; nil means time.Now.
	Now func() time.Time
}

// Pools are a cluster's storage pools. It is safe for concurrent use;
// changes are serialised.
type Pools struct {
	log    *slog.Logger
	now    func() time.Time
	events *fanout.Hub[Event]

	mu      sync.Mutex
	servers map[string]*server
	pools   map[string]*pool
}

var _ container.VolumeMounter = (*Pools)(nil)

type server struct {
	addr netip.Addr
	open Opener
}

type pool struct {
	spec    PoolSpec
	volumes []driver.Volume
	parts   map[string]*part // by server
	// seen is the health last reported, for events.
	seen map[string]string
}

// part is one server's part in a pool.
type part struct {
	d      driver.Driver
	mounts []driver.Mount
}

// PoolSpec declares a pool.
type PoolSpec struct {
	Name string `json:"name"`
	// Kind is the storage kind the servers offer ("gluster", "moosefs",
	// "nfs", "memory").
	Kind string `json:"kind"`
	// Servers are the members, the coordinator first.
	Servers []string `json:"servers"`
	Layout  Layout   `json:"layout"`
}

// MountOptions say how a server mounts a volume.
type MountOptions struct {
	ReadOnly bool
}

// New returns Pools over no servers.
func New(opts *Options) *Pools {
	p := &Pools{log: slog.New(slog.DiscardHandler), now: time.Now, events: fanout.New[Event](fanout.DefaultBuffer),
		servers: map[string]*server{}, pools: map[string]*pool{}}
	if opts != nil && opts.Logger != nil {
		p.log = opts.Logger
	}
	if opts != nil && opts.Now != nil {
		p.now = opts.Now
	}
	return p
}

// AddServer makes server name, reached at addr, available to pools.
func (p *Pools) AddServer(ctx context.Context, name string, addr netip.Addr, open Opener) error {
	if err := names.Label(name); err != nil {
		return fmt.Errorf("add server %q: %w", name, err)
	}
	if !addr.IsValid() || open == nil {
		return errcode.New(errcode.InvalidArgument, "add server %q: give an address and an opener", name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.servers[name]; ok {
		return errcode.New(errcode.AlreadyExists, "add server %q: a server has that name", name)
	}
	p.servers[name] = &server{addr: addr, open: open}
	return nil
}

// RemoveServer forgets server name. One that takes part in a pool is
// errcode.FailedPrecondition: remove its mounts, or the pool, first.
func (p *Pools) RemoveServer(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.servers[name]; !ok {
		return errcode.New(errcode.NotFound, "remove server %q: no such server", name)
	}
	for _, pl := range p.sortedPools() {
		if _, ok := pl.parts[name]; ok {
			return errcode.New(errcode.FailedPrecondition, "remove server %q: it takes part in storage pool %q", name, pl.spec.Name)
		}
	}
	delete(p.servers, name)
	return nil
}

func (p *Pools) sortedPools() []*pool {
	var out []*pool
	for _, name := range slices.Sorted(maps.Keys(p.pools)) {
		out = append(out, p.pools[name])
	}
	return out
}

// config is server's config in pl. p.mu is held.
func (p *Pools) config(pl *pool, srv string) *driver.Config {
	cfg := &driver.Config{Pool: driver.Pool{Name: pl.spec.Name, Layout: pl.spec.Layout}, Self: srv, Volumes: slices.Clone(pl.volumes)}
	for _, m := range pl.spec.Servers {
		cfg.Pool.Members = append(cfg.Pool.Members, driver.Member{Server: m, Addr: p.servers[m].addr})
	}
	if pt := pl.parts[srv]; pt != nil {
		cfg.Mounts = slices.Clone(pt.mounts)
	}
	return cfg
}

// order lists pl's servers in the order they apply: the members but the
// coordinator, the coordinator, then the servers that only mount.
func (pl *pool) order() []string {
	out := append(slices.Clone(pl.spec.Servers[1:]), pl.spec.Servers[0])
	for _, srv := range slices.Sorted(maps.Keys(pl.parts)) {
		if !slices.Contains(pl.spec.Servers, srv) {
			out = append(out, srv)
		}
	}
	return out
}

// part returns srv's part in pl, opening it if new (the second result).
// p.mu is held.
func (p *Pools) part(pl *pool, srv string) (*part, bool, error) {
	if pt := pl.parts[srv]; pt != nil {
		return pt, false, nil
	}
	s := p.servers[srv]
	if s == nil {
		return nil, false, errcode.New(errcode.NotFound, "no server %q", srv)
	}
	d, err := s.open(pl.spec.Kind, pl.spec.Name)
	if err != nil {
		return nil, false, fmt.Errorf("server %q: %w", srv, err)
	}
	pt := &part{d: d}
	pl.parts[srv] = pt
	return pt, true, nil
}

// apply applies pl to servers, in order. p.mu is held.
func (p *Pools) apply(ctx context.Context, pl *pool, servers []string) error {
	for _, srv := range servers {
		pt, _, err := p.part(pl, srv)
		if err != nil {
			return err
		}
		if err := pt.d.Apply(ctx, p.config(pl, srv)); err != nil {
			return fmt.Errorf("server %q: %w", srv, err)
		}
	}
	return nil
}

// leave ends the parts of servers in pl that opened is true for (those a
// failed call started), in reverse order. p.mu is held.
func (p *Pools) leave(pl *pool, opened map[string]bool) {
	order := pl.order()
	slices.Reverse(order)
	for _, srv := range order {
		if !opened[srv] {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := pl.parts[srv].d.Leave(ctx, nil); err != nil {
			p.log.Error("storage: undoing a failed change", "pool", pl.spec.Name, "server", srv, "err", err)
		}
		cancel()
		pl.parts[srv].d.Close()
		delete(pl.parts, srv)
	}
}

// Create forms pool spec over its servers. A pool of that name is
// errcode.AlreadyExists; a spec the members cannot hold (a replica count
// above the servers given, an unknown server) errcode.InvalidArgument. If
// a server fails, the parts this call started end again.
func (p *Pools) Create(ctx context.Context, spec PoolSpec) (err error) {
	defer wrap(&err, "create storage pool %q", spec.Name)
	if err := names.Label(spec.Kind); err != nil {
		return fmt.Errorf("kind: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pools[spec.Name]; ok {
		return errcode.New(errcode.AlreadyExists, "a pool has that name")
	}
	if len(spec.Servers) == 0 {
		return errcode.New(errcode.InvalidArgument, "no servers given")
	}
	for _, srv := range spec.Servers {
		if p.servers[srv] == nil {
			return errcode.New(errcode.InvalidArgument, "no server %q", srv)
		}
	}
	pl := &pool{spec: spec, parts: map[string]*part{}, seen: map[string]string{}}
	pl.spec.Servers = slices.Clone(spec.Servers)
	if err := p.config(pl, spec.Servers[0]).Validate(); err != nil {
		return err
	}
	opened := map[string]bool{}
	for _, srv := range spec.Servers {
		_, fresh, err := p.part(pl, srv)
		if err != nil {
			p.leave(pl, opened)
			return err
		}
		opened[srv] = fresh
	}
	if err := p.apply(ctx, pl, pl.order()); err != nil {
		p.leave(pl, opened)
		return err
	}
	p.pools[spec.Name] = pl
	p.emit(Event{Pool: spec.Name, Type: PoolCreated, Message: fmt.Sprintf("%s pool over %v, %s", spec.Kind, spec.Servers, layoutString(spec.Layout))})
	return nil
}

func layoutString(l Layout) string {
	switch {
	case l.Arbiter:
		return fmt.Sprintf("%s %d with an arbiter", l.Kind, l.Copies)
	case l.Copies > 0:
		return fmt.Sprintf("%s %d", l.Kind, l.Copies)
	case l.Redundancy > 0:
		return fmt.Sprintf("%s, redundancy %d", l.Kind, l.Redundancy)
	}
	return string(l.Kind)
}

// get returns pool name. p.mu is held.
func (p *Pools) get(name string) (*pool, error) {
	pl := p.pools[name]
	if pl == nil {
		return nil, errcode.New(errcode.NotFound, "no storage pool %q", name)
	}
	return pl, nil
}

// Grow adds servers to pool as members, where its kind can
// (Capabilities().Grow; else errcode.Unimplemented).
func (p *Pools) Grow(ctx context.Context, name string, servers ...string) (err error) {
	defer wrap(&err, "grow storage pool %q", name)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return err
	}
	before := pl.spec.Servers
	for _, srv := range servers {
		if p.servers[srv] == nil {
			return errcode.New(errcode.InvalidArgument, "no server %q", srv)
		}
		if slices.Contains(pl.spec.Servers, srv) {
			return errcode.New(errcode.AlreadyExists, "server %q is a member", srv)
		}
		if _, ok := pl.parts[srv]; ok {
			return errcode.New(errcode.FailedPrecondition, "server %q mounts the pool's volumes; unmount them before it becomes a member", srv)
		}
	}
	pl.spec.Servers = append(slices.Clone(before), servers...)
	if err := p.config(pl, before[0]).Validate(); err != nil {
		pl.spec.Servers = before
		return err
	}
	opened := map[string]bool{}
	for _, srv := range servers {
		_, fresh, err := p.part(pl, srv)
		if err == nil && !fresh || err == nil && !pl.parts[srv].d.Capabilities().Grow {
			err = errcode.New(errcode.Unimplemented, "%s pools cannot grow", pl.spec.Kind)
		}
		opened[srv] = fresh
		if err != nil {
			pl.spec.Servers = before
			p.leave(pl, opened)
			return err
		}
	}
	if err := p.apply(ctx, pl, pl.order()); err != nil {
		pl.spec.Servers = before
		p.leave(pl, opened)
		// The others go back to the members before.
		if rerr := p.apply(context.WithoutCancel(ctx), pl, pl.order()); rerr != nil {
			p.log.Error("storage: undoing a failed growth", "pool", name, "err", rerr)
		}
		return err
	}
	p.emit(Event{Pool: name, Type: PoolGrown, Message: fmt.Sprintf("members %v added", servers)})
	return nil
}

// CreateVolume adds volume v to pool. One of that name is
// errcode.AlreadyExists.
func (p *Pools) CreateVolume(ctx context.Context, name string, v Volume) (err error) {
	defer wrap(&err, "create volume %q in storage pool %q", v.Name, name)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(pl.volumes, func(w driver.Volume) bool { return w.Name == v.Name }) {
		return errcode.New(errcode.AlreadyExists, "the pool has a volume of that name")
	}
	before := pl.volumes
	pl.volumes = append(slices.Clone(before), v)
	if err := p.config(pl, pl.spec.Servers[0]).Validate(); err != nil {
		pl.volumes = before
		return err
	}
	// The coordinator creates it; the others then list it.
	if err := p.apply(ctx, pl, pl.spec.Servers[:1]); err != nil {
		pl.volumes = before
		return err
	}
	if err := p.apply(ctx, pl, pl.order()); err != nil {
		return err
	}
	p.emit(Event{Pool: name, Volume: v.Name, Type: VolumeCreated})
	return nil
}

// RemoveVolume deletes volume and its data. One mounted on a server, or
// that holds files, is errcode.FailedPrecondition unless opts.Force, which
// unmounts it everywhere first.
func (p *Pools) RemoveVolume(ctx context.Context, name, volume string, opts *RemoveOptions) (err error) {
	defer wrap(&err, "remove volume %q of storage pool %q", volume, name)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(pl.volumes, func(v driver.Volume) bool { return v.Name == volume }) {
		return errcode.New(errcode.NotFound, "no such volume")
	}
	force := opts != nil && opts.Force
	if by := pl.mountedBy(volume); len(by) > 0 {
		if !force {
			return errcode.New(errcode.FailedPrecondition, "it is mounted on %v; unmount it there or force", by)
		}
		for _, srv := range by {
			if err := p.setMount(ctx, pl, srv, driver.Mount{Volume: volume}, false); err != nil {
				return err
			}
		}
	}
	if err := pl.parts[pl.spec.Servers[0]].d.RemoveVolume(ctx, volume, opts); err != nil {
		return err
	}
	pl.volumes = slices.DeleteFunc(slices.Clone(pl.volumes), func(v driver.Volume) bool { return v.Name == volume })
	if err := p.apply(ctx, pl, pl.order()); err != nil {
		return err
	}
	p.emit(Event{Pool: name, Volume: volume, Type: VolumeRemoved})
	return nil
}

// mountedBy lists the servers that mount volume, sorted.
func (pl *pool) mountedBy(volume string) []string {
	var by []string
	for _, srv := range slices.Sorted(maps.Keys(pl.parts)) {
		if slices.ContainsFunc(pl.parts[srv].mounts, func(m driver.Mount) bool { return m.Volume == volume }) {
			by = append(by, srv)
		}
	}
	return by
}

// setMount mounts m on srv (add) or unmounts its volume there, and
// applies srv's config; on failure srv's mounts are as before, and a part
// this call opened ends. p.mu is held.
func (p *Pools) setMount(ctx context.Context, pl *pool, srv string, m driver.Mount, add bool) error {
	pt, fresh, err := p.part(pl, srv)
	if err != nil {
		return err
	}
	before := pt.mounts
	pt.mounts = slices.DeleteFunc(slices.Clone(before), func(x driver.Mount) bool { return x.Volume == m.Volume })
	if add {
		pt.mounts = append(pt.mounts, m)
	}
	if err := p.apply(ctx, pl, []string{srv}); err != nil {
		pt.mounts = before
		if fresh {
			p.leave(pl, map[string]bool{srv: true})
		}
		return err
	}
	typ := Unmounted
	if add {
		typ = Mounted
	}
	p.emit(Event{Pool: pl.spec.Name, Volume: m.Volume, Server: srv, Type: typ})
	// A server that only mounted and mounts nothing more leaves.
	if len(pt.mounts) == 0 && !slices.Contains(pl.spec.Servers, srv) {
		if err := pt.d.Leave(ctx, nil); err != nil {
			return err
		}
		pt.d.Close()
		delete(pl.parts, srv)
	}
	return nil
}

// Mount mounts volume of pool on server and returns where: the path a
// container bind-mounts (container.Mount{Volume: "pool/volume"} does so
// by name). Mounting it again with other options remounts it.
func (p *Pools) Mount(ctx context.Context, server, name, volume string, opts *MountOptions) (path string, err error) {
	defer wrap(&err, "mount volume %q of storage pool %q on %q", volume, name, server)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return "", err
	}
	if p.servers[server] == nil {
		return "", errcode.New(errcode.NotFound, "no such server")
	}
	if !slices.ContainsFunc(pl.volumes, func(v driver.Volume) bool { return v.Name == volume }) {
		return "", errcode.New(errcode.NotFound, "no such volume")
	}
	m := driver.Mount{Volume: volume, ReadOnly: opts != nil && opts.ReadOnly}
	if pt := pl.parts[server]; pt == nil || !slices.Contains(pt.mounts, m) {
		if err := p.setMount(ctx, pl, server, m, true); err != nil {
			return "", err
		}
	}
	st, err := pl.parts[server].d.Status(ctx)
	if err != nil {
		return "", err
	}
	for _, ms := range st.Mounts {
		if ms.Volume == volume {
			return ms.Path, nil
		}
	}
	return "", errcode.New(errcode.Internal, "the server reports no mount of it after mounting it")
}

// MountVolume implements container.VolumeMounter: volume mounted
// read-write on server, unless it is mounted there already.
func (p *Pools) MountVolume(ctx context.Context, server, pool, volume string) error {
	p.mu.Lock()
	if pl := p.pools[pool]; pl != nil && pl.parts[server] != nil && slices.ContainsFunc(pl.parts[server].mounts, func(m driver.Mount) bool { return m.Volume == volume }) {
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	_, err := p.Mount(ctx, server, pool, volume, nil)
	return err
}

// Unmount unmounts volume of pool on server. A busy mount (a container
// still bind-mounts it) is errcode.FailedPrecondition.
func (p *Pools) Unmount(ctx context.Context, server, name, volume string) (err error) {
	defer wrap(&err, "unmount volume %q of storage pool %q on %q", volume, name, server)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return err
	}
	if !slices.Contains(pl.mountedBy(volume), server) {
		return errcode.New(errcode.NotFound, "it is not mounted there")
	}
	return p.setMount(ctx, pl, server, driver.Mount{Volume: volume}, false)
}

// Remove ends pool: every server's part, and, with opts.Force, its
// volumes and data. A pool with volumes is errcode.FailedPrecondition
// unless opts.Force; so is one mounted anywhere.
func (p *Pools) Remove(ctx context.Context, name string, opts *RemoveOptions) (err error) {
	defer wrap(&err, "remove storage pool %q", name)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return err
	}
	force := opts != nil && opts.Force
	if len(pl.volumes) > 0 && !force {
		return errcode.New(errcode.FailedPrecondition, "it holds volumes %v; remove them or force", volumeNames(pl.volumes))
	}
	// The servers that only mount leave first, the coordinator (which
	// deletes the pool) before the other members.
	order := pl.order()
	slices.Reverse(order)
	co := len(order) - len(pl.spec.Servers)
	order = append(append(order[:co:co], pl.spec.Servers[0]), pl.spec.Servers[1:]...)
	for _, srv := range order {
		pt := pl.parts[srv]
		if pt == nil {
			continue
		}
		if err := pt.d.Leave(ctx, opts); err != nil {
			return fmt.Errorf("server %q: %w", srv, err)
		}
		pt.d.Close()
		delete(pl.parts, srv)
	}
	delete(p.pools, name)
	p.emit(Event{Pool: name, Type: PoolRemoved})
	return nil
}

func volumeNames(vs []driver.Volume) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Name)
	}
	return out
}

// List returns the pools, sorted by name.
func (p *Pools) List() []PoolSpec {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []PoolSpec
	for _, pl := range p.sortedPools() {
		spec := pl.spec
		spec.Servers = slices.Clone(spec.Servers)
		out = append(out, spec)
	}
	return out
}

// Status is a pool's state: its members and volumes as the coordinator
// sees them, and every server's mounts.
type Status struct {
	Pool    string                   `json:"pool"`
	Kind    string                   `json:"kind"`
	Layout  Layout                   `json:"layout"`
	Members []MemberStatus           `json:"members"`
	Volumes []VolumeStatus           `json:"volumes"`
	Mounts  map[string][]MountStatus `json:"mounts"` // by server
}

// Status reports pool and publishes an event for every change of a
// member's or a volume's health since the last Status. A server that does
// not answer has its mounts reported unhealthy.
func (p *Pools) Status(ctx context.Context, name string) (st *Status, err error) {
	defer wrap(&err, "status of storage pool %q", name)
	p.mu.Lock()
	defer p.mu.Unlock()
	pl, err := p.get(name)
	if err != nil {
		return nil, err
	}
	co, err := pl.parts[pl.spec.Servers[0]].d.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("coordinator %q: %w", pl.spec.Servers[0], err)
	}
	st = &Status{Pool: name, Kind: pl.spec.Kind, Layout: pl.spec.Layout, Members: co.Members, Volumes: co.Volumes, Mounts: map[string][]MountStatus{}}
	for _, srv := range slices.Sorted(maps.Keys(pl.parts)) {
		pt := pl.parts[srv]
		if len(pt.mounts) == 0 {
			continue
		}
		s := co
		if srv != pl.spec.Servers[0] {
			if s, err = pt.d.Status(ctx); err != nil {
				p.log.WarnContext(ctx, "storage: a server's status", "pool", name, "server", srv, "err", err)
				s = &driver.Status{}
				for _, m := range pt.mounts {
					s.Mounts = append(s.Mounts, driver.MountStatus{Mount: m})
				}
			}
		}
		st.Mounts[srv] = s.Mounts
	}
	p.healthEvents(pl, st)
	return st, nil
}

// healthEvents publishes the changes of health st shows since the last
// status of pl. p.mu is held.
func (p *Pools) healthEvents(pl *pool, st *Status) {
	report := func(key string, ev Event, state string) {
		if was, ok := pl.seen[key]; ok && was != state {
			p.emit(ev)
		}
		pl.seen[key] = state
	}
	for _, m := range st.Members {
		state, typ := "up", MemberUp
		if !m.Up {
			state, typ = "down", MemberDown
		}
		report("member/"+m.Server, Event{Pool: st.Pool, Server: m.Server, Type: typ}, state)
	}
	for _, v := range st.Volumes {
		report("volume/"+v.Name, Event{Pool: st.Pool, Volume: v.Name, Type: VolumeHealth, Health: v.Health,
			Message: fmt.Sprintf("%d entries short of copies", v.Pending)}, string(v.Health))
	}
}

// wrap prefixes a non-nil *err with what was being done, keeping its
// errcode.
func wrap(err *error, format string, args ...any) {
	if *err != nil {
		*err = fmt.Errorf(format+": %w", append(args, *err)...)
	}
}
