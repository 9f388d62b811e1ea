// Package memdiscovery is the embedded service registry: the whole registry
// in this process, with real health checks (TCP connects and HTTP GETs to
// the instances, TTLs kept by PassTTL) whose failure takes an instance out
// of answers, and blocking Waits for watches. It is the default for
// single-machine use and the demo (put package discovery/dnsfront in front
// of it to answer DNS), and the in-memory driver for tests of orchestrators.
// It needs no privileges and no host packages.
package memdiscovery

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

var _ driver.Driver = (*Registry)(nil)

// Options configures New. A nil *Options means the defaults.
type Options struct {
	// Dial opens the checks' connections; nil dials from this process.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives one record per health change; nil discards.
	Logger *slog.Logger
}

// Registry is an in-process service registry. It is safe for concurrent
// use.
type Registry struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	log  *slog.Logger

	mu        sync.Mutex
	closed    bool
	index     uint64
	changedAt map[string]uint64 // service -> index of its last change
	changed   chan struct{}     // closed at every change
	instances map[string]*instance
}

// instance is a registered instance and its check's state.
type instance struct {
	driver.Instance
	health        driver.Health
	criticalSince time.Time
	stop          context.CancelFunc // ends the checker
	ttl           chan struct{}      // PassTTL's signal to a TTL checker
}

// New returns an empty registry.
func New(opts *Options) *Registry {
	if opts == nil {
		opts = &Options{}
	}
	r := &Registry{dial: opts.Dial, log: opts.Logger, changedAt: map[string]uint64{}, changed: make(chan struct{}), instances: map[string]*instance{}, index: 1}
	if r.dial == nil {
		r.dial = (&net.Dialer{}).DialContext
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

func (r *Registry) checkOpen() error {
	if r.closed {
		return errcode.New(errcode.FailedPrecondition, "registry closed")
	}
	return nil
}

// bump records a change of service. r.mu is held.
func (r *Registry) bump(service string) {
	r.index++
	r.changedAt[service] = r.index
	close(r.changed)
	r.changed = make(chan struct{})
}

// Register implements driver.Driver. A TCP or HTTP check probes at once
// and then every interval; a TTL check waits for PassTTL.
func (r *Registry) Register(ctx context.Context, inst *driver.Instance) error {
	if err := inst.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	in := &instance{Instance: clone(inst), health: driver.Passing}
	if old := r.instances[inst.ID]; old != nil {
		r.remove(old)
	}
	if in.Check != nil {
		in.Check = in.Check.Normalized()
		in.health, in.criticalSince = driver.Critical, time.Now()
		cctx, cancel := context.WithCancel(context.Background())
		in.stop, in.ttl = cancel, make(chan struct{}, 1)
		go r.checker(cctx, in)
	}
	r.instances[inst.ID] = in
	r.bump(inst.Service)
	return nil
}

func clone(i *driver.Instance) driver.Instance {
	c := *i
	c.Tags = slices.Clone(i.Tags)
	c.Meta = maps.Clone(i.Meta)
	if i.Check != nil {
		ch := *i.Check
		c.Check = &ch
	}
	return c
}

// remove takes in out of the registry. r.mu is held.
func (r *Registry) remove(in *instance) {
	if in.stop != nil {
		in.stop()
	}
	delete(r.instances, in.ID)
	r.bump(in.Service)
}

// Deregister implements driver.Driver.
func (r *Registry) Deregister(ctx context.Context, id string) error {
	if err := driver.ValidID(id); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	in := r.instances[id]
	if in == nil {
		return errcode.New(errcode.NotFound, "no instance %q", id)
	}
	r.remove(in)
	return nil
}

// PassTTL implements driver.Driver.
func (r *Registry) PassTTL(ctx context.Context, id string) error {
	if err := driver.ValidID(id); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	in := r.instances[id]
	if in == nil {
		return errcode.New(errcode.NotFound, "no instance %q", id)
	}
	if in.Check == nil || in.Check.Type != driver.TTLCheck {
		return errcode.New(errcode.FailedPrecondition, "instance %q has no TTL check", id)
	}
	select {
	case in.ttl <- struct{}{}:
	default: // one pending is enough
	}
	r.setHealth(in, driver.Passing)
	return nil
}

// setHealth changes in's health, deregistering it when it has been
// critical for its check's DeregisterAfter. r.mu is held.
func (r *Registry) setHealth(in *instance, h driver.Health) {
	if r.instances[in.ID] != in {
		return // replaced or removed meanwhile
	}
	if h == in.health {
		if h == driver.Critical && in.Check.DeregisterAfter > 0 && time.Since(in.criticalSince) >= in.Check.DeregisterAfter {
			r.log.Info("instance deregistered after being critical", "service", in.Service, "instance", in.ID, "for", in.Check.DeregisterAfter)
			r.remove(in)
		}
		return
	}
	in.health = h
	if h == driver.Critical {
		in.criticalSince = time.Now()
	}
	r.log.Info("instance health changed", "service", in.Service, "instance", in.ID, "health", h)
	r.bump(in.Service)
}

// checker runs in's check until ctx ends.
func (r *Registry) checker(ctx context.Context, in *instance) {
	c := in.Check
	period := c.Interval
	if c.Type == driver.TTLCheck {
		period = c.TTL
	}
	t := time.NewTimer(0)
	if c.Type == driver.TTLCheck {
		t.Reset(period)
	}
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-in.ttl:
			t.Reset(period)
			continue
		case <-t.C:
		}
		h := driver.Critical
		if c.Type != driver.TTLCheck && r.probe(ctx, in) {
			h = driver.Passing
		}
		r.mu.Lock()
		if ctx.Err() == nil {
			r.setHealth(in, h)
		}
		r.mu.Unlock()
		t.Reset(period)
	}
}

