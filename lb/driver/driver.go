// Package driver defines what load-balancer backends implement.
//
// Application code uses package lb; this package is for driver authors. A
// driver runs one balancer instance (an HAProxy or Nginx process, or an
// in-memory model) and makes it do what a Config says: frontends that accept
// TCP (layer 4) or HTTP (layer 7) traffic, optionally terminating TLS, and
// pools of backend servers that the traffic is spread over.
//
// The model is shaped like the Kubernetes Gateway API: a Frontend is a
// listener (address, port, protocol, TLS certificates chosen by SNI); its
// Routes match a request's host and path prefix and send it to a Pool, or
// redirect it, setting request and response headers on the way.
//
// Config.Validate is strict and shared by every driver: every name, address,
// host, path and header that reaches a configuration file passes it first,
// so that no input can add a directive. Raw configuration snippets exist only
// behind the explicit Unsafe.RawSnippets opt-in.
//
// Drivers return raw errors that carry an errcode; the portable type wraps
// them once. Every driver passes the conformance suite in lb/drivertest.
package driver

import (
	"context"
	"time"
)

// Driver runs one balancer instance.
type Driver interface {
	// Apply makes the balancer do what cfg says: the whole desired
	// configuration, replacing the previous one. Applying a config equal to
	// the one in force changes nothing (no reload, no restart). A config
	// that fails cfg.Validate is errcode.InvalidArgument; one that uses a
	// feature the driver lacks (see Capabilities) is errcode.Unimplemented;
	// one the backend itself rejects (for example an invalid raw snippet) is
	// errcode.InvalidArgument. On any error the running configuration stays
	// in force and keeps serving.
	Apply(ctx context.Context, cfg *Config) error
	// Config returns a copy of the configuration in force, normalized
	// (Config.Normalized), including the changes made by the server
	// operations below. Before the first Apply it is the empty Config.
	Config(ctx context.Context) (*Config, error)
	// AddServer adds srv to pool. errcode.NotFound if the pool is unknown,
	// errcode.AlreadyExists if the pool has a server of that name,
	// errcode.InvalidArgument if srv is invalid.
	AddServer(ctx context.Context, pool string, srv Server) error
	// RemoveServer removes server name from pool. errcode.NotFound if the
	// pool or the server is unknown.
	RemoveServer(ctx context.Context, pool, name string) error
	// SetWeight changes a server's weight (1 to 256). errcode.NotFound if
	// the pool or the server is unknown, errcode.InvalidArgument for a
	// weight out of range.
	SetWeight(ctx context.Context, pool, name string, weight int) error
	// SetState changes a server's administrative state. errcode.NotFound if
	// the pool or the server is unknown, errcode.InvalidArgument for an
	// unknown state.
	SetState(ctx context.Context, pool, name string, state AdminState) error
	// Stats returns one entry per server of every pool, sorted by pool then
	// server name.
	Stats(ctx context.Context) ([]ServerStats, error)
	// Capabilities says which optional features the driver supports.
	Capabilities() Capabilities
	// Close stops the balancer and releases its resources. It is safe to
	// call more than once; later calls return nil. Every other method but
	// Capabilities then fails with errcode.FailedPrecondition.
	Close() error
}

// Capabilities lists a driver's optional features. A Config that needs a
// feature the driver lacks is errcode.Unimplemented, except health checks,
// which a driver without ActiveHealthChecks maps to passive ones (its
// documentation says how).
type Capabilities struct {
	// ActiveHealthChecks: the balancer probes servers (HealthCheck) and
	// takes them out and back in on its own.
	ActiveHealthChecks bool `json:"activeHealthChecks,omitempty"`
	// RuntimeAPI: server operations take effect without a reload.
	RuntimeAPI bool `json:"runtimeAPI,omitempty"`
	// TLS: frontends terminate TLS.
	TLS bool `json:"tls,omitempty"`
	// Layer7: HTTP frontends with routes, redirects and headers.
	Layer7 bool `json:"layer7,omitempty"`
	// SessionStats: Stats reports current sessions and total connections
	// per server (otherwise they are zero).
	SessionStats bool `json:"sessionStats,omitempty"`
	// Drain: the Drain state stops new connections while existing ones
	// finish (otherwise Drain acts as Maintenance).
	Drain bool `json:"drain,omitempty"`
	// RawSnippets: the driver accepts Unsafe.RawSnippets.
	RawSnippets bool `json:"rawSnippets,omitempty"`
}

