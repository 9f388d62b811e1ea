package agent

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"

	"github.com/musterkit/muster/agent/internal/wire"
	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

// DiscoveryService serves a service registry (discovery/driver), of kind
// kind ("memory" for the embedded registry), under /v1/discovery, so that
// the cluster's servers and orchestrators share the registry one server
// runs (see Client.Discovery). The caller keeps d.
func DiscoveryService(kind string, d discdriver.Driver) Service {
	return discoveryService{kind: kind, d: d}
}

type discoveryService struct {
	kind string
	d    discdriver.Driver
}

func (discoveryService) Name() string { return "discovery" }

// Capabilities: a registry has no optional features; the document names
// its kind.
func (s discoveryService) Capabilities(context.Context) (map[string]any, error) {
	return map[string]any{s.kind: struct{}{}}, nil
}

func (s discoveryService) Routes(route func(string, http.HandlerFunc)) {
	route("PUT /v1/discovery/instances/{instance}", reply(func(r *http.Request) (any, error) {
		var inst discdriver.Instance
		if err := wire.DecodeBody(r, &inst); err != nil {
			return nil, err
		}
		if inst.ID != r.PathValue("instance") {
			return nil, errcode.New(errcode.InvalidArgument, "the instance's ID %q is not the path's %q", inst.ID, r.PathValue("instance"))
		}
		return nil, s.d.Register(r.Context(), &inst)
	}))
	route("DELETE /v1/discovery/instances/{instance}", reply(func(r *http.Request) (any, error) {
		return nil, s.d.Deregister(r.Context(), r.PathValue("instance"))
	}))
	route("POST /v1/discovery/instances/{instance}/pass", reply(func(r *http.Request) (any, error) {
		return nil, s.d.PassTTL(r.Context(), r.PathValue("instance"))
	}))
	route("GET /v1/discovery/services", reply(func(r *http.Request) ([]string, error) { return s.d.Services(r.Context()) }))
	route("GET /v1/discovery/services/{service}", reply(func(r *http.Request) ([]discdriver.Entry, error) {
		q := r.URL.Query()
		return s.d.Resolve(r.Context(), discdriver.Query{Service: r.PathValue("service"), Tag: q.Get("tag"), Critical: q.Get("critical") == "1"})
	}))
	// A long poll: it answers when the service changes after index or
	// the caller goes away.
	route("GET /v1/discovery/services/{service}/wait", reply(func(r *http.Request) (*discdriver.Result, error) {
		index, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
		if err != nil {
			return nil, errcode.New(errcode.InvalidArgument, "wait: index %q is not a number", r.URL.Query().Get("index"))
		}
		return s.d.Wait(r.Context(), r.PathValue("service"), index)
	}))
}

// Discovery returns the registry the agent's server serves (DiscoveryService)
// as a remote discovery/driver.Driver. Its calls fail with
// errcode.Unimplemented if the agent serves none. Close does nothing to
// the registry: it stops this client's use of it.
func (c *Client) Discovery() discdriver.Driver { return &discoveryClient{c: c} }

type discoveryClient struct {
	c      *Client
	closed atomic.Bool
}

var _ discdriver.Driver = (*discoveryClient)(nil)

// check fails after Close. The client validates what goes into a path, so
// that a malformed ID is InvalidArgument here, not a route the agent lacks.
func (d *discoveryClient) check() error {
	if d.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "discovery client: closed")
	}
	return nil
}

func (d *discoveryClient) Register(ctx context.Context, inst *discdriver.Instance) error {
	if err := d.check(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	return do(ctx, d.c, http.MethodPut, apiPath("discovery", "instances", inst.ID), inst)
}

func (d *discoveryClient) Deregister(ctx context.Context, id string) error {
	if err := d.checkID(id); err != nil {
		return err
	}
	return do(ctx, d.c, http.MethodDelete, apiPath("discovery", "instances", id), nil)
}

func (d *discoveryClient) PassTTL(ctx context.Context, id string) error {
	if err := d.checkID(id); err != nil {
		return err
	}
	return do(ctx, d.c, http.MethodPost, apiPath("discovery", "instances", id, "pass"), nil)
}

func (d *discoveryClient) checkID(id string) error {
	if err := d.check(); err != nil {
		return err
	}
	return discdriver.ValidID(id)
}

func (d *discoveryClient) Resolve(ctx context.Context, q discdriver.Query) ([]discdriver.Entry, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	v := url.Values{}
	if q.Tag != "" {
		v.Set("tag", q.Tag)
	}
	if q.Critical {
		v.Set("critical", "1")
	}
	path := apiPath("discovery", "services", q.Service)
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	return call[[]discdriver.Entry](ctx, d.c, http.MethodGet, path, nil)
}

func (d *discoveryClient) Wait(ctx context.Context, service string, index uint64) (*discdriver.Result, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	if err := discdriver.ValidService(service); err != nil {
		return nil, err
	}
	path := apiPath("discovery", "services", service, "wait") + "?index=" + strconv.FormatUint(index, 10)
	return call[*discdriver.Result](ctx, d.c, http.MethodGet, path, nil)
}

func (d *discoveryClient) Services(ctx context.Context) ([]string, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	return call[[]string](ctx, d.c, http.MethodGet, apiPath("discovery", "services"), nil)
}

// Close implements discdriver.Driver: later calls fail with
// errcode.FailedPrecondition; the registry and its registrations stay.
func (d *discoveryClient) Close() error {
	d.closed.Store(true)
	return nil
}
