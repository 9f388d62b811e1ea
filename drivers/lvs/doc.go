// Package lvs is a layer-4 load-balancer driver (lb/driver) on the Linux
// kernel's IP Virtual Server, programmed through generic netlink with
// github.com/cloudflare/ipvs.
//
// Each TCP frontend becomes an IPVS virtual service on its address and
// port (a specific virtual IP: IPVS cannot bind "all addresses"), each of
// its pool's servers a real server reached by NAT (masquerading), with the
// pool's algorithm as the scheduler (Scheduler): wrr for RoundRobin and
// Weighted, wlc for LeastConnections, sh for SourceHash. Servers need IP
// addresses; a DNS name is errcode.InvalidArgument. HTTP frontends, TLS
// and routes are layer 7 and errcode.Unimplemented (Capabilities says so).
//
// IPVS has no health checks of its own; the driver runs the pool's checks
// (TCP connect, or HTTP GET with the expected status) from the balancer's
// namespace, with the configured interval, timeout, rise and fall, and
// gives a server that is down weight 0, as it does to a draining server
// (IPVS then sends it no new connections and keeps the established ones),
// and to backup servers while a primary is up. Maintenance removes the
// server. Every change is a netlink call: nothing reloads.
//
// # Requirements
//
// Root or CAP_NET_ADMIN, and a kernel with IPVS (CONFIG_IP_VS, the ip_vs
// module, with ip_vs_wrr, ip_vs_wlc and ip_vs_sh). On a kernel without it
// Open returns errcode.Unimplemented saying so. The project's test
// machines have no IPVS: the driver's tests against the kernel are the
// listed exception (roottest), and its unit tests check the
// mapping through a recording ipvs.Client.
package lvs