// probe runs one TCP or HTTP probe of in.
func (r *Registry) probe(ctx context.Context, in *instance) bool {
	c := in.Check
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	conn, err := r.dial(ctx, "tcp", net.JoinHostPort(in.Address, fmt.Sprint(in.Port)))
	if err != nil {
		return false
	}
	defer conn.Close()
	if c.Type == driver.TCPCheck {
		return true
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Path and address passed Validate: no spaces or line breaks.
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: muster-check\r\n\r\n", c.Path, net.JoinHostPort(in.Address, fmt.Sprint(in.Port))); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

// entries returns service's entries, sorted by ID. r.mu is held.
func (r *Registry) entries(service string) []driver.Entry {
	var out []driver.Entry
	for _, in := range r.instances {
		if in.Service == service {
			out = append(out, driver.Entry{Instance: clone(&in.Instance), Health: in.health})
		}
	}
	slices.SortFunc(out, func(a, b driver.Entry) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Resolve implements driver.Driver.
func (r *Registry) Resolve(ctx context.Context, q driver.Query) ([]driver.Entry, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	var out []driver.Entry
	for _, e := range r.entries(q.Service) {
		if (q.Critical || e.Health == driver.Passing) && (q.Tag == "" || slices.Contains(e.Tags, q.Tag)) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Wait implements driver.Driver. The index of a service never registered
// is the registry's index when asked; an index above the registry's (from
// before a restart, or another registry) is answered at once.
func (r *Registry) Wait(ctx context.Context, service string, index uint64) (*driver.Result, error) {
	if err := driver.ValidService(service); err != nil {
		return nil, err
	}
	for {
		r.mu.Lock()
		if err := r.checkOpen(); err != nil {
			r.mu.Unlock()
			return nil, err
		}
		at, known := r.changedAt[service]
		if !known {
			at = r.index
		}
		// An index from the future (another registry's) is answered at
		// once, like a changed one.
		if at > index || index == 0 || index > r.index {
			res := &driver.Result{Entries: r.entries(service), Index: at}
			r.mu.Unlock()
			return res, nil
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// Services implements driver.Driver.
func (r *Registry) Services(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, in := range r.instances {
		set[in.Service] = true
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// Close stops the checks and forgets every instance; waiting calls return
// errcode.FailedPrecondition.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	for _, in := range r.instances {
		if in.stop != nil {
			in.stop()
		}
	}
	r.instances = nil
	r.closed = true
	close(r.changed)
	return nil
}
