// Package muster is an embeddable SDK of container-cluster primitives: a Go
// program imports its packages to run LXC containers across many servers
// and compose its own orchestrator. This package holds no code; it maps the
// SDK.
//
// Every subsystem has the same shape: a portable type that validates input
// and wraps errors once, a small driver SPI in <subsystem>/driver, a
// conformance suite in <subsystem>/drivertest that every driver passes, an
// in-memory driver for tests, and real drivers in drivers/<backend>.
//
// errcode is the one error vocabulary: every error for bad input or a
// failed precondition carries a code, tested with errors.Is(err,
// errcode.NotFound) or read with errcode.Of.
//
// container runs containers on one server (Server) and across servers
// (Cluster): create from images, start, stop, freeze, exec with streamed
// stdio, limits, bind mounts, static addresses on a bridge, labels,
// autostart, snapshots and clones, export and import as a stream, and
// copying or moving a container between servers with progress events and
// rollback. container/image builds, stores and unpacks images: a zstd
// rootfs archive with a JSON manifest and a content digest, with a base
// image built offline from Debian's busybox-static. container/memcontainer
// is the in-memory driver; container/drivertest the conformance suite.
//
// drivers/lxc is the container driver on liblxc (go-lxc), one lxcpath per
// server state directory.
//
// network joins containers on different servers into one network (Fabric):
// VXLAN layer 2 (drivers/vxlan), WireGuard layer 3 and VXLAN over WireGuard
// (drivers/wireguard), BGP-routed layer 3 (drivers/bgp), with IPAM
// (network/ipam), a preflight of the underlay (network/preflight) and
// networks that come back after an agent restart (network/restore).
//
// lb balances traffic (Balancer): TCP and HTTP frontends with TLS and
// Gateway-API-shaped routes, pools with algorithms, weights, states and
// health checks, on HAProxy (drivers/haproxy), Nginx (drivers/nginx) or
// IPVS (drivers/lvs), deployable on any server through its agent.
//
// discovery lets apps find each other by name (Registry): registrations
// with health checks, resolution, resumable watches, and a Publisher of
// containers' labelled services; on Consul (drivers/consul) or the embedded
// registry (discovery/memdiscovery), with a DNS front for any of them
// (discovery/dnsfront).
//
// ha keeps floating IPs alive across a group of servers (Group) with VRRP
// on keepalived (drivers/keepalived), and deploys a pair of load balancers
// behind one floating IP in one call (DeployPair).
//
// agent is the per-server daemon and its client: a server half that hosts a
// server's local drivers over HTTPS with mutual TLS, and a client half that
// implements the same driver SPIs remotely, so an operation on a remote
// container is the same call as on a local one. Servers join a cluster with
// a one-time token that pins the cluster CA's fingerprint. The agent also
// serves the server's network drivers, preflight probes and load balancers.
//
// examples/muster-agent runs an agent; examples/demo runs a three-server
// cluster on one machine.
package muster
