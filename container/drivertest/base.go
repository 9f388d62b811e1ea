package drivertest

import (
	"context"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/musterkit/muster/container/image"
)

// BaseImage returns the busybox base image of image.BuildBase, named
// "base", as its manifest and blob, for harnesses to put into fresh
// servers. It is built once per process; t fails if it cannot be.
func BaseImage(t testing.TB) (*image.Manifest, []byte) {
	t.Helper()
	b := baseImage()
	if b.err != nil {
		t.Fatalf("building the base image: %v", b.err)
	}
	return b.m, b.blob
}

var baseImage = sync.OnceValue(func() (b struct {
	m    *image.Manifest
	blob []byte
	err  error
}) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "muster-base-")
	if err != nil {
		b.err = err
		return b
	}
	defer os.RemoveAll(dir)
	store, err := image.OpenStore(dir, nil)
	if err == nil {
		_, err = image.BuildBase(ctx, store, "base", nil)
	}
	var rc io.ReadCloser
	if err == nil {
		b.m, rc, err = store.Open(ctx, "base")
	}
	if err == nil {
		defer rc.Close()
		b.blob, err = io.ReadAll(rc)
	}
	b.err = err
	return b
})
