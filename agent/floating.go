package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/errcode"
	hadriver "github.com/musterkit/muster/ha/driver"
)

// FloatingIPKind opens a floating-IP speaker of one kind (keepalived,
// in-memory) that keeps its files in dir.
type FloatingIPKind = Kind[hadriver.Driver]

// FloatingIPs are the VRRP speakers a server runs for the cluster's
// floating-IP groups (see Hosted), one per group; the configuration kept
// is the one last applied.
type FloatingIPs struct {
	*Hosted[hadriver.Driver, hadriver.Config]
}

var _ Service = (*FloatingIPs)(nil)

// Name implements Service.
func (*FloatingIPs) Name() string { return "floating-ips" }

// Capabilities implements Service: each kind's driver's.
func (fs *FloatingIPs) Capabilities(ctx context.Context) (map[string]any, error) {
	return fs.kindCapabilities(ctx, func(d hadriver.Driver) any { return d.Capabilities() })
}

// OpenFloatingIPs returns the speakers kept in dir (created if missing)
// with the kinds offered, and applies again those an earlier run kept.
func OpenFloatingIPs(ctx context.Context, dir string, kinds map[string]FloatingIPKind, log *slog.Logger) (*FloatingIPs, error) {
	h, err := openHosted(ctx, &Hosted[hadriver.Driver, hadriver.Config]{
		what: "floating IP group", dir: dir, kinds: kinds, log: log,
		apply: func(ctx context.Context, d hadriver.Driver, cfg *hadriver.Config) error { return d.Apply(ctx, cfg) },
		kept: func(_ context.Context, _ hadriver.Driver, applied *hadriver.Config) (*hadriver.Config, error) {
			return applied, nil
		},
	})
	if h == nil {
		return nil, err
	}
	return &FloatingIPs{h}, err
}

// Routes implements Service: fs under /v1/floating-ips.
func (fs *FloatingIPs) Routes(route func(string, http.HandlerFunc)) {
	route("GET /v1/floating-ips", reply(func(r *http.Request) ([]Info, error) { return fs.List(), nil }))
	route("PUT /v1/floating-ips/{name}/{kind}", reply(func(r *http.Request) (any, error) {
		var cfg hadriver.Config
		if err := wire.DecodeBody(r, &cfg); err != nil {
			return nil, err
		}
		return nil, fs.Deploy(r.Context(), r.PathValue("name"), r.PathValue("kind"), &cfg)
	}))
	route("DELETE /v1/floating-ips/{name}", reply(func(r *http.Request) (any, error) {
		return nil, fs.Remove(r.Context(), r.PathValue("name"))
	}))
	route("GET /v1/floating-ips/{name}/{kind}/status", reply(func(r *http.Request) (*hadriver.Status, error) {
		d, ok := fs.Running(r.PathValue("name"))
		if !ok { // nothing to ask: a group never applied here is stopped
			return &hadriver.Status{State: hadriver.Stopped}, nil
		}
		return d.Status(r.Context())
	}))
	// The events stream as JSON lines until the caller goes away or the
	// speaker is removed. A first empty line sends the headers, so that
	// the caller's Watch returns before the first event.
	route("GET /v1/floating-ips/{name}/{kind}/events", func(w http.ResponseWriter, r *http.Request) {
		d, err := fs.Driver(r.Context(), r.PathValue("name"), r.PathValue("kind"))
		var events <-chan hadriver.Event
		if err == nil {
			events, err = d.Watch(r.Context())
		}
		if err != nil {
			wire.WriteError(w, err)
			return
		}
		rc := http.NewResponseController(w)
		streamResponse(w, func(out io.Writer) error {
			if _, err := io.WriteString(out, "\n"); err != nil {
				return err
			}
			rc.Flush()
			enc := json.NewEncoder(out)
			for ev := range events {
				if err := enc.Encode(ev); err != nil {
					return err
				}
				rc.Flush()
			}
			return nil
		})
	})
}

// FloatingIP returns the speaker of floating-IP group name on the agent's
// server, of kind (keepalived, memory), as an ha/driver.Driver: Apply
// starts or changes it there, Status and Watch report it (and may come
// before Apply), Close removes it. Capabilities are those the agent
// reported for kind when the client dialled (none if it offers no such
// kind).
func (c *Client) FloatingIP(kind, name string) hadriver.Driver {
	return &floatingClient{handle{c: c, service: "floating-ips", what: "floating IP group", kind: kind, name: name}}
}

type floatingClient struct{ handle }

var _ hadriver.Driver = (*floatingClient)(nil)

func (f *floatingClient) Apply(ctx context.Context, cfg *hadriver.Config) error {
	if err := f.check(f.name, f.kind); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	return do(ctx, f.c, http.MethodPut, f.path(f.kind), cfg)
}

// Status implements hadriver.Driver; after Close it is Stopped.
func (f *floatingClient) Status(ctx context.Context) (*hadriver.Status, error) {
	if f.closed.Load() {
		return &hadriver.Status{State: hadriver.Stopped}, nil
	}
	if err := f.check(f.name, f.kind); err != nil {
		return nil, err
	}
	return call[*hadriver.Status](ctx, f.c, http.MethodGet, f.path(f.kind, "status"), nil)
}

func (f *floatingClient) Watch(ctx context.Context) (<-chan hadriver.Event, error) {
	if err := f.check(f.name, f.kind); err != nil {
		return nil, err
	}
	resp, err := f.c.roundTrip(ctx, http.MethodGet, f.path(f.kind, "events"), nil, nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan hadriver.Event, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		dec := json.NewDecoder(resp.Body)
		for {
			var ev hadriver.Event
			if err := dec.Decode(&ev); err != nil {
				return // the stream ended: ctx, the speaker removed, or the agent gone
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

func (f *floatingClient) Capabilities() hadriver.Capabilities {
	var caps hadriver.Capabilities
	f.c.caps.decode("floating-ips", f.kind, &caps)
	return caps
}

// Close removes the speaker from the agent's server, releasing the
// addresses; one never applied is no error. Later calls fail with
// errcode.FailedPrecondition.
func (f *floatingClient) Close() error {
	if f.check(f.name) != nil {
		return nil
	}
	f.closed.Store(true)
	err := do(context.Background(), f.c, http.MethodDelete, f.path(), nil)
	if errors.Is(err, errcode.NotFound) {
		return nil
	}
	return err
}
