package gluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/mountinfo"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/storage/driver"
)

// groupSize is how many bricks form one replica or disperse set of a
// layout over n members (1 for distributed layouts).
func groupSize(l driver.Layout, n int) int {
	switch l.Kind {
	case driver.Replicate:
		return l.Copies
	case driver.Disperse:
		return n
	}
	return 1
}

// checkBricks refuses a pool Gluster cannot build: IPv6 members, and a
// replicated pool whose members are not a multiple of its copies.
func checkBricks(p *driver.Pool, n int) error {
	for _, m := range p.Members {
		if !m.Addr.Unmap().Is4() {
			return errcode.New(errcode.Unimplemented, "pool %q: member %q: this driver runs Gluster over IPv4, not %s", p.Name, m.Server, m.Addr)
		}
	}
	if c := groupSize(p.Layout, n); p.Layout.Kind == driver.Replicate && n%c != 0 {
		return errcode.New(errcode.FailedPrecondition, "pool %q: a replicate pool of %d copies needs members in multiples of %d (one brick each), not %d", p.Name, c, c, n)
	}
	return nil
}

// bricks returns a volume's bricks on members: directory name (of
// BrickRoot) on each.
func bricks(members []driver.Member, name string) []string {
	out := make([]string, len(members))
	for i, m := range members {
		out[i] = m.Addr.Unmap().String() + ":" + path.Join(BrickRoot, name)
	}
	return out
}

// managed are the volume options this driver sets; any other stays as
// Gluster sets it.
var managed = []string{"network.ping-timeout", "features.hard-timeout", "features.soft-timeout"}

// wantOptions returns the managed options v should have.
func (d *Driver) wantOptions(v driver.Volume) map[string]string {
	o := map[string]string{"network.ping-timeout": strconv.Itoa(seconds(d.opts.PingTimeout))}
	if v.QuotaBytes > 0 {
		o["features.hard-timeout"], o["features.soft-timeout"] = "0", "0"
	}
	return o
}

// formPool probes the members that are not yet peers and waits until all
// are connected.
func (d *Driver) formPool(ctx context.Context, cfg *driver.Config, undo *undoList) error {
	peers, err := d.peers(ctx)
	if err != nil {
		return err
	}
	for _, m := range cfg.Pool.Members[1:] {
		addr := m.Addr.Unmap().String()
		if _, ok := peers[addr]; ok {
			continue
		}
		if _, err := d.run.cli(ctx, "peer", "probe", addr); err != nil {
			return errcode.Wrap(errcode.Of(err), fmt.Errorf("pool %q: adding member %q: %w", cfg.Pool.Name, m.Server, err))
		}
		d.log.InfoContext(ctx, "gluster: peer probed", "pool", cfg.Pool.Name, "member", m.Server, "addr", addr)
		undo.add("probe "+addr, func(ctx context.Context) error {
			_, err := d.run.cli(ctx, "peer", "detach", addr)
			return err
		})
	}
	return d.awaitPeers(ctx, cfg.Pool.Members[1:])
}

// peers returns the pool's peers as this glusterd sees them, by address.
func (d *Driver) peers(ctx context.Context) (map[string]peerXML, error) {
	out, err := d.run.cli(ctx, "peer", "status")
	if err != nil {
		return nil, err
	}
	m := map[string]peerXML{}
	for _, p := range out.Peers {
		m[p.Hostname] = p
	}
	return m, nil
}

