package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Kind opens an instance of one kind of driver (HAProxy, keepalived,
// in-memory, ...) that keeps its files in dir.
type Kind[D io.Closer] func(ctx context.Context, dir string) (D, error)

// Info names an instance an agent runs and says its kind.
type Info struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// Hosted are named driver instances that a server runs for the cluster
// (its load balancers, its floating IPs): instances of the kinds it
// offers, each with a directory of its own under dir. What each instance
// was told to do (its kind and configuration) is kept in dir too, so that
// opening them again after the agent restarts brings them back. It is
// safe for concurrent use.
type Hosted[D io.Closer, C any] struct {
	what  string // "balancer", for messages
	dir   string
	kinds map[string]Kind[D]
	apply func(context.Context, D, *C) error
	// kept returns the configuration to keep after a change: what the
	// driver reports, or the one applied.
	kept func(ctx context.Context, d D, applied *C) (*C, error)
	log  *slog.Logger

	mu      sync.Mutex
	running map[string]*instance[D, C]
}

type instance[D io.Closer, C any] struct {
	kind    string
	d       D
	applied *C
}

// record is what is kept of an instance.
type record[C any] struct {
	Kind   string `json:"kind"`
	Config *C     `json:"config"`
}

// openHosted returns the instances kept in dir (created if missing) and
// applies again those an earlier run kept there. One that fails to come
// back is logged and its error joined into the result; the others run.
func openHosted[D io.Closer, C any](ctx context.Context, h *Hosted[D, C]) (*Hosted[D, C], error) {
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.running = map[string]*instance[D, C]{}
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	entries, err := os.ReadDir(h.dir)
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || names.Label(name) != nil {
			continue
		}
		var rec record[C]
		data, err := os.ReadFile(filepath.Join(h.dir, e.Name()))
		if err == nil {
			err = json.Unmarshal(data, &rec)
		}
		if err == nil {
			err = h.Deploy(ctx, name, rec.Kind, rec.Config)
		}
		if err != nil {
			h.log.Error(h.what+" not restored", "name", name, "err", err)
			errs = append(errs, fmt.Errorf("%s %q: %w", h.what, name, err))
			continue
		}
		h.log.Info(h.what+" restored", "name", name, "kind", rec.Kind)
	}
	return h, errors.Join(errs...)
}

// Kinds lists the kinds offered, sorted.
func (h *Hosted[D, C]) Kinds() []string { return slices.Sorted(maps.Keys(h.kinds)) }

// List returns the running instances, sorted by name.
func (h *Hosted[D, C]) List() []Info {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Info
	for _, name := range slices.Sorted(maps.Keys(h.running)) {
		out = append(out, Info{Name: name, Kind: h.running[name].kind})
	}
	return out
}

