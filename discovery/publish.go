package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

// The labels by which a container declares the service it offers.
const (
	// LabelService names the service (a DNS label): the container is
	// published as an instance of it.
	LabelService = "muster.io/service"
	// LabelPort is the service's port on the container's address.
	LabelPort = "muster.io/port"
	// LabelTags are the instance's tags, separated by dots.
	LabelTags = "muster.io/tags"
	// LabelCheck is "tcp" or "http" for a check of the instance itself;
	// without it the instance is kept alive by the publisher (a TTL check).
	LabelCheck = "muster.io/check"
	// LabelCheckPath is the HTTP check's path without its leading "/".
	LabelCheckPath = "muster.io/check-path"
)

// Containers lists a server's containers; a *container.Server is one.
type Containers interface {
	List(ctx context.Context) ([]*container.Info, error)
}

// PublisherOptions configures NewPublisher. A nil *PublisherOptions means
// the defaults.
type PublisherOptions struct {
	// Interval between syncs; 0 means 10s.
	Interval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Publisher keeps a server's running containers that carry LabelService
// registered as instances, with ID "<server>.<container>", their first
// address and LabelPort, and removes them when the containers stop or go.
// If the publisher itself stops (its server or agent died), the instances
// it kept alive go critical after three intervals and are deregistered
// after ten (at least a minute); a graceful Run end deregisters them at
// once.
type Publisher struct {
	reg      *Registry
	src      Containers
	server   string
	interval time.Duration
	log      *slog.Logger

	mu        sync.Mutex
	published map[string]*Instance // by ID
}

// NewPublisher returns a publisher of server's containers (a DNS label)
// into reg.
func NewPublisher(reg *Registry, server string, src Containers, opts *PublisherOptions) (*Publisher, error) {
	if err := driver.ValidService(server); err != nil {
		return nil, fmt.Errorf("publisher: server name: %w", err)
	}
	p := &Publisher{reg: reg, src: src, server: server, interval: 10 * time.Second, log: slog.New(slog.DiscardHandler), published: map[string]*Instance{}}
	if opts != nil {
		if opts.Interval > 0 {
			p.interval = opts.Interval
		}
		if opts.Logger != nil {
			p.log = opts.Logger
		}
	}
	return p, nil
}

// instance is what ctr publishes, or nil if nothing; an error for labels
// that do not make a valid instance.
func (p *Publisher) instance(ctr *container.Info) (*Instance, error) {
	labels := ctr.Spec.Labels
	service, ok := labels[LabelService]
	if !ok || ctr.State != container.Running {
		return nil, nil
	}
	if len(ctr.Addresses) == 0 {
		return nil, fmt.Errorf("container %s: no address to publish", ctr.Spec.Name)
	}
	port, err := strconv.ParseUint(labels[LabelPort], 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("container %s: label %s %q is not a port", ctr.Spec.Name, LabelPort, labels[LabelPort])
	}
	inst := &Instance{
		ID:      p.server + "." + ctr.Spec.Name,
		Service: service,
		Address: ctr.Addresses[0].String(),
		Port:    uint16(port),
		Meta:    map[string]string{"server": p.server, "container": ctr.Spec.Name},
	}
	if t := labels[LabelTags]; t != "" {
		inst.Tags = strings.Split(t, ".")
	}
	switch labels[LabelCheck] {
	case "":
		inst.Check = &Check{Type: TTLCheck, TTL: 3 * p.interval, DeregisterAfter: max(time.Minute, 10*p.interval)}
	case "tcp":
		inst.Check = &Check{Type: TCPCheck, Interval: p.interval, DeregisterAfter: max(time.Minute, 10*p.interval)}
	case "http":
		inst.Check = &Check{Type: HTTPCheck, Path: "/" + labels[LabelCheckPath], Interval: p.interval, DeregisterAfter: max(time.Minute, 10*p.interval)}
	default:
		return nil, fmt.Errorf("container %s: label %s %q: want tcp or http", ctr.Spec.Name, LabelCheck, labels[LabelCheck])
	}
	if err := inst.Validate(); err != nil {
		return nil, fmt.Errorf("container %s: %w", ctr.Spec.Name, err)
	}
	return inst, nil
}

// Sync publishes the running labelled containers and withdraws the
// instances of containers that stopped or went, once. Containers whose
// labels make no valid instance are skipped and reported in the error.
func (p *Publisher) Sync(ctx context.Context) error {
	ctrs, err := p.src.List(ctx)
	if err != nil {
		return fmt.Errorf("publisher %s: listing containers: %w", p.server, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	want := map[string]*Instance{}
	for _, c := range ctrs {
		inst, err := p.instance(c)
		if err != nil {
			errs = append(errs, err)
		}
		if inst != nil {
			want[inst.ID] = inst
		}
	}
	for _, id := range slices.Sorted(maps.Keys(want)) {
		inst := want[id]
		if old := p.published[id]; old == nil || !sameInstance(old, inst) {
			if err := p.reg.Register(ctx, inst); err != nil {
				errs = append(errs, err)
				continue
			}
			p.published[id] = inst
		}
		if inst.Check.Type == TTLCheck {
			if err := p.reg.PassTTL(ctx, id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for id := range p.published {
		if want[id] == nil {
			if err := p.reg.Deregister(ctx, id); err != nil && !notFound(err) {
				errs = append(errs, err)
				continue
			}
			delete(p.published, id)
		}
	}
	return errors.Join(errs...)
}

func sameInstance(a, b *Instance) bool {
	return a.Service == b.Service && a.Address == b.Address && a.Port == b.Port &&
		slices.Equal(a.Tags, b.Tags) && *a.Check == *b.Check
}

// Run syncs every interval until ctx ends, logging errors, then
// deregisters what it published.
func (p *Publisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		if err := p.Sync(ctx); err != nil && ctx.Err() == nil {
			p.log.WarnContext(ctx, "publishing services", "server", p.server, "err", err)
		}
		select {
		case <-ctx.Done():
			return p.withdraw()
		case <-t.C:
		}
	}
}

// withdraw deregisters everything published.
func (p *Publisher) withdraw() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for id := range p.published {
		if err := p.reg.Deregister(ctx, id); err != nil && !notFound(err) {
			errs = append(errs, err)
		}
		delete(p.published, id)
	}
	return errors.Join(errs...)
}

func notFound(err error) bool { return errors.Is(err, errcode.NotFound) }
