// Package discovery lets apps find each other by name (mysql.service.muster)
// instead of hard-coded addresses. A Registry holds one discovery driver:
// drivers/consul (a Consul cluster), discovery/memdiscovery (the embedded
// registry, also for tests), ... It registers service instances with
// health checks whose failure takes an instance out of answers, resolves
// services, and watches them: Watch is a stream of a service's entries
// that resumes from the last index it delivered after a disconnect, so no
// change is missed. Package discovery/dnsfront answers DNS queries from
// any Registry's driver.
package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

// The model, from package driver.
type (
	Instance  = driver.Instance
	Check     = driver.Check
	CheckType = driver.CheckType
	Entry     = driver.Entry
	Health    = driver.Health
)

const (
	TCPCheck  = driver.TCPCheck
	HTTPCheck = driver.HTTPCheck
	TTLCheck  = driver.TTLCheck
	Passing   = driver.Passing
	Critical  = driver.Critical
)

// Options configures New. A nil *Options means the defaults.
type Options struct {
	// Logger receives one record per registration change and watch
	// error; nil discards.
	Logger *slog.Logger
	// Retry is how long a watch waits after an error before it asks
	// again; 0 means 1s.
	Retry time.Duration
}

// Registry is the portable service registry. It is safe for concurrent use.
type Registry struct {
	d     driver.Driver
	log   *slog.Logger
	retry time.Duration
}

// New returns a Registry over d, which it owns from then on (Close closes
// it). opts may be nil.
func New(d driver.Driver, opts *Options) (*Registry, error) {
	if d == nil {
		return nil, errcode.New(errcode.InvalidArgument, "discovery: nil driver")
	}
	r := &Registry{d: d, log: slog.New(slog.DiscardHandler), retry: time.Second}
	if opts != nil {
		if opts.Logger != nil {
			r.log = opts.Logger
		}
		if opts.Retry > 0 {
			r.retry = opts.Retry
		}
	}
	return r, nil
}

// Close closes the registry's driver. Watches end.
func (r *Registry) Close() error { return r.d.Close() }

// Driver returns the registry's driver.
func (r *Registry) Driver() driver.Driver { return r.d }

// Register adds inst or replaces the instance with its ID.
func (r *Registry) Register(ctx context.Context, inst *Instance) error {
	if err := inst.Validate(); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if err := r.d.Register(ctx, inst); err != nil {
		return fmt.Errorf("register %s of %s: %w", inst.ID, inst.Service, err)
	}
	r.log.InfoContext(ctx, "instance registered", "service", inst.Service, "instance", inst.ID, "address", inst.Address, "port", inst.Port)
	return nil
}

// Deregister removes instance id.
func (r *Registry) Deregister(ctx context.Context, id string) error {
	if err := driver.ValidID(id); err != nil {
		return fmt.Errorf("deregister: %w", err)
	}
	if err := r.d.Deregister(ctx, id); err != nil {
		return fmt.Errorf("deregister %s: %w", id, err)
	}
	r.log.InfoContext(ctx, "instance deregistered", "instance", id)
	return nil
}

// PassTTL keeps instance id's TTL check passing for another TTL.
func (r *Registry) PassTTL(ctx context.Context, id string) error {
	if err := driver.ValidID(id); err != nil {
		return fmt.Errorf("pass TTL: %w", err)
	}
	if err := r.d.PassTTL(ctx, id); err != nil {
		return fmt.Errorf("pass TTL of %s: %w", id, err)
	}
	return nil
}

// Resolve returns service's passing instances (with tag, if not empty),
// sorted by ID.
func (r *Registry) Resolve(ctx context.Context, service, tag string) ([]Entry, error) {
	q := driver.Query{Service: service, Tag: tag}
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	es, err := r.d.Resolve(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", service, err)
	}
	return es, nil
}

// Services returns the registered services' names, sorted.
func (r *Registry) Services(ctx context.Context) ([]string, error) {
	s, err := r.d.Services(ctx)
	if err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	return s, nil
}

// Update is one step of a Watch.
type Update struct {
	// Entries are all the service's instances, passing or not, sorted by
	// ID.
	Entries []Entry
	// Index resumes the watch: pass it to Watch as from.
	Index uint64
	// Err, if set, is why the watch could not ask; it goes on asking
	// from the last Index after Options.Retry.
	Err error
}

// Watch streams service's entries: first those in place (unless from is
// an index the caller already has them at), then every change, until ctx
// ends, when it closes the channel. Errors are delivered as updates and
// the watch resumes from the last index it delivered, so a registry that
// comes back after a disconnect misses no change. Returns that bring no
// change are not delivered.
func (r *Registry) Watch(ctx context.Context, service string, from uint64) (<-chan Update, error) {
	if err := driver.ValidService(service); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	ch := make(chan Update)
	go func() {
		defer close(ch)
		index := from
		var last []Entry
		sent := from != 0
		for {
			res, err := r.d.Wait(ctx, service, index)
			if ctx.Err() != nil {
				return
			}
			u := Update{Index: index}
			if err != nil {
				r.log.WarnContext(ctx, "watch", "service", service, "err", err)
				u.Err = fmt.Errorf("watch %s: %w", service, err)
			} else {
				if res.Index < index {
					res.Index = 0 // the registry went back: start over
				}
				index = res.Index
				if sent && reflect.DeepEqual(res.Entries, last) {
					continue
				}
				last, sent = res.Entries, true
				u = Update{Entries: res.Entries, Index: index}
			}
			select {
			case ch <- u:
			case <-ctx.Done():
				return
			}
			if u.Err != nil {
				select {
				case <-time.After(r.retry):
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}
