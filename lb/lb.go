// Package lb balances traffic to services: a Balancer holds one
// load-balancer driver (drivers/haproxy, drivers/nginx, or lb/memlb in
// tests) and makes it serve a declared configuration of frontends (TCP or
// HTTP listeners, optionally terminating TLS, with host and path routes) and
// backend pools (servers with weights, backup servers, drain and maintenance
// states, an algorithm and health checks). The model is in package
// lb/driver and re-exported here under the same names.
//
// Apply declares the whole configuration; applying an equal one changes
// nothing. The server operations change one server without restating the
// whole configuration, through the backend's runtime API where it has one.
// Every input is validated (driver.Config.Validate) before it reaches a
// driver; errors carry an errcode and name the balancer.
package lb

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
)

// The model, from package driver.
type (
	Config       = driver.Config
	Frontend     = driver.Frontend
	Pool         = driver.Pool
	Server       = driver.Server
	Route        = driver.Route
	Redirect     = driver.Redirect
	Header       = driver.Header
	TLS          = driver.TLS
	Certificate  = driver.Certificate
	HealthCheck  = driver.HealthCheck
	ServerStats  = driver.ServerStats
	Capabilities = driver.Capabilities
	Unsafe       = driver.Unsafe
	Protocol     = driver.Protocol
	Algorithm    = driver.Algorithm
	AdminState   = driver.AdminState
	CheckType    = driver.CheckType
	ServerState  = driver.ServerState
)

// The model's constants, from package driver.
const (
	TCP  = driver.TCP
	HTTP = driver.HTTP

	RoundRobin       = driver.RoundRobin
	Weighted         = driver.Weighted
	LeastConnections = driver.LeastConnections
	SourceHash       = driver.SourceHash

	Ready       = driver.Ready
	Drain       = driver.Drain
	Maintenance = driver.Maintenance

	TCPCheck  = driver.TCPCheck
	HTTPCheck = driver.HTTPCheck

	Up       = driver.Up
	Down     = driver.Down
	Draining = driver.Draining
	Maint    = driver.Maint
)

// Options configure a Balancer. The zero value is usable.
type Options struct {
	// Logger receives one record per change; nil discards.
	Logger *slog.Logger
}

// Balancer is one load balancer. It is safe for concurrent use if its
// driver is (every driver in this module is).
type Balancer struct {
	name string
	d    driver.Driver
	log  *slog.Logger
}

// New returns a Balancer named name (a DNS label, used in errors and logs)
// that drives d. The Balancer owns d: Close closes it.
func New(name string, d driver.Driver, opts *Options) (*Balancer, error) {
	if err := driver.ValidName("balancer name", name); err != nil {
		return nil, err
	}
	if d == nil {
		return nil, errcode.New(errcode.InvalidArgument, "balancer %q: nil driver", name)
	}
	b := &Balancer{name: name, d: d, log: slog.New(slog.DiscardHandler)}
	if opts != nil && opts.Logger != nil {
		b.log = opts.Logger
	}
	return b, nil
}

func (b *Balancer) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("balancer %q: %s: %w", b.name, op, err)
}

// Apply makes the balancer serve cfg, replacing its whole configuration.
// An equal configuration changes nothing. Invalid input is
// errcode.InvalidArgument, a feature the driver lacks errcode.Unimplemented;
// on any error the running configuration stays in force.
func (b *Balancer) Apply(ctx context.Context, cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return b.wrap("apply", err)
	}
	if err := driver.CheckCapabilities(cfg, b.d.Capabilities()); err != nil {
		return b.wrap("apply", err)
	}
	if err := b.d.Apply(ctx, cfg); err != nil {
		return b.wrap("apply", err)
	}
	b.log.InfoContext(ctx, "balancer applied", "balancer", b.name, "frontends", len(cfg.Frontends), "pools", len(cfg.Pools))
	return nil
}

// Config returns the configuration in force, normalized.
func (b *Balancer) Config(ctx context.Context) (*Config, error) {
	c, err := b.d.Config(ctx)
	return c, b.wrap("config", err)
}

// AddServer adds srv to pool: errcode.NotFound for an unknown pool,
// errcode.AlreadyExists if the name is taken.
func (b *Balancer) AddServer(ctx context.Context, pool string, srv Server) error {
	if err := srv.Validate(); err != nil {
		return b.wrap("add server", err)
	}
	if err := b.d.AddServer(ctx, pool, srv); err != nil {
		return b.wrap(fmt.Sprintf("add server %q to pool %q", srv.Name, pool), err)
	}
	b.log.InfoContext(ctx, "server added", "balancer", b.name, "pool", pool, "server", srv.Name, "address", srv.Address, "port", srv.Port)
	return nil
}

// RemoveServer removes a server from pool: errcode.NotFound if either is
// unknown.
func (b *Balancer) RemoveServer(ctx context.Context, pool, name string) error {
	if err := b.d.RemoveServer(ctx, pool, name); err != nil {
		return b.wrap(fmt.Sprintf("remove server %q from pool %q", name, pool), err)
	}
	b.log.InfoContext(ctx, "server removed", "balancer", b.name, "pool", pool, "server", name)
	return nil
}

// SetWeight sets a server's weight, 1 to driver.MaxWeight.
func (b *Balancer) SetWeight(ctx context.Context, pool, name string, weight int) error {
	if weight < 1 || weight > driver.MaxWeight {
		return b.wrap("set weight", errcode.New(errcode.InvalidArgument, "weight %d is outside 1..%d", weight, driver.MaxWeight))
	}
	if err := b.d.SetWeight(ctx, pool, name, weight); err != nil {
		return b.wrap(fmt.Sprintf("set weight of %q in pool %q", name, pool), err)
	}
	b.log.InfoContext(ctx, "server weight set", "balancer", b.name, "pool", pool, "server", name, "weight", weight)
	return nil
}

// SetState sets a server's administrative state (driver.Ready, Drain,
// Maintenance).
func (b *Balancer) SetState(ctx context.Context, pool, name string, st driver.AdminState) error {
	if err := driver.ValidState(st); err != nil {
		return b.wrap("set state", err)
	}
	if err := b.d.SetState(ctx, pool, name, st); err != nil {
		return b.wrap(fmt.Sprintf("set state of %q in pool %q", name, pool), err)
	}
	b.log.InfoContext(ctx, "server state set", "balancer", b.name, "pool", pool, "server", name, "state", st)
	return nil
}

// Stats returns every server's state and counters, sorted by pool and name.
func (b *Balancer) Stats(ctx context.Context) ([]ServerStats, error) {
	st, err := b.d.Stats(ctx)
	return st, b.wrap("stats", err)
}

// Capabilities returns the driver's optional features.
func (b *Balancer) Capabilities() Capabilities { return b.d.Capabilities() }

// Close stops the balancer.
func (b *Balancer) Close() error { return b.wrap("close", b.d.Close()) }
