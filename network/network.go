// Package network joins containers on different servers into one network,
// by whichever technology fits the cluster: a stretched layer-2 network over
// VXLAN (in the clear, or inside WireGuard tunnels), or routed layer-3
// networks over WireGuard or BGP.
//
// A Fabric holds a Server per server: its network drivers by mode
// (drivers/vxlan and friends on the server, through its agent.Client, or a
// Local driver such as memnetwork in tests). Preflight checks the underlay
// before anything is built; Ensure builds a network on every server and
// declares each server's peers; Attach leases a container an address and
// returns the container.Network to put in its spec; Status says which
// peers are connected; RemoveServer takes a server out of every network. Addresses come from package ipam: one range per server in the
// layer-3 modes, leases that survive restarts and are never handed out
// twice. WireGuard keys are made here and kept in the Fabric's directory.
package network

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/ipam"
	"github.com/musterkit/muster/network/preflight"
)

// Spec describes a network across the cluster. Per-server details (the
// bridge address, the server's range, keys) are the Fabric's to derive.
type Spec struct {
	ID     string       `json:"id"`
	Mode   driver.Mode  `json:"mode"`
	Subnet netip.Prefix `json:"subnet"`
	VNI    uint32       `json:"vni,omitempty"`
	Port   uint16       `json:"port,omitempty"`
	MTU    int          `json:"mtu,omitempty"`
	// ASN is the BGP autonomous system every server of the network uses.
	ASN uint32 `json:"asn,omitempty"`
}

// layer3 reports whether the mode routes a range per server.
func (s *Spec) layer3() bool { return s.Mode == driver.WireGuard || s.Mode == driver.BGP }

// Options configure a Fabric. The zero value is usable.
type Options struct {
	// Logger receives one record per change; nil discards.
	Logger *slog.Logger
}

// Fabric manages networks across servers. Its state (network specs,
// address pools, keys) lives in a directory. It is safe for concurrent use.
type Fabric struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	servers map[string]server
}

// Server is what a Fabric needs of a server: its network driver for each
// mode. An agent.Client is one (its Network method); Local makes one of a
// driver in this process. A Server that also has a method
// Preflight() preflight.Server (agent.Client does) can take part in
// Fabric.Preflight.
type Server interface {
	Network(mode driver.Mode) driver.Driver
}

// Local is a Server in this process: Driver serves every mode (as
// memnetwork does, or a real driver for the modes it supports), and
// Prober, if set, runs the server's side of preflights.
type Local struct {
	Driver driver.Driver
	Prober preflight.Server
}

// Network returns l.Driver whatever the mode.
func (l Local) Network(driver.Mode) driver.Driver { return l.Driver }

// Preflight returns l.Prober.
func (l Local) Preflight() preflight.Server { return l.Prober }

type server struct {
	s        Server
	underlay netip.Addr
}

// driver returns the server's driver for mode.
func (s server) driver(mode driver.Mode) driver.Driver { return s.s.Network(mode) }

// Open returns a Fabric keeping its state in dir, created if missing.
func Open(ctx context.Context, dir string, opts *Options) (*Fabric, error) {
	if err := os.MkdirAll(filepath.Join(dir, "networks"), 0o700); err != nil {
		return nil, err
	}
	f := &Fabric{dir: dir, log: slog.New(slog.DiscardHandler), servers: map[string]server{}}
	if opts != nil && opts.Logger != nil {
		f.log = opts.Logger
	}
	return f, nil
}

