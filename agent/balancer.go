package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	lbdriver "github.com/musterkit/muster/lb/driver"
)

// BalancerKind opens a load-balancer instance of one kind (HAProxy,
// Nginx, LVS, in-memory) that keeps its files in dir.
type BalancerKind func(ctx context.Context, dir string) (lbdriver.Driver, error)

// BalancerInfo names a balancer an agent runs.
type BalancerInfo struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// Balancers are the load balancers a server runs for the cluster: named
// instances of the kinds it offers, each with a directory of its own under
// dir. Their kind and configuration (server operations included) are kept
// in dir too, so that OpenBalancers brings them back after the agent
// restarts. It is safe for concurrent use.
type Balancers struct {
	dir   string
	kinds map[string]BalancerKind
	log   *slog.Logger

	mu      sync.Mutex
	running map[string]*balancer
}

type balancer struct {
	kind string
	d    lbdriver.Driver
}

// balancerRecord is what is kept of a balancer.
type balancerRecord struct {
	Kind   string           `json:"kind"`
	Config *lbdriver.Config `json:"config"`
}

// OpenBalancers returns the balancers kept in dir (created if missing)
// with the kinds offered, and deploys again those kept there by an earlier
// run. A balancer that fails to come back is logged and its error joined
// into the result; the others run.
func OpenBalancers(ctx context.Context, dir string, kinds map[string]BalancerKind, log *slog.Logger) (*Balancers, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	b := &Balancers{dir: dir, kinds: kinds, log: log, running: map[string]*balancer{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || image.ValidName(name) != nil {
			continue
		}
		var rec balancerRecord
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err == nil {
			err = json.Unmarshal(data, &rec)
		}
		if err == nil {
			err = b.Deploy(ctx, name, rec.Kind, rec.Config)
		}
		if err != nil {
			log.Error("balancer not restored", "balancer", name, "err", err)
			errs = append(errs, fmt.Errorf("balancer %q: %w", name, err))
			continue
		}
		log.Info("balancer restored", "balancer", name, "kind", rec.Kind)
	}
	return b, errors.Join(errs...)
}

// Kinds lists the kinds offered, sorted.
func (b *Balancers) Kinds() []string { return slices.Sorted(maps.Keys(b.kinds)) }

// List returns the running balancers, sorted by name.
func (b *Balancers) List() []BalancerInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []BalancerInfo
	for _, name := range slices.Sorted(maps.Keys(b.running)) {
		out = append(out, BalancerInfo{Name: name, Kind: b.running[name].kind})
	}
	return out
}

// Deploy makes balancer name of kind run cfg, starting it if it does not
// run. A balancer of another kind by that name is
// errcode.FailedPrecondition; an unknown kind errcode.Unimplemented. A
// balancer that this call started and that fails to apply cfg is removed
// again.
func (b *Balancers) Deploy(ctx context.Context, name, kind string, cfg *lbdriver.Config) error {
	if err := image.ValidName(name); err != nil {
		return err
	}
	if cfg == nil {
		return errcode.New(errcode.InvalidArgument, "balancer %q: no config", name)
	}
	open, ok := b.kinds[kind]
	if !ok {
		return errcode.New(errcode.Unimplemented, "balancer %q: this server offers no balancer of kind %q (it offers %s)", name, kind, strings.Join(b.Kinds(), ", "))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bl := b.running[name]
	if bl != nil && bl.kind != kind {
		return errcode.New(errcode.FailedPrecondition, "balancer %q is of kind %s; remove it to deploy %s", name, bl.kind, kind)
	}
	started := bl == nil
	if started {
		d, err := open(ctx, b.instanceDir(name))
		if err != nil {
			return err
		}
		bl = &balancer{kind: kind, d: d}
	}
	if err := bl.d.Apply(ctx, cfg); err != nil {
		if started {
			bl.d.Close()
			os.RemoveAll(b.instanceDir(name))
		}
		return err
	}
	b.running[name] = bl
	if err := b.save(ctx, name, bl); err != nil {
		return err
	}
	if started {
		b.log.InfoContext(ctx, "balancer deployed", "balancer", name, "kind", kind)
	}
	return nil
}

func (b *Balancers) instanceDir(name string) string { return filepath.Join(b.dir, name) }

// save keeps bl's kind and configuration in force. b.mu is held.
func (b *Balancers) save(ctx context.Context, name string, bl *balancer) error {
	cfg, err := bl.d.Config(ctx)
	if err != nil {
		return err
	}
	data, err := json.Marshal(balancerRecord{Kind: bl.kind, Config: cfg})
	if err != nil {
		return errcode.Wrap(errcode.Internal, err)
	}
	// Certificates' keys are in it: owner only.
	if err := renameio.WriteFile(filepath.Join(b.dir, name+".json"), data, 0o600); err != nil {
		return errcode.Wrap(errcode.Internal, fmt.Errorf("keeping balancer %q: %w", name, err))
	}
	return nil
}

// Do runs fn on balancer name's driver and keeps its configuration
// afterwards (fn may change it). errcode.NotFound if name does not run.
func (b *Balancers) Do(ctx context.Context, name string, fn func(lbdriver.Driver) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	bl := b.running[name]
	if bl == nil {
		return errcode.New(errcode.NotFound, "no balancer %q", name)
	}
	if err := fn(bl.d); err != nil {
		return err
	}
	return b.save(ctx, name, bl)
}

// Remove stops balancer name and deletes its files. errcode.NotFound if it
// does not run.
func (b *Balancers) Remove(ctx context.Context, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	bl := b.running[name]
	if bl == nil {
		return errcode.New(errcode.NotFound, "no balancer %q", name)
	}
	delete(b.running, name)
	err := bl.d.Close()
	for _, p := range []string{filepath.Join(b.dir, name+".json"), b.instanceDir(name)} {
		err = errors.Join(err, os.RemoveAll(p))
	}
	b.log.InfoContext(ctx, "balancer removed", "balancer", name)
	return err
}

// Capabilities returns the capabilities of kind, from an instance opened
// in a scratch directory and closed again.
func (b *Balancers) Capabilities(ctx context.Context, kind string) (lbdriver.Capabilities, error) {
	open, ok := b.kinds[kind]
	if !ok {
		return lbdriver.Capabilities{}, errcode.New(errcode.Unimplemented, "this server offers no balancer of kind %q", kind)
	}
	dir, err := os.MkdirTemp(b.dir, ".caps-")
	if err != nil {
		return lbdriver.Capabilities{}, errcode.Wrap(errcode.Internal, err)
	}
	defer os.RemoveAll(dir)
	d, err := open(ctx, dir)
	if err != nil {
		return lbdriver.Capabilities{}, err
	}
	defer d.Close()
	return d.Capabilities(), nil
}

// Close stops every balancer; their records stay, so that the next
// OpenBalancers deploys them again.
func (b *Balancers) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for name, bl := range b.running {
		errs = append(errs, bl.d.Close())
		delete(b.running, name)
	}
	return errors.Join(errs...)
}

