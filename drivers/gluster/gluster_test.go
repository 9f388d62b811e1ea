package gluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	lbtest "github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/drivertest"
)

func TestConformance(t *testing.T) {
	needs(t)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Servers: func(t *testing.T, n int) []drivertest.Server { return newCluster(t, n).servers(t) },
		Layout:  driver.Layout{Kind: driver.Replicate, Copies: 2},
		Members: 2,
	})
}

// TestOpenRefusesHostileDirs: a directory that could not be passed safely
// on a command line is refused, and nothing is created.
func TestOpenRefusesHostileDirs(t *testing.T) {
	base := t.TempDir()
	dirs := append(lbtest.HostileDirs(base), base+"/a b", base+"/a'b", base+`/a"b`, base+"/a;b", "relative", base+"/../x")
	for _, dir := range dirs {
		d, err := Open(t.Context(), dir, nil)
		if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), "instance directory") {
			t.Errorf("Open(%q) = %v; want InvalidArgument naming the directory", dir, err)
		}
		if d != nil {
			d.Close()
		}
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Errorf("Open created %d entries in %s", len(entries), base)
	}
	if _, err := Open(t.Context(), base+"/ok", &Options{NetNS: "/run/netns/no such"}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("Open with a hostile NetNS: %v; want InvalidArgument", err)
	}
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestReplicaSurvivesCutOff: a replica-2 volume over two servers serves
// the same bytes on both mounts; with the second server cut off, I/O on
// the first goes on after a stall bounded by the ping timeout, Status says
// Degraded, and once the link is back the volume heals.
func TestReplicaSurvivesCutOff(t *testing.T) {
	c := newCluster(t, 2)
	pool := driver.Pool{Name: "rep", Members: []driver.Member{c.member(0), c.member(1)}, Layout: driver.Layout{Kind: driver.Replicate, Copies: 2}}
	ds := []*Driver{c.open(t, 0, "rep", nil), c.open(t, 1, "rep", nil)}
	// Members first, then the mounts once the volume exists.
	applyAll(t, ds, configs(pool, []driver.Volume{{Name: "data"}}, false))
	applyAll(t, ds, configs(pool, []driver.Volume{{Name: "data"}}, true))

	data := make([]byte, 4<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(ds[0].MountPath("data"), "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if a, b := sha256.Sum256(data), sum(t, filepath.Join(ds[1].MountPath("data"), "blob")); a != b {
		t.Fatalf("sha256 on %s %x, on %s %x", pool.Members[0].Server, a, pool.Members[1].Server, b)
	}

	nl, err := c.hosts.Hosts[1].Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(c.hosts.Hosts[1].Link)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	up := func() {
		if err := nl.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	defer up()
	var stall time.Duration
	for i := range 5 {
		start := time.Now()
		name := filepath.Join(ds[0].MountPath("data"), "during"+string(rune('0'+i)))
		if err := os.WriteFile(name, data[:256<<10], 0o644); err != nil {
			t.Fatalf("write with a replica cut off: %v", err)
		}
		if b, err := os.ReadFile(name); err != nil || !bytes.Equal(b, data[:256<<10]) {
			t.Fatalf("read with a replica cut off: %v", err)
		}
		t.Logf("write+read %d with a replica cut off: %v", i, time.Since(start))
		stall = max(stall, time.Since(start))
	}
	if _, err := os.ReadFile(filepath.Join(ds[0].MountPath("data"), "blob")); err != nil {
		t.Fatalf("reading an older file with a replica cut off: %v", err)
	}
	t.Logf("longest write+read with a replica cut off: %v (ping timeout %v)", stall, DefaultPingTimeout)
	if stall > 2*DefaultPingTimeout+3*time.Second {
		t.Errorf("I/O stalled %v with a replica cut off", stall)
	}
	vs := volumeStatus(t, ds[0], "data")
	t.Logf("status with a replica cut off: %+v", vs)
	if vs.Health != driver.Degraded || vs.Pending == 0 {
		t.Errorf("volume with a replica cut off: %s, %d pending; want degraded with pending heals", vs.Health, vs.Pending)
	}
	st, err := ds[0].Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Members[1].Up || !st.Members[0].Up {
		t.Errorf("members with the second cut off: %+v", st.Members)
	}

	up()
	start := time.Now()
	waitFor(t, 3*time.Minute, "heal after the link came back", func() bool {
		vs := volumeStatus(t, ds[0], "data")
		return vs.Health == driver.Healthy && vs.Pending == 0
	})
	t.Logf("healed %v after the link came back", time.Since(start))
	for i := range 5 {
		name := "during" + string(rune('0'+i))
		if a, b := sum(t, filepath.Join(ds[0].MountPath("data"), name)), sum(t, filepath.Join(ds[1].MountPath("data"), name)); a != b {
			t.Errorf("%s differs between the mounts after the heal", name)
		}
	}
}

// TestRestartAdoptsMount: an agent that dies leaves glusterd and the FUSE
// client running; a driver opened again on the directory ends the first
// and adopts the second, whose pid stays, and the data stays readable.
func TestRestartAdoptsMount(t *testing.T) {
	c := newCluster(t, 1)
	pool := driver.Pool{Name: "one", Members: []driver.Member{c.member(0)}, Layout: driver.Layout{Kind: driver.Single}}
	cfg := configs(pool, []driver.Volume{{Name: "data"}}, true)[0]
	d := c.open(t, 0, "one", nil)
	apply(t, d, cfg)
	file := filepath.Join(d.MountPath("data"), "kept")
	if err := os.WriteFile(file, []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	client, glusterd := d.mount.pid("data"), d.Pid()
	if client == 0 || glusterd == 0 {
		t.Fatalf("client pid %d, glusterd pid %d", client, glusterd)
	}
	daemons := d.run.processes()

	// A second driver on the directory, as after a crash of the first.
	d2 := c.open(t, 0, "one", nil)
	for _, pid := range daemons {
		if alive(pid) {
			t.Errorf("process %d of the earlier glusterd survived the new Open", pid)
		}
	}
	if !alive(client) {
		t.Fatal("the new Open ended the FUSE client")
	}
	apply(t, d2, cfg)
	if got := d2.mount.pid("data"); got != client {
		t.Errorf("client pid after the restart %d; want the adopted %d", got, client)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "kept" {
		t.Errorf("after the restart: %q, %v", b, err)
	}
	// Close leaves the mount; Leave ends it.
	d2.Close()
	if len(d2.run.processes()) != 0 || !alive(client) {
		t.Errorf("after Close: glusterd's processes %v, client alive %v; want none and alive", d2.run.processes(), alive(client))
	}
	d3 := c.open(t, 0, "one", nil)
	apply(t, d3, cfg)
	if err := d3.Leave(t.Context(), &driver.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if alive(client) || exists(d3.MountPath("data")) || len(d3.run.processes()) != 0 {
		t.Errorf("after Leave: client alive %v, mount point %v, processes %v", alive(client), exists(d3.MountPath("data")), d3.run.processes())
	}
}

// TestFailedApplyLeavesNothing: an Apply that fails after creating volumes
// (here the mount: the client program fails) removes them again and stops
// the glusterd it started.
func TestFailedApplyLeavesNothing(t *testing.T) {
	c := newCluster(t, 1)
	pool := driver.Pool{Name: "fail", Members: []driver.Member{c.member(0)}, Layout: driver.Layout{Kind: driver.Distribute}}
	cfg := configs(pool, []driver.Volume{{Name: "a", QuotaBytes: 1 << 20}, {Name: "b"}}, true)[0]
	d := c.open(t, 0, "fail", &Options{Glusterfs: "/bin/false"})
	err := d.Apply(t.Context(), cfg)
	if errcode.Of(err) != errcode.Unavailable {
		t.Fatalf("Apply with a failing client: %v; want Unavailable", err)
	}
	if d.Pid() != 0 || len(d.run.processes()) != 0 {
		t.Errorf("glusterd runs after the failed first Apply")
	}
	if got, _ := d.Config(t.Context()); got != nil {
		t.Errorf("config in force after a failed Apply: %+v", got)
	}
	entries, _ := os.ReadDir(filepath.Join(d.Dir(), "bricks"))
	mounts, _ := os.ReadDir(filepath.Join(d.Dir(), "mounts"))
	if len(entries)+len(mounts) != 0 {
		t.Errorf("left behind: bricks %v, mounts %v", entries, mounts)
	}
	// glusterd forgot the volumes: the same pool applies cleanly without
	// mounts.
	cfg.Mounts = nil
	apply(t, d, cfg)
	vols, err := d.volumes(t.Context())
	if err != nil || len(vols) != 2 {
		t.Fatalf("volumes after a good Apply: %v, %v", vols, err)
	}
}

// TestRefusedLayouts: a replicate pool whose members are no multiple of
// its copies is refused before anything starts, as are IPv6 members.
func TestRefusedLayouts(t *testing.T) {
	c := newCluster(t, 3)
	d := c.open(t, 0, "odd", nil)
	pool := driver.Pool{Name: "odd", Members: []driver.Member{c.member(0), c.member(1), c.member(2)}, Layout: driver.Layout{Kind: driver.Replicate, Copies: 2}}
	err := d.Apply(t.Context(), &driver.Config{Pool: pool, Self: pool.Members[0].Server})
	if errcode.Of(err) != errcode.FailedPrecondition || !strings.Contains(err.Error(), "multiples of 2") {
		t.Errorf("replica 2 over 3 members: %v; want FailedPrecondition", err)
	}
	if d.Pid() != 0 {
		t.Error("glusterd started for a refused config")
	}
}

// TestLayouts builds every layout over three servers, writes through a
// mount and reads back, and grows a distributed pool by a member.
func TestLayouts(t *testing.T) {
	c := newCluster(t, 4)
	for _, l := range []driver.Layout{
		{Kind: driver.Distribute},
		{Kind: driver.Replicate, Copies: 3, Arbiter: true},
		{Kind: driver.Disperse, Redundancy: 1},
	} {
		t.Run(string(l.Kind), func(t *testing.T) {
			name := string(l.Kind)
			pool := driver.Pool{Name: name, Members: []driver.Member{c.member(0), c.member(1), c.member(2)}, Layout: l}
			ds := []*Driver{c.open(t, 0, name, nil), c.open(t, 1, name, nil), c.open(t, 2, name, nil)}
			vols := []driver.Volume{{Name: "v"}}
			cfgs := configs(pool, vols, false)
			cfgs[0].Mounts = []driver.Mount{{Volume: "v"}}
			applyAll(t, ds, cfgs)
			for i := range 20 {
				if err := os.WriteFile(filepath.Join(ds[0].MountPath("v"), "f"+string(rune('a'+i))), []byte(name), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			vs := volumeStatus(t, ds[0], "v")
			if vs.Health != driver.Healthy || vs.Source != pool.Members[0].Addr.String()+":/v" {
				t.Errorf("status %+v", vs)
			}
			cur, err := ds[0].volume(t.Context(), "v")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s, %d bricks", name, cur.TypeStr, len(cur.Bricks))
			if l.Kind != driver.Distribute {
				return
			}
			// Grow by a fourth member.
			grown := pool
			grown.Members = append(grown.Members, c.member(3))
			d3 := c.open(t, 3, name, nil)
			apply(t, d3, &driver.Config{Pool: grown, Self: grown.Members[3].Server, Volumes: vols})
			for i := 1; i < 3; i++ {
				cfg := *cfgs[i]
				cfg.Pool = grown
				apply(t, ds[i], &cfg)
			}
			cfg := *cfgs[0]
			cfg.Pool = grown
			apply(t, ds[0], &cfg)
			if cur, err := ds[0].volume(t.Context(), "v"); err != nil || len(cur.Bricks) != 4 {
				t.Fatalf("after growing: %d bricks, %v", len(cur.Bricks), err)
			}
			if b, err := os.ReadFile(filepath.Join(ds[0].MountPath("v"), "fa")); err != nil || string(b) != name {
				t.Fatalf("after growing: %q, %v", b, err)
			}
		})
	}
}

// TestReplaceMember moves a replica's bricks to a new server; the data
// heals onto it.
func TestReplaceMember(t *testing.T) {
	c := newCluster(t, 3)
	pool := driver.Pool{Name: "swap", Members: []driver.Member{c.member(0), c.member(1)}, Layout: driver.Layout{Kind: driver.Replicate, Copies: 2}}
	ds := []*Driver{c.open(t, 0, "swap", nil), c.open(t, 1, "swap", nil)}
	cfgs := configs(pool, []driver.Volume{{Name: "data"}}, false)
	cfgs[0].Mounts = []driver.Mount{{Volume: "data"}}
	applyAll(t, ds, cfgs)
	data := make([]byte, 1<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(ds[0].MountPath("data"), "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	next := pool
	next.Members = []driver.Member{c.member(0), c.member(2)}
	d2 := c.open(t, 2, "swap", nil)
	apply(t, d2, &driver.Config{Pool: next, Self: next.Members[1].Server, Volumes: cfgs[0].Volumes})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := ds[1].ReplaceMember(ctx, "h1", c.member(2)); errcode.Of(err) != errcode.FailedPrecondition {
		t.Errorf("ReplaceMember on a member that does not coordinate: %v", err)
	}
	if err := ds[0].ReplaceMember(ctx, "h0", c.member(2)); errcode.Of(err) != errcode.FailedPrecondition {
		t.Errorf("ReplaceMember of the coordinator: %v", err)
	}
	if err := ds[0].ReplaceMember(ctx, pool.Members[1].Server, c.member(2)); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := ds[0].Config(t.Context()); cfg.Pool.Members[1] != c.member(2) {
		t.Errorf("config in force after the replacement: %+v", cfg.Pool.Members)
	}
	waitFor(t, 2*time.Minute, "heal onto the new member", func() bool {
		vs := volumeStatus(t, ds[0], "data")
		t.Logf("%+v", vs)
		return vs.Health == driver.Healthy && vs.Pending == 0
	})
	cur, err := ds[0].volume(t.Context(), "data")
	if err != nil {
		t.Fatal(err)
	}
	_, brick, _ := strings.Cut(cur.Bricks[1].Name, ":")
	onBrick := filepath.Join(d2.Dir(), "bricks", strings.TrimPrefix(brick, BrickRoot), "blob")
	waitFor(t, time.Minute, "the file on the new brick", func() bool {
		b, _ := os.ReadFile(onBrick)
		return bytes.Equal(b, data)
	})
	// The coordinator applies the new pool without complaint.
	cfg := *cfgs[0]
	cfg.Pool = next
	apply(t, ds[0], &cfg)
}
