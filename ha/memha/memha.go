// Package memha is an in-memory floating-IP driver (ha/driver) with real
// semantics and no kernel: speakers of one Network elect, per virtual
// router ID, the member of highest priority (ties: higher source address)
// among those that run, are not in Fault and can hear each other; a
// master stays in place against a higher priority that comes back when
// the latter has NoPreempt, and a preempting member waits out its
// PreemptDelay after it started; a failed track (SetProcess, SetPort)
// puts a member in Fault. Cut splits the link between two members: each
// side elects its own master, both hold the addresses, and every holder
// reports a SplitBrain event, as a watcher of the whole link would.
//
// Each Driver is one server's speaker with simulated interfaces
// (Options.Interfaces); floating addresses are checked against them as the
// real drivers check the kernel's. Kill simulates the speaker dying: the
// driver notices, gives the addresses up and reports Stopped, like
// drivers/keepalived; AddAddress leaves an address on an interface, for
// tests of orphan removal.
//
// Elections are instantaneous: there are no adverts and no timers except
// the preempt delay. It needs no privileges and no host packages.
package memha

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/fanout"
	"github.com/musterkit/muster/ha/driver"
)

var _ driver.Driver = (*Driver)(nil)

// Network is a simulated link shared by in-memory speakers. It is safe for
// concurrent use.
type Network struct {
	mu      sync.Mutex
	members []*Driver
	cut     map[[2]netip.Addr]bool
	now     func() time.Time
	timer   *time.Timer // the next preempt-delay election
}

// NewNetwork returns an empty link. now is the clock (nil: time.Now).
func NewNetwork(now func() time.Time) *Network {
	if now == nil {
		now = time.Now
	}
	return &Network{cut: map[[2]netip.Addr]bool{}, now: now}
}

// Options configure a Driver.
type Options struct {
	// Interfaces are the server's interfaces and their addresses, e.g.
	// {"eth0": {198.18.0.1/24}}.
	Interfaces map[string][]netip.Prefix
}

// Driver is one server's speaker on a Network.
type Driver struct {
	n      *Network
	ifaces map[string][]netip.Prefix // guarded by n.mu, as everything below

	cfg       *driver.Config
	running   bool
	started   time.Time
	state     driver.State
	procs     map[string]bool
	closedPts map[uint16]bool
	closed    bool
	reloads   int
	events    *fanout.Hub[driver.Event]
}

// New returns a speaker of server on n. Nothing runs until Apply.
func (n *Network) New(opts *Options) *Driver {
	d := &Driver{n: n, ifaces: map[string][]netip.Prefix{}, state: driver.Stopped,
		procs: map[string]bool{}, closedPts: map[uint16]bool{}, events: fanout.New[driver.Event](fanout.DefaultBuffer)}
	if opts != nil {
		for k, v := range opts.Interfaces {
			d.ifaces[k] = slices.Clone(v)
		}
	}
	n.mu.Lock()
	n.members = append(n.members, d)
	n.mu.Unlock()
	return d
}

func key(a, b netip.Addr) [2]netip.Addr {
	if b.Less(a) {
		a, b = b, a
	}
	return [2]netip.Addr{a, b}
}

// Cut stops the adverts between the members whose sources are a and b
// (both ways), as a firewall would.
func (n *Network) Cut(a, b netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[key(a, b)] = true
	n.elect()
}

// Heal undoes Cut.
func (n *Network) Heal(a, b netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.cut, key(a, b))
	n.elect()
}

// SetProcess declares whether a process of that name runs on the server
// (for Track.Process). Processes are running unless declared otherwise.
func (d *Driver) SetProcess(name string, running bool) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	d.procs[name] = running
	d.n.elect()
}

// SetPort declares whether 127.0.0.1:port accepts connections on the
// server (for Track.TCPPort). Ports accept unless declared otherwise.
func (d *Driver) SetPort(port uint16, open bool) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	d.closedPts[port] = !open
	d.n.elect()
}

