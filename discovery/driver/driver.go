// Package driver defines what service-discovery backends implement.
//
// Application code uses package discovery; this package is for driver
// authors. A driver is a registry of service instances (a service name, an
// address and port, tags, metadata) with health checks whose failure takes
// an instance out of answers, and a way to wait for changes: every change
// of a service's entries raises the registry's index, and Wait returns as
// soon as the index passes the one the caller has seen, which is how
// watches resume after a disconnect without missing a change.
//
// Drivers return raw errors that carry an errcode; the portable type
// validates first (Instance.Validate) and wraps errors once. Every driver
// passes the conformance suite in package discovery/drivertest.
package driver

import (
	"context"
	"time"
)

// Driver is a service registry.
type Driver interface {
	// Register adds inst, or replaces the instance with its ID. An
	// instance with a check starts as Critical until the check passes
	// (TTL checks: until PassTTL). errcode.InvalidArgument for an
	// invalid instance.
	Register(ctx context.Context, inst *Instance) error
	// Deregister removes instance id. errcode.NotFound if unknown.
	Deregister(ctx context.Context, id string) error
	// PassTTL reports instance id's TTL check as passing for another TTL.
	// errcode.NotFound if unknown, errcode.FailedPrecondition if its
	// check is not a TTL check.
	PassTTL(ctx context.Context, id string) error
	// Resolve returns the instances q asks for, sorted by ID. An unknown
	// service has no instances (no error).
	Resolve(ctx context.Context, q Query) ([]Entry, error)
	// Wait blocks until service's entries change after index (the Index
	// of an earlier Result; 0 returns at once) or ctx ends, and returns
	// them with the new index. It may return early with unchanged
	// entries; the index never goes back.
	Wait(ctx context.Context, service string, index uint64) (*Result, error)
	// Services returns the names of the registered services, sorted.
	Services(ctx context.Context) ([]string, error)
	// Close releases the driver's resources; registrations made through
	// it stay (in a remote registry) or go (in-process ones). Closing
	// again returns nil; every other method then fails with
	// errcode.FailedPrecondition.
	Close() error
}

// Query says which instances Resolve returns.
type Query struct {
	// Service is the service's name.
	Service string
	// Tag, if not empty, keeps only the instances with that tag.
	Tag string
	// Critical includes the instances whose check fails; by default only
	// the passing ones are returned.
	Critical bool
}

// Instance is one instance of a service.
type Instance struct {
	// ID names the instance in the registry: 1 to 128 characters of
	// letters, digits, '-', '_' and '.'.
	ID string `json:"id"`
	// Service is the service's name, a DNS label, so that it resolves as
	// <service>.service.<domain>.
	Service string `json:"service"`
	// Address is an IP address.
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	// Tags are DNS labels, each at most once.
	Tags []string `json:"tags,omitempty"`
	// Meta keys are 1 to 64 letters, digits, '-' and '_'; values at most
	// 512 printable characters.
	Meta  map[string]string `json:"meta,omitempty"`
	Check *Check            `json:"check,omitempty"`
}

// CheckType is how a check probes.
type CheckType string

const (
	// TCPCheck passes when a TCP connection to Address:Port succeeds.
	TCPCheck CheckType = "tcp"
	// HTTPCheck passes when GET http://Address:Port<Path> answers 2xx.
	HTTPCheck CheckType = "http"
	// TTLCheck passes while the instance calls PassTTL within every TTL.
	TTLCheck CheckType = "ttl"
)

// Check is an instance's health check.
type Check struct {
	Type CheckType `json:"type"`
	// Path is the HTTP check's path; empty means "/".
	Path string `json:"path,omitempty"`
	// Interval between probes (TCP, HTTP): 100ms to 1h; 0 means 10s.
	Interval time.Duration `json:"interval,omitempty"`
	// Timeout of a probe, at most Interval; 0 means Interval.
	Timeout time.Duration `json:"timeout,omitempty"`
	// TTL of a TTL check: 1s to 24h.
	TTL time.Duration `json:"ttl,omitempty"`
	// DeregisterAfter removes an instance critical for this long: 0
	// keeps it; otherwise at least 1 minute (Consul's granularity).
	DeregisterAfter time.Duration `json:"deregisterAfter,omitempty"`
}

// Health is an instance's state.
type Health string

const (
	Passing  Health = "passing"
	Critical Health = "critical"
)

// Entry is an instance with its health.
type Entry struct {
	Instance
	Health Health `json:"health"`
}

// Result is what Wait returns.
type Result struct {
	// Entries are all the service's instances, passing or not, sorted by
	// ID.
	Entries []Entry `json:"entries"`
	// Index is the registry's index for the service; give it to the next
	// Wait.
	Index uint64 `json:"index"`
}
