// Package consul is a discovery driver (discovery/driver) on a Consul
// cluster, through a Consul agent's HTTP API (github.com/hashicorp/consul/api).
//
// Instances are registered with the agent the driver talks to, which runs
// their checks (TCP, HTTP, TTL) and keeps them in the catalog; an instance
// whose check fails, or whose agent's node fails (Consul's serfHealth
// check), is critical and left out of answers. Resolve and Wait read the
// health endpoint; Wait is Consul's blocking query, so watches resume from
// the index they last saw. Resolve reports an instance's Check as nil:
// Consul keeps the check's definition with the agent, not the catalog.
//
// Lock gives orchestrators that run several controllers a leader lock on
// Consul's KV store with a session.
//
// # Requirements
//
// A reachable Consul agent (1.13 or later; tests build 1.13.9, the last
// MPL-2.0 release, from the Go module proxy with `make consul`). The
// agent must reach the instances to check them. No privileges.
package consul

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

var _ driver.Driver = (*Driver)(nil)

// Options configures Open. A nil *Options means the defaults.
type Options struct {
	// Address of the agent's HTTP API, host:port; empty means
	// 127.0.0.1:8500.
	Address string
	// Token is the ACL token, if the cluster uses ACLs.
	Token string
	// WaitTime bounds one blocking query of Wait; 0 means 5 minutes.
	WaitTime time.Duration
}

// Driver is a discovery driver on a Consul agent. It is safe for
// concurrent use.
type Driver struct {
	c      *api.Client
	wait   time.Duration
	closed atomic.Bool
}

// Open returns a driver for the agent at opts.Address, after checking
// that it answers and the cluster has a leader (errcode.Unavailable
// otherwise).
func Open(ctx context.Context, opts *Options) (*Driver, error) {
	if opts == nil {
		opts = &Options{}
	}
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = "127.0.0.1:8500"
	if opts.Address != "" {
		if _, _, err := net.SplitHostPort(opts.Address); err != nil {
			return nil, errcode.New(errcode.InvalidArgument, "consul: address %q: %v", opts.Address, err)
		}
		cfg.Address = opts.Address
	}
	cfg.Token = opts.Token
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, errcode.Wrap(errcode.InvalidArgument, err)
	}
	d := &Driver{c: c, wait: 5 * time.Minute}
	if opts.WaitTime > 0 {
		d.wait = opts.WaitTime
	}
	leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, consulErr("asking for the leader", err)
	}
	if leader == "" {
		return nil, errcode.New(errcode.Unavailable, "consul: the cluster at %s has no leader", cfg.Address)
	}
	return d, nil
}

// Client returns the Consul API client, for what the driver does not do.
func (d *Driver) Client() *api.Client { return d.c }

func checkID(id string) string { return "service:" + id }

// Register implements driver.Driver.
func (d *Driver) Register(ctx context.Context, inst *driver.Instance) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	reg := &api.AgentServiceRegistration{
		ID:      inst.ID,
		Name:    inst.Service,
		Tags:    slices.Clone(inst.Tags),
		Port:    int(inst.Port),
		Address: inst.Address,
		Meta:    maps.Clone(inst.Meta),
	}
	if inst.Check != nil {
		c := inst.Check.Normalized()
		check := &api.AgentServiceCheck{CheckID: checkID(inst.ID), Status: api.HealthCritical}
		hostPort := net.JoinHostPort(inst.Address, fmt.Sprint(inst.Port))
		switch c.Type {
		case driver.TCPCheck:
			check.TCP = hostPort
		case driver.HTTPCheck:
			check.HTTP = "http://" + hostPort + c.Path
		case driver.TTLCheck:
			check.TTL = c.TTL.String()
		}
		if c.Type != driver.TTLCheck {
			check.Interval, check.Timeout = c.Interval.String(), c.Timeout.String()
		}
		if c.DeregisterAfter > 0 {
			check.DeregisterCriticalServiceAfter = c.DeregisterAfter.String()
		}
		reg.Check = check
	}
	if err := d.c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		return consulErr("registering "+inst.ID, err)
	}
	return nil
}

