package lvs

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cloudflare/ipvs"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
)

var _ driver.Driver = (*Driver)(nil)

// Options configures Open. A nil *Options means the defaults.
type Options struct {
	// Do runs fn on a locked OS thread inside the network namespace of
	// the server the balancer runs on (testhost.Host.Do); the driver opens
	// its IPVS netlink socket and its health checks' connections through
	// it. Nil means the calling process's namespace.
	Do func(fn func() error) error
	// Client is the IPVS client to use instead of opening one (ipvs.New)
	// through Do.
	Client ipvs.Client
	// Logger receives the driver's log; nil discards it.
	Logger *slog.Logger
}

// Driver is a layer-4 balancer on the kernel's IPVS. It is safe for
// concurrent use.
type Driver struct {
	c   ipvs.Client
	do  func(func() error) error
	log *slog.Logger

	mu     sync.Mutex
	closed bool
	cfg    *driver.Config
	// health is what the checks found, by pool and server; a server
	// without an entry is up.
	health map[key]*health
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

type key struct{ pool, server string }

// health is one checked server's state.
type health struct {
	up        bool
	successes int
	failures  int
}

// Open returns a driver with no configuration. A kernel without IPVS is
// errcode.Unimplemented.
func Open(ctx context.Context, opts *Options) (*Driver, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &Options{}
	}
	d := &Driver{c: opts.Client, do: opts.Do, log: opts.Logger, cfg: &driver.Config{}, health: map[key]*health{}}
	if d.do == nil {
		d.do = func(fn func() error) error { return fn() }
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.c == nil {
		err := d.do(func() error {
			var err error
			d.c, err = ipvs.New()
			return err
		})
		if err != nil {
			return nil, errcode.New(errcode.Unimplemented, "lvs: this kernel offers no IPVS (load the ip_vs module): %v", err)
		}
	}
	if _, err := d.c.Info(); err != nil {
		return nil, errcode.New(errcode.Unimplemented, "lvs: this kernel offers no IPVS (load the ip_vs module): %v", err)
	}
	return d, nil
}

// Capabilities implements driver.Driver: layer 4 only, no TLS; server
// operations are netlink calls (no reload); the driver runs active health
// checks itself; Drain sets a server's IPVS weight to 0, which keeps its
// connections and sends it no new ones.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ActiveHealthChecks: true, RuntimeAPI: true, SessionStats: true, Drain: true}
}

// Scheduler returns the IPVS scheduler of an algorithm: weighted round
// robin for RoundRobin and Weighted, weighted least connections for
// LeastConnections, source hashing for SourceHash.
func Scheduler(a driver.Algorithm) string {
	switch a {
	case driver.LeastConnections:
		return "wlc"
	case driver.SourceHash:
		return "sh"
	}
	return "wrr"
}

// check validates cfg for IPVS: on top of Config.Validate and the
// capabilities, frontends are TCP on a specific address, servers have IP
// addresses of the frontend's family.
func check(cfg *driver.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := driver.CheckCapabilities(cfg, (&Driver{}).Capabilities()); err != nil {
		return err
	}
	for _, f := range cfg.Frontends {
		a, err := netip.ParseAddr(f.Address)
		if f.Protocol != driver.TCP {
			return errcode.New(errcode.Unimplemented, "lvs: frontend %s: IPVS balances TCP connections (layer 4), not %s", f.Name, f.Protocol)
		}
		if err != nil || a.IsUnspecified() {
			return errcode.New(errcode.InvalidArgument, "lvs: frontend %s: IPVS needs a virtual IP address, not %q", f.Name, f.Address)
		}
		for _, s := range cfg.Pool(f.DefaultPool).Servers {
			sa, err := netip.ParseAddr(s.Address)
			if err != nil || sa.Is4() != a.Is4() {
				return errcode.New(errcode.InvalidArgument, "lvs: pool %s: server %s: IPVS needs an IP address of the frontend's family, not %q", f.DefaultPool, s.Name, s.Address)
			}
		}
	}
	return nil
}

