package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
)

// testBlob returns an archive of a small tree holding content.
func testBlob(t *testing.T, content string) []byte {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "content"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteArchive(context.Background(), &buf, src, nil, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// storeFiles lists the files under dir's blobs/ and tmp/.
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"blobs/sha256", "tmp"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			out = append(out, sub+"/"+e.Name())
		}
	}
	return out
}

func TestStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	blob := testBlob(t, "v1")
	created := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	m, err := s.Put(ctx, Manifest{Name: "web", Created: created, Labels: map[string]string{"app": "web"}}, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != digest(blob) || m.Size != int64(len(blob)) || m.Arch != runtime.GOARCH || !m.Created.Equal(created) {
		t.Errorf("Put returned %+v", m)
	}
	if err := m.Validate(); err != nil {
		t.Error(err)
	}

	// Idempotent with the same blob, even with the digest given.
	again, err := s.Put(ctx, Manifest{Name: "web", Digest: m.Digest}, bytes.NewReader(blob))
	if err != nil || again.Digest != m.Digest || !again.Created.Equal(created) {
		t.Errorf("second Put = %+v, %v; want the stored manifest", again, err)
	}
	// With the digest given, an existing name is settled without reading.
	unread := &failingReader{errcode.New(errcode.Internal, "read")}
	if again, err := s.Put(ctx, Manifest{Name: "web", Digest: m.Digest}, unread); err != nil || again.Digest != m.Digest {
		t.Errorf("Put of a stored digest = %+v, %v", again, err)
	}
	if _, err := s.Put(ctx, Manifest{Name: "web", Digest: digest([]byte("v2"))}, unread); !errors.Is(err, errcode.AlreadyExists) {
		t.Errorf("Put of another digest under a taken name: %v, want AlreadyExists", err)
	}
	// A name taken by another blob.
	if _, err := s.Put(ctx, Manifest{Name: "web"}, bytes.NewReader(testBlob(t, "v2"))); !errors.Is(err, errcode.AlreadyExists) {
		t.Errorf("conflicting Put: %v, want AlreadyExists", err)
	}
	// A second name sharing the blob.
	if _, err := s.Put(ctx, Manifest{Name: "web-copy"}, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}

	for _, ref := range []string{"web", m.Digest} {
		got, err := s.Get(ctx, ref)
		if err != nil || got.Name != "web" || got.Digest != m.Digest {
			t.Errorf("Get(%s) = %+v, %v", ref, got, err)
		}
	}
	for ref, code := range map[string]errcode.Code{
		"nope":                               errcode.NotFound,
		digest([]byte("other")):              errcode.NotFound,
		"Bad_Name":                           errcode.InvalidArgument,
		"sha256:abc":                         errcode.InvalidArgument,
		"../manifests/web":                   errcode.InvalidArgument,
		"sha256:" + string(make([]byte, 64)): errcode.InvalidArgument,
	} {
		if _, err := s.Get(ctx, ref); errcode.Of(err) != code {
			t.Errorf("Get(%q): %v, want %v", ref, err, code)
		}
	}

	list, err := s.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "web" || list[1].Name != "web-copy" {
		t.Errorf("List = %v, %v", list, err)
	}

	om, rc, err := s.Open(ctx, "web-copy")
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(data, blob) || om.Name != "web-copy" {
		t.Errorf("Open gave %s and %d bytes, %v", om.Name, len(data), err)
	}

	dst := filepath.Join(t.TempDir(), "rootfs")
	if _, err := s.Unpack(ctx, "web", dst); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dst, "content")); err != nil || string(got) != "v1" {
		t.Errorf("unpacked content = %q, %v", got, err)
	}

	// Deleting one name keeps the shared blob; deleting the last removes it.
	if err := s.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "web"); !errors.Is(err, errcode.NotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
	if _, err := os.Stat(s.blobPath(m.Digest)); err != nil {
		t.Errorf("blob still named by web-copy was removed: %v", err)
	}
	if err := s.Delete(ctx, "web"); !errors.Is(err, errcode.NotFound) {
		t.Errorf("second Delete: %v, want NotFound", err)
	}
	if err := s.Delete(ctx, "web-copy"); err != nil {
		t.Fatal(err)
	}
	if files := storeFiles(t, dir); len(files) != 0 {
		t.Errorf("store holds %v after deleting every image", files)
	}

	// Deleting by digest removes every name of the blob.
	for _, name := range []string{"a", "b"} {
		if _, err := s.Put(ctx, Manifest{Name: name}, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, digest(blob)); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(ctx); len(list) != 0 || len(storeFiles(t, dir)) != 0 {
		t.Errorf("after Delete by digest: %v, files %v", list, storeFiles(t, dir))
	}
}

func TestStorePutRejects(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	blob := testBlob(t, "x")
	for name, m := range map[string]Manifest{
		"digest mismatch": {Name: "a", Digest: digest([]byte("something else"))},
		"size mismatch":   {Name: "a", Size: 3},
		"bad digest":      {Name: "a", Digest: "md5:1234"},
		"bad name":        {Name: "A"},
		"bad label":       {Name: "a", Labels: map[string]string{"bad key": "v"}},
		"bad label value": {Name: "a", Labels: map[string]string{"k": "line\nbreak"}},
		"bad arch":        {Name: "a", Arch: "x86 64"},
	} {
		if _, err := s.Put(ctx, m, bytes.NewReader(blob)); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if files := storeFiles(t, dir); len(files) != 0 {
		t.Errorf("rejected Puts left %v", files)
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("rejected Puts left manifests %v", list)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Put(canceled, Manifest{Name: "a"}, bytes.NewReader(blob)); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled Put: %v", err)
	}
	if files := storeFiles(t, dir); len(files) != 0 {
		t.Errorf("canceled Put left %v", files)
	}
}

func TestStoreConcurrentPuts(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blobs := [][]byte{testBlob(t, "one"), testBlob(t, "two")}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			// Two Puts per name: for same-N with one blob, for race-N
			// with two different blobs.
			if i%8 < 4 {
				_, errs[i] = s.Put(ctx, Manifest{Name: fmt.Sprintf("same-%d", i%4)}, bytes.NewReader(blobs[0]))
			} else {
				_, errs[i] = s.Put(ctx, Manifest{Name: fmt.Sprintf("race-%d", i%4)}, bytes.NewReader(blobs[i/8]))
			}
		})
	}
	wg.Wait()
	conflicts := 0
	for i, err := range errs {
		switch {
		case err == nil:
		case i%8 >= 4 && errors.Is(err, errcode.AlreadyExists):
			conflicts++
		default:
			t.Errorf("Put %d: %v", i, err)
		}
	}
	if conflicts != 4 {
		t.Errorf("%d racing Puts lost, want 4 (one per contested name)", conflicts)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 8 {
		t.Fatalf("List = %d images, %v", len(list), err)
	}
	for _, m := range list {
		_, rc, err := s.Open(ctx, m.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		if digest(data) != m.Digest {
			t.Errorf("%s: blob does not match its digest", m.Name)
		}
	}
}

func TestStoreUnpackDetectsCorruption(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blob := testBlob(t, string(bytes.Repeat([]byte("content "), 10000)))
	m, err := s.Put(ctx, Manifest{Name: "img"}, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	for name, corrupt := range map[string]func([]byte) []byte{
		"flipped byte": func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b },
		"appended":     func(b []byte) []byte { return append(b, 0) },
		"truncated":    func(b []byte) []byte { return b[:len(b)-10] },
	} {
		if err := os.WriteFile(s.blobPath(m.Digest), corrupt(bytes.Clone(blob)), 0o644); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "dst")
		if _, err := s.Unpack(ctx, "img", dst); !errors.Is(err, errcode.Internal) {
			t.Errorf("%s: Unpack = %v, want Internal", name, err)
		}
		if _, err := os.Lstat(dst); err == nil {
			t.Errorf("%s: Unpack left dst", name)
		}
	}
}