// Config is the whole desired configuration of one balancer.
type Config struct {
	// Frontends are the listeners, with unique names and bind addresses.
	Frontends []Frontend `json:"frontends,omitempty"`
	// Pools are the backend pools, with unique names.
	Pools []Pool `json:"pools,omitempty"`
	// Unsafe holds what bypasses validation; nil is the safe default.
	Unsafe *Unsafe `json:"unsafe,omitempty"`
}

// Unsafe is the explicit opt-in to raw, unvalidated configuration text.
type Unsafe struct {
	// RawSnippets are lines of the backend's own configuration language,
	// keyed by where they go: "global", "defaults", "frontend/<name>",
	// "pool/<name>" (HAProxy) or "global" (the main context), "http",
	// "stream", "server/<frontend>", "upstream/<pool>" (Nginx). A key the
	// driver has no place for is errcode.InvalidArgument. The driver validates the result with the
	// backend's own checker; one that fails is errcode.InvalidArgument and
	// never replaces the running configuration.
	RawSnippets map[string]string `json:"rawSnippets,omitempty"`
}

// Protocol is what a frontend speaks.
type Protocol string

const (
	// TCP balances connections (layer 4). Routes do not apply.
	TCP Protocol = "tcp"
	// HTTP balances requests (layer 7) and may route them.
	HTTP Protocol = "http"
)

// Frontend is a listener: a Gateway API Listener with its routes.
type Frontend struct {
	// Name is a DNS label, unique among frontends.
	Name     string   `json:"name"`
	Protocol Protocol `json:"protocol"`
	// Address is the IP address to bind (IPv4 or IPv6, no zone); the
	// unspecified address binds all.
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	// TLS, if set, terminates TLS on this frontend.
	TLS *TLS `json:"tls,omitempty"`
	// DefaultPool receives what no route matches. Empty: unmatched HTTP
	// requests get 404; a TCP frontend must have one.
	DefaultPool string `json:"defaultPool,omitempty"`
	// Routes, HTTP only, are tried in order; the first match wins.
	Routes []Route `json:"routes,omitempty"`
}

// TLS terminates TLS with one or more certificates.
type TLS struct {
	// Certificates are chosen by the client's SNI; the first is the
	// default, served when no other matches or no SNI is sent.
	Certificates []Certificate `json:"certificates"`
}

// Certificate is a certificate chain and its private key.
type Certificate struct {
	// Name is a DNS label, unique in the frontend; it names files.
	Name string `json:"name"`
	// CertPEM is the leaf certificate followed by intermediates, PEM.
	CertPEM []byte `json:"certPEM"`
	// KeyPEM is the private key, PEM.
	KeyPEM []byte `json:"keyPEM"`
	// ServerNames are the SNI names that select this certificate; empty
	// means the DNS names of the leaf certificate (see Certificate.Names).
	ServerNames []string `json:"serverNames,omitempty"`
}

// Route sends matching HTTP requests to a pool or redirects them.
type Route struct {
	// Name is a DNS label, unique in the frontend.
	Name string `json:"name"`
	// Host matches the request's host (without port), exactly; empty
	// matches every host.
	Host string `json:"host,omitempty"`
	// PathPrefix matches the path's leading segments; "/" or empty
	// matches every path. A prefix "/api" matches "/api" and "/api/x"
	// but not "/apix".
	PathPrefix string `json:"pathPrefix,omitempty"`
	// Pool receives matching requests. Exactly one of Pool and Redirect
	// is set.
	Pool     string    `json:"pool,omitempty"`
	Redirect *Redirect `json:"redirect,omitempty"`
	// RequestHeaders are set (replacing any of the same name) on requests
	// sent to the pool.
	RequestHeaders []Header `json:"requestHeaders,omitempty"`
	// ResponseHeaders are set on responses to the client.
	ResponseHeaders []Header `json:"responseHeaders,omitempty"`
}

// Redirect answers with a redirect to the same path and query on another
// scheme, host or port.
type Redirect struct {
	// Scheme is "http" or "https"; empty keeps the request's.
	Scheme string `json:"scheme,omitempty"`
	// Host replaces the request's host; empty keeps the Host header as
	// sent (with its port, if any).
	Host string `json:"host,omitempty"`
	// Port, with Host, is appended to it; 0 appends none.
	Port uint16 `json:"port,omitempty"`
	// StatusCode is 301, 302, 303, 307 or 308; 0 means 302.
	StatusCode int `json:"statusCode,omitempty"`
}

