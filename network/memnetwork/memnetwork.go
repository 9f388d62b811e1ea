// Package memnetwork is an in-memory network driver for tests of programs
// built on package network. It keeps the semantics of a real driver
// (validation, what may change in place, peer sets, error codes, bridge
// names, MTUs after the tunnel's overhead, WireGuard public keys derived
// from private keys) without a kernel: a network is a record in memory and
// no packet moves.
//
// It supports every mode and needs no privileges.
package memnetwork

import (
	"context"
	"crypto/ecdh"
	"encoding/base64"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
)

// modes are the modes the driver supports.
var modes = []driver.Mode{driver.BGP, driver.VXLAN, driver.VXLANOverWireGuard, driver.WireGuard}

// Options configure a Driver. The zero value is usable.
type Options struct {
	// UnderlayMTU is the MTU of the simulated server's underlay; default
	// 1500. A network's MTU is at most this minus its mode's overhead.
	UnderlayMTU int
}

// Driver is an in-memory driver.Driver. It is safe for concurrent use.
type Driver struct {
	underlayMTU int

	mu       sync.Mutex
	closed   bool
	networks map[string]*driver.Status // by ID
}

var _ driver.Driver = (*Driver)(nil)

// New returns a server with no networks. opts may be nil.
func New(opts *Options) *Driver {
	d := &Driver{underlayMTU: 1500, networks: map[string]*driver.Status{}}
	if opts != nil && opts.UnderlayMTU != 0 {
		d.underlayMTU = opts.UnderlayMTU
	}
	return d
}

// EnsureNetwork implements driver.Driver. The network's MTU is spec.MTU, or
// if that is 0 the underlay's MTU minus the mode's overhead as the real
// drivers count it (driver.Overhead); a spec.MTU above that bound, or a bound
// below 576, is errcode.FailedPrecondition. So is a spec whose Local or
// Underlay would clash with the network's peers in place.
func (d *Driver) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	limit := d.underlayMTU - driver.Overhead(spec.Mode, spec.Underlay.Is6())
	mtu := spec.MTU
	if mtu == 0 {
		mtu = limit
	}
	if mtu > limit || mtu < 576 {
		return nil, errcode.New(errcode.FailedPrecondition, "MTU %d does not fit: the underlay's MTU %d leaves %d in %s mode", mtu, d.underlayMTU, limit, spec.Mode)
	}
	var public string
	if spec.PrivateKey != "" {
		var err error
		if public, err = publicKey(spec.PrivateKey); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	n := d.networks[spec.ID]
	if n == nil {
		n = &driver.Status{}
	} else {
		old := n.Spec
		if old.Mode != spec.Mode || old.VNI != spec.VNI || old.Subnet != spec.Subnet {
			return nil, errcode.New(errcode.FailedPrecondition, "network %q is %s, VNI %d, subnet %s; delete it to change its mode, VNI or subnet", spec.ID, old.Mode, old.VNI, old.Subnet)
		}
		if err := driver.ValidatePeers(spec, n.Peers); err != nil {
			return nil, errcode.New(errcode.FailedPrecondition, "network %q: the spec clashes with the peers in place (set the peers first): %w", spec.ID, err)
		}
	}
	n.Spec, n.Bridge, n.MTU, n.PublicKey = *spec, BridgeName(spec.ID), mtu, public
	d.networks[spec.ID] = n
	return cloneStatus(n), nil
}

// DeleteNetwork implements driver.Driver.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return err
	}
	if d.networks[id] == nil {
		return errcode.New(errcode.NotFound, "network %q not found", id)
	}
	delete(d.networks, id)
	return nil
}

// SetPeers implements driver.Driver.
func (d *Driver) SetPeers(ctx context.Context, id string, peers []driver.Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return err
	}
	n := d.networks[id]
	if n == nil {
		return errcode.New(errcode.NotFound, "network %q not found", id)
	}
	if err := driver.ValidatePeers(&n.Spec, peers); err != nil {
		return err
	}
	n.Peers = clonePeers(peers)
	slices.SortFunc(n.Peers, func(a, b driver.Peer) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// Networks implements driver.Driver.
func (d *Driver) Networks(ctx context.Context) ([]*driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	var sts []*driver.Status
	for _, id := range slices.Sorted(maps.Keys(d.networks)) {
		sts = append(sts, cloneStatus(d.networks[id]))
	}
	return sts, nil
}

// Capabilities implements driver.Driver: every mode. No traffic crosses
// servers, so none is Encrypted.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{Modes: slices.Clone(modes)}
}

// Close implements driver.Driver: every later call but Capabilities and
// Close fails with errcode.FailedPrecondition. The networks are a real
// server's state, which Close leaves in place; here nothing outlives the
// Driver, so they are gone with it.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// checkOpen returns errcode.FailedPrecondition once the driver is closed.
// d.mu is held.
func (d *Driver) checkOpen() error {
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "the driver is closed")
	}
	return nil
}

// BridgeName returns the bridge of network id on a memnetwork server, by
// the link scheme of package names with the prefix "mst-".
func BridgeName(id string) string { return names.Link("mst-", id) }

// publicKey returns the WireGuard public key of a base64 private key:
// X25519 of the key and the base point.
func publicKey(private string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(private)
	if err != nil {
		return "", errcode.Wrap(errcode.InvalidArgument, err)
	}
	k, err := ecdh.X25519().NewPrivateKey(raw)
	if err != nil {
		return "", errcode.Wrap(errcode.InvalidArgument, err)
	}
	return base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()), nil
}

func cloneStatus(st *driver.Status) *driver.Status {
	c := *st
	c.Peers = clonePeers(st.Peers)
	return &c
}

func clonePeers(peers []driver.Peer) []driver.Peer {
	c := slices.Clone(peers)
	for i, p := range c {
		c[i].Endpoints = slices.Clone(p.Endpoints)
		for j, e := range c[i].Endpoints {
			c[i].Endpoints[j].MAC = slices.Clone(e.MAC)
		}
	}
	return c
}
