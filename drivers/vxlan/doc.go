// Package vxlan is the network driver for mode VXLAN (driver.VXLAN): each
// network is one layer-2 segment stretched over the servers' underlay by a
// Linux VXLAN device and a Linux bridge per network and server, programmed
// through netlink (github.com/vishvananda/netlink).
//
// # Requirements
//
// The driver needs root or CAP_NET_ADMIN in the network namespace it
// manages, and a kernel with the vxlan and bridge modules (CONFIG_VXLAN,
// CONFIG_BRIDGE; modprobe vxlan bridge if they do not load on demand). No
// host program is needed: every change is a netlink call through the
// namespace-bound handle given in Options.Handle, never through the calling
// thread's namespace.
//
// # Devices
//
// Network ID id gets, in the managed namespace:
//
//   - a bridge "mbr-"+suffix holding spec.Local (containers attach here
//     through veths; Status.Bridge names it);
//   - a VXLAN device "mvx-"+suffix, a port of that bridge, with the VNI,
//     UDP destination port spec.Port (default 4789), local address
//     spec.Underlay, learning off and no multicast group.
//
// suffix is id itself when id has at most 11 bytes, otherwise its first four
// bytes, '_' and six hex digits of its SHA-256 (15 bytes in all, the
// kernel's limit; names.Link). '_' never occurs in an ID (a DNS label), so
// the two forms never meet; a hash clash between two long IDs, or any other
// link already holding the name, is detected because both devices carry the
// alias "muster-vxlan id=<id> ...": EnsureNetwork then fails with
// errcode.AlreadyExists and touches nothing.
//
// The MTU of both devices is spec.MTU or, when zero, the MTU of the underlay
// link (the link holding spec.Underlay) minus the encapsulation: 50 bytes
// over IPv4, 70 over IPv6. A spec.MTU above that is
// errcode.FailedPrecondition, as the packets would not fit the underlay.
//
// # Unicast, no multicast, no learning
//
// Nothing relies on multicast or on the VXLAN device learning addresses.
// SetPeers writes, for every peer, one all-zeros FDB entry
// (00:00:00:00:00:00 dst <peer underlay>, self, permanent, appended) so that
// broadcast, unknown-unicast and multicast frames are copied to every peer
// by head-end replication; and for each of the peer's endpoints a FDB entry
// MAC -> peer underlay on the VXLAN device and a permanent neighbour (ARP or
// NDP) entry address -> MAC on the bridge, so that known containers are
// reached without flooding or ARP. Removing a peer deletes exactly its
// entries, which cuts its traffic and no other.
//
// # State
//
// The driver stores nothing on disk: the kernel is the truth. Status and
// Networks are re-derived from the links (names, aliases, VXLAN attributes,
// MTU), the bridge's address and the FDB and neighbour tables, so a driver
// opened after an agent restart sees the same networks, and applying the
// same spec and peers again changes nothing. Peer names are the one thing
// the kernel cannot hold: the driver remembers them from SetPeers while it
// is open; a peer whose name it does not know (after a restart, before the
// next SetPeers) is reported with its underlay address as its name.
package vxlan
