package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
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
	s, err := OpenStore(dir, nil)
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
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	blob := testBlob(t, "x")
	for name, m := range map[string]Manifest{
		"digest mismatch":  {Name: "a", Digest: digest([]byte("something else"))},
		"size mismatch":    {Name: "a", Size: 3},
		"bad digest":       {Name: "a", Digest: "md5:1234"},
		"bad name":         {Name: "A"},
		"bad label":        {Name: "a", Labels: map[string]string{"bad key": "v"}},
		"bad label value":  {Name: "a", Labels: map[string]string{"k": "line\nbreak"}},
		"bad arch":         {Name: "a", Arch: "x86 64"},
		"too many labels":  {Name: "a", Labels: manyLabels(MaxLabels+1, 1)},
		"labels too large": {Name: "a", Labels: manyLabels(MaxLabels, 1024)},
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

// manyLabels returns n labels with values of valueLen bytes.
func manyLabels(n, valueLen int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("label-%04d", i)] = strings.Repeat("v", valueLen)
	}
	return m
}

func TestManifestLabelCaps(t *testing.T) {
	m := Manifest{Name: "a", Digest: digest(nil), Arch: "amd64", Labels: manyLabels(MaxLabels, 1000)}
	if err := m.Validate(); err != nil {
		t.Fatalf("%d labels of 1,010 bytes refused: %v", MaxLabels, err)
	}
	m.Labels = manyLabels(MaxLabels+1, 1)
	if err := m.Validate(); !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), "65 labels; the limit is 64") {
		t.Errorf("65 labels: %v, want InvalidArgument naming the count", err)
	}
	m.Labels = manyLabels(MaxLabels, 1024)
	if err := m.Validate(); !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), "labels hold 66176 bytes of keys and values; the limit is 65536") {
		t.Errorf("66,176 bytes of labels: %v, want InvalidArgument naming the size", err)
	}
}

func TestStoreConcurrentPuts(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(t.TempDir(), nil)
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
	s, err := OpenStore(t.TempDir(), nil)
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

func TestStorePutRefusesNonArchives(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	valid := testBlob(t, "x")
	for name, blob := range map[string][]byte{
		"text":               []byte("this is not an archive"),
		"empty":              nil,
		"truncated":          valid[:len(valid)-8],
		"trailing garbage":   append(bytes.Clone(valid), "garbage"...),
		"two archives":       append(bytes.Clone(valid), valid...),
		"zstd of plain text": compressed(t, []byte("this is not a tar stream either")),
	} {
		_, err := s.Put(ctx, Manifest{Name: "a"}, bytes.NewReader(blob))
		if !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: Put = %v, want InvalidArgument", name, err)
		}
		if files := storeFiles(t, dir); len(files) != 0 {
			t.Errorf("%s: refused Put left %v", name, files)
		}
		if list, _ := s.List(ctx); len(list) != 0 {
			t.Errorf("%s: refused Put left manifests %v", name, list)
		}
	}
	// An error of the blob's reader is passed through, not blamed on the
	// archive.
	unavailable := errcode.New(errcode.Unavailable, "connection reset")
	r := io.MultiReader(bytes.NewReader(valid[:len(valid)/2]), &failingReader{unavailable})
	if _, err := s.Put(ctx, Manifest{Name: "a"}, r); !errors.Is(err, errcode.Unavailable) {
		t.Errorf("failing reader: Put = %v, want its Unavailable", err)
	}
	if files := storeFiles(t, dir); len(files) != 0 {
		t.Errorf("failed Put left %v", files)
	}
}

// compressed returns data as one zstd frame.
func compressed(t *testing.T, data []byte) []byte {
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err == nil {
		_, err = w.Write(data)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zeroImage returns an archive of one file of size zero bytes: a small
// blob that expands a lot. The file is sparse, so making it costs no disk.
func zeroImage(t *testing.T, size int64) []byte {
	t.Helper()
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "zeros"))
	if err == nil {
		err = f.Truncate(size)
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteArchive(context.Background(), &buf, src, nil, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestStoreLimitsBoundUnpack: a blob that passed Put under lax limits is
// refused by a store with lower limits, naming the limit, and the disk it
// wrote stays under the limit. The default limits refuse what the old
// unbounded Unpack wrote in full (852 KB of blob, 4 GiB of zeros).
func TestStoreLimitsBoundUnpack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const size = 256 << 20
	blob := zeroImage(t, size)
	lax, err := OpenStore(dir, &StoreOptions{Limits: Limits{MaxRatio: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lax.Put(ctx, Manifest{Name: "zeros"}, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d MiB of zeros in a blob of %d bytes", size>>20, len(blob))
	for _, tc := range []struct {
		lim      Limits
		want     string
		maxBytes int64 // what the limit lets through
	}{
		{Limits{}, "MaxRatio = 100", 100 << 20},
		{Limits{MaxRatio: 2}, "MaxRatio = 2", 2 << 20},
		{Limits{MaxBytes: 1 << 20}, "MaxBytes = 1048576", 1 << 20},
	} {
		s, err := OpenStore(dir, &StoreOptions{Limits: tc.lim})
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "rootfs")
		_, written, err := s.unpack(ctx, "zeros", dst)
		if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Unpack = %v, want InvalidArgument naming %s", tc.lim, err, tc.want)
		}
		if written > tc.maxBytes {
			t.Errorf("%+v: Unpack wrote %d bytes, over the limit's %d", tc.lim, written, tc.maxBytes)
		}
		if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%+v: refused Unpack left dst: %v", tc.lim, err)
		}
		// Put refuses the blob under these limits too, keeping nothing.
		other := t.TempDir()
		s2, err := OpenStore(other, &StoreOptions{Limits: tc.lim})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s2.Put(ctx, Manifest{Name: "zeros"}, bytes.NewReader(blob)); !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("%+v: Put = %v, want an error naming %s", tc.lim, err, tc.want)
		}
		if files := storeFiles(t, other); len(files) != 0 {
			t.Errorf("%+v: refused Put left %v", tc.lim, files)
		}
	}

	// Without the compressed size in advance (a stream), the ratio is
	// checked as the stream goes: the disk written still stays under it.
	dst := filepath.Join(t.TempDir(), "rootfs")
	_, written, err := readArchive(ctx, bytes.NewReader(blob), dst, scanOptions{lim: Limits{MaxRatio: 2}}, nil)
	if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), "MaxRatio = 2") {
		t.Errorf("streamed extraction = %v, want MaxRatio = 2", err)
	}
	if written > 2<<20 {
		t.Errorf("streamed extraction wrote %d bytes, over MaxRatio's 2 MiB", written)
	}
}

// TestDefaultLimitsAcceptSmallExpansions: under 1 MiB of blob may expand
// to 100 MiB, so small images with a zero-filled file still pass.
func TestDefaultLimitsAcceptSmallExpansions(t *testing.T) {
	blob := zeroImage(t, 64<<20)
	if _, err := ScanArchive(context.Background(), bytes.NewReader(blob), 0, Limits{}, nil); err != nil {
		t.Errorf("64 MiB of zeros in %d bytes: %v", len(blob), err)
	}
}
