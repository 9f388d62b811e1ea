package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/errcode"
	lbdriver "github.com/musterkit/muster/lb/driver"
)

// BalancerKind opens a load-balancer instance of one kind (HAProxy,
// Nginx, LVS, in-memory) that keeps its files in dir.
type BalancerKind = Kind[lbdriver.Driver]

// Balancers are the load balancers a server runs for the cluster (see
// Hosted), served as the agent's "balancers" Service; the configuration
// kept is the one in force, server operations included.
type Balancers struct {
	*Hosted[lbdriver.Driver, lbdriver.Config]
}

var _ Service = (*Balancers)(nil)

// Name implements Service.
func (*Balancers) Name() string { return "balancers" }

// Capabilities implements Service: each kind's driver's.
func (bs *Balancers) Capabilities(ctx context.Context) (map[string]any, error) {
	return bs.kindCapabilities(ctx, func(d lbdriver.Driver) any { return d.Capabilities() })
}

// OpenBalancers returns the balancers kept in dir (created if missing)
// with the kinds offered, and deploys again those kept there by an earlier
// run. A balancer that fails to come back is logged and its error joined
// into the result; the others run.
func OpenBalancers(ctx context.Context, dir string, kinds map[string]BalancerKind, log *slog.Logger) (*Balancers, error) {
	h, err := openHosted(ctx, &Hosted[lbdriver.Driver, lbdriver.Config]{
		what: "balancer", dir: dir, kinds: kinds, log: log,
		apply: func(ctx context.Context, d lbdriver.Driver, cfg *lbdriver.Config) error { return d.Apply(ctx, cfg) },
		kept: func(ctx context.Context, d lbdriver.Driver, _ *lbdriver.Config) (*lbdriver.Config, error) {
			return d.Config(ctx)
		},
	})
	if h == nil {
		return nil, err
	}
	return &Balancers{h}, err
}

// Routes implements Service: bs under /v1/balancers.
func (bs *Balancers) Routes(route func(string, http.HandlerFunc)) {
	route("GET /v1/balancers", reply(func(r *http.Request) ([]Info, error) { return bs.List(), nil }))
	route("PUT /v1/balancers/{name}/{kind}", reply(func(r *http.Request) (any, error) {
		var cfg lbdriver.Config
		if err := wire.DecodeBody(r, &cfg); err != nil {
			return nil, err
		}
		return nil, bs.Deploy(r.Context(), r.PathValue("name"), r.PathValue("kind"), &cfg)
	}))
	route("DELETE /v1/balancers/{name}", reply(func(r *http.Request) (any, error) {
		return nil, bs.Remove(r.Context(), r.PathValue("name"))
	}))
	route("GET /v1/balancers/{name}/config", reply(func(r *http.Request) (cfg *lbdriver.Config, err error) {
		err = bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			cfg, err = d.Config(r.Context())
			return err
		})
		return cfg, err
	}))
	route("GET /v1/balancers/{name}/stats", reply(func(r *http.Request) (st []lbdriver.ServerStats, err error) {
		err = bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			st, err = d.Stats(r.Context())
			return err
		})
		return st, err
	}))
	route("POST /v1/balancers/{name}/pools/{pool}/servers", reply(func(r *http.Request) (any, error) {
		var srv lbdriver.Server
		if err := wire.DecodeBody(r, &srv); err != nil {
			return nil, err
		}
		return nil, bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			return d.AddServer(r.Context(), r.PathValue("pool"), srv)
		})
	}))
	route("DELETE /v1/balancers/{name}/pools/{pool}/servers/{server}", reply(func(r *http.Request) (any, error) {
		return nil, bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			return d.RemoveServer(r.Context(), r.PathValue("pool"), r.PathValue("server"))
		})
	}))
	route("PUT /v1/balancers/{name}/pools/{pool}/servers/{server}/weight", reply(func(r *http.Request) (any, error) {
		var weight int
		if err := wire.DecodeBody(r, &weight); err != nil {
			return nil, err
		}
		return nil, bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			return d.SetWeight(r.Context(), r.PathValue("pool"), r.PathValue("server"), weight)
		})
	}))
	route("PUT /v1/balancers/{name}/pools/{pool}/servers/{server}/state", reply(func(r *http.Request) (any, error) {
		var st lbdriver.AdminState
		if err := wire.DecodeBody(r, &st); err != nil {
			return nil, err
		}
		return nil, bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			return d.SetState(r.Context(), r.PathValue("pool"), r.PathValue("server"), st)
		})
	}))
}

