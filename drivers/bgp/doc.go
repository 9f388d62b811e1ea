// Package bgp is the network driver of mode driver.BGP: routed layer 3.
//
// Every server has a container range (Spec.Local: the range's first
// address, with the range's length) on a bridge, "mbg-" and the network's
// ID (a hashed suffix when the ID is too long for an interface name), with
// the alias "muster-bgp id=<id>". A link that holds the name without that
// alias (another program's, or another network's whose long ID hashes
// alike) makes EnsureNetwork fail with errcode.AlreadyExists, touching
// nothing. The
// server's BGP speaker announces that range, with the server's underlay
// address as next hop, to its peers (Spec.Underlay of the other servers,
// Driver.SetPeers), and installs what they announce as kernel routes, so
// that containers on different servers reach each other through the
// underlay without encapsulation. IP forwarding is enabled in the server's
// namespace.
//
// # The speaker
//
// The speaker is github.com/osrg/gobgp/v3, embedded: one gobgp server per
// network, listening on Spec.Underlay, TCP port Spec.Port (default 179),
// with Spec.ASN, Spec.RouterID (default: the underlay address),
// Spec.HoldTime (default 90s; keepalives every third of it) and, when
// Spec.Password is set, TCP MD5 signatures on every session. Each peer is a
// neighbour at Peer.Underlay with Peer.ASN (equal ASNs make iBGP sessions).
// Of the two ends of a session, only the one with the lower underlay
// address connects; the other only listens (passive). Were both to
// connect, each could keep reaching the other while it idles after a
// failed attempt, and two speakers could take minutes to meet again after
// a session dropped. A peer that is not a muster server (another BGP
// router) must therefore connect itself if its address is the lower one,
// as BIRD and most routers do by default. Only IPv4 unicast is carried:
// IPv6 underlays or ranges are errcode.Unimplemented.
//
// # Passwords and MPTCP
//
// A Spec.Password is set as a TCP MD5 key (RFC 2385) on gobgp's listener
// and outgoing sockets. Since Go 1.24, listeners are MPTCP sockets by
// default, and the kernel refuses MD5 keys on those; gobgp then only logs a
// warning and no signed session can start. EnsureNetwork therefore checks
// that a listener takes a key, and returns errcode.Unimplemented if it
// does not. A program that uses passwords turns MPTCP listeners off with
// the directive //go:debug multipathtcp=0 in its main package (or
// GODEBUG=multipathtcp=0), as this package's tests do.
//
// A learnt route is installed only if its prefix lies inside the Range that
// the announcing peer declared in SetPeers; anything else a peer announces
// (a default route, another peer's range) is ignored, so a peer can never
// give the server a route out of the network's subnet. Routes leave the
// kernel when the peer withdraws them, when its session drops (at the
// latest when the hold time expires), when it is removed from the peer set
// and when the network is deleted.
//
// # Kernel routes
//
// Installed routes are in the main table with protocol RouteProtocol (186,
// "bgp" in iproute2's rt_protos), and the driver only ever changes or
// removes routes of that protocol. It owns all of them: Open removes those
// a crashed predecessor left, and Close removes them all, since nothing
// would withdraw them once the speakers are gone. Bridges and their
// addresses stay when the driver is closed, as the driver SPI asks; the
// networks' state (specs, peers, speakers) lives in the Driver, so a new
// Driver lists no networks until they are ensured again.
//
// # Namespaces and privileges
//
// The driver needs CAP_NET_ADMIN (bridges, addresses, routes, the
// ip_forward sysctl, TCP MD5 keys) and, for the default port 179,
// CAP_NET_BIND_SERVICE. gobgp opens its listening socket and dials its
// neighbours from goroutines of its own, and a Go program cannot pin
// those to one namespace's thread: the sockets are created in the
// namespace of whatever thread runs them. So the process using this
// driver must itself run in the server's network namespace (the agent
// does); Options.Handle, if given, must operate in that same namespace.
// The package's tests run each simulated server's driver in a helper
// process started inside that server's namespace.
//
// Use one Driver per namespace.
package bgp
