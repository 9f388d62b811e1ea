package gluster

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/drivertest"
	"github.com/musterkit/muster/testhost"
)

// needs are what the privileged tests take.
func needs(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.BinaryFrom("glusterd", "glusterfs-server"), roottest.BinaryFrom("gluster", "glusterfs-server"),
		roottest.BinaryFrom("glusterfs", "glusterfs-client"), roottest.BinaryFrom("nsenter", "util-linux"),
		roottest.BinaryFrom("unshare", "util-linux"), roottest.Kernel(roottest.FUSE))
}

// cluster is n simulated servers, each with a base directory of its own.
type cluster struct {
	hosts *testhost.Cluster
	base  string
}

func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	needs(t)
	return &cluster{hosts: testhost.New(t, n), base: t.TempDir()}
}

// open opens host i's driver of pool; the test's end unmounts its mounts
// and closes it.
func (c *cluster) open(t testing.TB, i int, pool string, opts *Options) *Driver {
	t.Helper()
	h := c.hosts.Hosts[i]
	o := Options{}
	if opts != nil {
		o = *opts
	}
	o.NetNS = "/run/netns/" + h.Netns
	o.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := Open(t.Context(), filepath.Join(c.base, h.Name, pool), &o)
	if err != nil {
		t.Fatalf("Open on %s: %v", h.Name, err)
	}
	t.Cleanup(func() { shut(d) })
	return d
}

// shut ends everything d runs: its mounts and its daemons.
func shut(d *Driver) {
	d.mount.unmountAll(context.Background(), true)
	d.Close()
}

func (c *cluster) member(i int) driver.Member {
	h := c.hosts.Hosts[i]
	return driver.Member{Server: h.Name, Addr: h.Addr}
}

func (c *cluster) servers(t *testing.T) []drivertest.Server {
	var out []drivertest.Server
	for i, h := range c.hosts.Hosts {
		out = append(out, drivertest.Server{Name: h.Name, Addr: h.Addr, Open: func(t *testing.T, pool string) driver.Driver {
			return c.open(t, i, pool, nil)
		}})
	}
	return out
}

func apply(t testing.TB, d *Driver, cfg *driver.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := d.Apply(ctx, cfg); err != nil {
		t.Fatalf("Apply on %s: %v", cfg.Self, err)
	}
}

// configs returns each of members' config of one pool with volumes, and
// mounts of every volume on every member.
func configs(pool driver.Pool, volumes []driver.Volume, mount bool) []*driver.Config {
	var out []*driver.Config
	for _, m := range pool.Members {
		cfg := &driver.Config{Pool: pool, Self: m.Server, Volumes: volumes}
		if mount {
			for _, v := range volumes {
				cfg.Mounts = append(cfg.Mounts, driver.Mount{Volume: v.Name})
			}
		}
		out = append(out, cfg)
	}
	return out
}

// applyAll applies cfgs, the coordinator's first, in the order a pool
// needs: the other members, then the coordinator.
func applyAll(t testing.TB, ds []*Driver, cfgs []*driver.Config) {
	t.Helper()
	for i := 1; i < len(cfgs); i++ {
		apply(t, ds[i], cfgs[i])
	}
	apply(t, ds[0], cfgs[0])
}

func volumeStatus(t *testing.T, d *Driver, name string) driver.VolumeStatus {
	t.Helper()
	st, err := d.Status(t.Context())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for _, v := range st.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("Status lists no volume %q: %+v", name, st)
	return driver.VolumeStatus{}
}

// waitFor asks cond every half second until it holds or wait passes.
func waitFor(t *testing.T, wait time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(wait); !cond(); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, wait)
		}
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
