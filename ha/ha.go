// Package ha keeps floating IP addresses alive: a Group is a set of
// servers sharing one or more addresses by VRRP, each server running a
// floating-IP driver (drivers/keepalived, or ha/memha in tests). The
// group's master holds the addresses; when it dies, or a service it
// tracks dies (Track: a process, a local TCP port), a backup takes them
// over within about three advertisement intervals. The model is in
// package ha/driver and re-exported here under the same names.
//
// A Group holds the drivers of all its members, as an orchestrator does
// through the servers' agents. Apply derives each member's configuration
// (its source address, the others as unicast peers, its priority) from one
// Spec and applies it everywhere; Status gathers what every member
// reports; Check and Watch compare the members' views and report a split
// brain when more than one member holds a floating address, which no
// single server can always see (for example when the VRRP traffic between
// them is cut). DeployPair deploys a pair of load balancers (lb/driver)
// behind one floating address in one call.
//
// Every input is validated before it reaches a driver; errors carry an
// errcode and name the group.
package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/fanout"
	"github.com/musterkit/muster/ha/driver"
)

// The model, from package driver.
type (
	Config       = driver.Config
	Track        = driver.Track
	State        = driver.State
	Event        = driver.Event
	EventKind    = driver.EventKind
	Capabilities = driver.Capabilities
)

// States and event kinds, from package driver.
const (
	Stopped      = driver.Stopped
	Backup       = driver.Backup
	Master       = driver.Master
	Fault        = driver.Fault
	StateChanged = driver.StateChanged
	SplitBrain   = driver.SplitBrain
)

// Spec is what the members of a group share.
type Spec struct {
	// Name of the group (driver.ValidName).
	Name string
	// VirtualRouterID, 1..255, unique among the groups of one link.
	VirtualRouterID int
	// Addresses are the floating addresses; each must lie in the network
	// of every member's interface.
	Addresses []netip.Addr
	// NoPreempt, PreemptDelay, AdvertInterval and Track: see driver.Config.
	NoPreempt      bool
	PreemptDelay   time.Duration
	AdvertInterval time.Duration
	Track          Track
}

// Member is one server of a group.
type Member struct {
	// Name of the server, unique in the group (driver.ValidName).
	Name string
	// Interface carrying the group on this server, e.g. "eth0".
	Interface string
	// Address of the server on Interface: its adverts' source, and a peer
	// of the other members.
	Address netip.Addr
	// Priority, 1..254; the highest member up is master.
	Priority int
	// Driver is the server's floating-IP driver; the Group owns it.
	Driver driver.Driver
}

// Options configure a Group. The zero value is usable.
type Options struct {
	// Logger receives one record per change and per split brain; nil
	// discards.
	Logger *slog.Logger
	// Now is the clock of the Group's own events; nil means time.Now.
	Now func() time.Time
}

// Group is one floating-IP group across its members. It is safe for
// concurrent use if its drivers are (every driver in this module is).
type Group struct {
	spec    Spec
	members []Member
	log     *slog.Logger
	now     func() time.Time

	mu sync.Mutex // serializes Apply
}

// New returns a Group of members sharing spec. It validates everything
// that does not depend on the servers (errcode.InvalidArgument): at least
// two members with distinct names, addresses and drivers, and every
// member's derived configuration. Nothing is applied until Apply.
func New(spec Spec, members []Member, opts *Options) (*Group, error) {
	g := &Group{spec: spec, members: slices.Clone(members), log: slog.New(slog.DiscardHandler), now: time.Now}
	g.spec.Addresses = slices.Clone(spec.Addresses)
	if opts != nil && opts.Logger != nil {
		g.log = opts.Logger
	}
	if opts != nil && opts.Now != nil {
		g.now = opts.Now
	}
	if err := driver.ValidName("group name", spec.Name); err != nil {
		return nil, fmt.Errorf("ha group: %w", err)
	}
	if len(members) < 2 {
		return nil, g.wrap("new", errcode.New(errcode.InvalidArgument, "a group needs at least 2 members, not %d", len(members)))
	}
	names := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	for i, m := range members {
		if err := driver.ValidName("member name", m.Name); err != nil {
			return nil, g.wrap("new", err)
		}
		if names[m.Name] || addrs[m.Address] {
			return nil, g.wrap("new", errcode.New(errcode.InvalidArgument, "member %q: name or address %v used twice", m.Name, m.Address))
		}
		names[m.Name], addrs[m.Address] = true, true
		if m.Driver == nil {
			return nil, g.wrap("new", errcode.New(errcode.InvalidArgument, "member %q: nil driver", m.Name))
		}
		cfg := g.config(i)
		if err := cfg.Validate(); err != nil {
			return nil, g.wrap(fmt.Sprintf("member %q", m.Name), err)
		}
		if err := driver.CheckCapabilities(cfg, m.Driver.Capabilities()); err != nil {
			return nil, g.wrap(fmt.Sprintf("member %q", m.Name), err)
		}
	}
	return g, nil
}

func (g *Group) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ha group %q: %s: %w", g.spec.Name, op, err)
}

// config derives member i's configuration.
func (g *Group) config(i int) *driver.Config {
	m := g.members[i]
	c := &driver.Config{Name: g.spec.Name, VirtualRouterID: g.spec.VirtualRouterID, Interface: m.Interface,
		Addresses: slices.Clone(g.spec.Addresses), Source: m.Address, Priority: m.Priority,
		NoPreempt: g.spec.NoPreempt, PreemptDelay: g.spec.PreemptDelay, AdvertInterval: g.spec.AdvertInterval,
		Track: g.spec.Track}
	for j, o := range g.members {
		if j != i {
			c.Peers = append(c.Peers, o.Address)
		}
	}
	return c
}

