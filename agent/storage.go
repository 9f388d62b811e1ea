package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/musterkit/muster/agent/internal/wire"
	containerdriver "github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	storagedriver "github.com/musterkit/muster/storage/driver"
)

// StorageKind opens this server's part in a pool of one kind of storage
// (Gluster, MooseFS, NFS, in-memory), keeping its files in dir.
type StorageKind = Kind[storagedriver.Driver]

// Storage is this server's part in the cluster's storage pools, one
// instance per pool (see Hosted), served as the agent's "storage"
// Service. It is also the container driver's VolumePaths: a container
// that names a volume bind-mounts where this server mounted it.
type Storage struct {
	*Hosted[storagedriver.Driver, storagedriver.Config]
}

var (
	_ Service                     = (*Storage)(nil)
	_ containerdriver.VolumePaths = (*Storage)(nil)
)

// OpenStorage returns the storage pools kept in dir (created if missing)
// with the kinds offered, and applies again those an earlier run kept
// there: the server's daemons and mounts come back. One that fails to
// come back is logged and its error joined into the result; the others
// run.
func OpenStorage(ctx context.Context, dir string, kinds map[string]StorageKind, log *slog.Logger) (*Storage, error) {
	h, err := openHosted(ctx, &Hosted[storagedriver.Driver, storagedriver.Config]{
		what: "storage pool", dir: dir, kinds: kinds, log: log,
		apply: func(ctx context.Context, d storagedriver.Driver, cfg *storagedriver.Config) error {
			return d.Apply(ctx, cfg)
		},
		kept: func(ctx context.Context, d storagedriver.Driver, _ *storagedriver.Config) (*storagedriver.Config, error) {
			return d.Config(ctx)
		},
	})
	if h == nil {
		return nil, err
	}
	return &Storage{h}, err
}

// Name implements Service.
func (*Storage) Name() string { return "storage" }

// Capabilities implements Service: each kind's driver's.
func (s *Storage) Capabilities(ctx context.Context) (map[string]any, error) {
	return s.kindCapabilities(ctx, func(d storagedriver.Driver) any { return d.Capabilities() })
}