// Header is an HTTP header field. Validate restricts both parts to
// characters that need no quoting in any backend: the name is an RFC 9110
// token without quotes; the value is visible ASCII without spaces, quotes,
// backslashes, braces, semicolons, '#', '$' or '%'.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Algorithm is how a pool picks a server. Weights apply to every algorithm
// except SourceHash, where they scale a server's share of the hash space.
type Algorithm string

const (
	// RoundRobin takes servers in turn, in proportion to their weights;
	// weights may change at run time.
	RoundRobin Algorithm = "round-robin"
	// Weighted is static weighted round robin: servers in turn in
	// proportion to their weights, without the per-pool limit on servers
	// that dynamic weights impose. Use RoundRobin to change weights at run
	// time.
	Weighted Algorithm = "weighted"
	// LeastConnections picks the server with the fewest current
	// connections, relative to its weight.
	LeastConnections Algorithm = "least-connections"
	// SourceHash picks the server by a consistent hash of the client's
	// address: the same client reaches the same server while the pool is
	// unchanged.
	SourceHash Algorithm = "source-hash"
)

// Pool is a set of servers traffic is spread over. A pool serves frontends
// of one protocol: TCP or HTTP, not both.
type Pool struct {
	// Name is a DNS label, unique among pools.
	Name string `json:"name"`
	// Algorithm; empty means RoundRobin.
	Algorithm Algorithm `json:"algorithm,omitempty"`
	// Servers, with unique names.
	Servers []Server `json:"servers,omitempty"`
	// HealthCheck, if set, probes every server.
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
}

// Server is one backend server.
type Server struct {
	// Name is a DNS label, unique in the pool.
	Name string `json:"name"`
	// Address is an IP address or a DNS name, resolved when the
	// configuration is loaded.
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	// Weight is 1 to 256; 0 means 1.
	Weight int `json:"weight,omitempty"`
	// Backup servers take traffic only while no other server is up.
	Backup bool `json:"backup,omitempty"`
	// State is the administrative state; empty means Ready.
	State AdminState `json:"state,omitempty"`
}

// AdminState is what an operator asks of a server.
type AdminState string

const (
	// Ready: the server takes traffic (if healthy).
	Ready AdminState = "ready"
	// Drain: no new connections, except persistent ones; existing ones
	// finish.
	Drain AdminState = "drain"
	// Maintenance: no traffic at all.
	Maintenance AdminState = "maint"
)

// CheckType is how a health check probes.
type CheckType string

const (
	// TCPCheck: a TCP connection must succeed.
	TCPCheck CheckType = "tcp"
	// HTTPCheck: GET Path must answer ExpectStatus.
	HTTPCheck CheckType = "http"
)

// HealthCheck probes every server of a pool.
type HealthCheck struct {
	Type CheckType `json:"type"`
	// Path, for HTTPCheck, is the path requested; empty means "/".
	Path string `json:"path,omitempty"`
	// ExpectStatus, for HTTPCheck, is the status a healthy server
	// answers (100 to 599); 0 means any 2xx or 3xx.
	ExpectStatus int `json:"expectStatus,omitempty"`
	// Interval between probes: 100ms to 1h, in whole milliseconds; 0
	// means 2s.
	Interval time.Duration `json:"interval,omitempty"`
	// Timeout of one probe, at most Interval; 0 means Interval.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Rise consecutive successes bring a server up, Fall consecutive
	// failures take it down: 1 to 100; 0 means 2 and 3.
	Rise int `json:"rise,omitempty"`
	Fall int `json:"fall,omitempty"`
}

// ServerState is a server's state as the balancer sees it.
type ServerState string

const (
	// Up: healthy (or unchecked) and taking traffic.
	Up ServerState = "up"
	// Down: failing its health checks.
	Down ServerState = "down"
	// Draining: administratively draining.
	Draining ServerState = "drain"
	// Maint: administratively in maintenance.
	Maint ServerState = "maint"
)

// ServerStats is one server's state and counters.
type ServerStats struct {
	Pool   string      `json:"pool"`
	Server string      `json:"server"`
	State  ServerState `json:"state"`
	// Weight in force.
	Weight int `json:"weight"`
	// CurrentSessions and TotalConnections count connections to the
	// server (zero without Capabilities.SessionStats).
	CurrentSessions  int64 `json:"currentSessions"`
	TotalConnections int64 `json:"totalConnections"`
}
