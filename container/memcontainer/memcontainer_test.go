package memcontainer_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
)

// The busybox base image, built once for the test binary.
var (
	baseManifest *image.Manifest
	baseBlob     []byte
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "memcontainer-test-")
	if err == nil {
		baseManifest, baseBlob, err = buildBase(dir)
		os.RemoveAll(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the base image:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func buildBase(dir string) (*image.Manifest, []byte, error) {
	ctx := context.Background()
	store, err := image.OpenStore(dir)
	if err != nil {
		return nil, nil, err
	}
	if _, err := image.BuildBase(ctx, store, "base", nil); err != nil {
		return nil, nil, err
	}
	m, rc, err := store.Open(ctx, "base")
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	var blob bytes.Buffer
	_, err = blob.ReadFrom(rc)
	return m, blob.Bytes(), err
}

// newServer returns a memcontainer server holding the base image.
func newServer(t testing.TB) *memcontainer.Driver {
	d := memcontainer.New(&memcontainer.Options{Bridges: []string{"br-test"}})
	if _, err := d.PutImage(context.Background(), baseManifest, bytes.NewReader(baseBlob)); err != nil {
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
