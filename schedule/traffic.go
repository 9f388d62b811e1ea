package schedule

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/musterkit/muster/container"
	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
	lbdriver "github.com/musterkit/muster/lb/driver"
)

// Attacher gives replicas addresses on a network; *network.Fabric is one.
type Attacher interface {
	Attach(ctx context.Context, network, server, ctr string) (container.Network, error)
	Detach(ctx context.Context, network, ctr string) error
}

// Endpoint is where a replica takes traffic.
type Endpoint struct {
	Replica string
	Server  string
	Address netip.Addr
	Port    uint16
}

// Traffic is what sends requests to a job's replicas: a load balancer's
// pool (BalancerPool), a service registry. The controller adds a replica
// only once it is healthy and removes one before it stops it.
type Traffic interface {
	Add(ctx context.Context, job string, e Endpoint) error
	// Remove stops new traffic to e, lets what it serves finish, and
	// forgets it; one it does not know is no error.
	Remove(ctx context.Context, job string, e Endpoint) error
}

// BalancerPool sends each job's traffic through b's pool named after the
// job, which b's config must have: a replica joins it once healthy; a
// leaving one is drained (no new connections) for drain, then removed.
func BalancerPool(b lbdriver.Driver, drain time.Duration) Traffic {
	return &balancerPool{b: b, drain: drain}
}

type balancerPool struct {
	b     lbdriver.Driver
	drain time.Duration
}

func (p *balancerPool) Add(ctx context.Context, job string, e Endpoint) error {
	err := p.b.AddServer(ctx, job, lbdriver.Server{Name: e.Replica, Address: e.Address.String(), Port: e.Port})
	if errors.Is(err, errcode.AlreadyExists) {
		return nil
	}
	return err
}

func (p *balancerPool) Remove(ctx context.Context, job string, e Endpoint) error {
	err := p.b.SetState(ctx, job, e.Replica, lbdriver.Drain)
	if errors.Is(err, errcode.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(p.drain):
	}
	if err := p.b.RemoveServer(ctx, job, e.Replica); err != nil && !errors.Is(err, errcode.NotFound) {
		return err
	}
	return nil
}

// Registry publishes each job's replicas in a service registry under the
// job's name (discovery's <job>.service.<domain>) as they become healthy,
// with check (nil: none), and deregisters a leaving one before it stops.
// r is a discovery driver: memdiscovery, consul, or an agent's
// (agent.Client.Discovery).
func Registry(r discdriver.Driver, check *discdriver.Check) Traffic { return registry{r, check} }

type registry struct {
	r     discdriver.Driver
	check *discdriver.Check
}

func (g registry) Add(ctx context.Context, job string, e Endpoint) error {
	return g.r.Register(ctx, &discdriver.Instance{ID: e.Replica, Service: job, Address: e.Address.String(), Port: e.Port,
		Meta: map[string]string{"server": e.Server}, Check: g.check})
}

func (g registry) Remove(ctx context.Context, _ string, e Endpoint) error {
	if err := g.r.Deregister(ctx, e.Replica); err != nil && !errors.Is(err, errcode.NotFound) {
		return err
	}
	return nil
}