// VolumePath implements container/driver.VolumePaths: where this server
// mounted volume of pool.
func (s *Storage) VolumePath(ctx context.Context, pool, volume string) (string, error) {
	d, ok := s.Running(pool)
	if !ok {
		return "", errcode.New(errcode.FailedPrecondition, "this server takes no part in storage pool %q; mount the volume here first", pool)
	}
	st, err := d.Status(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range st.Mounts {
		if m.Volume == volume {
			return m.Path, nil
		}
	}
	return "", errcode.New(errcode.FailedPrecondition, "volume %s/%s is not mounted on this server; mount it here first", pool, volume)
}

// Routes implements Service: s under /v1/storage.
func (s *Storage) Routes(route func(string, http.HandlerFunc)) {
	route("GET /v1/storage", reply(func(r *http.Request) ([]Info, error) { return s.List(), nil }))
	route("PUT /v1/storage/{pool}/{kind}", reply(func(r *http.Request) (any, error) {
		var cfg storagedriver.Config
		if err := wire.DecodeBody(r, &cfg); err != nil {
			return nil, err
		}
		return nil, s.Deploy(r.Context(), r.PathValue("pool"), r.PathValue("kind"), &cfg)
	}))
	route("GET /v1/storage/{pool}/config", reply(func(r *http.Request) (cfg *storagedriver.Config, err error) {
		err = s.Do(r.Context(), r.PathValue("pool"), func(d storagedriver.Driver) error {
			cfg, err = d.Config(r.Context())
			return err
		})
		return cfg, err
	}))
	route("GET /v1/storage/{pool}/status", reply(func(r *http.Request) (st *storagedriver.Status, err error) {
		d, ok := s.Running(r.PathValue("pool"))
		if !ok {
			return nil, errcode.New(errcode.FailedPrecondition, "this server takes no part in storage pool %q", r.PathValue("pool"))
		}
		return d.Status(r.Context())
	}))
	route("POST /v1/storage/{pool}/volumes/{volume}/remove", reply(func(r *http.Request) (any, error) {
		var opts storagedriver.RemoveOptions
		if err := wire.DecodeBody(r, &opts); err != nil {
			return nil, err
		}
		if _, ok := s.Running(r.PathValue("pool")); !ok {
			return nil, errcode.New(errcode.FailedPrecondition, "this server takes no part in storage pool %q", r.PathValue("pool"))
		}
		return nil, s.Do(r.Context(), r.PathValue("pool"), func(d storagedriver.Driver) error {
			return d.RemoveVolume(r.Context(), r.PathValue("volume"), &opts)
		})
	}))
	route("POST /v1/storage/{pool}/leave", reply(func(r *http.Request) (any, error) {
		var opts storagedriver.RemoveOptions
		if err := wire.DecodeBody(r, &opts); err != nil {
			return nil, err
		}
		return nil, s.leave(r.Context(), r.PathValue("pool"), &opts)
	}))
}

// leave ends this server's part in pool and forgets it. Not taking part
// is no error.
func (s *Storage) leave(ctx context.Context, pool string, opts *storagedriver.RemoveOptions) error {
	d, ok := s.Running(pool)
	if !ok {
		return names.Label(pool)
	}
	if err := d.Leave(ctx, opts); err != nil {
		return err
	}
	return s.Remove(ctx, pool)
}

// StoragePool returns this server's part in pool, of kind, as a
// storage/driver.Driver: the first Apply starts it there (the daemons
// and mounts of that kind), Leave ends it and the agent forgets it.
// Close only ends this handle: the part keeps running on the server.
// Capabilities are those the agent reported for kind when the client
// dialled (none if it offers no such kind).
func (c *Client) StoragePool(kind, pool string) storagedriver.Driver {
	return &storageClient{handle{c: c, service: "storage", what: "storage pool", kind: kind, name: pool}}
}

// StoragePools lists the pools the agent's server takes part in.
func (c *Client) StoragePools(ctx context.Context) ([]Info, error) {
	return call[[]Info](ctx, c, http.MethodGet, apiPath("storage"), nil)
}

type storageClient struct{ handle }

var _ storagedriver.Driver = (*storageClient)(nil)

func (s *storageClient) Apply(ctx context.Context, cfg *storagedriver.Config) error {
	if err := s.check(s.name, s.kind); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Pool.Name != s.name {
		return errcode.New(errcode.FailedPrecondition, "this driver runs a part in pool %q, not %q", s.name, cfg.Pool.Name)
	}
	return do(ctx, s.c, http.MethodPut, s.path(s.kind), cfg)
}

func (s *storageClient) Config(ctx context.Context) (*storagedriver.Config, error) {
	if err := s.check(s.name); err != nil {
		return nil, err
	}
	cfg, err := call[*storagedriver.Config](ctx, s.c, http.MethodGet, s.path("config"), nil)
	if errors.Is(err, errcode.NotFound) {
		return nil, nil
	}
	return cfg, err
}

func (s *storageClient) Status(ctx context.Context) (*storagedriver.Status, error) {
	if err := s.check(s.name); err != nil {
		return nil, err
	}
	return call[*storagedriver.Status](ctx, s.c, http.MethodGet, s.path("status"), nil)
}

func (s *storageClient) RemoveVolume(ctx context.Context, name string, opts *storagedriver.RemoveOptions) error {
	if err := s.check(s.name, name); err != nil {
		return err
	}
	if opts == nil {
		opts = &storagedriver.RemoveOptions{}
	}
	return do(ctx, s.c, http.MethodPost, s.path("volumes", name, "remove"), opts)
}

func (s *storageClient) Leave(ctx context.Context, opts *storagedriver.RemoveOptions) error {
	if err := s.check(s.name); err != nil {
		return err
	}
	if opts == nil {
		opts = &storagedriver.RemoveOptions{}
	}
	return do(ctx, s.c, http.MethodPost, s.path("leave"), opts)
}

func (s *storageClient) Capabilities() storagedriver.Capabilities {
	var caps storagedriver.Capabilities
	s.c.caps.decode("storage", s.kind, &caps)
	return caps
}

// Close ends this handle; the pool's part on the server keeps running.
func (s *storageClient) Close() error {
	s.closed.Store(true)
	return nil
}
