package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/musterkit/muster/errcode"
	storagedriver "github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/drivertest"
	"github.com/musterkit/muster/storage/memstorage"
)

// memStorage returns the storage of server name at addr, whose pools live
// in the in-memory world mc, keeping its records in dir.
func memStorage(t *testing.T, mc *memstorage.Cluster, name string, addr netip.Addr, dir string) *Storage {
	t.Helper()
	kinds := map[string]StorageKind{"memory": func(context.Context, string) (storagedriver.Driver, error) { return mc.Open(name, addr), nil }}
	st, err := OpenStorage(context.Background(), dir, kinds, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestStorageConformance runs the storage suite on pools deployed
// through agents, one a server (memstorage behind them).
func TestStorageConformance(t *testing.T) {
	storages := map[string]*Storage{} // the agents', by server
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Layout:  storagedriver.Layout{Kind: storagedriver.Replicate, Copies: 2},
		Members: 2,
		Servers: func(t *testing.T, n int) []drivertest.Server {
			mc := memstorage.NewCluster()
			var out []drivertest.Server
			for i := range n {
				name, addr := fmt.Sprintf("s%d", i), netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
				cl := newCluster(t, nil)
				cl.storage = memStorage(t, mc, name, addr, t.TempDir())
				c := cl.dial(t, cl.serve(t, memServer(t)))
				out = append(out, drivertest.Server{Name: name, Addr: addr, Open: func(t *testing.T, pool string) storagedriver.Driver {
					if got := c.Kinds("storage"); len(got) != 1 || got[0] != "memory" {
						t.Fatalf("the agent offers storage kinds %v", got)
					}
					return c.StoragePool("memory", pool)
				}})
				storages[name] = cl.storage
			}
			return out
		},
		Files: func(t *testing.T, d storagedriver.Driver, srv drivertest.Server, vs storagedriver.VolumeStatus) drivertest.Files {
			cfg, err := d.Config(t.Context())
			if err != nil || cfg == nil {
				t.Fatalf("Config through the agent: %+v, %v", cfg, err)
			}
			local, ok := storages[srv.Name].Running(cfg.Pool.Name)
			if !ok {
				t.Fatalf("server %s runs no part in pool %s", srv.Name, cfg.Pool.Name)
			}
			return local.(*memstorage.Driver).Files(vs.Name)
		},
	})
}

// TestStorageRestore: the agent keeps each pool's config and, opened
// again, brings the pool and its mounts back; a container's volume
// resolves to its mount.
func TestStorageRestore(t *testing.T) {
	ctx := context.Background()
	mc := memstorage.NewCluster()
	dir := t.TempDir()
	addr := netip.MustParseAddr("198.18.0.1")
	cfg := &storagedriver.Config{
		Pool:    storagedriver.Pool{Name: "p", Members: []storagedriver.Member{{Server: "s0", Addr: addr}}, Layout: storagedriver.Layout{Kind: storagedriver.Single}},
		Self:    "s0",
		Volumes: []storagedriver.Volume{{Name: "data"}},
		Mounts:  []storagedriver.Mount{{Volume: "data"}},
	}
	st := memStorage(t, mc, "s0", addr, dir)
	if err := st.Deploy(ctx, "p", "memory", cfg); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "p.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record: %v, %v", fi, err)
	}
	if _, err := st.VolumePath(ctx, "p", "other"); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("VolumePath of a volume not mounted: %v", err)
	}
	if _, err := st.VolumePath(ctx, "q", "data"); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("VolumePath in a pool not taken part in: %v", err)
	}
	st.Close()

	again := memStorage(t, mc, "s0", addr, dir)
	path, err := again.VolumePath(ctx, "p", "data")
	if err != nil || path != memstorage.MountPath("s0", "p", "data") {
		t.Fatalf("after a restart VolumePath = %q, %v", path, err)
	}
	d, _ := again.Running("p")
	if got, _ := d.Config(ctx); got == nil || len(got.Mounts) != 1 {
		t.Fatalf("after a restart the config is %+v", got)
	}
	// Leaving forgets the pool and its record.
	if err := again.leave(ctx, "p", &storagedriver.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "p.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the record outlived Leave: %v", err)
	}
	if err := again.leave(ctx, "p", nil); err != nil {
		t.Fatalf("leaving a pool not taken part in: %v", err)
	}
}
