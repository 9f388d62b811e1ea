// Package driver defines what floating-IP (high availability) backends
// implement.
//
// Application code uses package ha; this package is for driver authors. A
// driver runs the VRRP speaker of one server (a keepalived process, or an
// in-memory model) and makes it take part in one group as Config says: a
// virtual router ID, the floating addresses the group's master holds on an
// interface, this server's priority and unicast peers, the preemption
// policy, the advertisement interval, and what the server tracks (a
// process, a local TCP port) so that a dead service moves the addresses.
//
// Config.Validate is strict and shared by every driver: every name,
// interface and address that reaches a configuration file passes it first,
// so that no input can add a line, a brace or a comment. Whether the
// floating addresses lie in the interface's network depends on the server,
// so drivers check it in Apply (errcode.InvalidArgument otherwise).
//
// Drivers return raw errors that carry an errcode; the portable type wraps
// them once. Every driver passes the conformance suite in ha/drivertest.
package driver

import (
	"context"
	"net/netip"
	"time"
)

// Driver is the VRRP speaker of one server for one group.
type Driver interface {
	// Apply makes this server take part in the group as cfg says,
	// replacing the previous configuration. Applying a config equal to the
	// one in force changes nothing (no reload, no restart) while the
	// speaker runs; if it died, Apply starts it again. A config that fails
	// cfg.Validate is errcode.InvalidArgument, and so is one whose
	// interface does not exist on this server or whose addresses lie
	// outside every network of the interface. A feature the driver lacks
	// (see Capabilities) is errcode.Unimplemented. On any error nothing is
	// started or changed: the running configuration stays in force.
	// Before it starts a speaker, Apply removes floating addresses of cfg
	// that a dead speaker left on the interface.
	Apply(ctx context.Context, cfg *Config) error
	// Status returns this server's state in the group and the floating
	// addresses it holds now. Before the first Apply (or after Close) the
	// state is Stopped.
	Status(ctx context.Context) (*Status, error)
	// Watch returns a channel of state changes and split-brain
	// observations, from now on. The channel is closed when ctx is done or
	// the driver is closed. Events are buffered; a receiver that falls
	// more than 64 events behind loses the oldest (Status tells the
	// current state).
	Watch(ctx context.Context) (<-chan Event, error)
	// Capabilities says which optional features the driver supports.
	Capabilities() Capabilities
	// Close stops the speaker, releases the floating addresses and the
	// driver's resources (including addresses a dead speaker left). It is
	// safe to call more than once; later calls return nil. Apply and Watch
	// then fail with errcode.FailedPrecondition; Status reports Stopped.
	Close() error
}

// Capabilities lists a driver's optional features. A Config that needs a
// feature the driver lacks is errcode.Unimplemented.
type Capabilities struct {
	// SubSecondAdvert: AdvertInterval may be below one second.
	SubSecondAdvert bool `json:"subSecondAdvert,omitempty"`
	// TrackProcess: Track.Process is supported.
	TrackProcess bool `json:"trackProcess,omitempty"`
	// TrackTCP: Track.TCPPort is supported.
	TrackTCP bool `json:"trackTCP,omitempty"`
	// SplitBrainEvents: the driver reports what it can see of another
	// master on its own (SplitBrain events); the Group's cross-member
	// check works with every driver.
	SplitBrainEvents bool `json:"splitBrainEvents,omitempty"`
}

// Limits of the model, checked by Validate.
const (
	MinVRID     = 1
	MaxVRID     = 255
	MinPriority = 1
	MaxPriority = 254
	// DefaultAdvertInterval is VRRP's (and keepalived's) default.
	DefaultAdvertInterval = time.Second
	// AdvertResolution is VRRPv3's unit of the advertisement interval.
	AdvertResolution = 10 * time.Millisecond
	// MaxAdvertInterval is VRRPv3's largest interval (4095 centiseconds).
	MaxAdvertInterval = 4095 * AdvertResolution
	// MaxPreemptDelay is keepalived's largest preempt_delay.
	MaxPreemptDelay = 1000 * time.Second
	// MaxAddresses bounds the floating addresses of one group.
	MaxAddresses = 20
	// MaxPeers bounds the unicast peers.
	MaxPeers = 32
)

