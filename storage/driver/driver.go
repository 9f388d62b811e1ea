// Package driver defines what storage backends implement.
//
// Application code uses package storage; this package is for driver
// authors. A pool is storage spread over chosen servers (Gluster bricks,
// MooseFS chunk servers, one NFS server); volumes live in a pool; servers
// mount volumes, and containers bind-mount what their server mounted.
//
// A Driver is one server's part in one pool: the daemons that server runs
// for it (glusterd and its bricks, a MooseFS master or chunk server,
// ganesha), the volumes (on the pool's coordinator, the first member) and
// the server's mounts of the pool's volumes. A server that mounts a
// volume without storing any of the pool (not a member) runs a Driver for
// the pool too, as a client. The portable type applies the same pool and
// volumes to every server taking part, each with its own mounts.
//
// Config.Validate is strict and shared by every driver: every name,
// address and export rule that reaches a command line, a rendered
// configuration or a path passes it first. Paths are the driver's own,
// under the directory it was opened with: no caller names one.
//
// Drivers return raw errors that carry an errcode; the portable type wraps
// them once. Every driver passes the conformance suite in
// storage/drivertest.
package driver

import (
	"context"
	"net/netip"
)

// Driver is one server's part in one storage pool.
type Driver interface {
	// Apply makes this server's part match cfg, the whole desired state:
	// it joins the pool (starts the daemons the server's role needs and
	// creates its storage directories; the coordinator, Pool.Members[0],
	// also forms the pool from the other members, which the caller has
	// applied first), creates on the coordinator the volumes cfg lists and
	// sets their quotas and exports, and mounts on this server the
	// volumes cfg.Mounts name, unmounting those it no longer names.
	// Applying a config equal to the one in force changes nothing.
	//
	// Apply never destroys data: on the coordinator, a volume in force
	// that cfg does not list is errcode.FailedPrecondition (RemoveVolume removes one), as is a
	// changed layout or a removed member. Members added to cfg.Pool grow
	// the pool where Capabilities().Grow says so, else
	// errcode.Unimplemented. A config that fails Validate is
	// errcode.InvalidArgument; one that needs a feature the driver lacks
	// (Capabilities) errcode.Unimplemented. On error, what this call
	// created is removed again and what was in force stays.
	Apply(ctx context.Context, cfg *Config) error
	// Config returns a copy of the configuration in force (nil before
	// the first Apply).
	Config(ctx context.Context) (*Config, error)
	// Status reports the pool as this server sees it: its members, its
	// volumes and their health, and this server's mounts.
	// errcode.FailedPrecondition before the first Apply.
	Status(ctx context.Context) (*Status, error)
	// RemoveVolume deletes volume name and its data, on the coordinator
	// only (elsewhere errcode.FailedPrecondition naming it). A volume that
	// holds files, or that a server of the pool has mounted (as far as the
	// backend knows), is errcode.FailedPrecondition unless opts.Force.
	// errcode.NotFound if there is none.
	RemoveVolume(ctx context.Context, name string, opts *RemoveOptions) error
	// Leave ends this server's part in the pool: unmounts its mounts
	// (errcode.FailedPrecondition if one is busy, unless opts.Force),
	// stops its daemons and, on the coordinator, deletes the pool, which
	// must hold no volumes unless opts.Force (errcode.FailedPrecondition).
	// A member's stored data is deleted only with opts.Force. Afterwards
	// the driver is as before its first Apply; leaving without a part in
	// force (before the first Apply, or again) is no error.
	Leave(ctx context.Context, opts *RemoveOptions) error
	// Capabilities says which optional features the driver supports.
	Capabilities() Capabilities
	// Close stops the driver's daemons and releases its resources,
	// leaving mounts, data and records in place so that a driver opened
	// again on the same directory and given the same config takes them
	// back. It is safe to call more than once; later calls return nil.
	// Every other method but Capabilities then fails with
	// errcode.FailedPrecondition.
	Close() error
}

// Config is one server's part in a pool.
type Config struct {
	Pool Pool `json:"pool"`
	// Self is this server's name: a member of Pool, or a client that
	// only mounts.
	Self    string   `json:"self"`
	Volumes []Volume `json:"volumes,omitempty"`
	Mounts  []Mount  `json:"mounts,omitempty"`
}

// Pool is storage spread over servers.
type Pool struct {
	Name string `json:"name"`
	// Members are the servers that store the pool's data, the
	// coordinator first (Gluster's first peer, MooseFS's master, the NFS
	// server). Their addresses are how other servers reach them.
	Members []Member `json:"members"`
	Layout  Layout   `json:"layout"`
}

// Member is a server that stores part of a pool.
type Member struct {
	Server string     `json:"server"`
	Addr   netip.Addr `json:"addr"`
}

// Layout says how a pool places data over its members.
type Layout struct {
	Kind LayoutKind `json:"kind"`
	// Copies is how many copies of each file a replicated pool keeps
	// (Gluster's replica count, MooseFS's goal): 2 or more, at most the
	// number of members. Unset for Distribute.
	Copies int `json:"copies,omitempty"`
	// Arbiter makes the last of every Copies bricks an arbiter that holds
	// metadata only (Gluster replica 3 arbiter 1). Needs Copies 3.
	Arbiter bool `json:"arbiter,omitempty"`
	// Redundancy is how many members of a dispersed pool may be lost
	// (Gluster's disperse redundancy), less than half the members.
	Redundancy int `json:"redundancy,omitempty"`
}

