package image_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/image/imagetest"
	"github.com/musterkit/muster/errcode"
)

// readAll is an EntryFunc that reads every file's content, as a sink does.
func readAll(_ *image.Entry, content io.Reader) error {
	_, err := io.Copy(io.Discard, content)
	return err
}

// TestReadersRejectHostile runs every hostile archive through every entry
// point of the one reader: extraction into a new and an existing
// directory, a scan with and without the compressed size, Store.Put and
// Store.Unpack (of a blob that reached the store without Put). Each must
// refuse it for the expected reason, write nothing outside its
// destination and leave nothing behind. The in-memory driver runs the same
// table (container/memcontainer).
func TestReadersRejectHostile(t *testing.T) {
	ctx := context.Background()
	for _, tc := range imagetest.HostileArchives(t) {
		t.Run(tc.Name, func(t *testing.T) {
			refused := func(t *testing.T, err error) {
				t.Helper()
				if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), tc.Reason) {
					t.Errorf("err = %v (code %v), want InvalidArgument saying %q", err, errcode.Of(err), tc.Reason)
				}
			}
			for _, existing := range []bool{false, true} {
				name := "ReadArchive"
				if existing {
					name += "/existing-dst"
				}
				t.Run(name, func(t *testing.T) {
					base, sentinel := sandbox(t)
					dst := filepath.Join(base, "dst")
					if existing {
						if err := os.Mkdir(dst, 0o755); err != nil {
							t.Fatal(err)
						}
					}
					_, err := image.ReadArchive(ctx, bytes.NewReader(tc.Data), dst, tc.Limits, nil)
					refused(t, err)
					checkConfined(t, base, sentinel, dst, err)
					if existing {
						if names, err := os.ReadDir(dst); err != nil || len(names) != 0 {
							t.Errorf("existing dst not left empty: %v %v", names, err)
						}
					}
				})
			}
			t.Run("ScanArchive", func(t *testing.T) {
				for _, size := range []int64{0, int64(len(tc.Data))} {
					_, err := image.ScanArchive(ctx, bytes.NewReader(tc.Data), size, tc.Limits, readAll)
					refused(t, err)
				}
			})
			t.Run("Store.Put", func(t *testing.T) {
				dir := t.TempDir()
				s, err := image.OpenStore(dir, &image.StoreOptions{Limits: tc.Limits})
				if err != nil {
					t.Fatal(err)
				}
				_, err = s.Put(ctx, image.Manifest{Name: "evil"}, bytes.NewReader(tc.Data))
				refused(t, err)
				checkStoreEmpty(t, s, dir)
			})
			t.Run("Store.Unpack", func(t *testing.T) {
				dir := t.TempDir()
				plantImage(t, dir, "evil", tc.Data)
				s, err := image.OpenStore(dir, &image.StoreOptions{Limits: tc.Limits})
				if err != nil {
					t.Fatal(err)
				}
				base, sentinel := sandbox(t)
				dst := filepath.Join(base, "dst")
				_, err = s.Unpack(ctx, "evil", dst)
				refused(t, err)
				checkConfined(t, base, sentinel, dst, err)
			})
		})
	}
}

// plantImage stores blob as image name in the store directory dir the way
// an older version or a hand edit would, without Put's checks.
func plantImage(t *testing.T, dir, name string, blob []byte) {
	t.Helper()
	sum := sha256.Sum256(blob)
	m := image.Manifest{Name: name, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(blob)), Created: time.Unix(0, 0).UTC(), Arch: "amd64"}
	data, err := json.Marshal(&m)
	if err == nil {
		err = os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755)
	}
	if err == nil {
		err = os.MkdirAll(filepath.Join(dir, "manifests"), 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "blobs", "sha256", hex.EncodeToString(sum[:])), blob, 0o644)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "manifests", name+".json"), data, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// checkStoreEmpty fails t if the store in dir holds an image, a blob or a
// temporary file.
func checkStoreEmpty(t testing.TB, s *image.Store, dir string) {
	t.Helper()
	if list, err := s.List(context.Background()); err != nil || len(list) != 0 {
		t.Errorf("store lists %v, %v; want nothing", list, err)
	}
	for _, sub := range []string{"blobs/sha256", "manifests", "tmp"} {
		if names, err := os.ReadDir(filepath.Join(dir, sub)); err != nil || len(names) != 0 {
			t.Errorf("store %s holds %v, %v; want nothing", sub, names, err)
		}
	}
}