// Kill simulates the speaker dying: the driver gives the addresses up and
// reports Stopped; Apply starts it again.
func (d *Driver) Kill() {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	if d.running {
		d.running = false
		d.n.elect()
	}
}

// AddAddress puts addr on interface ifname, as a crashed speaker would
// leave it.
func (d *Driver) AddAddress(ifname string, addr netip.Prefix) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	d.ifaces[ifname] = append(d.ifaces[ifname], addr)
}

// Reloads counts the changes Apply made.
func (d *Driver) Reloads() int {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	return d.reloads
}

// Capabilities implements driver.Driver.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{SubSecondAdvert: true, TrackProcess: true, TrackTCP: true, SplitBrainEvents: true}
}

// Apply implements driver.Driver.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	if d.closed {
		return errcode.New(errcode.FailedPrecondition, "driver is closed")
	}
	addrs, ok := d.ifaces[cfg.Interface]
	if !ok {
		return errcode.New(errcode.InvalidArgument, "interface %q does not exist on this server", cfg.Interface)
	}
	if _, err := driver.Placement(cfg, addrs); err != nil {
		return err
	}
	if d.running && driver.Equal(cfg, d.cfg) {
		return nil
	}
	n := cfg.Normalized()
	if !d.running {
		d.removeAddrs(d.cfg) // orphans of a dead speaker
		d.removeAddrs(n)
		d.running = true
		d.started = d.n.now()
		d.state = driver.Backup
		d.cfg = n
		d.emit(driver.Event{Kind: driver.StateChanged, State: driver.Backup, Detail: "speaker started"})
	} else {
		if d.cfg.Interface != n.Interface || !slices.Equal(d.cfg.Addresses, n.Addresses) {
			d.removeAddrs(d.cfg)
			if d.state == driver.Master {
				d.addAddrs(n)
			}
		}
		d.cfg = n
	}
	d.reloads++
	d.n.elect()
	return nil
}

func (d *Driver) removeAddrs(cfg *driver.Config) {
	if cfg == nil {
		return
	}
	d.ifaces[cfg.Interface] = slices.DeleteFunc(d.ifaces[cfg.Interface], func(p netip.Prefix) bool {
		return slices.Contains(cfg.Addresses, p.Addr())
	})
}

func (d *Driver) addAddrs(cfg *driver.Config) {
	place, err := driver.Placement(cfg, d.ifaces[cfg.Interface])
	if err != nil {
		return
	}
	for _, a := range cfg.Addresses {
		if !slices.ContainsFunc(d.ifaces[cfg.Interface], func(p netip.Prefix) bool { return p.Addr() == a }) {
			d.ifaces[cfg.Interface] = append(d.ifaces[cfg.Interface], place[a])
		}
	}
}

// eligible: running and no track failed. Called with n.mu held.
func (d *Driver) eligible() bool {
	if !d.running {
		return false
	}
	if p := d.cfg.Track.Process; p != "" {
		if running, ok := d.procs[p]; ok && !running {
			return false
		}
	}
	return d.cfg.Track.TCPPort == 0 || !d.closedPts[d.cfg.Track.TCPPort]
}

func better(a, b *Driver) bool {
	if a.cfg.Priority != b.cfg.Priority {
		return a.cfg.Priority > b.cfg.Priority
	}
	return b.cfg.Source.Less(a.cfg.Source)
}

// hears: a's adverts reach b (b lists a as a peer and the link is not cut).
func (n *Network) hears(a, b *Driver) bool {
	return slices.Contains(b.cfg.Peers, a.cfg.Source) && !n.cut[key(a.cfg.Source, b.cfg.Source)]
}

