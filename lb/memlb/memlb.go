// Package memlb is an in-memory load-balancer driver with real semantics and
// no processes: it keeps the configuration, enforces the same validation and
// error codes as the real drivers, and picks servers for simulated
// connections (Pick) by the pools' algorithms, weights, states and health,
// so that orchestrators can be tested without HAProxy or Nginx. It needs no
// privileges and no host packages.
package memlb

import (
	"context"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
)

var _ driver.Driver = (*Driver)(nil)

// Driver is an in-memory balancer. It is safe for concurrent use.
type Driver struct {
	mu      sync.Mutex
	cfg     *driver.Config
	reloads int
	rr      map[string]int              // pool -> round-robin cursor
	conns   map[string]map[string]int64 // pool -> server -> current
	total   map[string]map[string]int64
	down    map[string]map[string]bool // pool -> server -> failing checks
	closed  bool
}

// New returns an empty balancer.
func New() *Driver {
	return &Driver{
		cfg:   &driver.Config{},
		rr:    map[string]int{},
		conns: map[string]map[string]int64{},
		total: map[string]map[string]int64{},
		down:  map[string]map[string]bool{},
	}
}

// Capabilities reports every feature: the in-memory driver models them all
// except raw snippets, which it cannot check.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ActiveHealthChecks: true, RuntimeAPI: true, TLS: true, Layer7: true, SessionStats: true, Drain: true}
}

func (d *Driver) check() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "balancer is closed")
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
	if err := driver.CheckCapabilities(cfg, d.Capabilities()); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	if driver.Equal(cfg, d.cfg) {
		return nil
	}
	d.cfg = cfg.Normalized()
	d.reloads++
	return nil
}

// Reloads returns how many Apply calls changed the configuration, so tests
// can check that an equal config is a no-op.
func (d *Driver) Reloads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloads
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return nil, err
	}
	return d.cfg.Normalized(), nil
}

func (d *Driver) change(fn func(*driver.Config) (*driver.Config, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	n, err := fn(d.cfg)
	if err != nil {
		return err
	}
	d.cfg = n
	return nil
}

// AddServer implements driver.Driver.
func (d *Driver) AddServer(ctx context.Context, pool string, srv driver.Server) error {
	return d.change(func(c *driver.Config) (*driver.Config, error) { return c.AddServer(pool, srv) })
}

// RemoveServer implements driver.Driver.
func (d *Driver) RemoveServer(ctx context.Context, pool, name string) error {
	return d.change(func(c *driver.Config) (*driver.Config, error) { return c.RemoveServer(pool, name) })
}

// SetWeight implements driver.Driver.
func (d *Driver) SetWeight(ctx context.Context, pool, name string, weight int) error {
	return d.change(func(c *driver.Config) (*driver.Config, error) { return c.SetWeight(pool, name, weight) })
}

// SetState implements driver.Driver.
func (d *Driver) SetState(ctx context.Context, pool, name string, st driver.AdminState) error {
	return d.change(func(c *driver.Config) (*driver.Config, error) { return c.SetState(pool, name, st) })
}

// SetHealthy simulates the result of a pool's health checks: a server
// marked unhealthy is Down and takes no traffic. errcode.NotFound if the
// pool or server is unknown.
func (d *Driver) SetHealthy(pool, name string, healthy bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.cfg.Pool(pool)
	if p == nil || p.Server(name) == nil {
		return errcode.New(errcode.NotFound, "no server %q in pool %q", name, pool)
	}
	if d.down[pool] == nil {
		d.down[pool] = map[string]bool{}
	}
	d.down[pool][name] = !healthy
	return nil
}

func (d *Driver) state(pool string, s *driver.Server) driver.ServerState {
	switch {
	case s.State == driver.Maintenance:
		return driver.Maint
	case s.State == driver.Drain:
		return driver.Draining
	case d.down[pool][s.Name]:
		return driver.Down
	}
	return driver.Up
}

// Stats implements driver.Driver.
func (d *Driver) Stats(ctx context.Context) ([]driver.ServerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return nil, err
	}
	var out []driver.ServerStats
	for _, p := range d.cfg.Pools {
		for _, s := range p.Servers {
			out = append(out, driver.ServerStats{
				Pool: p.Name, Server: s.Name, State: d.state(p.Name, &s), Weight: s.Weight,
				CurrentSessions: d.conns[p.Name][s.Name], TotalConnections: d.total[p.Name][s.Name],
			})
		}
	}
	slices.SortFunc(out, func(a, b driver.ServerStats) int {
		return cmpStrings(a.Pool+"\x00"+a.Server, b.Pool+"\x00"+b.Server)
	})
	return out, nil
}

func cmpStrings(a, b string) int { return strings.Compare(a, b) }

// Conn is a simulated connection to a server; Close ends it.
type Conn struct {
	d            *Driver
	Pool, Server string
	once         sync.Once
}

// Close ends the connection, lowering the server's current sessions.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		defer c.d.mu.Unlock()
		if m := c.d.conns[c.Pool]; m != nil && m[c.Server] > 0 {
			m[c.Server]--
		}
	})
	return nil
}

// Pick simulates a new connection from client to pool and returns it, open,
// as the pool's algorithm places it among its usable servers: Ready and
// healthy ones, or, if none, Ready and healthy backups. errcode.NotFound
// for an unknown pool, errcode.Unavailable if no server is usable.
func (d *Driver) Pick(pool string, client netip.Addr) (*Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.cfg.Pool(pool)
	if p == nil {
		return nil, errcode.New(errcode.NotFound, "no pool %q", pool)
	}
	var usable []driver.Server
	for _, backup := range []bool{false, true} {
		for _, s := range p.Servers {
			if s.Backup == backup && d.state(pool, &s) == driver.Up {
				usable = append(usable, s)
			}
		}
		if len(usable) > 0 {
			break
		}
	}
	if len(usable) == 0 {
		return nil, errcode.New(errcode.Unavailable, "pool %q has no usable server", pool)
	}
	if d.conns[pool] == nil {
		d.conns[pool], d.total[pool] = map[string]int64{}, map[string]int64{}
	}
	var pick string
	switch p.Algorithm {
	case driver.LeastConnections:
		best := -1.0
		for _, s := range usable {
			load := float64(d.conns[pool][s.Name]) / float64(s.Weight)
			if best < 0 || load < best {
				best, pick = load, s.Name
			}
		}
	case driver.SourceHash:
		h := fnv.New32a()
		h.Write(client.AsSlice())
		pick = slot(usable, int(h.Sum32()%uint32(sumWeights(usable))))
	default: // weighted round robin: a cursor over the weight slots
		n := d.rr[pool] % sumWeights(usable)
		d.rr[pool]++
		pick = slot(usable, n)
	}
	d.conns[pool][pick]++
	d.total[pool][pick]++
	return &Conn{d: d, Pool: pool, Server: pick}, nil
}

func sumWeights(ss []driver.Server) int {
	n := 0
	for _, s := range ss {
		n += s.Weight
	}
	return n
}

// slot returns the server owning weight slot n.
func slot(ss []driver.Server, n int) string {
	for _, s := range ss {
		if n < s.Weight {
			return s.Name
		}
		n -= s.Weight
	}
	return ss[len(ss)-1].Name
}

// Close implements driver.Driver.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}