// Balancer returns balancer name of kind on the agent's server as an
// lb/driver.Driver: the first Apply deploys it there (starting HAProxy,
// Nginx, ... on that server), later calls change it, Close removes it.
// Before it is deployed Config is the empty config and the other calls
// fail with errcode.NotFound. Capabilities are those the agent reported
// for kind when the client dialled (none if it offers no such kind).
func (c *Client) Balancer(kind, name string) lbdriver.Driver {
	return &balancerClient{handle{c: c, service: "balancers", what: "balancer", kind: kind, name: name}}
}

// Balancers lists the balancers the agent's server runs.
func (c *Client) Balancers(ctx context.Context) ([]Info, error) {
	return call[[]Info](ctx, c, http.MethodGet, apiPath("balancers"), nil)
}

type balancerClient struct{ handle }

var _ lbdriver.Driver = (*balancerClient)(nil)

func (b *balancerClient) Apply(ctx context.Context, cfg *lbdriver.Config) error {
	if err := b.check(b.name, b.kind); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	return do(ctx, b.c, http.MethodPut, b.path(b.kind), cfg)
}

func (b *balancerClient) Config(ctx context.Context) (*lbdriver.Config, error) {
	if err := b.check(b.name); err != nil {
		return nil, err
	}
	cfg, err := call[*lbdriver.Config](ctx, b.c, http.MethodGet, b.path("config"), nil)
	if errors.Is(err, errcode.NotFound) {
		return &lbdriver.Config{}, nil
	}
	return cfg, err
}

func (b *balancerClient) AddServer(ctx context.Context, pool string, srv lbdriver.Server) error {
	if err := b.check(b.name, pool); err != nil {
		return err
	}
	return do(ctx, b.c, http.MethodPost, b.path("pools", pool, "servers"), srv)
}

func (b *balancerClient) RemoveServer(ctx context.Context, pool, name string) error {
	if err := b.check(b.name, pool, name); err != nil {
		return err
	}
	return do(ctx, b.c, http.MethodDelete, b.path("pools", pool, "servers", name), nil)
}

func (b *balancerClient) SetWeight(ctx context.Context, pool, name string, weight int) error {
	if err := b.check(b.name, pool, name); err != nil {
		return err
	}
	return do(ctx, b.c, http.MethodPut, b.path("pools", pool, "servers", name, "weight"), weight)
}

func (b *balancerClient) SetState(ctx context.Context, pool, name string, state lbdriver.AdminState) error {
	if err := b.check(b.name, pool, name); err != nil {
		return err
	}
	return do(ctx, b.c, http.MethodPut, b.path("pools", pool, "servers", name, "state"), state)
}

func (b *balancerClient) Stats(ctx context.Context) ([]lbdriver.ServerStats, error) {
	if err := b.check(b.name); err != nil {
		return nil, err
	}
	return call[[]lbdriver.ServerStats](ctx, b.c, http.MethodGet, b.path("stats"), nil)
}

func (b *balancerClient) Capabilities() lbdriver.Capabilities {
	var caps lbdriver.Capabilities
	b.c.caps.decode("balancers", b.kind, &caps)
	return caps
}

// Close removes the balancer from the agent's server; one never deployed
// is no error. Later calls fail with errcode.FailedPrecondition.
func (b *balancerClient) Close() error {
	if b.check(b.name) != nil {
		return nil
	}
	b.closed.Store(true)
	err := do(context.Background(), b.c, http.MethodDelete, b.path(), nil)
	if errors.Is(err, errcode.NotFound) {
		return nil
	}
	return err
}
