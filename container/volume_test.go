package container_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
)

// volumes stands for a storage system whose one volume, held in dir, is
// mounted on the servers MountVolume was called for.
type volumes struct {
	dir  string
	fail error

	mu      sync.Mutex
	mounted map[string]bool // by server
}

func (v *volumes) MountVolume(_ context.Context, server, pool, volume string) error {
	if v.fail != nil {
		return v.fail
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mounted[server] = true
	return nil
}

// on is server's view: the volume's path once mounted there.
type on struct {
	v      *volumes
	server string
}

func (o on) VolumePath(_ context.Context, pool, volume string) (string, error) {
	o.v.mu.Lock()
	defer o.v.mu.Unlock()
	if pool != "p" || volume != "data" || !o.v.mounted[o.server] {
		return "", errcode.New(errcode.FailedPrecondition, "not mounted on %s", o.server)
	}
	return o.v.dir, nil
}

func TestMoveRemountsVolumes(t *testing.T) {
	ctx := t.Context()
	vols := &volumes{dir: t.TempDir(), mounted: map[string]bool{"a": true}}
	m, blob := drivertest.BaseImage(t)
	build := func(mounter container.VolumeMounter) *container.Cluster {
		cl := container.NewCluster(&container.ClusterOptions{Volumes: mounter})
		for _, name := range []string{"a", "b"} {
			d := memcontainer.New(&memcontainer.Options{Hostname: name, Volumes: on{vols, name}})
			if _, err := d.PutImage(ctx, m, bytes.NewReader(blob)); err != nil {
				t.Fatal(err)
			}
			if err := cl.AddServer(name, container.NewServer(d, nil)); err != nil {
				t.Fatal(err)
			}
		}
		return cl
	}
	cl := build(vols)
	a, _ := cl.Server("a")
	b, _ := cl.Server("b")
	spec := &container.Spec{Name: "app", Image: "base", Mounts: []container.Mount{{Volume: "p/data", Target: "/data"}}}
	if _, err := b.Create(ctx, spec); !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "volume p/data") {
		t.Fatalf("Create where the volume is not mounted: %v", err)
	}
	if _, err := a.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	data := []byte("written before the move\n")
	if code, err := a.Exec(ctx, "app", &container.Process{Args: []string{"tee", "/data/f"}, Stdin: bytes.NewReader(data)}); err != nil || code != 0 {
		t.Fatalf("writing /data/f: exit %d, %v", code, err)
	}

	// Without a mounter, or with one that fails, nothing moves.
	for _, refusing := range []*container.Cluster{build(nil), build(&volumes{fail: errcode.New(errcode.Unavailable, "storage away")})} {
		ra, _ := refusing.Server("a")
		rb, _ := refusing.Server("b")
		if _, err := ra.Create(ctx, spec); err != nil {
			t.Fatal(err)
		}
		_, err := refusing.Move(ctx, "app", "a", "b", nil)
		if code := errcode.Of(err); code != errcode.FailedPrecondition && code != errcode.Unavailable {
			t.Fatalf("Move without a working mounter: %v", err)
		}
		if _, err := rb.Get(ctx, "app"); !errors.Is(err, errcode.NotFound) {
			t.Fatalf("the refused move left a copy on b: %v", err)
		}
	}

	if _, err := cl.Move(ctx, "app", "a", "b", nil); err != nil {
		t.Fatal(err)
	}
	if !vols.mounted["b"] {
		t.Fatal("the move did not mount the volume on b")
	}
	var out bytes.Buffer
	if code, err := b.Exec(ctx, "app", &container.Process{Args: []string{"cat", "/data/f"}, Stdout: &out}); err != nil || code != 0 || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("reading /data/f on b: %q, exit %d, %v", out.Bytes(), code, err)
	}
	info, err := b.Get(ctx, "app")
	if err != nil || info.Spec.Mounts[0] != (driver.Mount{Volume: "p/data", Target: "/data"}) {
		t.Fatalf("the moved spec's mount is %+v, %v; want the volume by name", info.Spec.Mounts, err)
	}
}

func TestServerLabels(t *testing.T) {
	cl := container.NewCluster(nil)
	if err := cl.AddServer("a", container.NewServer(memcontainer.New(nil), nil)); err != nil {
		t.Fatal(err)
	}
	if err := cl.SetLabels("b", map[string]string{"rack": "r1"}); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("labels of no server: %v", err)
	}
	if err := cl.SetLabels("a", map[string]string{"rack": "r1\n"}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("a bad label: %v", err)
	}
	labels := map[string]string{"rack": "r1", "zone": "a"}
	if err := cl.SetLabels("a", labels); err != nil {
		t.Fatal(err)
	}
	labels["rack"] = "changed after"
	if st := cl.Servers(t.Context()); len(st) != 1 || st[0].Labels["rack"] != "r1" || st[0].Labels["zone"] != "a" {
		t.Fatalf("Servers = %+v", st)
	}
}
