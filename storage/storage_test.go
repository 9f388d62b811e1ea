package storage_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/storage"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/memstorage"
)

// world is three servers a, b, c over one in-memory storage world; fail
// makes a server's next Apply fail.
type world struct {
	mc    *memstorage.Cluster
	pools *storage.Pools
	fail  map[string]error
	// drivers are the servers' open drivers, by server and pool.
	drivers map[string]*memstorage.Driver
}

func newWorld(t *testing.T) *world {
	w := &world{mc: memstorage.NewCluster(), pools: storage.New(nil), fail: map[string]error{}, drivers: map[string]*memstorage.Driver{}}
	for i, name := range []string{"a", "b", "c"} {
		addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
		err := w.pools.AddServer(t.Context(), name, addr, func(kind, pool string) (driver.Driver, error) {
			if kind != "memory" {
				return nil, errcode.New(errcode.Unimplemented, "no kind %q", kind)
			}
			d := w.mc.Open(name, addr)
			w.drivers[name+"/"+pool] = d
			return &failing{Driver: d, fail: func() error { err := w.fail[name]; delete(w.fail, name); return err }}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return w
}

type failing struct {
	driver.Driver
	fail func() error
}

func (f *failing) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Driver.Apply(ctx, cfg)
}

func TestPoolLifecycle(t *testing.T) {
	ctx := t.Context()
	w := newWorld(t)
	events, err := w.pools.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := w.pools
	spec := storage.PoolSpec{Name: "shared", Kind: "memory", Servers: []string{"a", "b"}, Layout: storage.Layout{Kind: storage.Replicate, Copies: 2}}
	if err := p.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := p.Create(ctx, spec); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("second Create: %v", err)
	}
	if err := p.CreateVolume(ctx, "shared", storage.Volume{Name: "data", QuotaBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	// c only mounts: it joins the pool as a client, and the file a writes
	// is c's to read.
	pathA, err := p.Mount(ctx, "a", "shared", "data", nil)
	if err != nil {
		t.Fatal(err)
	}
	pathC, err := p.Mount(ctx, "c", "shared", "data", &storage.MountOptions{ReadOnly: true})
	if err != nil || pathC == pathA || !strings.Contains(pathC, "c/shared/data") {
		t.Fatalf("Mount on c = %q, %v (a's is %q)", pathC, err, pathA)
	}
	if err := w.drivers["a/shared"].Files("data").WriteFile("f", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got, err := w.drivers["c/shared"].Files("data").ReadFile("f"); err != nil || string(got) != "hello" {
		t.Fatalf("c reads %q, %v", got, err)
	}
	if err := w.drivers["c/shared"].Files("data").WriteFile("g", nil); err == nil {
		t.Fatal("c's read-only mount took a write")
	}
	st, err := p.Status(ctx, "shared")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 2 || len(st.Volumes) != 1 || st.Volumes[0].Health != storage.Healthy || len(st.Mounts["a"]) != 1 || len(st.Mounts["c"]) != 1 || !st.Mounts["c"][0].ReadOnly {
		t.Fatalf("Status = %+v", st)
	}

	// Health changes are events.
	w.mc.SetDown("b", true)
	if st, _ = p.Status(ctx, "shared"); st.Volumes[0].Health != storage.Degraded {
		t.Fatalf("with b down the volume is %s", st.Volumes[0].Health)
	}
	w.mc.SetDown("b", false)
	p.Status(ctx, "shared")

	// Removal refuses what holds data or is mounted.
	if err := p.RemoveVolume(ctx, "shared", "data", nil); !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "mounted on [a c]") {
		t.Fatalf("RemoveVolume of a mounted volume: %v", err)
	}
	if err := p.Remove(ctx, "shared", nil); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Remove of a pool with volumes: %v", err)
	}
	if err := p.RemoveServer(ctx, "c"); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("RemoveServer of a server that mounts: %v", err)
	}
	for _, srv := range []string{"a", "c"} {
		if err := p.Unmount(ctx, srv, "shared", "data"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.RemoveVolume(ctx, "shared", "data", nil); !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "holds 1 files") {
		t.Fatalf("RemoveVolume of a volume with a file: %v", err)
	}
	if err := p.RemoveServer(ctx, "c"); err != nil {
		t.Fatalf("c mounts nothing and takes no part: %v", err)
	}
	if err := p.Remove(ctx, "shared", &storage.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if got := p.List(); len(got) != 0 {
		t.Fatalf("pools after Remove: %+v", got)
	}

	var seen []string
	for len(events) > 0 {
		ev := <-events
		seen = append(seen, fmt.Sprintf("%s %s%s%s", ev.Type, ev.Server, ev.Volume, ev.Health))
	}
	want := []string{"pool-created ", "volume-created data", "mounted adata", "mounted cdata", "member-down b", "volume-health datadegraded",
		"member-up b", "volume-health datahealthy", "unmounted adata", "unmounted cdata", "pool-removed "}
	if !slices.Equal(seen, want) {
		t.Fatalf("events:\n%q\nwant\n%q", seen, want)
	}
}

func TestFailedChangesAreUndone(t *testing.T) {
	ctx := t.Context()
	w := newWorld(t)
	p := w.pools
	spec := storage.PoolSpec{Name: "p", Kind: "memory", Servers: []string{"a", "b"}, Layout: storage.Layout{Kind: storage.Replicate, Copies: 2}}
	for _, bad := range []storage.PoolSpec{
		{Name: "p", Kind: "memory", Servers: []string{"a", "b"}, Layout: storage.Layout{Kind: storage.Replicate, Copies: 3}},
		{Name: "p", Kind: "memory", Servers: []string{"a", "x"}, Layout: storage.Layout{Kind: storage.Distribute}},
		{Name: "p;", Kind: "memory", Servers: []string{"a"}, Layout: storage.Layout{Kind: storage.Single}},
		{Name: "p", Kind: "memory", Layout: storage.Layout{Kind: storage.Single}},
	} {
		if err := p.Create(ctx, bad); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Create %+v: %v", bad, err)
		}
	}
	if err := p.Create(ctx, storage.PoolSpec{Name: "p", Kind: "ceph", Servers: []string{"a"}, Layout: storage.Layout{Kind: storage.Single}}); !errors.Is(err, errcode.Unimplemented) {
		t.Errorf("Create of an unknown kind: %v", err)
	}
	// The coordinator fails after b joined: b leaves again.
	w.fail["a"] = errcode.New(errcode.Unavailable, "a is away")
	if err := p.Create(ctx, spec); !errors.Is(err, errcode.Unavailable) || !strings.Contains(err.Error(), `create storage pool "p": server "a": a is away`) {
		t.Fatalf("Create with a failing coordinator: %v", err)
	}
	if st, err := w.drivers["b/p"].Status(ctx); err == nil {
		t.Fatalf("b still takes part after the failed Create: %+v", st)
	}
	if err := p.Create(ctx, spec); err != nil {
		t.Fatalf("Create after the failure: %v", err)
	}
	if err := p.CreateVolume(ctx, "p", storage.Volume{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	// A mount that fails leaves c out of the pool.
	w.fail["c"] = errcode.New(errcode.Unavailable, "c is away")
	if _, err := p.Mount(ctx, "c", "p", "v", nil); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("Mount on a failing server: %v", err)
	}
	if err := p.RemoveServer(ctx, "c"); err != nil {
		t.Fatalf("the failed mount left c in the pool: %v", err)
	}
	if _, err := p.Mount(ctx, "a", "p", "nothing", nil); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("Mount of no volume: %v", err)
	}
	if err := p.CreateVolume(ctx, "p", storage.Volume{Name: "v"}); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("a second volume v: %v", err)
	}
	if err := p.CreateVolume(ctx, "p", storage.Volume{Name: "w", Copies: 5}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("a volume of more copies than servers: %v", err)
	}
	// Force unmounts everywhere, then removes.
	if _, err := p.Mount(ctx, "b", "p", "v", nil); err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveVolume(ctx, "p", "v", &storage.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.Status(ctx, "p"); len(st.Volumes) != 0 || len(st.Mounts) != 0 {
		t.Fatalf("after a forced removal: %+v", st)
	}
}

func TestGrow(t *testing.T) {
	ctx := t.Context()
	w := newWorld(t)
	p := w.pools
	if err := p.Create(ctx, storage.PoolSpec{Name: "p", Kind: "memory", Servers: []string{"a"}, Layout: storage.Layout{Kind: storage.Distribute}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Grow(ctx, "p", "b", "c"); err != nil {
		t.Fatal(err)
	}
	if err := p.Grow(ctx, "p", "b"); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("growing by a member: %v", err)
	}
	st, err := p.Status(ctx, "p")
	if err != nil || len(st.Members) != 3 {
		t.Fatalf("after Grow: %+v, %v", st, err)
	}
	if got := p.List(); len(got) != 1 || !slices.Equal(got[0].Servers, []string{"a", "b", "c"}) {
		t.Fatalf("List = %+v", got)
	}
}