// awaitPeers waits until members are connected peers in the pool.
func (d *Driver) awaitPeers(ctx context.Context, members []driver.Member) error {
	deadline := time.Now().Add(d.opts.Timeout)
	for {
		peers, err := d.peers(ctx)
		if err != nil {
			return err
		}
		var missing []string
		for _, m := range members {
			if p := peers[m.Addr.Unmap().String()]; p.Connected != 1 || p.StateStr != "Peer in Cluster" {
				missing = append(missing, fmt.Sprintf("%s (%s: %s)", m.Server, m.Addr, cmp(p.StateStr, "not a peer")))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errcode.New(errcode.Unavailable, "gluster: members not connected within %v: %s", d.opts.Timeout, strings.Join(missing, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// volumes returns the pool's volumes by name.
func (d *Driver) volumes(ctx context.Context) (map[string]volumeXML, error) {
	out, err := d.run.cli(ctx, "volume", "info")
	if err != nil {
		if strings.Contains(err.Error(), "No volumes present") {
			return map[string]volumeXML{}, nil
		}
		return nil, err
	}
	m := map[string]volumeXML{}
	for _, v := range out.VolInfo.Volumes {
		m[v.Name] = v
	}
	return m, nil
}

// ensureVolumes creates, grows, starts and configures the volumes cfg
// lists. A volume Gluster holds that cfg does not list, or whose layout
// differs, is errcode.FailedPrecondition.
func (d *Driver) ensureVolumes(ctx context.Context, cfg *driver.Config, undo *undoList) error {
	have, err := d.volumes(ctx)
	if err != nil {
		return err
	}
	for name := range have {
		if _, ok := cfg.Volume(name); !ok {
			return errcode.New(errcode.FailedPrecondition, "pool %q: volume %q exists and is not in the config; remove it with RemoveVolume", cfg.Pool.Name, name)
		}
	}
	for _, v := range cfg.Volumes {
		cur, ok := have[v.Name]
		if !ok {
			if err := d.createVolume(ctx, cfg, v, undo); err != nil {
				return err
			}
			if cur, err = d.volume(ctx, v.Name); err != nil {
				return err
			}
		} else if err := d.growVolume(ctx, cfg, cur, undo); err != nil {
			return err
		}
		if err := d.configure(ctx, cfg, v, cur, undo); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) volume(ctx context.Context, name string) (volumeXML, error) {
	out, err := d.run.cli(ctx, "volume", "info", name)
	if err != nil {
		return volumeXML{}, err
	}
	if len(out.VolInfo.Volumes) != 1 {
		return volumeXML{}, errcode.New(errcode.NotFound, "gluster: no volume %q", name)
	}
	return out.VolInfo.Volumes[0], nil
}

// createVolume creates and starts v with a brick on every member.
func (d *Driver) createVolume(ctx context.Context, cfg *driver.Config, v driver.Volume, undo *undoList) error {
	// A new directory name each time: a brick directory Gluster used
	// before stays marked as another volume's until it is removed.
	var b [4]byte
	rand.Read(b[:])
	brickDir := v.Name + "." + hex.EncodeToString(b[:])
	args := []string{"volume", "create", v.Name}
	l := cfg.Pool.Layout
	switch l.Kind {
	case driver.Replicate:
		args = append(args, "replica", strconv.Itoa(l.Copies))
		if l.Arbiter {
			args = append(args, "arbiter", "1")
		}
	case driver.Disperse:
		args = append(args, "disperse", strconv.Itoa(len(cfg.Pool.Members)), "redundancy", strconv.Itoa(l.Redundancy))
	}
	args = append(append(append(args, "transport", "tcp"), bricks(cfg.Pool.Members, brickDir)...), "force")
	if _, err := d.run.cli(ctx, args...); err != nil {
		return fmt.Errorf("volume %q: %w", v.Name, err)
	}
	d.log.InfoContext(ctx, "gluster: volume created", "volume", v.Name, "layout", l.Kind)
	undo.add("create volume "+v.Name, func(ctx context.Context) error { return d.deleteVolume(ctx, v.Name) })
	// Options set before the start reach no running brick or client.
	for k, val := range d.wantOptions(v) {
		if _, err := d.run.cli(ctx, "volume", "set", v.Name, k, val); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	if _, err := d.run.cli(ctx, "volume", "start", v.Name); err != nil {
		return fmt.Errorf("volume %q: %w", v.Name, err)
	}
	return nil
}

// deleteVolume stops and deletes volume name and removes this server's
// brick directories of it (name.*: volume names hold no dots).
func (d *Driver) deleteVolume(ctx context.Context, name string) error {
	if _, err := d.run.cli(ctx, "volume", "stop", name, "force"); err != nil && !strings.Contains(err.Error(), "is not in the started state") {
		return err
	}
	if _, err := d.run.cli(ctx, "volume", "delete", name); err != nil {
		return err
	}
	d.log.InfoContext(ctx, "gluster: volume deleted", "volume", name)
	dirs, _ := filepath.Glob(filepath.Join(d.dir, "bricks", name+".*"))
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			return errcode.Syscall(err, "gluster: removing the bricks of %q", name)
		}
	}
	return nil
}

// growVolume adds bricks on the members cfg adds to those cur is built on;
// any other difference in its bricks is errcode.FailedPrecondition.
func (d *Driver) growVolume(ctx context.Context, cfg *driver.Config, cur volumeXML, undo *undoList) error {
	if len(cur.Bricks) == 0 {
		return errcode.New(errcode.Internal, "gluster: volume %q has no bricks", cur.Name)
	}
	want := bricks(cfg.Pool.Members, path.Base(cur.Bricks[0].Name))
	var names []string
	for _, b := range cur.Bricks {
		names = append(names, b.Name)
	}
	if len(names) > len(want) || !slices.Equal(names, want[:len(names)]) || !sameLayout(cfg.Pool.Layout, cur, len(cfg.Pool.Members)) {
		return errcode.New(errcode.FailedPrecondition, "pool %q: volume %q exists with bricks %v (%s), not the config's %v", cfg.Pool.Name, cur.Name, names, cur.TypeStr, want)
	}
	added := want[len(names):]
	if len(added) == 0 {
		return nil
	}
	args := []string{"volume", "add-brick", cur.Name}
	switch g := groupSize(cfg.Pool.Layout, len(names)); {
	case len(added)%g != 0:
		return errcode.New(errcode.FailedPrecondition, "pool %q: volume %q grows in sets of %d bricks (one per member); %d members added", cfg.Pool.Name, cur.Name, g, len(added))
	case cfg.Pool.Layout.Kind == driver.Replicate:
		args = append(args, "replica", strconv.Itoa(cfg.Pool.Layout.Copies))
		if cfg.Pool.Layout.Arbiter {
			args = append(args, "arbiter", "1")
		}
	}
	if _, err := d.run.cli(ctx, append(append(args, added...), "force")...); err != nil {
		return fmt.Errorf("volume %q: growing: %w", cur.Name, err)
	}
	d.log.InfoContext(ctx, "gluster: volume grown", "volume", cur.Name, "bricks", added)
	undo.add("grow volume "+cur.Name, func(ctx context.Context) error {
		_, err := d.run.cli(ctx, append(append([]string{"volume", "remove-brick", cur.Name}, added...), "force")...)
		return err
	})
	// Existing directories spread new files over the new bricks once
	// their layout is fixed (files stay where they are).
	if _, err := d.run.cli(ctx, "volume", "rebalance", cur.Name, "fix-layout", "start"); err != nil {
		d.log.WarnContext(ctx, "gluster: fixing the layout after growing", "volume", cur.Name, "err", err)
	}
	return nil
}

// sameLayout reports whether cur is built as layout l over n members.
func sameLayout(l driver.Layout, cur volumeXML, n int) bool {
	switch l.Kind {
	case driver.Replicate:
		return cur.Replica == l.Copies && (cur.Arbiter == 1) == l.Arbiter
	case driver.Disperse:
		return cur.Disperse > 0 && cur.Redundancy == l.Redundancy
	}
	return cur.Replica <= 1 && cur.Disperse == 0
}

// configure starts v if it is stopped and sets its managed options and
// quota, recording in undo how to put back what it changed.
func (d *Driver) configure(ctx context.Context, cfg *driver.Config, v driver.Volume, cur volumeXML, undo *undoList) error {
	if cur.Status != 1 {
		if _, err := d.run.cli(ctx, "volume", "start", v.Name); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	have := map[string]string{}
	for _, o := range cur.Options {
		have[o.Name] = o.Value
	}
	want := d.wantOptions(v)
	for _, k := range managed {
		was, set := have[k]
		now, wanted := want[k]
		var args []string
		switch {
		case wanted && (!set || was != now):
			args = []string{"volume", "set", v.Name, k, now}
		case !wanted && set:
			args = []string{"volume", "reset", v.Name, k}
		default:
			continue
		}
		if _, err := d.run.cli(ctx, args...); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		undo.add("set "+k, func(ctx context.Context) error {
			back := []string{"volume", "reset", v.Name, k}
			if set {
				back = []string{"volume", "set", v.Name, k, was}
			}
			_, err := d.run.cli(ctx, back...)
			return err
		})
	}
	return d.setQuota(ctx, v, have["features.quota"] == "on", undo)
}

// setQuota makes v's quota QuotaBytes on its root, none for 0.
func (d *Driver) setQuota(ctx context.Context, v driver.Volume, enabled bool, undo *undoList) error {
	switch {
	case v.QuotaBytes == 0 && enabled:
		limit, _ := d.quota(ctx, v.Name)
		if _, err := d.run.cli(ctx, "volume", "quota", v.Name, "disable"); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		undo.add("disable quota of "+v.Name, func(ctx context.Context) error {
			return d.setQuota(ctx, driver.Volume{Name: v.Name, QuotaBytes: limit}, false, &undoList{})
		})
		return nil
	case v.QuotaBytes == 0:
		return nil
	}
	if !enabled {
		if _, err := d.run.cli(ctx, "volume", "quota", v.Name, "enable"); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		undo.add("enable quota of "+v.Name, func(ctx context.Context) error {
			_, err := d.run.cli(ctx, "volume", "quota", v.Name, "disable")
			return err
		})
	}
	limit, _ := d.quota(ctx, v.Name)
	if limit == v.QuotaBytes {
		return nil
	}
	if _, err := d.run.cli(ctx, "volume", "quota", v.Name, "limit-usage", "/", strconv.FormatInt(v.QuotaBytes, 10)); err != nil {
		return fmt.Errorf("volume %q: %w", v.Name, err)
	}
	if enabled && limit > 0 {
		undo.add("quota of "+v.Name, func(ctx context.Context) error {
			_, err := d.run.cli(ctx, "volume", "quota", v.Name, "limit-usage", "/", strconv.FormatInt(limit, 10))
			return err
		})
	}
	return nil
}

// quota returns the limit on volume's root and what it holds (0, 0
// without a limit).
func (d *Driver) quota(ctx context.Context, volume string) (limit, used int64) {
	out, err := d.run.cli(ctx, "volume", "quota", volume, "list", "/")
	if err != nil {
		return 0, 0
	}
	for _, q := range out.Quota {
		if q.Path == "/" {
			return q.HardLimit, q.Used
		}
	}
	return 0, 0
}

// RemoveVolume implements driver.Driver. Whether the volume is mounted is
// what its bricks say (FUSE clients connected); whether it holds files is
// read through a mount of it inside glusterd's namespace.
func (d *Driver) RemoveVolume(ctx context.Context, name string, opts *driver.RemoveOptions) error {
	if err := names.Label(name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := d.usable()
	if err != nil {
		return err
	}
	if c := cfg.Pool.Coordinator(); c.Server != cfg.Self {
		return errcode.New(errcode.FailedPrecondition, "pool %q: volumes are removed on its coordinator %q, not on %q", cfg.Pool.Name, c.Server, cfg.Self)
	}
	if _, err := d.volume(ctx, name); err != nil {
		return err
	}
	force := opts != nil && opts.Force
	if !force {
		n, err := d.fuseClients(ctx, name)
		if err != nil {
			return err
		}
		if n > 0 {
			return errcode.New(errcode.FailedPrecondition, "volume %q is mounted by %d clients; unmount it or force", name, n)
		}
		files, err := d.topEntries(ctx, name)
		if err != nil {
			return err
		}
		if len(files) > 0 {
			return errcode.New(errcode.FailedPrecondition, "volume %q holds files (%s); empty it or force", name, strings.Join(files[:min(3, len(files))], ", "))
		}
	}
	if err := d.mount.unmount(ctx, name, true); err != nil {
		return err
	}
	if err := d.deleteVolume(ctx, name); err != nil {
		return err
	}
	next := cfg.Clone()
	next.Volumes = slices.DeleteFunc(next.Volumes, func(v driver.Volume) bool { return v.Name == name })
	next.Mounts = slices.DeleteFunc(next.Mounts, func(m driver.Mount) bool { return m.Volume == name })
	return d.record(next)
}

// fuseClients counts the FUSE clients connected to volume's bricks.
func (d *Driver) fuseClients(ctx context.Context, volume string) (int, error) {
	out, err := d.run.cli(ctx, "volume", "status", volume, "client-list")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range strings.Split(out.Output, "\n") {
		if f := strings.Fields(f); len(f) == 2 && f[0] == "fuse" {
			n, _ = strconv.Atoi(f[1])
		}
	}
	return n, nil
}

// topEntries lists the names at the top of volume, read through a
// short-lived mount in glusterd's mount namespace.
func (d *Driver) topEntries(ctx context.Context, volume string) ([]string, error) {
	pid := d.run.pid()
	mnt := path.Join("/run/muster-check", volume)
	if err := os.MkdirAll(filepath.Join(d.dir, "run", "muster-check", volume), 0o700); err != nil {
		return nil, errcode.Syscall(err, "gluster: checking volume %q", volume)
	}
	mctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(mctx, "nsenter", "-t", strconv.Itoa(pid), "-m", "-n", d.opts.Glusterfs,
		"--volfile-server=127.0.0.1", "--volfile-id="+volume, "--log-file=/var/log/glusterfs/check-"+volume+".log", mnt)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, errcode.New(errcode.Unavailable, "gluster: mounting volume %q to look into it: %v: %s", volume, err, out)
	}
	defer exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "umount", "-l", mnt).Run()
	root := fmt.Sprintf("/proc/%d/root%s", pid, mnt)
	for {
		entries, err := os.ReadDir(root)
		if err == nil && isFuse(pid, mnt) {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			return names, nil
		}
		select {
		case <-mctx.Done():
			return nil, errcode.New(errcode.Unavailable, "gluster: volume %q could not be read: %v", volume, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// isFuse reports whether mnt is a glusterfs mount in pid's mount namespace.
func isFuse(pid int, mnt string) bool {
	e, ok := mountinfo.At(fmt.Sprintf("/proc/%d/mountinfo", pid), mnt)
	return ok && e.FSType == "fuse.glusterfs"
}

// ReplaceMember moves every brick of member old to newMember, a server
// that runs glusterd for the pool (its driver applied a config that lists
// it), with replace-brick commit force; the self-heal daemons then copy
// the data to it from the other bricks of its sets. It runs on the
// coordinator, for replicated and dispersed pools, and makes newMember
// take old's place in the config in force, which the caller then applies
// to the pool's other servers. old must not be the coordinator.
func (d *Driver) ReplaceMember(ctx context.Context, old string, newMember driver.Member) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := d.usable()
	if err != nil {
		return err
	}
	p := &cfg.Pool
	if c := p.Coordinator(); c.Server != cfg.Self {
		return errcode.New(errcode.FailedPrecondition, "pool %q: members are replaced on its coordinator %q, not on %q", p.Name, c.Server, cfg.Self)
	}
	i := slices.IndexFunc(p.Members, func(m driver.Member) bool { return m.Server == old })
	switch {
	case i < 0:
		return errcode.New(errcode.NotFound, "pool %q has no member %q", p.Name, old)
	case i == 0:
		return errcode.New(errcode.FailedPrecondition, "pool %q: %q is the coordinator and cannot be replaced", p.Name, old)
	case p.Layout.Kind != driver.Replicate && p.Layout.Kind != driver.Disperse:
		return errcode.New(errcode.FailedPrecondition, "pool %q: a %s pool keeps one copy of each file; replacing a member would lose its files", p.Name, p.Layout.Kind)
	}
	next := cfg.Clone()
	next.Pool.Members[i] = newMember
	if err := next.Validate(); err != nil {
		return err
	}
	if err := checkBricks(&next.Pool, len(next.Pool.Members)); err != nil {
		return err
	}
	vols, err := d.volumes(ctx)
	if err != nil {
		return err
	}
	oldAddr, newAddr := p.Members[i].Addr.Unmap().String(), newMember.Addr.Unmap().String()
	if _, err := d.run.cli(ctx, "peer", "probe", newAddr); err != nil {
		return fmt.Errorf("pool %q: adding %q: %w", p.Name, newMember.Server, err)
	}
	if err := d.awaitPeers(ctx, []driver.Member{newMember}); err != nil {
		return err
	}
	var errs []error
	for _, v := range vols {
		for _, b := range v.Bricks {
			host, dir, _ := strings.Cut(b.Name, ":")
			if host != oldAddr {
				continue
			}
			if _, err := d.run.cli(ctx, "volume", "replace-brick", v.Name, b.Name, newAddr+":"+dir, "commit", "force"); err != nil {
				errs = append(errs, fmt.Errorf("volume %q: %w", v.Name, err))
				continue
			}
			d.log.InfoContext(ctx, "gluster: brick replaced", "volume", v.Name, "old", b.Name, "new", newAddr+":"+dir)
			// The self-heal daemons otherwise may wait for their next
			// crawl (cluster.heal-timeout, 10 min) to fill the new brick.
			d.triggerHeal(ctx, v.Name)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if _, err := d.run.cli(ctx, "peer", "detach", oldAddr, "force"); err != nil {
		d.log.WarnContext(ctx, "gluster: detaching the replaced member", "addr", oldAddr, "err", err)
	}
	return d.record(next)
}

// triggerHeal starts an index heal of volume, trying again while the
// self-heal daemons restart after a brick change (up to Options.Timeout).
func (d *Driver) triggerHeal(ctx context.Context, volume string) {
	deadline := time.Now().Add(d.opts.Timeout)
	for {
		_, err := d.run.cli(ctx, "volume", "heal", volume)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil {
				d.log.WarnContext(ctx, "gluster: starting a heal", "volume", volume, "err", err)
			}
			return
		}
		time.Sleep(time.Second)
	}
}

// record makes next the config in force. Called with d.mu held.
func (d *Driver) record(next *driver.Config) error {
	b, err := json.MarshalIndent(next, "", "  ")
	if err == nil {
		err = renameio.WriteFile(filepath.Join(d.dir, "config.json"), b, 0o600)
	}
	if err != nil {
		return errcode.Syscall(err, "gluster: recording the config")
	}
	d.cfg, d.recorded = next, next
	return nil
}

// Leave implements driver.Driver. The coordinator deletes its volumes
// (with opts.Force) and detaches the other members; every member then
// stops glusterd and forgets the pool (its state/ directory), and with
// opts.Force removes its bricks.
func (d *Driver) Leave(ctx context.Context, opts *driver.RemoveOptions) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed && d.cfg == nil {
		return nil // no part in force: nothing to leave
	}
	cfg, err := d.usable()
	if err != nil {
		return err
	}
	force := opts != nil && opts.Force
	_, member := cfg.Pool.Member(cfg.Self)
	coordinator := cfg.Pool.Coordinator().Server == cfg.Self
	var vols map[string]volumeXML
	if coordinator {
		if _, err := d.run.ensure(ctx); err != nil {
			return err
		}
		if vols, err = d.volumes(ctx); err != nil {
			return err
		}
		if len(vols) > 0 && !force {
			names := slices.Sorted(func(yield func(string) bool) {
				for n := range vols {
					if !yield(n) {
						return
					}
				}
			})
			return errcode.New(errcode.FailedPrecondition, "pool %q still holds volumes %v; remove them or force", cfg.Pool.Name, names)
		}
	}
	if err := d.mount.unmountAll(ctx, force); err != nil {
		return err
	}
	if coordinator {
		for name := range vols {
			if err := d.deleteVolume(ctx, name); err != nil {
				d.log.WarnContext(ctx, "gluster: deleting a volume on leaving", "volume", name, "err", err)
			}
		}
		for _, m := range cfg.Pool.Members[1:] {
			if _, err := d.run.cli(ctx, "peer", "detach", m.Addr.Unmap().String(), "force"); err != nil {
				d.log.WarnContext(ctx, "gluster: detaching a member on leaving", "member", m.Server, "err", err)
			}
		}
	}
	if member {
		d.run.stop()
		for _, sub := range []string{"state", "run"} {
			if err := resetDir(filepath.Join(d.dir, sub)); err != nil {
				return err
			}
		}
		if force {
			if err := resetDir(filepath.Join(d.dir, "bricks")); err != nil {
				return err
			}
		}
	}
	if err := os.Remove(filepath.Join(d.dir, "config.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errcode.Syscall(err, "gluster: forgetting the config")
	}
	d.cfg, d.recorded = nil, nil
	return nil
}

// resetDir empties dir.
func resetDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return errcode.Syscall(err, "gluster: removing %s", dir)
	}
	return errcode.Syscall(os.MkdirAll(dir, 0o700), "gluster: %s", dir)
}