// LayoutKind is how a pool places data.
type LayoutKind string

const (
	// Single is one server's storage (NFS): one member.
	Single LayoutKind = "single"
	// Distribute spreads files over members, one copy each.
	Distribute LayoutKind = "distribute"
	// Replicate keeps Copies copies of every file on different members.
	Replicate LayoutKind = "replicate"
	// Disperse erasure-codes files over members (Redundancy).
	Disperse LayoutKind = "disperse"
)

// Volume is a named share in a pool.
type Volume struct {
	Name string `json:"name"`
	// QuotaBytes caps the volume's size; 0 means none. Needs
	// Capabilities().Quota.
	QuotaBytes int64 `json:"quotaBytes,omitempty"`
	// Copies overrides the pool's copies for this volume where the
	// backend keeps them per directory (MooseFS goal); 0 means the pool's.
	Copies int `json:"copies,omitempty"`
	// Exports say which clients may mount the volume and how; none means
	// every member and client of the pool, read-write.
	Exports []Export `json:"exports,omitempty"`
}

// Export is an access rule: the clients it matches and what they may do.
// A client matches the first rule whose prefixes hold its address.
type Export struct {
	Clients []netip.Prefix `json:"clients"`
	Access  Access         `json:"access"`
}

// Access is what an export rule allows.
type Access string

const (
	ReadWrite Access = "rw"
	ReadOnly  Access = "ro"
)

// Mount is a volume this server mounts. The driver chooses where (a path
// under its directory, reported by Status); containers bind-mount it from
// there.
type Mount struct {
	Volume   string `json:"volume"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// RemoveOptions say how far a removal may go.
type RemoveOptions struct {
	// Force removes even what is mounted, busy or still holds files.
	Force bool `json:"force,omitempty"`
}

// Capabilities lists a driver's optional features.
type Capabilities struct {
	// Layouts the driver can build.
	Layouts []LayoutKind `json:"layouts"`
	// MaxMembers bounds a pool's members (1 for NFS); 0 means no bound.
	MaxMembers int `json:"maxMembers,omitempty"`
	// Arbiter: replicated pools can have arbiter bricks.
	Arbiter bool `json:"arbiter,omitempty"`
	// Quota: volumes can have a QuotaBytes.
	Quota bool `json:"quota,omitempty"`
	// VolumeCopies: a volume can set its own Copies.
	VolumeCopies bool `json:"volumeCopies,omitempty"`
	// Exports: volumes enforce Export rules.
	Exports bool `json:"exports,omitempty"`
	// Grow: members can be added to a pool in force.
	Grow bool `json:"grow,omitempty"`
	// Mount: this server can mount volumes (and so give them to
	// containers) with Client. False when the client is missing here (the
	// kernel NFS client on a kernel without it): Mounts are then
	// errcode.Unimplemented.
	Mount bool `json:"mount,omitempty"`
	// Client is how a mount reaches the pool.
	Client Client `json:"client,omitempty"`
}

// Client is the kind of client a mount uses.
type Client string

const (
	FUSE   Client = "fuse"
	Kernel Client = "kernel"
	// Memory: no file system; the in-memory driver's mounts.
	Memory Client = "memory"
)

// Status is a pool as one server sees it.
type Status struct {
	Pool    string         `json:"pool"`
	Members []MemberStatus `json:"members"`
	Volumes []VolumeStatus `json:"volumes"`
	Mounts  []MountStatus  `json:"mounts"`
}

// MemberStatus is one member's state.
type MemberStatus struct {
	Server string `json:"server"`
	// Up: the member's storage daemon answers (a Gluster brick, a
	// MooseFS chunk server, the NFS server).
	Up bool `json:"up"`
	// CapacityBytes and UsedBytes are the member's storage, where the
	// backend reports them (0 otherwise).
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
	UsedBytes     int64 `json:"usedBytes,omitempty"`
}

// VolumeStatus is one volume's state. Known only on the coordinator and
// where the backend reports it; elsewhere Health is Unknown.
type VolumeStatus struct {
	Volume
	Health Health `json:"health"`
	// UsedBytes is what the volume holds, where the backend reports it.
	UsedBytes int64 `json:"usedBytes,omitempty"`
	// Source is how a client reaches the volume, in the backend's own
	// notation (host:/volume for Gluster, nfs://host/path for NFS), for
	// mounting it by hand. Known on the coordinator.
	Source string `json:"source,omitempty"`
	// Pending counts entries (Gluster heal entries, MooseFS
	// under-goal chunks) that have fewer copies than they should.
	Pending int `json:"pending,omitempty"`
}

// Health is a volume's state.
type Health string

const (
	Healthy  Health = "healthy"
	Degraded Health = "degraded" // serving, with fewer copies than it should
	Down     Health = "down"     // not serving
	Unknown  Health = "unknown"
)

// MountStatus is one of this server's mounts.
type MountStatus struct {
	Mount
	// Path is where the volume is mounted on the server.
	Path string `json:"path"`
	// Healthy: the mounted file system answers.
	Healthy bool `json:"healthy"`
}