// sandbox returns a fresh directory holding sentinel/keep, the target of
// escape attempts.
func sandbox(t testing.TB) (base, sentinel string) {
	base = t.TempDir()
	sentinel = filepath.Join(base, "sentinel")
	if err := os.Mkdir(sentinel, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sentinel, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return base, sentinel
}

// checkConfined fails t if anything was written outside dst, or if a
// failed extraction left anything it created.
func checkConfined(t testing.TB, base, sentinel, dst string, err error) {
	t.Helper()
	if _, serr := os.Lstat(imagetest.OutsidePath); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("%s exists: extraction escaped dst", imagetest.OutsidePath)
	}
	names, rerr := os.ReadDir(sentinel)
	if rerr != nil || len(names) != 1 || names[0].Name() != "keep" {
		t.Fatalf("sentinel directory changed: %v %v", names, rerr)
	}
	if data, _ := os.ReadFile(filepath.Join(sentinel, "keep")); string(data) != "keep" {
		t.Fatalf("sentinel/keep changed: %q", data)
	}
	names, _ = os.ReadDir(base)
	for _, n := range names {
		if n.Name() != "sentinel" && n.Name() != filepath.Base(dst) {
			t.Fatalf("%s created outside dst", n.Name())
		}
	}
	if err != nil {
		if names, rerr := os.ReadDir(dst); rerr == nil && len(names) > 0 {
			t.Fatalf("failed extraction left %d entries in dst", len(names))
		}
	}
}

// FuzzReadArchive checks that no input makes the reader panic, write
// outside dst or leave anything behind when it fails, and that its entry
// points agree: ReadArchive refuses an archive as invalid exactly when
// ScanArchive refuses it, and Store.Put exactly then too, keeping nothing.
// tarData is compressed by the harness unless raw is set, so the fuzzer
// works on tar structure.
func FuzzReadArchive(f *testing.F) {
	// Large seeds (the bombs) make minimizing an input take minutes, and
	// decoding them here takes a GiB; the unit test has them.
	const maxSeed = 8 << 10
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxSeed))
	if err != nil {
		f.Fatal(err)
	}
	defer dec.Close()
	for _, tc := range imagetest.HostileArchives(f) {
		data, err := dec.DecodeAll(tc.Data, nil)
		switch {
		case errors.Is(err, zstd.ErrDecoderSizeExceeded):
		case err != nil && len(tc.Data) <= maxSeed:
			f.Add(tc.Data, true)
		case err == nil:
			f.Add(data, false)
		}
	}
	f.Add(imagetest.Tar(f, imagetest.File(image.MetaName, "{}"), imagetest.Dir("rootfs/"), imagetest.Dir("rootfs/bin/"),
		imagetest.File("rootfs/bin/sh", "#!"), imagetest.Hardlink("rootfs/bin/ash", "rootfs/bin/sh"),
		imagetest.Symlink("rootfs/sh", "bin/sh")), false)
	lim := image.Limits{MaxBytes: 1 << 20, MaxEntries: 1000, MaxMetaBytes: 1 << 10, MaxRatio: 50}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		if !raw {
			data = imagetest.Compress(data)
		}
		base, sentinel := sandbox(t)
		dst := filepath.Join(base, "dst")
		_, err := image.ReadArchive(ctx, bytes.NewReader(data), dst, lim, nil)
		checkConfined(t, base, sentinel, dst, err)
		if err != nil {
			if _, serr := os.Lstat(dst); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("failed extraction left dst: %v", err)
			}
		}
		_, serr := image.ScanArchive(ctx, bytes.NewReader(data), 0, lim, readAll)
		if serr != nil && !errors.Is(serr, errcode.InvalidArgument) {
			t.Fatalf("ScanArchive: %v, not InvalidArgument", serr)
		}
		if (serr != nil) != errors.Is(err, errcode.InvalidArgument) {
			t.Fatalf("ScanArchive: %v; ReadArchive: %v", serr, err)
		}
		dir := t.TempDir()
		s, err := image.OpenStore(dir, &image.StoreOptions{Limits: lim})
		if err != nil {
			t.Fatal(err)
		}
		_, perr := s.Put(ctx, image.Manifest{Name: "fuzz"}, bytes.NewReader(data))
		if (perr != nil) != (serr != nil) {
			t.Fatalf("ScanArchive: %v; Store.Put: %v", serr, perr)
		}
		if perr != nil {
			checkStoreEmpty(t, s, dir)
		}
	})
}
