// Package restore keeps what a server's network driver was asked for, so
// that a restarted process brings its networks back by itself.
//
// Some drivers hold state only in the process that runs them: the embedded
// userspace WireGuard device, the embedded BGP speaker. When that process
// (the agent) restarts, their networks stop carrying traffic until the
// orchestrator applies them again. A driver wrapped by Wrap writes each
// network's last applied spec and peers to a file of its own, and Restore,
// called when the process starts, applies them again. Kernel-backed
// drivers (VXLAN) need none of this, and restoring them changes nothing.
//
// The files hold WireGuard private keys: they are written 0600 in a 0700
// directory, replaced atomically, and removed with the network.
package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
)

// Driver is a driver.Driver that keeps what it applies in a directory.
type Driver struct {
	driver.Driver
	dir string
	log *slog.Logger

	mu sync.Mutex // serialises the files' updates
}

var _ driver.Driver = (*Driver)(nil)

// record is one network's file.
type record struct {
	Spec  *driver.Spec  `json:"spec"`
	Peers []driver.Peer `json:"peers,omitempty"`
}

// Wrap returns d keeping its networks in dir (created 0700 if missing).
// A nil log discards.
func Wrap(d driver.Driver, dir string, log *slog.Logger) (*Driver, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{Driver: d, dir: dir, log: log}, nil
}

func (d *Driver) path(id string) string { return filepath.Join(d.dir, id+".json") }

func (d *Driver) read(id string) (*record, error) {
	data, err := os.ReadFile(d.path(id))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil || r.Spec == nil || r.Spec.ID != id {
		return nil, errcode.New(errcode.Internal, "restore: %s is damaged: %v", d.path(id), err)
	}
	return &r, nil
}

func (d *Driver) write(r *record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return errcode.Wrap(errcode.Internal, err)
	}
	if err := renameio.WriteFile(d.path(r.Spec.ID), data, 0o600); err != nil {
		return errcode.Wrap(errcode.Internal, fmt.Errorf("restore: keeping network %q: %w", r.Spec.ID, err))
	}
	return nil
}

// EnsureNetwork applies spec and, when it succeeds, keeps it (with the
// peers kept before, if the network was kept already).
func (d *Driver) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	st, err := d.Driver.EnsureNetwork(ctx, spec)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r := &record{Spec: spec}
	if old, err := d.read(spec.ID); err == nil {
		r.Peers = old.Peers
	}
	return st, d.write(r)
}

// SetPeers applies peers and, when it succeeds, keeps them.
func (d *Driver) SetPeers(ctx context.Context, id string, peers []driver.Peer) error {
	if err := d.Driver.SetPeers(ctx, id, peers); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r, err := d.read(id)
	if err != nil {
		// Applied by the driver, yet never ensured through this wrapper:
		// nothing to restore it from.
		d.log.Warn("restore: peers of a network not kept", "network", id, "err", err)
		return nil
	}
	r.Peers = peers
	return d.write(r)
}

// DeleteNetwork deletes the network and forgets it.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	err := d.Driver.DeleteNetwork(ctx, id)
	if err != nil && !errors.Is(err, errcode.NotFound) {
		return err
	}
	if names.Label(id) == nil {
		d.mu.Lock()
		rerr := os.Remove(d.path(id))
		d.mu.Unlock()
		if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return errcode.Wrap(errcode.Internal, rerr)
		}
	}
	return err
}

// Restore applies every kept network again, spec then peers, and returns
// the IDs it restored, sorted. A network that fails is logged and skipped,
// and its error joined into the result; the others are still restored.
func (d *Driver) Restore(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	var ids []string
	var errs []error
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || names.Label(id) != nil {
			continue
		}
		r, err := d.read(id)
		if err == nil {
			_, err = d.Driver.EnsureNetwork(ctx, r.Spec)
		}
		if err == nil {
			err = d.Driver.SetPeers(ctx, id, r.Peers)
		}
		if err != nil {
			d.log.Error("restore: network not restored", "network", id, "err", err)
			errs = append(errs, fmt.Errorf("network %q: %w", id, err))
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, errors.Join(errs...)
}
