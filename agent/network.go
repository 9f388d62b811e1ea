package agent

import (
	"context"
	"net/http"
	"sync/atomic"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/preflight"
)

// NetworkService serves the server's network drivers, one per mode, under
// /v1/networks/{mode} (see Client.Network). The caller keeps the drivers.
func NetworkService(nets map[netdriver.Mode]netdriver.Driver) Service { return networkService(nets) }

type networkService map[netdriver.Mode]netdriver.Driver

func (networkService) Name() string { return "networks" }

// Capabilities are each mode's driver's.
func (nets networkService) Capabilities(context.Context) (map[string]any, error) {
	caps := map[string]any{}
	for mode, d := range nets {
		caps[string(mode)] = d.Capabilities()
	}
	return caps, nil
}

func (nets networkService) Routes(route func(string, http.HandlerFunc)) {
	driverOf := func(r *http.Request) (netdriver.Driver, error) {
		mode := netdriver.Mode(r.PathValue("mode"))
		if d, ok := nets[mode]; ok {
			return d, nil
		}
		return nil, errcode.New(errcode.Unimplemented, "the agent has no %q network driver", mode)
	}
	route("GET /v1/networks/{mode}", reply(func(r *http.Request) ([]*netdriver.Status, error) {
		d, err := driverOf(r)
		if err != nil {
			return nil, err
		}
		return d.Networks(r.Context())
	}))
	route("PUT /v1/networks/{mode}/{id}", reply(func(r *http.Request) (*netdriver.Status, error) {
		d, err := driverOf(r)
		if err != nil {
			return nil, err
		}
		var spec netdriver.Spec
		if err := wire.DecodeBody(r, &spec); err != nil {
			return nil, err
		}
		if spec.ID != r.PathValue("id") {
			return nil, errcode.New(errcode.InvalidArgument, "the spec's ID %q is not the path's %q", spec.ID, r.PathValue("id"))
		}
		if err := spec.Validate(); err != nil {
			return nil, err
		}
		return d.EnsureNetwork(r.Context(), &spec)
	}))
	route("DELETE /v1/networks/{mode}/{id}", reply(func(r *http.Request) (any, error) {
		d, err := driverOf(r)
		if err != nil {
			return nil, err
		}
		return nil, d.DeleteNetwork(r.Context(), r.PathValue("id"))
	}))
	route("PUT /v1/networks/{mode}/{id}/peers", reply(func(r *http.Request) (any, error) {
		d, err := driverOf(r)
		if err != nil {
			return nil, err
		}
		var peers []netdriver.Peer
		if err := wire.DecodeBody(r, &peers); err != nil {
			return nil, err
		}
		return nil, d.SetPeers(r.Context(), r.PathValue("id"), peers)
	}))
}

// Network returns the agent's network driver for mode as a remote
// netdriver.Driver. Its calls fail with errcode.Unimplemented if the agent
// has no driver for the mode. Capabilities are those the agent reported
// when the client dialled (none if it offers no driver for the mode).
func (c *Client) Network(mode netdriver.Mode) netdriver.Driver {
	return &networkClient{c: c, mode: mode}
}

// networkClient is a remote network driver of one mode.
type networkClient struct {
	c      *Client
	mode   netdriver.Mode
	closed atomic.Bool
}

var _ netdriver.Driver = (*networkClient)(nil)

// check returns errcode.FailedPrecondition once n is closed.
func (n *networkClient) check() error {
	if n.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "network client (%s): closed", n.mode)
	}
	return nil
}

func (n *networkClient) path(segments ...string) string {
	return apiPath(append([]string{"networks", string(n.mode)}, segments...)...)
}

// The client checks what goes into a path, so that a malformed ID is
// InvalidArgument here rather than a route the agent does not know.

func (n *networkClient) EnsureNetwork(ctx context.Context, spec *netdriver.Spec) (*netdriver.Status, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	return call[*netdriver.Status](ctx, n.c, http.MethodPut, n.path(spec.ID), spec)
}

func (n *networkClient) DeleteNetwork(ctx context.Context, id string) error {
	if err := n.check(); err != nil {
		return err
	}
	if err := names.Label(id); err != nil {
		return err
	}
	_, err := call[struct{}](ctx, n.c, http.MethodDelete, n.path(id), nil)
	return err
}

func (n *networkClient) SetPeers(ctx context.Context, id string, peers []netdriver.Peer) error {
	if err := n.check(); err != nil {
		return err
	}
	if err := names.Label(id); err != nil {
		return err
	}
	if peers == nil {
		peers = []netdriver.Peer{}
	}
	_, err := call[struct{}](ctx, n.c, http.MethodPut, n.path(id, "peers"), peers)
	return err
}

func (n *networkClient) Networks(ctx context.Context) ([]*netdriver.Status, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	return call[[]*netdriver.Status](ctx, n.c, http.MethodGet, n.path(), nil)
}

func (n *networkClient) Capabilities() netdriver.Capabilities {
	var caps netdriver.Capabilities
	n.c.caps.decode("networks", string(n.mode), &caps)
	return caps
}

// Close implements netdriver.Driver: later calls fail with
// errcode.FailedPrecondition; the networks stay, and the Client holds the
// connection.
func (n *networkClient) Close() error {
	n.closed.Store(true)
	return nil
}

// preflightService serves the server's side of network preflights
// (package network/preflight) under /v1/preflight, from the agent's own
// network namespace: the server's.
type preflightService struct{ p *preflight.Local }

func (preflightService) Name() string { return "preflight" }

// Capabilities: a preflight has no kinds.
func (preflightService) Capabilities(context.Context) (map[string]any, error) { return nil, nil }

func (s preflightService) Routes(route func(string, http.HandlerFunc)) {
	p := s.p
	route("POST /v1/preflight/responders", reply(func(r *http.Request) (*preflight.Responder, error) {
		var req preflight.RespondRequest
		if err := wire.DecodeBody(r, &req); err != nil {
			return nil, err
		}
		return p.Respond(r.Context(), &req)
	}))
	route("DELETE /v1/preflight/responders/{id}", reply(func(r *http.Request) (any, error) {
		return nil, p.StopResponding(r.Context(), r.PathValue("id"))
	}))
	route("POST /v1/preflight/probes", reply(func(r *http.Request) (*preflight.ProbeResult, error) {
		var req preflight.ProbeRequest
		if err := wire.DecodeBody(r, &req); err != nil {
			return nil, err
		}
		return p.Probe(r.Context(), &req)
	}))
}

// Preflight returns the agent's side of network preflights as a
// preflight.Server: responders and probes run on the agent's server.
func (c *Client) Preflight() preflight.Server { return preflightClient{c} }

type preflightClient struct{ c *Client }

func (p preflightClient) Respond(ctx context.Context, req *preflight.RespondRequest) (*preflight.Responder, error) {
	return call[*preflight.Responder](ctx, p.c, http.MethodPost, apiPath("preflight", "responders"), req)
}

func (p preflightClient) StopResponding(ctx context.Context, id string) error {
	if err := names.Label(id); err != nil {
		return err
	}
	_, err := call[struct{}](ctx, p.c, http.MethodDelete, apiPath("preflight", "responders", id), nil)
	return err
}

func (p preflightClient) Probe(ctx context.Context, req *preflight.ProbeRequest) (*preflight.ProbeResult, error) {
	return call[*preflight.ProbeResult](ctx, p.c, http.MethodPost, apiPath("preflight", "probes"), req)
}