// service is the IPVS service of frontend f.
func service(f *driver.Frontend, p *driver.Pool) ipvs.Service {
	a := netip.MustParseAddr(f.Address)
	s := ipvs.Service{Address: a, Port: f.Port, Protocol: ipvs.TCP, Family: ipvs.INET, Scheduler: Scheduler(p.Algorithm)}
	if a.Is6() {
		s.Family = ipvs.INET6
	}
	return s
}

// destinations are the IPVS destinations pool p should have: every server
// not in maintenance, at its weight, or 0 if it is draining, down, or a
// backup while a primary is up.
func (d *Driver) destinations(p *driver.Pool) []ipvs.Destination {
	primaryUp := false
	for _, s := range p.Servers {
		if !s.Backup && s.State != driver.Maintenance && d.up(p.Name, s.Name) {
			primaryUp = true
		}
	}
	var out []ipvs.Destination
	for _, s := range p.Servers {
		if s.State == driver.Maintenance {
			continue
		}
		a := netip.MustParseAddr(s.Address)
		dst := ipvs.Destination{Address: a, Port: s.Port, FwdMethod: ipvs.Masquerade, Weight: uint32(s.Weight), Family: ipvs.INET}
		if a.Is6() {
			dst.Family = ipvs.INET6
		}
		if s.State == driver.Drain || !d.up(p.Name, s.Name) || (s.Backup && primaryUp) {
			dst.Weight = 0
		}
		out = append(out, dst)
	}
	return out
}

func (d *Driver) up(pool, server string) bool {
	h := d.health[key{pool, server}]
	return h == nil || h.up
}

// Apply implements driver.Driver: it makes the IPVS services of the
// previous configuration into those of cfg, changing only what differs,
// and (re)starts the health checks. A service or destination that was not
// made by this driver is left alone.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := check(cfg); err != nil {
		return err
	}
	cfg = cfg.Normalized()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return err
	}
	if driver.Equal(cfg, d.cfg) {
		return nil
	}
	if err := d.sync(cfg); err != nil {
		if rerr := d.sync(d.cfg, cfg); rerr != nil {
			d.log.Error("lvs: restoring the previous configuration", "err", rerr)
		}
		return err
	}
	d.cfg = cfg
	d.restartChecks()
	d.log.Info("lvs: configuration applied", "frontends", len(cfg.Frontends), "pools", len(cfg.Pools))
	return nil
}

// sync makes the kernel's services those of want. The services it owns,
// and so may remove, are those of want, of d.cfg and of others; what they
// hold now is read from the kernel, so that sync also repairs a partial
// change.
func (d *Driver) sync(want *driver.Config, others ...*driver.Config) error {
	owned := map[ipvs.Service]bool{}
	for _, c := range append([]*driver.Config{want, d.cfg}, others...) {
		for _, f := range c.Frontends {
			owned[identity(service(&f, c.Pool(f.DefaultPool)))] = true
		}
	}
	services, err := d.c.Services()
	if err != nil {
		return ipvsErr("listing services", err)
	}
	have := map[ipvs.Service][]ipvs.Destination{}
	for _, s := range services {
		id := identity(s.Service)
		if !owned[id] {
			continue
		}
		dsts, err := d.c.Destinations(id)
		if err != nil {
			return ipvsErr(fmt.Sprintf("listing destinations of %v:%d", id.Address, id.Port), err)
		}
		have[id] = nil
		for _, dst := range dsts {
			have[id] = append(have[id], dst.Destination)
		}
	}
	for _, f := range want.Frontends {
		p := want.Pool(f.DefaultPool)
		svc := service(&f, p)
		dsts, existed := have[identity(svc)]
		delete(have, identity(svc))
		if !existed {
			if err := d.c.CreateService(svc); err != nil {
				return ipvsErr("creating service "+f.Name, err)
			}
		} else if err := d.c.UpdateService(svc); err != nil { // the scheduler may differ
			return ipvsErr("updating service "+f.Name, err)
		}
		if err := d.syncDestinations(svc, dsts, d.destinations(p)); err != nil {
			return err
		}
	}
	for svc := range have {
		if err := d.c.RemoveService(svc); err != nil {
			return ipvsErr(fmt.Sprintf("removing service %v:%d", svc.Address, svc.Port), err)
		}
	}
	return nil
}

