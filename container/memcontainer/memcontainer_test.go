package memcontainer_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/image/imagetest"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
)

// newServer returns a memcontainer server holding the base image.
func newServer(t testing.TB) *memcontainer.Driver {
	d := memcontainer.New(&memcontainer.Options{Bridges: []string{"br-test"}})
	m, blob := drivertest.BaseImage(t)
	if _, err := d.PutImage(context.Background(), m, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:        func(t *testing.T) driver.Driver { return newServer(t) },
		Image:       "base",
		Bridge:      "br-test",
		Subnet:      netip.MustParsePrefix("198.19.0.0/24"),
		MountSource: t.TempDir(),
	})
}

// TestHostileArchivesRefused runs package image's hostile archives through
// this driver: it reads archives with image's one reader, so it refuses
// what every driver refuses (its own reader took rootfs/./x, a 10,000-byte
// name, a file over a symlink, a truncated 2 MiB metadata entry, garbage
// after the zstd frame), and keeps nothing.
func TestHostileArchivesRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range imagetest.HostileArchives(t) {
		t.Run(tc.Name, func(t *testing.T) {
			d := memcontainer.New(&memcontainer.Options{ArchiveLimits: tc.Limits})
			refused := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), tc.Reason) {
					t.Errorf("%s = %v (code %v), want InvalidArgument saying %q", op, err, errcode.Of(err), tc.Reason)
				}
			}
			_, err := d.PutImage(ctx, &image.Manifest{Name: "evil"}, bytes.NewReader(tc.Data))
			refused("PutImage", err)
			if list, err := d.ListImages(ctx); err != nil || len(list) != 0 {
				t.Errorf("images after a refused PutImage: %v, %v", list, err)
			}
			_, err = d.Import(ctx, bytes.NewReader(tc.Data), "")
			refused("Import", err)
			if list, err := d.List(ctx); err != nil || len(list) != 0 {
				t.Errorf("containers after a refused Import: %v, %v", list, err)
			}
		})
	}
}

// TestArchiveBombBounded: a 210 KB blob of 1 GiB of zeros took 2.25 GB of
// memory. Now it is refused with the limit named, and the memory it costs
// follows the limit. Allocation is counted, not resident memory, so the
// bound is an upper one.
func TestArchiveBombBounded(t *testing.T) {
	ctx := context.Background()
	bomb := imagetest.Bomb()
	for _, tc := range []struct {
		lim      image.Limits
		want     string
		maxAlloc uint64
	}{
		{image.Limits{MaxRatio: 4}, "MaxRatio = 4", 48 << 20},
		{image.Limits{MaxBytes: 1 << 20}, "MaxBytes = 1048576", 48 << 20},
		{image.Limits{}, "MaxRatio = 100", 512 << 20}, // the defaults: 100 MiB of content at most
	} {
		d := memcontainer.New(&memcontainer.Options{ArchiveLimits: tc.lim})
		for op, call := range map[string]func() error{
			"PutImage": func() error {
				_, err := d.PutImage(ctx, &image.Manifest{Name: "bomb"}, bytes.NewReader(bomb))
				return err
			},
			"Import": func() error {
				_, err := d.Import(ctx, bytes.NewReader(bomb), "bomb")
				return err
			},
		} {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err := call()
			runtime.ReadMemStats(&after)
			if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%+v: %s = %v, want InvalidArgument naming %s", tc.lim, op, err, tc.want)
			}
			t.Logf("%+v: %s allocated %d MiB", tc.lim, op, (after.TotalAlloc-before.TotalAlloc)>>20)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > tc.maxAlloc {
				t.Errorf("%+v: %s allocated %d MiB, want at most %d MiB", tc.lim, op, alloc>>20, tc.maxAlloc>>20)
			}
		}
	}
}

func TestPutImageRefusesBidiLabel(t *testing.T) {
	ctx := context.Background()
	d := newServer(t)
	m, blob := drivertest.BaseImage(t)
	for _, labels := range []map[string]string{
		{"note": "safe\u202etxt.exe"},
		{"note\u202e": "x"},
	} {
		c := *m
		c.Name, c.Labels = "labelled", labels
		if _, err := d.PutImage(ctx, &c, bytes.NewReader(blob)); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("labels %q: PutImage = %v, want InvalidArgument", labels, err)
		}
	}
	if _, err := d.Image(ctx, "labelled"); !errors.Is(err, errcode.NotFound) {
		t.Errorf("image with a refused label exists: %v", err)
	}
}