// elect recomputes every member's state. Called with n.mu held.
func (n *Network) elect() {
	next := map[*Driver]driver.State{}
	var wake time.Duration
	for _, d := range n.members {
		switch {
		case d.closed || !d.running:
			next[d] = driver.Stopped
		case !d.eligible():
			next[d] = driver.Fault
		}
	}
	// Members of one VRID that hear each other form components; each
	// component has one master.
	done := map[*Driver]bool{}
	for _, d := range n.members {
		if _, set := next[d]; set || done[d] {
			continue
		}
		comp := []*Driver{d}
		done[d] = true
		for i := 0; i < len(comp); i++ {
			for _, o := range n.members {
				if _, set := next[o]; set || done[o] || o.cfg.VirtualRouterID != d.cfg.VirtualRouterID {
					continue
				}
				if n.hears(comp[i], o) || n.hears(o, comp[i]) {
					comp = append(comp, o)
					done[o] = true
				}
			}
		}
		var best, cur *Driver
		for _, m := range comp {
			if best == nil || better(m, best) {
				best = m
			}
			if m.state == driver.Master && (cur == nil || better(m, cur)) {
				cur = m // of several masters meeting, the best stays
			}
		}
		master := best
		if cur != nil && cur != best {
			master = cur
			if !best.cfg.NoPreempt {
				if wait := best.started.Add(best.cfg.PreemptDelay).Sub(n.now()); wait > 0 {
					if wake == 0 || wait < wake {
						wake = wait
					}
				} else {
					master = best
				}
			}
		}
		for _, m := range comp {
			next[m] = driver.Backup
		}
		next[master] = driver.Master
	}
	for _, d := range n.members {
		st := next[d]
		if st != d.state {
			if d.cfg != nil {
				if st == driver.Master {
					d.addAddrs(d.cfg)
				} else if d.state == driver.Master {
					d.removeAddrs(d.cfg)
				}
			}
			d.state = st
			d.emit(driver.Event{Kind: driver.StateChanged, State: st})
		}
	}
	// Holders of the same address on one link: a split brain.
	for _, d := range n.members {
		if d.state != driver.Master {
			continue
		}
		for _, o := range n.members {
			if o != d && o.state == driver.Master && o.cfg.VirtualRouterID == d.cfg.VirtualRouterID &&
				slices.ContainsFunc(o.cfg.Addresses, func(a netip.Addr) bool { return slices.Contains(d.cfg.Addresses, a) }) {
				d.emit(driver.Event{Kind: driver.SplitBrain, State: driver.Master, Peer: o.cfg.Source,
					Detail: "another master holds the floating addresses"})
			}
		}
	}
	if n.timer != nil {
		n.timer.Stop()
		n.timer = nil
	}
	if wake > 0 {
		n.timer = time.AfterFunc(wake, func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.elect()
		})
	}
}

// emit sends ev to every watcher (package fanout: a slow one loses its
// oldest events). Called with n.mu held.
func (d *Driver) emit(ev driver.Event) {
	ev.Time = d.n.now()
	if d.cfg != nil {
		ev.Group = d.cfg.Name
	}
	d.events.Publish(ev)
}

// Watch implements driver.Driver.
func (d *Driver) Watch(ctx context.Context) (<-chan driver.Event, error) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	if d.closed {
		return nil, errcode.New(errcode.FailedPrecondition, "driver is closed")
	}
	return d.events.Subscribe(ctx)
}

// Status implements driver.Driver.
func (d *Driver) Status(ctx context.Context) (*driver.Status, error) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	st := &driver.Status{State: d.state}
	if d.cfg != nil {
		for _, p := range d.ifaces[d.cfg.Interface] {
			if slices.Contains(d.cfg.Addresses, p.Addr()) {
				st.Addresses = append(st.Addresses, p.Addr())
			}
		}
		slices.SortFunc(st.Addresses, netip.Addr.Compare)
	}
	return st, nil
}

// Close implements driver.Driver.
func (d *Driver) Close() error {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed, d.running = true, false
	d.n.elect()
	d.removeAddrs(d.cfg)
	d.events.Close()
	return nil
}