// Deregister implements driver.Driver.
func (d *Driver) Deregister(ctx context.Context, id string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	if err := driver.ValidID(id); err != nil {
		return err
	}
	if err := d.known(ctx, id); err != nil {
		return err
	}
	if err := d.c.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return consulErr("deregistering "+id, err)
	}
	return nil
}

// known returns errcode.NotFound unless the agent has instance id.
func (d *Driver) known(ctx context.Context, id string) error {
	_, _, err := d.c.Agent().Service(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return consulErr("looking up "+id, err)
	}
	return nil
}

// PassTTL implements driver.Driver.
func (d *Driver) PassTTL(ctx context.Context, id string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	if err := driver.ValidID(id); err != nil {
		return err
	}
	if err := d.known(ctx, id); err != nil {
		return err
	}
	checks, err := d.c.Agent().ChecksWithFilterOpts(fmt.Sprintf("CheckID == %q", checkID(id)), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return consulErr("reading the checks of "+id, err)
	}
	if c := checks[checkID(id)]; c == nil || c.Type != "ttl" {
		return errcode.New(errcode.FailedPrecondition, "consul: instance %q has no TTL check", id)
	}
	if err := d.c.Agent().UpdateTTLOpts(checkID(id), "", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return consulErr("passing the TTL of "+id, err)
	}
	return nil
}

// entries converts Consul's health entries, sorted by ID.
func entries(ses []*api.ServiceEntry) []driver.Entry {
	out := make([]driver.Entry, 0, len(ses))
	for _, se := range ses {
		s := se.Service
		e := driver.Entry{Instance: driver.Instance{ID: s.ID, Service: s.Service, Address: s.Address, Port: uint16(s.Port),
			Tags: nilIfEmpty(s.Tags), Meta: nilIfEmptyMap(s.Meta)}, Health: driver.Critical}
		if e.Address == "" && se.Node != nil {
			e.Address = se.Node.Address
		}
		if se.Checks.AggregatedStatus() == api.HealthPassing {
			e.Health = driver.Passing
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b driver.Entry) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}

func nilIfEmptyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

// Resolve implements driver.Driver.
func (d *Driver) Resolve(ctx context.Context, q driver.Query) ([]driver.Entry, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	ses, _, err := d.c.Health().Service(q.Service, q.Tag, !q.Critical, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, consulErr("resolving "+q.Service, err)
	}
	return entries(ses), nil
}

// Wait implements driver.Driver with a blocking query.
func (d *Driver) Wait(ctx context.Context, service string, index uint64) (*driver.Result, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := driver.ValidService(service); err != nil {
		return nil, err
	}
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: d.wait}).WithContext(ctx)
	ses, meta, err := d.c.Health().Service(service, "", false, q)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, consulErr("watching "+service, err)
	}
	return &driver.Result{Entries: entries(ses), Index: meta.LastIndex}, nil
}

// Services implements driver.Driver: the catalog's services but Consul's
// own.
func (d *Driver) Services(ctx context.Context) ([]string, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	svcs, _, err := d.c.Catalog().Services((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, consulErr("listing services", err)
	}
	delete(svcs, "consul")
	return slices.Sorted(maps.Keys(svcs)), nil
}

// Close implements driver.Driver. Registrations stay in Consul. Closing
// again returns nil; every other method but Client then fails with
// errcode.FailedPrecondition.
func (d *Driver) Close() error {
	d.closed.Store(true)
	return nil
}

// checkOpen returns errcode.FailedPrecondition once the driver is closed.
func (d *Driver) checkOpen() error {
	if d.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "consul: the driver is closed")
	}
	return nil
}

// consulErr gives an error of the Consul API its code.
func consulErr(what string, err error) error {
	code := errcode.Unavailable // the agent did not answer
	var se api.StatusError
	if errors.As(err, &se) {
		switch {
		case se.Code == http.StatusNotFound:
			code = errcode.NotFound
		case se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized:
			code = errcode.PermissionDenied
		case se.Code == http.StatusBadRequest:
			code = errcode.InvalidArgument
		case se.Code >= 500:
			code = errcode.Unavailable
		default:
			code = errcode.Internal
		}
	} else if strings.Contains(err.Error(), "Unexpected response code: 404") {
		code = errcode.NotFound
	}
	return errcode.New(code, "consul: %s: %w", what, err)
}