// identity is the part of a service that names it.
func identity(s ipvs.Service) ipvs.Service {
	return ipvs.Service{Address: s.Address, Port: s.Port, Protocol: s.Protocol, Family: s.Family}
}

type dstKey struct {
	addr netip.Addr
	port uint16
}

// syncDestinations changes svc's destinations from have to want.
func (d *Driver) syncDestinations(svc ipvs.Service, have, want []ipvs.Destination) error {
	old := map[dstKey]ipvs.Destination{}
	for _, h := range have {
		old[dstKey{h.Address, h.Port}] = h
	}
	for _, w := range want {
		k := dstKey{w.Address, w.Port}
		h, ok := old[k]
		delete(old, k)
		var err error
		switch {
		case !ok:
			err = d.c.CreateDestination(svc, w)
		case h != w:
			err = d.c.UpdateDestination(svc, w)
		}
		if err != nil {
			return ipvsErr(fmt.Sprintf("setting destination %v:%d", w.Address, w.Port), err)
		}
	}
	for _, h := range old {
		if err := d.c.RemoveDestination(svc, h); err != nil {
			return ipvsErr(fmt.Sprintf("removing destination %v:%d", h.Address, h.Port), err)
		}
	}
	return nil
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	return d.cfg.Normalized(), nil
}

// change applies what fn makes of the configuration in force.
func (d *Driver) change(ctx context.Context, fn func(*driver.Config) (*driver.Config, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	if err := d.checkOpen(); err != nil { // d.cfg is empty once closed
		d.mu.Unlock()
		return err
	}
	cfg, err := fn(d.cfg)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	return d.Apply(ctx, cfg)
}

// AddServer implements driver.Driver with netlink calls, without a reload.
func (d *Driver) AddServer(ctx context.Context, pool string, srv driver.Server) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.AddServer(pool, srv) })
}

// RemoveServer implements driver.Driver.
func (d *Driver) RemoveServer(ctx context.Context, pool, name string) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.RemoveServer(pool, name) })
}

// SetWeight implements driver.Driver.
func (d *Driver) SetWeight(ctx context.Context, pool, name string, weight int) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetWeight(pool, name, weight) })
}

// SetState implements driver.Driver.
func (d *Driver) SetState(ctx context.Context, pool, name string, state driver.AdminState) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetState(pool, name, state) })
}

