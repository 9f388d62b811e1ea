package gluster

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/musterkit/muster/namespace"
	"github.com/musterkit/muster/storage/driver"
)

// Status implements driver.Driver. On a member, members are up when their
// glusterd is a connected peer and their bricks are online, and volume
// health comes from the bricks online in each replica or disperse set and
// from the heal backlog (volume heal info summary); capacity is from
// volume status detail. On a client that stores nothing, a member is up
// when its glusterd accepts a connection, and volume health is Unknown.
func (d *Driver) Status(ctx context.Context) (*driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := d.usable()
	if err != nil {
		return nil, err
	}
	st := &driver.Status{Pool: cfg.Pool.Name, Members: []driver.MemberStatus{}, Volumes: []driver.VolumeStatus{}}
	coord := cfg.Pool.Coordinator().Addr.Unmap().String()
	if _, member := cfg.Pool.Member(cfg.Self); !member {
		for _, m := range cfg.Pool.Members {
			st.Members = append(st.Members, driver.MemberStatus{Server: m.Server, Up: d.answers(m.Addr)})
		}
		for _, v := range cfg.Volumes {
			st.Volumes = append(st.Volumes, driver.VolumeStatus{Volume: v, Health: driver.Unknown, Source: coord + ":/" + v.Name})
		}
		st.Mounts = d.mount.status(cfg)
		return st, nil
	}
	peers, err := d.peers(ctx)
	if err != nil {
		return nil, err
	}
	vols, err := d.volumes(ctx)
	if err != nil {
		return nil, err
	}
	online := map[string]bool{} // brick name (host:path) online
	type space struct{ total, free int64 }
	capacity := map[string]space{} // by host
	known := len(vols) > 0
	if known {
		// A cluster-wide operation: it fails while a peer is being found
		// unreachable. The heal backlog's brick states stand in for it.
		out, err := d.run.cli(ctx, "volume", "status", "all", "detail")
		if err != nil {
			d.log.WarnContext(ctx, "gluster: volume status", "err", err)
			known = false
		} else {
			for _, v := range out.VolStatus.Volumes {
				for _, n := range v.Nodes {
					online[n.Hostname+":"+n.Path] = n.Status == 1
					if _, seen := capacity[n.Hostname]; !seen && n.Status == 1 {
						capacity[n.Hostname] = space{n.SizeTotal, n.SizeFree}
					}
				}
			}
		}
	}
	pending := map[string]int{}
	for name, v := range vols {
		if v.Replica > 1 || v.Disperse > 0 {
			var bricks map[string]bool
			pending[name], bricks = d.heal(ctx, name)
			if !known {
				maps.Copy(online, bricks)
			}
		}
	}
	downHosts := map[string]bool{}
	for _, v := range vols {
		for _, b := range v.Bricks {
			if up, ok := online[b.Name]; ok && !up {
				host, _, _ := strings.Cut(b.Name, ":")
				downHosts[host] = true
			}
		}
	}
	for _, m := range cfg.Pool.Members {
		addr := m.Addr.Unmap().String()
		up := !downHosts[addr]
		if m.Server == cfg.Self {
			up = up && d.run.pid() != 0
		} else {
			p := peers[addr]
			up = up && p.Connected == 1
		}
		c := capacity[addr]
		st.Members = append(st.Members, driver.MemberStatus{Server: m.Server, Up: up, CapacityBytes: c.total, UsedBytes: c.total - c.free})
	}
	for _, v := range cfg.Volumes {
		vs := driver.VolumeStatus{Volume: v, Health: driver.Unknown, Source: coord + ":/" + v.Name}
		p, healed := pending[v.Name]
		if cur, ok := vols[v.Name]; ok && (known || healed && p >= 0) {
			vs.Health = health(cur, online)
			vs.Pending = max(0, pending[v.Name])
			if vs.Pending > 0 && vs.Health == driver.Healthy {
				vs.Health = driver.Degraded
			}
			if v.QuotaBytes > 0 {
				_, vs.UsedBytes = d.quota(ctx, v.Name)
			}
		}
		st.Volumes = append(st.Volumes, vs)
	}
	st.Mounts = d.mount.status(cfg)
	return st, nil
}

// health is a volume's health from its bricks online (a brick online
// does not hold is down): a set that lost more
// bricks than it can (all of a replica set's data bricks, more than a
// disperse set's redundancy, any distributed brick) is Down, one that lost
// fewer Degraded.
func health(v volumeXML, online map[string]bool) driver.Health {
	if v.Status != 1 {
		return driver.Down
	}
	size := 1
	switch {
	case v.Replica > 1:
		size = v.Replica
	case v.Disperse > 0:
		size = v.Disperse
	}
	h := driver.Healthy
	for i := 0; i+size <= len(v.Bricks); i += size {
		down, dataUp := 0, 0
		for _, b := range v.Bricks[i : i+size] {
			switch {
			case !online[b.Name]:
				down++
			case b.Arbiter != 1:
				dataUp++
			}
		}
		switch {
		case down == 0:
		case v.Replica > 1 && dataUp > 0, v.Disperse > 0 && down <= v.Redundancy:
			h = driver.Degraded
		default:
			return driver.Down
		}
	}
	return h
}

// heal returns the heal backlog of volume's bricks (-1 if unknown) and
// which bricks the heal check reached.
func (d *Driver) heal(ctx context.Context, volume string) (int, map[string]bool) {
	out, err := d.run.cli(ctx, "volume", "heal", volume, "info", "summary")
	if err != nil {
		d.log.WarnContext(ctx, "gluster: reading the heal backlog", "volume", volume, "err", err)
		return -1, nil
	}
	n, reached := 0, map[string]bool{}
	for _, b := range out.Heal {
		reached[b.Name] = b.Status == "Connected"
		if k, err := strconv.Atoi(strings.TrimSpace(b.Entries)); err == nil && k > 0 {
			n += k
		}
	}
	return n, reached
}

// answers reports whether glusterd at addr accepts a connection from this
// server's namespace within a second.
func (d *Driver) answers(addr netip.Addr) bool {
	dial := func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, 24007).String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	if d.opts.NetNS == "" {
		return dial() == nil
	}
	ns, err := netns.GetFromPath(d.opts.NetNS)
	if err != nil {
		return false
	}
	defer ns.Close()
	return namespace.Run(ns, dial) == nil
}