// balancerRoutes serves bs under /v1/balancers.
func balancerRoutes(route func(string, http.HandlerFunc), bs *Balancers) {
	if bs == nil {
		return // the catch-all answers Unimplemented
	}
	route("GET /v1/balancers", reply(func(r *http.Request) ([]BalancerInfo, error) { return bs.List(), nil }))
	route("GET /v1/balancer-kinds/{kind}/capabilities", reply(func(r *http.Request) (lbdriver.Capabilities, error) {
		return bs.Capabilities(r.Context(), r.PathValue("kind"))
	}))
	route("PUT /v1/balancers/{name}/{kind}", reply(func(r *http.Request) (any, error) {
		var cfg lbdriver.Config
		if err := decodeBody(r, &cfg); err != nil {
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
		if err := decodeBody(r, &srv); err != nil {
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
		if err := decodeBody(r, &weight); err != nil {
			return nil, err
		}
		return nil, bs.Do(r.Context(), r.PathValue("name"), func(d lbdriver.Driver) error {
			return d.SetWeight(r.Context(), r.PathValue("pool"), r.PathValue("server"), weight)
		})
	}))
	route("PUT /v1/balancers/{name}/pools/{pool}/servers/{server}/state", reply(func(r *http.Request) (any, error) {
		var st lbdriver.AdminState
		if err := decodeBody(r, &st); err != nil {
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
// fail with errcode.NotFound. Capabilities, which cannot fail, reports
// none when the agent cannot be asked.
func (c *Client) Balancer(kind, name string) lbdriver.Driver {
	return &balancerClient{c: c, kind: kind, name: name}
}

// Balancers lists the balancers the agent's server runs.
func (c *Client) Balancers(ctx context.Context) ([]BalancerInfo, error) {
	return call[[]BalancerInfo](ctx, c, http.MethodGet, apiPath("balancers"), nil)
}

type balancerClient struct {
	c          *Client
	kind, name string
	closed     atomic.Bool
}

var _ lbdriver.Driver = (*balancerClient)(nil)

func (b *balancerClient) path(segments ...string) string {
	return apiPath(append([]string{"balancers", b.name}, segments...)...)
}

// check fails after Close, and validates what goes into a path, so that a
// malformed name is InvalidArgument here rather than a route the agent does
// not know.
func (b *balancerClient) check(names ...string) error {
	if b.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "balancer %q: closed", b.name)
	}
	for _, n := range names {
		if err := image.ValidName(n); err != nil {
			return err
		}
	}
	return nil
}

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
	if b.check(b.kind) != nil {
		return lbdriver.Capabilities{}
	}
	caps, err := call[lbdriver.Capabilities](context.Background(), b.c, http.MethodGet, apiPath("balancer-kinds", b.kind, "capabilities"), nil)
	if err != nil {
		return lbdriver.Capabilities{}
	}
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
