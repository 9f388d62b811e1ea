package ha

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha/driver"
	lbdriver "github.com/musterkit/muster/lb/driver"
)

// PairMember is one server of a pair of load balancers.
type PairMember struct {
	// Name, Interface and Address: see Member.
	Name      string
	Interface string
	Address   netip.Addr
	// Priority, 1..254; 0 means 150 for the first member of DeployPair
	// and 100 for the second, so the first is master.
	Priority int
	// HA is the server's floating-IP driver; the returned Group owns it.
	HA driver.Driver
	// LB is the server's load-balancer driver; the caller keeps it.
	LB lbdriver.Driver
}

// DeployPair deploys an HA pair of load balancers in one call: it applies
// the same balancer configuration lb on both servers, then a group (spec)
// whose floating addresses follow a working balancer. If spec.Track is
// empty, the group tracks the first frontend's port on 127.0.0.1 (the
// balancer accepts connections there only while it runs), so stopping the
// master's balancer moves the addresses; set spec.Track.Process too (e.g.
// "haproxy") to follow the process as well.
//
// Every frontend must bind the unspecified address (0.0.0.0): the backup
// listens before it holds a floating address, and the check connects to
// 127.0.0.1. Anything else is errcode.InvalidArgument, and so is an lb
// that fails its own validation. If the second balancer or the group
// fails, the balancers get their previous configuration back; the group's
// members already applied keep the group's configuration (see
// Group.Apply), and calling DeployPair again with the same input repairs
// the pair. The returned Group owns a.HA and b.HA: its Close stops the
// speakers, not the balancers.
func DeployPair(ctx context.Context, spec Spec, lb *lbdriver.Config, a, b PairMember, opts *Options) (*Group, error) {
	if err := lb.Validate(); err != nil {
		return nil, fmt.Errorf("ha pair %q: balancer config: %w", spec.Name, err)
	}
	if len(lb.Frontends) == 0 {
		return nil, errcode.New(errcode.InvalidArgument, "ha pair %q: the balancer config has no frontend to follow", spec.Name)
	}
	for _, f := range lb.Frontends {
		if ip, err := netip.ParseAddr(f.Address); err != nil || !ip.IsUnspecified() {
			return nil, errcode.New(errcode.InvalidArgument, "ha pair %q: frontend %q binds %q; a pair's frontends bind 0.0.0.0", spec.Name, f.Name, f.Address)
		}
	}
	if spec.Track == (Track{}) {
		spec.Track.TCPPort = lb.Frontends[0].Port
	}
	if a.Priority == 0 {
		a.Priority = 150
	}
	if b.Priority == 0 {
		b.Priority = 100
	}
	if a.LB == nil || b.LB == nil {
		return nil, errcode.New(errcode.InvalidArgument, "ha pair %q: nil balancer driver", spec.Name)
	}
	g, err := New(spec, []Member{
		{Name: a.Name, Interface: a.Interface, Address: a.Address, Priority: a.Priority, Driver: a.HA},
		{Name: b.Name, Interface: b.Interface, Address: b.Address, Priority: b.Priority, Driver: b.HA},
	}, opts)
	if err != nil {
		return nil, err
	}
	var prev []*lbdriver.Config
	var applied []PairMember
	rollback := func(err error) error {
		errs := []error{err}
		for i, m := range applied {
			if rerr := m.LB.Apply(context.WithoutCancel(ctx), prev[i]); rerr != nil {
				errs = append(errs, fmt.Errorf("rollback of balancer %q: %w", m.Name, rerr))
			}
		}
		return errors.Join(errs...)
	}
	for _, m := range []PairMember{a, b} {
		p, err := m.LB.Config(ctx)
		if err != nil {
			return nil, rollback(g.wrap(fmt.Sprintf("balancer of %q", m.Name), err))
		}
		if err := m.LB.Apply(ctx, lb); err != nil {
			return nil, rollback(g.wrap(fmt.Sprintf("balancer of %q", m.Name), err))
		}
		prev, applied = append(prev, p), append(applied, m)
	}
	if err := g.Apply(ctx); err != nil {
		return nil, rollback(err)
	}
	g.log.InfoContext(ctx, "ha pair deployed", "group", spec.Name, "master", a.Name, "backup", b.Name, "track", spec.Track)
	return g, nil
}
