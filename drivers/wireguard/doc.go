// Package wireguard is the network driver for modes WireGuard
// (driver.WireGuard), where each server's container range is routed to the
// other servers through an encrypted layer-3 WireGuard tunnel, and
// VXLANOverWireGuard (driver.VXLANOverWireGuard), where one layer-2
// segment is stretched over the servers by VXLAN inside such tunnels.
//
// # Requirements
//
// The driver needs root or CAP_NET_ADMIN in the network namespace it
// manages, /dev/net/tun (the tun module, CONFIG_TUN) and the bridge module
// (CONFIG_BRIDGE). No host program is needed: links, addresses and routes
// are netlink calls through the namespace-bound handle in Options.Handle,
// and the few calls bound to the calling thread's namespace (creating the
// TUN device, opening the WireGuard UDP socket, writing the forwarding
// sysctl) run through Options.Do, on one locked thread switched into the
// server's namespace (testhost.Host.Do or namespace.Runner).
//
// # Userspace device
//
// The WireGuard device is wireguard-go (golang.zx2c4.com/wireguard)
// embedded in the calling process: a TUN link, device.NewDevice and the
// standard UDP bind, whose socket is opened inside the server's namespace
// and checked to be there. The driver configures it with wgctrl's types
// (wgtypes.Config) rendered to the cross-platform configuration protocol
// and applied with the device's IpcSet, and reads it back with IpcGet into
// wgtypes.Device (Driver.Device). It also serves the standard UAPI socket,
// /var/run/wireguard/<ifname>.sock, so that `wg show` (wireguard-tools)
// and wgctrl see and configure the device like any userspace WireGuard
// device; that path is shared by every network namespace, which is why
// device names are unique on the machine (DeviceName).
//
// Where the kernel has a WireGuard module (adding a link of type
// "wireguard" through Options.Handle succeeds), the driver uses a kernel
// device instead, configured with the same wgtypes.Config through wgctrl's
// generic netlink client opened inside the namespace; bridge, routes and
// peer handling are the same, and Close leaves kernel devices in place.
// The project's test machines have no WireGuard module: only the userspace
// path is tested there (roottest lists the kernel module as missing).
//
// A userspace device lives and dies with the process running it. Networks
// therefore lists the driver's in-process state, and Close stops the
// devices (their links and routes vanish) while leaving the bridges, so
// that containers stay attached. After an agent restart, EnsureNetwork and
// SetPeers with the same spec and peers recreate the device and routes and
// adopt the bridge.
//
// # Devices and names
//
// Network ID id gets, in the managed namespace:
//
//   - a bridge BridgeName(id), "mwb-" and the ID (or, for IDs over 11
//     bytes, its first five bytes, a dot and five hex digits of a hash),
//     with alias "muster-wireguard id=<id>" and address spec.Local:
//     containers attach to it (Status.Bridge) and use it as their gateway;
//   - a TUN link (or kernel "wireguard" link) DeviceName(inode, id), "mwg" and 12 hex digits of a hash of
//     the namespace's inode and the ID, so that device names are unique on
//     the machine and not only in the namespace;
//   - for each peer a route peer.Range dev <device> src <Local address>;
//   - IP forwarding on in the namespace (it is not turned off again).
//
// The device listens on UDP spec.Port (default 51820) on every address of
// the namespace, with key spec.PrivateKey; Status.PublicKey is its public
// key. Every server of a network uses the same port: a peer's endpoint is
// its Underlay and that port. The MTU of both links is spec.MTU or the
// underlay link's MTU minus 80 (wg-quick's overhead, which suits IPv4 and
// IPv6 underlays).
//
// # VXLAN over WireGuard
//
// In mode VXLANOverWireGuard the device carries no routes to container
// ranges and there is no "mwb-" bridge. Instead the device holds the
// server's tunnel address, TunnelAddress(id, spec.Underlay): a unique
// local IPv6 address in a /64 derived from the ID, whose interface ID is
// the underlay address, so that every server computes every peer's tunnel
// address. Each peer's AllowedIPs is its tunnel address (/128). On top,
// a VXLAN network of package drivers/vxlan (opened with Over "wireguard",
// so a plain VXLAN driver neither lists nor touches it) uses the tunnel
// address as its underlay: bridge "mbr-"+suffix with spec.Local, VXLAN
// device "mvx-"+suffix with the VNI on port 4789 inside the tunnel, and
// unicast forwarding entries to the peers' tunnel addresses with their
// endpoints' neighbour entries. Frames between servers therefore leave
// only as WireGuard packets on spec.Port. The device's MTU is the
// underlay's minus Overhead; the network's (Status.MTU, what containers
// use) is that minus VXLANOverhead, or spec.MTU when it fits.
//
// The VXLAN devices live in the kernel and outlive the process; the
// WireGuard device does not. After a restart the VXLAN network has no
// tunnel under it (its frames go nowhere, never out unencrypted) until
// EnsureNetwork and SetPeers recreate the device, which adopts the VXLAN
// network as it is.
//
// # Peers and keys
//
// SetPeers makes the device's peers exactly the given ones (each with
// AllowedIPs its Range and a persistent keepalive of 25 seconds) and the
// routes exactly theirs. It changes only what differs: an unchanged peer
// keeps its session. A new spec.PrivateKey given to EnsureNetwork replaces
// the device's key in place; sessions re-handshake as soon as the other
// servers' SetPeers carry the new public key, and TCP connections through
// the tunnel survive.
package wireguard