// AddServer adds a server, named by a DNS label, whose peers reach it at
// underlay. Networks already ensured reach it at their next Ensure.
func (f *Fabric) AddServer(ctx context.Context, name string, srv Server, underlay netip.Addr) error {
	if err := names.Label(name); err != nil {
		return fmt.Errorf("add server %q: %w", name, err)
	}
	if !underlay.IsValid() {
		return errcode.New(errcode.InvalidArgument, "add server %q: no underlay address", name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.servers[name]; ok {
		return errcode.New(errcode.AlreadyExists, "add server %q: a server has that name", name)
	}
	for other, s := range f.servers {
		if s.underlay == underlay {
			return errcode.New(errcode.AlreadyExists, "add server %q: server %q has underlay %v", name, other, underlay)
		}
	}
	if srv == nil {
		return errcode.New(errcode.InvalidArgument, "add server %q: no Server", name)
	}
	f.servers[name] = server{srv, underlay}
	return nil
}

// Ensure makes the network exist on every server as spec says, then gives
// every server the others as peers. Applying an equal spec again changes
// nothing. Changing the mode, subnet or VNI of an existing network is
// errcode.FailedPrecondition. If a server fails to build it, the servers
// on which this call created it are rolled back; a failure while setting
// peers is repaired by applying again.
func (f *Fabric) Ensure(ctx context.Context, spec *Spec) (_ []*driver.Status, err error) {
	isNew, err := f.checkSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("ensure network %q: %w", spec.ID, err)
	}
	if isNew {
		defer func() {
			if err != nil { // nothing of a network that failed to build stays
				err = errors.Join(err, f.forget(spec.ID))
			}
		}()
	}
	servers := f.snapshot()
	pool, err := f.pool(spec)
	if err != nil {
		return nil, fmt.Errorf("ensure network %q: %w", spec.ID, err)
	}
	names := slices.Sorted(maps.Keys(servers))
	statuses := make([]*driver.Status, len(names))
	var created []string
	for i, name := range names {
		s := servers[name]
		d := s.driver(spec.Mode)
		existed, err := has(ctx, d, spec.ID)
		if err == nil {
			var ds *driver.Spec
			if ds, err = f.serverSpec(spec, name, s.underlay, pool); err == nil {
				statuses[i], err = d.EnsureNetwork(ctx, ds)
			}
		}
		if err != nil {
			err = fmt.Errorf("ensure network %q on server %q: %w", spec.ID, name, err)
			for _, c := range created {
				if e := servers[c].driver(spec.Mode).DeleteNetwork(context.WithoutCancel(ctx), spec.ID); e != nil {
					err = errors.Join(err, fmt.Errorf("rollback on %q: %w", c, e))
				}
			}
			return nil, err
		}
		if !existed {
			created = append(created, name)
		}
	}
	if err := f.save(spec); err != nil {
		return nil, err
	}
	for i, name := range names {
		var peers []driver.Peer
		for j, other := range names {
			if j != i {
				peers = append(peers, peerOf(other, servers[other].underlay, statuses[j], spec))
			}
		}
		if err := servers[name].driver(spec.Mode).SetPeers(ctx, spec.ID, peers); err != nil {
			return nil, fmt.Errorf("ensure network %q: peers of server %q: %w", spec.ID, name, err)
		}
		statuses[i].Peers = peers
	}
	f.log.InfoContext(ctx, "network ensured", "network", spec.ID, "mode", spec.Mode, "servers", len(names))
	return statuses, nil
}

// checkSpec validates spec, compares it with the stored one, and reports
// whether the network is new.
func (f *Fabric) checkSpec(spec *Spec) (bool, error) {
	if spec == nil {
		return false, errcode.New(errcode.InvalidArgument, "nil spec")
	}
	if err := names.Label(spec.ID); err != nil {
		return false, err
	}
	if !slices.Contains([]driver.Mode{driver.VXLAN, driver.WireGuard, driver.BGP, driver.VXLANOverWireGuard}, spec.Mode) {
		return false, errcode.New(errcode.InvalidArgument, "unknown mode %q", spec.Mode)
	}
	if !spec.Subnet.IsValid() || spec.Subnet != spec.Subnet.Masked() {
		return false, errcode.New(errcode.InvalidArgument, "subnet %v is not a masked prefix", spec.Subnet)
	}
	old, err := f.load(spec.ID)
	if errors.Is(err, errcode.NotFound) {
		return true, f.overlaps(spec)
	}
	if err != nil {
		return false, err
	}
	if old.Mode != spec.Mode || old.Subnet != spec.Subnet || old.VNI != spec.VNI {
		return false, errcode.New(errcode.FailedPrecondition, "mode, subnet and VNI of an existing network cannot change (have %s %v VNI %d)", old.Mode, old.Subnet, old.VNI)
	}
	return false, nil
}

// overlaps rejects a new network whose subnet overlaps another network's
// or holds a server's underlay address.
func (f *Fabric) overlaps(spec *Spec) error {
	found, err := f.overlapping(spec)
	if err != nil || len(found) == 0 {
		return err
	}
	return errcode.New(errcode.InvalidArgument, "subnet %v overlaps %s", spec.Subnet, found[0].With)
}

// overlapping lists what spec's subnet overlaps: the subnets of the
// Fabric's other networks and its servers' underlay addresses.
func (f *Fabric) overlapping(spec *Spec) ([]preflight.Overlap, error) {
	ids, err := f.networkIDs()
	if err != nil {
		return nil, err
	}
	var out []preflight.Overlap
	for _, id := range ids {
		if id == spec.ID {
			continue
		}
		other, err := f.load(id)
		if err != nil {
			return nil, err
		}
		if other.Subnet.Overlaps(spec.Subnet) {
			out = append(out, preflight.Overlap{Subnet: spec.Subnet, With: fmt.Sprintf("network %s %v", id, other.Subnet)})
		}
	}
	servers := f.snapshot()
	for _, name := range slices.Sorted(maps.Keys(servers)) {
		if u := servers[name].underlay; spec.Subnet.Contains(u) {
			out = append(out, preflight.Overlap{Subnet: spec.Subnet, With: fmt.Sprintf("underlay of server %s %v", name, u)})
		}
	}
	return out, nil
}

// Preflight checks, before spec is ensured, that the underlay between the
// Fabric's servers carries it (see package preflight): reachability, path
// MTU and the mode's port for every ordered pair, measured by the servers
// themselves, so every Server must have a Preflight method that returns a
// preflight.Server (an agent.Client does; a Local needs its Prober); and
// whether spec's subnet overlaps another network's or holds a server's
// underlay address. The report's Err says whether anything stands in the
// way. Nothing is built.
func (f *Fabric) Preflight(ctx context.Context, spec *Spec) (*preflight.Report, error) {
	if spec == nil {
		return nil, errcode.New(errcode.InvalidArgument, "preflight: nil spec")
	}
	if !spec.Subnet.IsValid() || spec.Subnet != spec.Subnet.Masked() {
		return nil, errcode.New(errcode.InvalidArgument, "preflight: subnet %v is not a masked prefix", spec.Subnet)
	}
	servers := f.snapshot()
	var targets []preflight.Target
	for _, name := range slices.Sorted(maps.Keys(servers)) {
		var p preflight.Server
		if pf, ok := servers[name].s.(interface{ Preflight() preflight.Server }); ok {
			p = pf.Preflight()
		}
		if p == nil {
			return nil, errcode.New(errcode.FailedPrecondition, "preflight: server %q cannot run preflights", name)
		}
		targets = append(targets, preflight.Target{Name: name, Underlay: servers[name].underlay, Server: p})
	}
	r, err := preflight.Run(ctx, preflight.Plan{Mode: spec.Mode, Port: spec.Port, MTU: spec.MTU}, targets)
	if err != nil {
		return nil, fmt.Errorf("preflight for network %q: %w", spec.ID, err)
	}
	if r.Overlaps, err = f.overlapping(spec); err != nil {
		return nil, err
	}
	return r, nil
}

// RemoveServer takes a server out of the Fabric: every network drops it
// from the other servers' peers (its forwarding entries, routes and BGP
// sessions go, so its traffic is cut), then the networks are deleted on
// the server itself. The server is out even if that last step fails (a
// dead server cannot be asked), which the error then reports. Its address
// ranges and leases stay reserved, so a server that comes back under the
// same name gets the same ones; deleting a network frees them.
// errcode.NotFound if there is no such server.
func (f *Fabric) RemoveServer(ctx context.Context, name string) error {
	f.mu.Lock()
	s, ok := f.servers[name]
	delete(f.servers, name)
	f.mu.Unlock()
	if !ok {
		return errcode.New(errcode.NotFound, "remove server %q: no such server", name)
	}
	ids, err := f.networkIDs()
	if err != nil {
		return fmt.Errorf("remove server %q: %w", name, err)
	}
	var errs []error
	var specs []*Spec
	for _, id := range ids {
		spec, err := f.load(id)
		if err == nil {
			specs = append(specs, spec)
			_, err = f.Ensure(ctx, spec)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, spec := range specs {
		if err := s.driver(spec.Mode).DeleteNetwork(ctx, spec.ID); err != nil && !errors.Is(err, errcode.NotFound) {
			errs = append(errs, fmt.Errorf("deleting network %q on the removed server: %w", spec.ID, err))
		}
	}
	f.log.InfoContext(ctx, "server removed", "server", name, "networks", len(ids))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove server %q: %w", name, err)
	}
	return nil
}

// networkIDs lists the networks the Fabric keeps, sorted.
func (f *Fabric) networkIDs() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(f.dir, "networks"))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// serverSpec derives the driver spec of one server.
func (f *Fabric) serverSpec(spec *Spec, name string, underlay netip.Addr, pool *ipam.Pool) (*driver.Spec, error) {
	ds := &driver.Spec{ID: spec.ID, Mode: spec.Mode, Subnet: spec.Subnet, Underlay: underlay,
		VNI: spec.VNI, Port: spec.Port, MTU: spec.MTU, ASN: spec.ASN}
	if spec.layer3() {
		r, err := pool.Range(name)
		if err != nil {
			return nil, err
		}
		ds.Local = netip.PrefixFrom(r.Addr().Next(), r.Bits())
	} else {
		a, err := pool.Lease("server/"+name, spec.Subnet)
		if err != nil {
			return nil, err
		}
		ds.Local = netip.PrefixFrom(a, spec.Subnet.Bits())
	}
	if spec.Mode == driver.BGP {
		ds.RouterID = underlay
	}
	if spec.Mode == driver.WireGuard || spec.Mode == driver.VXLANOverWireGuard {
		key, err := f.key(spec.ID, name)
		if err != nil {
			return nil, err
		}
		ds.PrivateKey = key
	}
	return ds, ds.Validate()
}

func peerOf(name string, underlay netip.Addr, st *driver.Status, spec *Spec) driver.Peer {
	p := driver.Peer{Name: name, Underlay: underlay, PublicKey: st.PublicKey, ASN: spec.ASN}
	if spec.layer3() {
		p.Range = st.Spec.Local.Masked()
	}
	return p
}

// Status returns network id's state on every server, sorted by server
// name: addresses, MTU, peers and which of them are connected (see
// driver.Status.Connected). errcode.NotFound if the Fabric does not know
// the network or a server lacks it.
func (f *Fabric) Status(ctx context.Context, id string) ([]*driver.Status, error) {
	spec, err := f.load(id)
	if err != nil {
		return nil, fmt.Errorf("status of network %q: %w", id, err)
	}
	servers := f.snapshot()
	var out []*driver.Status
	for _, name := range slices.Sorted(maps.Keys(servers)) {
		st, err := status(ctx, servers[name].driver(spec.Mode), id)
		if err != nil {
			return nil, fmt.Errorf("status of network %q on server %q: %w", id, name, err)
		}
		out = append(out, st)
	}
	return out, nil
}

// Delete removes the network from every server and forgets its addresses
// and keys. errcode.NotFound if the Fabric does not know it.
func (f *Fabric) Delete(ctx context.Context, id string) error {
	spec, err := f.load(id)
	if err != nil {
		return fmt.Errorf("delete network %q: %w", id, err)
	}
	var errs []error
	for name, s := range f.snapshot() {
		if err := s.driver(spec.Mode).DeleteNetwork(ctx, id); err != nil && !errors.Is(err, errcode.NotFound) {
			errs = append(errs, fmt.Errorf("server %q: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete network %q: %w", id, err)
	}
	return f.forget(id)
}

// forget removes the Fabric's state of network id: spec, pool and keys.
func (f *Fabric) forget(id string) error {
	var errs []error
	for _, p := range []string{f.specPath(id), f.poolPath(id), f.poolPath(id) + ".lock", filepath.Join(f.dir, "keys", id)} {
		errs = append(errs, os.RemoveAll(p))
	}
	return errors.Join(errs...)
}

// Attach leases an address on network id for a container on server and
// returns the container.Network to put in the container's spec: the
// server's bridge, the address, the gateway (the bridge's address, in the
// layer-3 modes) and the MTU. Attaching the same container again returns
// the same address.
func (f *Fabric) Attach(ctx context.Context, id, server, ctr string) (container.Network, error) {
	if err := names.Label(ctr); err != nil {
		return container.Network{}, fmt.Errorf("attach %q to network %q: %w", ctr, id, err)
	}
	spec, err := f.load(id)
	if err != nil {
		return container.Network{}, fmt.Errorf("attach %q to network %q: %w", ctr, id, err)
	}
	srv, ok := f.snapshot()[server]
	if !ok {
		return container.Network{}, errcode.New(errcode.NotFound, "attach %q to network %q: no server %q", ctr, id, server)
	}
	st, err := status(ctx, srv.driver(spec.Mode), id)
	if err != nil {
		return container.Network{}, fmt.Errorf("attach %q to network %q on %q: %w", ctr, id, server, err)
	}
	pool, err := f.pool(spec)
	if err != nil {
		return container.Network{}, err
	}
	within := spec.Subnet
	if spec.layer3() {
		within = st.Spec.Local.Masked()
	}
	addr, err := pool.Lease("container/"+ctr, within)
	if err != nil {
		return container.Network{}, fmt.Errorf("attach %q to network %q: %w", ctr, id, err)
	}
	n := container.Network{Bridge: st.Bridge, Address: netip.PrefixFrom(addr, within.Bits()), MTU: st.MTU}
	if spec.layer3() {
		n.Gateway = st.Spec.Local.Addr()
	}
	return n, nil
}

// Detach releases a container's address on network id.
func (f *Fabric) Detach(ctx context.Context, id, ctr string) error {
	spec, err := f.load(id)
	if err != nil {
		return fmt.Errorf("detach %q from network %q: %w", ctr, id, err)
	}
	pool, err := f.pool(spec)
	if err != nil {
		return err
	}
	return pool.Release("container/" + ctr)
}

func (f *Fabric) snapshot() map[string]server {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.servers)
}

func has(ctx context.Context, d driver.Driver, id string) (bool, error) {
	_, err := status(ctx, d, id)
	if errors.Is(err, errcode.NotFound) {
		return false, nil
	}
	return err == nil, err
}

func status(ctx context.Context, d driver.Driver, id string) (*driver.Status, error) {
	nets, err := d.Networks(ctx)
	if err != nil {
		return nil, err
	}
	for _, st := range nets {
		if st.Spec.ID == id {
			return st, nil
		}
	}
	return nil, errcode.New(errcode.NotFound, "network %q is not on the server", id)
}

func (f *Fabric) specPath(id string) string { return filepath.Join(f.dir, "networks", id+".json") }
func (f *Fabric) poolPath(id string) string { return filepath.Join(f.dir, "networks", id+".ipam") }

func (f *Fabric) pool(spec *Spec) (*ipam.Pool, error) {
	return ipam.Open(f.poolPath(spec.ID), spec.Subnet, nil)
}

func (f *Fabric) save(spec *Spec) error {
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	return renameio.WriteFile(f.specPath(spec.ID), data, 0o600)
}

func (f *Fabric) load(id string) (*Spec, error) {
	if err := names.Label(id); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(f.specPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errcode.New(errcode.NotFound, "no network %q", id)
	}
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, errcode.New(errcode.Internal, "network %q: %w", id, err)
	}
	return &s, nil
}

// key returns server's WireGuard private key for network id, making it
// the first time.
func (f *Fabric) key(id, server string) (string, error) {
	path := filepath.Join(f.dir, "keys", id, server+".key")
	if data, err := os.ReadFile(path); err == nil {
		return string(data), nil
	}
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	key := base64.StdEncoding.EncodeToString(k.Bytes())
	return key, renameio.WriteFile(path, []byte(key), 0o600)
}