// Config is the whole desired configuration of one server in one group.
type Config struct {
	// Name names the group: a letter then letters, digits, '_' and '-',
	// at most 32 bytes. Every member uses the same name.
	Name string `json:"name"`
	// VirtualRouterID identifies the group on the link, 1..255; every
	// member uses the same one.
	VirtualRouterID int `json:"virtualRouterID"`
	// Interface is the link that carries the adverts and the floating
	// addresses (a Linux interface name).
	Interface string `json:"interface"`
	// Addresses are the floating addresses (IPv4, 1 to MaxAddresses). Each
	// must lie in a network of one of Interface's addresses; it is added
	// with that network's prefix length.
	Addresses []netip.Addr `json:"addresses"`
	// Source is this server's address on Interface, the source of its
	// unicast adverts (VRRPv3 unicast).
	Source netip.Addr `json:"source"`
	// Peers are the other members' addresses, to which adverts go by
	// unicast (1 to MaxPeers, IPv4, distinct, not Source).
	Peers []netip.Addr `json:"peers"`
	// Priority of this server, 1..254; the highest priority up is master
	// (ties go to the higher Source address).
	Priority int `json:"priority"`
	// NoPreempt keeps a master in place when a server of higher priority
	// comes back; the zero value preempts.
	NoPreempt bool `json:"noPreempt,omitempty"`
	// PreemptDelay delays taking over from a lower-priority master after
	// this server starts, 0..MaxPreemptDelay in whole seconds. Ignored
	// with NoPreempt.
	PreemptDelay time.Duration `json:"preemptDelay,omitempty"`
	// AdvertInterval between adverts; 0 means DefaultAdvertInterval. A
	// multiple of AdvertResolution up to MaxAdvertInterval. A backup takes
	// over about 3 intervals after the master fell silent.
	AdvertInterval time.Duration `json:"advertInterval,omitempty"`
	// Track lists what must be up for this server to hold the addresses.
	Track Track `json:"track,omitzero"`
}

// Track is what a server checks to be eligible as master. When a tracked
// item fails the server goes to Fault and gives the addresses up.
type Track struct {
	// Process is the name of a process (its command name, as in
	// /proc/PID/comm, at most 15 bytes of letters, digits, '.', '_', '-')
	// that must be running on the server, e.g. "haproxy".
	Process string `json:"process,omitempty"`
	// TCPPort is a port on 127.0.0.1 that must accept connections (the
	// balancer's or web server's port); 0 means none.
	TCPPort uint16 `json:"tcpPort,omitempty"`
}

// State is a server's VRRP state.
type State string

const (
	// Stopped: no speaker runs (before Apply, after Close, or it died).
	Stopped State = "stopped"
	// Backup: the speaker runs and another server is master.
	Backup State = "backup"
	// Master: this server holds the floating addresses.
	Master State = "master"
	// Fault: a tracked item failed or the interface is down; the server
	// may not be master.
	Fault State = "fault"
)

// Status is one server's view of the group.
type Status struct {
	// State of this server.
	State State `json:"state"`
	// Addresses are the group's floating addresses present on the
	// interface now, sorted. A master holds all of them; anything else
	// holding one is an orphan or a split brain.
	Addresses []netip.Addr `json:"addresses,omitempty"`
}

// EventKind says what an Event reports.
type EventKind string

const (
	// StateChanged: the server entered Event.State.
	StateChanged EventKind = "state"
	// SplitBrain: more than one server holds the floating addresses, or
	// this server, master, saw adverts of another master (Event.Peer).
	SplitBrain EventKind = "split-brain"
)

// Event is a state change or a split-brain observation.
type Event struct {
	Time time.Time `json:"time"`
	Kind EventKind `json:"kind"`
	// Group is the Config.Name of the group.
	Group string `json:"group"`
	// Member names the server the event is about; drivers leave it empty
	// and the ha.Group fills it in.
	Member string `json:"member,omitempty"`
	// State is the new state (StateChanged) or the state at the time.
	State State `json:"state"`
	// Peer is the other master's address, when known.
	Peer netip.Addr `json:"peer,omitzero"`
	// Holders, for a SplitBrain event of the Group's check, names the
	// members holding floating addresses.
	Holders []string `json:"holders,omitempty"`
	// Detail is a human-readable explanation.
	Detail string `json:"detail,omitempty"`
}