// Deploy makes instance name of kind apply cfg, starting it if it does
// not run. One of another kind by that name is errcode.FailedPrecondition;
// an unknown kind errcode.Unimplemented. An instance that this call
// started and that fails to apply cfg is removed again.
func (h *Hosted[D, C]) Deploy(ctx context.Context, name, kind string, cfg *C) error {
	if err := names.Label(name); err != nil {
		return err
	}
	if cfg == nil {
		return errcode.New(errcode.InvalidArgument, "%s %q: no config", h.what, name)
	}
	open, ok := h.kinds[kind]
	if !ok {
		return errcode.New(errcode.Unimplemented, "%s %q: this server offers no kind %q (it offers %s)", h.what, name, kind, strings.Join(h.Kinds(), ", "))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	in := h.running[name]
	if in != nil && in.kind != kind {
		return errcode.New(errcode.FailedPrecondition, "%s %q is of kind %s; remove it to deploy %s", h.what, name, in.kind, kind)
	}
	started := in == nil || in.applied == nil
	if in == nil {
		d, err := open(ctx, h.instanceDir(name))
		if err != nil {
			return err
		}
		in = &instance[D, C]{kind: kind, d: d}
	}
	if err := h.apply(ctx, in.d, cfg); err != nil {
		if started {
			in.d.Close()
			delete(h.running, name)
			os.RemoveAll(h.instanceDir(name))
		}
		return err
	}
	in.applied = cfg
	h.running[name] = in
	if err := h.save(ctx, name, in); err != nil {
		return err
	}
	if started {
		h.log.InfoContext(ctx, h.what+" deployed", "name", name, "kind", kind)
	}
	return nil
}

func (h *Hosted[D, C]) instanceDir(name string) string { return filepath.Join(h.dir, name) }

// save keeps in's kind and configuration. h.mu is held.
func (h *Hosted[D, C]) save(ctx context.Context, name string, in *instance[D, C]) error {
	cfg, err := h.kept(ctx, in.d, in.applied)
	if err != nil {
		return err
	}
	data, err := json.Marshal(record[C]{Kind: in.kind, Config: cfg})
	if err != nil {
		return errcode.Wrap(errcode.Internal, err)
	}
	// Keys (certificates', WireGuard's) may be in it: owner only.
	if err := renameio.WriteFile(filepath.Join(h.dir, name+".json"), data, 0o600); err != nil {
		return errcode.Wrap(errcode.Internal, fmt.Errorf("keeping %s %q: %w", h.what, name, err))
	}
	return nil
}

// Do runs fn on instance name's driver and keeps its configuration
// afterwards (fn may change it). errcode.NotFound if name does not run.
func (h *Hosted[D, C]) Do(ctx context.Context, name string, fn func(D) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	in := h.running[name]
	if in == nil {
		return errcode.New(errcode.NotFound, "no %s %q", h.what, name)
	}
	if err := fn(in.d); err != nil {
		return err
	}
	return h.save(ctx, name, in)
}

// Running returns instance name's driver if it runs.
func (h *Hosted[D, C]) Running(name string) (D, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if in := h.running[name]; in != nil {
		return in.d, true
	}
	var zero D
	return zero, false
}

// Driver returns instance name's driver, opening one of kind if none
// runs (unconfigured and not kept until Deploy configures it), for calls
// that do not change it and may come first, like a watch. Its kind must
// match, as for Deploy.
func (h *Hosted[D, C]) Driver(ctx context.Context, name, kind string) (D, error) {
	var zero D
	if err := names.Label(name); err != nil {
		return zero, err
	}
	open, ok := h.kinds[kind]
	if !ok {
		return zero, errcode.New(errcode.Unimplemented, "%s %q: this server offers no kind %q", h.what, name, kind)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if in := h.running[name]; in != nil {
		if in.kind != kind {
			return zero, errcode.New(errcode.FailedPrecondition, "%s %q is of kind %s, not %s", h.what, name, in.kind, kind)
		}
		return in.d, nil
	}
	d, err := open(ctx, h.instanceDir(name))
	if err != nil {
		return zero, err
	}
	h.running[name] = &instance[D, C]{kind: kind, d: d}
	return d, nil
}

// Remove stops instance name and deletes its files. errcode.NotFound if
// it does not run.
func (h *Hosted[D, C]) Remove(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	in := h.running[name]
	if in == nil {
		return errcode.New(errcode.NotFound, "no %s %q", h.what, name)
	}
	delete(h.running, name)
	err := in.d.Close()
	for _, p := range []string{filepath.Join(h.dir, name+".json"), h.instanceDir(name)} {
		err = errors.Join(err, os.RemoveAll(p))
	}
	h.log.InfoContext(ctx, h.what+" removed", "name", name)
	return err
}

// kindCapabilities returns caps of an instance of each kind, opened in a
// scratch directory (see Scratch). A kind that cannot open here (LVS on a
// kernel without IPVS) is logged and left out: the server cannot run it.
func (h *Hosted[D, C]) kindCapabilities(ctx context.Context, caps func(D) any) (map[string]any, error) {
	out := map[string]any{}
	for _, kind := range h.Kinds() {
		if err := h.Scratch(ctx, kind, func(d D) error { out[kind] = caps(d); return nil }); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			h.log.WarnContext(ctx, h.what+" kind unavailable on this server", "kind", kind, "err", err)
		}
	}
	return out, nil
}

// Scratch runs fn on an instance of kind opened in a scratch directory
// and closed again (to read what a kind can do).
func (h *Hosted[D, C]) Scratch(ctx context.Context, kind string, fn func(D) error) error {
	open, ok := h.kinds[kind]
	if !ok {
		return errcode.New(errcode.Unimplemented, "this server offers no %s of kind %q", h.what, kind)
	}
	dir, err := os.MkdirTemp(h.dir, ".scratch-")
	if err != nil {
		return errcode.Wrap(errcode.Internal, err)
	}
	defer os.RemoveAll(dir)
	d, err := open(ctx, dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(d)
}

// Close stops every instance; their records stay, so that opening them
// again deploys them again.
func (h *Hosted[D, C]) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for name, in := range h.running {
		errs = append(errs, in.d.Close())
		delete(h.running, name)
	}
	return errors.Join(errs...)
}

// handle is a client's handle on one instance a Hosted service runs on
// the agent's server: its routes are under /v1/<service>/<name>.
type handle struct {
	c          *Client
	service    string // "balancers"
	what       string // "balancer", for messages
	kind, name string
	closed     atomic.Bool
}

func (h *handle) path(segments ...string) string {
	return apiPath(append([]string{h.service, h.name}, segments...)...)
}

// check fails after Close, and validates what goes into a path, so that a
// malformed name is InvalidArgument here rather than a route the agent
// does not know.
func (h *handle) check(values ...string) error {
	if h.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "%s %q: closed", h.what, h.name)
	}
	for _, n := range values {
		if err := names.Label(n); err != nil {
			return err
		}
	}
	return nil
}
