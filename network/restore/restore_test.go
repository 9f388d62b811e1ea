package restore_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/drivertest"
	"github.com/musterkit/muster/network/memnetwork"
	"github.com/musterkit/muster/network/restore"
)

func TestRestartRestores(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	under := netip.MustParseAddr("198.18.0.1")
	peers := drivertest.NewPeers(driver.WireGuard, netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3"))

	d, err := restore.Wrap(memnetwork.New(nil), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"blue", "red", "gone"} {
		if _, err := d.EnsureNetwork(ctx, drivertest.NewSpec(driver.WireGuard, id, under)); err != nil {
			t.Fatal(err)
		}
		if err := d.SetPeers(ctx, id, peers); err != nil {
			t.Fatal(err)
		}
	}
	// A later spec keeps the peers; a deleted network is forgotten.
	spec := drivertest.NewSpec(driver.WireGuard, "red", under)
	spec.MTU = 1300
	if _, err := d.EnsureNetwork(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNetwork(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	before, err := d.Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "blue.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kept file: %v, %v (it holds a private key: want 0600)", fi, err)
	}

	// The process restarts: a fresh driver, the same directory.
	d2, err := restore.Wrap(memnetwork.New(nil), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d2.Restore(ctx)
	if err != nil || !reflect.DeepEqual(ids, []string{"blue", "red"}) {
		t.Fatalf("Restore = %v, %v", ids, err)
	}
	after, err := d2.Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("restored networks differ:\nbefore %+v\nafter  %+v", before, after)
	}
}

// refusing fails to ensure network "bad".
type refusing struct{ driver.Driver }

func (r refusing) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	if spec.ID == "bad" {
		return nil, errcode.New(errcode.FailedPrecondition, "no")
	}
	return r.Driver.EnsureNetwork(ctx, spec)
}

func TestRestoreGoesOnAfterAFailure(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	under := netip.MustParseAddr("198.18.0.1")
	d, err := restore.Wrap(memnetwork.New(nil), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"bad", "good"} {
		if _, err := d.EnsureNetwork(ctx, drivertest.NewSpec(driver.VXLAN, id, under)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "junk.txt"), []byte("not a network"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2, err := restore.Wrap(refusing{memnetwork.New(nil)}, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d2.Restore(ctx)
	if !errors.Is(err, errcode.FailedPrecondition) || !reflect.DeepEqual(ids, []string{"good"}) {
		t.Fatalf("Restore = %v, %v; want good restored and bad's error", ids, err)
	}
	// After a restore, networks ensured are kept as before.
	if _, err := d2.EnsureNetwork(ctx, drivertest.NewSpec(driver.VXLAN, "worse", under)); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.EnsureNetwork(ctx, drivertest.NewSpec(driver.VXLAN, "bad", under)); err == nil {
		t.Fatal("bad ensured")
	}
	if _, err := os.Stat(filepath.Join(dir, "worse.json")); err != nil {
		t.Fatal(err)
	}
}