// Config returns the configuration Apply gives member name: errcode.NotFound
// for an unknown member.
func (g *Group) Config(name string) (*Config, error) {
	for i, m := range g.members {
		if m.Name == name {
			return g.config(i), nil
		}
	}
	return nil, g.wrap("config", errcode.New(errcode.NotFound, "no member %q", name))
}

// Name returns the group's name.
func (g *Group) Name() string { return g.spec.Name }

// Apply applies every member's configuration, members in order; applying
// again with nothing changed is a no-op on every member. If a member
// fails (a floating address outside its interface's networks is
// errcode.InvalidArgument), Apply stops there and the error names the
// member; the members before it run the group's configuration, which is
// what a later Apply would give them too: a Group's spec is fixed, so
// applying again repairs a half-applied group.
func (g *Group) Apply(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, m := range g.members {
		if err := m.Driver.Apply(ctx, g.config(i)); err != nil {
			return g.wrap(fmt.Sprintf("apply on member %q", m.Name), err)
		}
	}
	g.log.InfoContext(ctx, "ha group applied", "group", g.spec.Name, "members", len(g.members), "addresses", g.spec.Addresses)
	return nil
}

// MemberStatus is one member's view.
type MemberStatus struct {
	Name  string
	State State
	// Addresses are the floating addresses present on the member's
	// interface.
	Addresses []netip.Addr
	// Err is set if the member could not be asked; State is then "".
	Err error
}

// Status is the group's view across its members.
type Status struct {
	Members []MemberStatus
	// Holders name the members holding at least one floating address.
	Holders []string
	// Masters name the members in state Master.
	Masters []string
}

// SplitBrain reports whether more than one member holds floating
// addresses.
func (s *Status) SplitBrain() bool { return len(s.Holders) > 1 }

// Status asks every member. A member that cannot be asked has Err set; it
// is not an error of Status.
func (g *Group) Status(ctx context.Context) *Status {
	st := &Status{}
	for _, m := range g.members {
		ms := MemberStatus{Name: m.Name}
		s, err := m.Driver.Status(ctx)
		if err != nil {
			ms.Err = g.wrap(fmt.Sprintf("status of member %q", m.Name), err)
		} else {
			ms.State, ms.Addresses = s.State, s.Addresses
			if len(s.Addresses) > 0 {
				st.Holders = append(st.Holders, m.Name)
			}
			if s.State == Master {
				st.Masters = append(st.Masters, m.Name)
			}
		}
		st.Members = append(st.Members, ms)
	}
	return st
}

// Check asks every member and returns a SplitBrain event if more than
// one holds floating addresses, or nil.
func (g *Group) Check(ctx context.Context) *Event {
	st := g.Status(ctx)
	if !st.SplitBrain() {
		return nil
	}
	g.log.WarnContext(ctx, "ha group split brain", "group", g.spec.Name, "holders", st.Holders)
	return &Event{Time: g.now(), Kind: SplitBrain, Group: g.spec.Name, State: Master, Holders: st.Holders,
		Detail: fmt.Sprintf("%d members hold the floating addresses", len(st.Holders))}
}

// Watch returns the members' events (Member set to the member's name)
// merged with a split-brain check every interval (0 means 1s): a
// SplitBrain event with Holders when the group enters a split brain (once
// until it leaves it). The channel is closed when ctx is done. Events
// are buffered as package fanout does: a receiver more than 64 events
// behind loses the oldest.
func (g *Group) Watch(ctx context.Context, interval time.Duration) (<-chan Event, error) {
	if interval <= 0 {
		interval = time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	events := fanout.New[Event](fanout.DefaultBuffer)
	out, _ := events.Subscribe(context.WithoutCancel(ctx)) // ends at events.Close
	send := events.Publish
	var wg sync.WaitGroup
	for _, m := range g.members {
		ch, err := m.Driver.Watch(ctx)
		if err != nil {
			cancel()
			wg.Wait()
			events.Close()
			return nil, g.wrap(fmt.Sprintf("watch member %q", m.Name), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range ch {
				e.Member = m.Name
				if e.Kind == SplitBrain {
					g.log.WarnContext(ctx, "ha member sees another master", "group", g.spec.Name, "member", m.Name, "peer", e.Peer)
				}
				send(e)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		split := false
		for {
			e := g.Check(ctx)
			if e != nil && !split {
				send(*e)
			}
			split = e != nil
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		<-ctx.Done()
		wg.Wait()
		cancel()
		events.Close()
	}()
	return out, nil
}

// Capabilities returns, per member name, its driver's features.
func (g *Group) Capabilities() map[string]Capabilities {
	out := map[string]Capabilities{}
	for _, m := range g.members {
		out[m.Name] = m.Driver.Capabilities()
	}
	return out
}

// Close closes every member's driver, which releases the floating
// addresses.
func (g *Group) Close() error {
	var errs []error
	for _, m := range g.members {
		if err := m.Driver.Close(); err != nil {
			errs = append(errs, fmt.Errorf("member %q: %w", m.Name, err))
		}
	}
	return g.wrap("close", errors.Join(errs...))
}