// Stats implements driver.Driver from the kernel's counters: current
// sessions are IPVS's active connections, total connections its count.
func (d *Driver) Stats(ctx context.Context) ([]driver.ServerStats, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	counters := map[string]map[dstKey]ipvs.DestinationExtended{}
	for _, f := range d.cfg.Frontends {
		dsts, err := d.c.Destinations(service(&f, d.cfg.Pool(f.DefaultPool)))
		if err != nil {
			return nil, ipvsErr("reading destinations of "+f.Name, err)
		}
		m := counters[f.DefaultPool]
		if m == nil {
			m = map[dstKey]ipvs.DestinationExtended{}
			counters[f.DefaultPool] = m
		}
		for _, dst := range dsts {
			c := m[dstKey{dst.Address, dst.Port}]
			c.Destination = dst.Destination
			c.ActiveConnections += dst.ActiveConnections
			c.Stats64.Connections += dst.Stats64.Connections
			m[dstKey{dst.Address, dst.Port}] = c
		}
	}
	var out []driver.ServerStats
	for _, p := range d.cfg.Pools {
		for _, s := range p.Servers {
			st := driver.ServerStats{Pool: p.Name, Server: s.Name, State: driver.Up, Weight: s.Weight}
			switch {
			case s.State == driver.Maintenance:
				st.State = driver.Maint
			case s.State == driver.Drain:
				st.State = driver.Draining
			case !d.up(p.Name, s.Name):
				st.State = driver.Down
			}
			if c, ok := counters[p.Name][dstKey{netip.MustParseAddr(s.Address), s.Port}]; ok {
				st.CurrentSessions, st.TotalConnections = int64(c.ActiveConnections), int64(c.Stats64.Connections)
			}
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(a, b driver.ServerStats) int {
		if a.Pool != b.Pool {
			return cmpString(a.Pool, b.Pool)
		}
		return cmpString(a.Server, b.Server)
	})
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// restartChecks stops the running health checks and starts one loop per
// checked pool of d.cfg. d.mu is held.
func (d *Driver) restartChecks() {
	if d.stop != nil {
		d.stop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	keep := map[key]*health{}
	for _, p := range d.cfg.Pools {
		if p.HealthCheck == nil {
			continue
		}
		for _, s := range p.Servers {
			k := key{p.Name, s.Name}
			if h := d.health[k]; h != nil {
				keep[k] = h
			} else {
				keep[k] = &health{up: true}
			}
		}
		d.wg.Go(func() { d.checkLoop(ctx, p) })
	}
	d.health = keep
}

// checkLoop probes pool p's servers every interval until ctx ends, and
// re-syncs the pool's destinations when a server goes down or comes up.
func (d *Driver) checkLoop(ctx context.Context, p driver.Pool) {
	hc := p.HealthCheck
	t := time.NewTicker(hc.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		results := map[string]bool{}
		for _, s := range p.Servers {
			if s.State != driver.Maintenance {
				results[s.Name] = d.probe(ctx, hc, s)
			}
		}
		d.mu.Lock()
		if ctx.Err() == nil && d.record(p.Name, hc, results) {
			if err := d.sync(d.cfg); err != nil {
				d.log.Error("lvs: applying a health change", "pool", p.Name, "err", err)
			}
		}
		d.mu.Unlock()
	}
}

// record counts results and reports whether a server changed state.
// d.mu is held.
func (d *Driver) record(pool string, hc *driver.HealthCheck, results map[string]bool) bool {
	changed := false
	for name, ok := range results {
		h := d.health[key{pool, name}]
		if h == nil {
			continue
		}
		if ok {
			h.successes, h.failures = h.successes+1, 0
		} else {
			h.successes, h.failures = 0, h.failures+1
		}
		switch {
		case !h.up && h.successes >= hc.Rise:
			h.up, changed = true, true
			d.log.Info("lvs: server up", "pool", pool, "server", name)
		case h.up && h.failures >= hc.Fall:
			h.up, changed = false, true
			d.log.Warn("lvs: server down", "pool", pool, "server", name)
		}
	}
	return changed
}

// probe runs one health check of s, in the balancer's namespace.
func (d *Driver) probe(ctx context.Context, hc *driver.HealthCheck, s driver.Server) bool {
	addr := net.JoinHostPort(s.Address, fmt.Sprint(s.Port))
	var c net.Conn
	err := d.do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: hc.Timeout}).DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	if hc.Type != driver.HTTPCheck {
		return true
	}
	return httpCheck(c, hc, s.Address)
}

// Close implements driver.Driver: it stops the health checks and removes
// the driver's IPVS services. It is safe to call more than once; every
// other method but Capabilities then fails with errcode.FailedPrecondition.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	if d.stop != nil {
		d.stop()
	}
	err := d.sync(&driver.Config{})
	d.cfg = &driver.Config{}
	d.mu.Unlock()
	d.wg.Wait()
	return err
}

func (d *Driver) checkOpen() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "lvs: balancer is closed")
	}
	return nil
}

// ipvsErr gives an IPVS netlink error its code, by errcode's errno table.
func ipvsErr(what string, err error) error { return errcode.Syscall(err, "lvs: %s", what) }
