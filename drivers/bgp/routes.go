package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// syncRoutesLocked makes the main table's routes of RouteProtocol exactly
// the routes the networks' speakers learnt. Where two networks learnt the
// same prefix, the network whose ID sorts first wins. A route the kernel
// refuses (a next hop that is not on a connected network) is logged and
// skipped. d.mu is held.
func (d *Driver) syncRoutesLocked(ctx context.Context) error {
	want := map[netip.Prefix]netip.Addr{}
	var keep []netip.Prefix // ranges of networks whose speaker did not answer
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(d.networks)) {
		n := d.networks[id]
		if n.sp == nil {
			continue
		}
		routes, err := n.sp.learnt(ctx, n.peers)
		if err != nil {
			// Keep what the kernel has in this network's peers'
			// ranges rather than removing routes that may still be
			// good; the next sync tries again.
			errs = append(errs, fmt.Errorf("network %q: reading learnt routes: %w", id, err))
			for _, p := range n.peers {
				keep = append(keep, p.Range)
			}
			continue
		}
		for _, r := range routes {
			if _, ok := want[r.dst]; !ok {
				want[r.dst] = r.nextHop
			}
		}
	}
	have, err := d.h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return kernelErr("listing routes", err)
	}
	for _, r := range have {
		dst, gw := routeKey(&r)
		if nh, ok := want[dst]; ok && nh == gw && len(r.MultiPath) == 0 {
			delete(want, dst) // in place
			continue
		}
		if slices.ContainsFunc(keep, func(k netip.Prefix) bool { return k.Overlaps(dst) }) {
			continue
		}
		if err := d.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, kernelErr("removing route to "+dst.String(), err))
			continue
		}
		d.log.Info("bgp: route removed", "dst", dst, "via", gw)
	}
	for _, dst := range slices.SortedFunc(maps.Keys(want), func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }) {
		nh := want[dst]
		r := &netlink.Route{
			Dst:      &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
			Gw:       nh.AsSlice(),
			Protocol: RouteProtocol,
			Table:    unix.RT_TABLE_MAIN,
			Scope:    netlink.SCOPE_UNIVERSE,
		}
		// Add, not replace: a route of another protocol to the same
		// destination stays, and this one is not installed.
		if err := d.h.RouteAdd(r); err != nil {
			// Most likely the next hop is not on a connected network
			// yet, or another route holds the destination; the next
			// sync tries again.
			d.log.Warn("bgp: installing a route", "dst", dst, "via", nh, "err", err)
			continue
		}
		d.log.Info("bgp: route installed", "dst", dst, "via", nh)
	}
	return errors.Join(errs...)
}

// routeKey returns a kernel route's destination and gateway.
func routeKey(r *netlink.Route) (netip.Prefix, netip.Addr) {
	var dst netip.Prefix
	if r.Dst != nil {
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		dst = netip.PrefixFrom(a.Unmap(), ones)
	} else {
		dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	gw, _ := netip.AddrFromSlice(r.Gw)
	return dst, gw.Unmap()
}
