package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/musterkit/muster/errcode"
)

// entry is one tar entry of a hand-made archive; body is the content
// (hdr.Size defaults to its length).
type entry struct {
	hdr  tar.Header
	body []byte
}

func dir(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}
func file(name, body string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body: []byte(body)}
}
func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}
func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}
func node(name string, typ byte) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o666, Devmajor: 1, Devminor: 3}}
}

// makeTar writes entries as an uncompressed tar.
func makeTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Size == 0 {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var encoder = sync.OnceValue(func() *zstd.Encoder {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		panic(err)
	}
	return enc
})

func compress(data []byte) []byte { return encoder().EncodeAll(data, nil) }

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// bomb is 1 GiB of zeros in one file, about 200 KB compressed.
var bomb = sync.OnceValue(func() []byte {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		panic(err)
	}
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "rootfs/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "rootfs/zeros", Mode: 0o644, Size: 1 << 30})
	if _, err := io.CopyN(tw, zeros{}, 1<<30); err != nil {
		panic(err)
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
})

// outsidePath is an absolute path that archives try to reach; nothing may
// ever create it.
const outsidePath = "/tmp/muster-image-test-outside"

type badArchive struct {
	name string
	data []byte // compressed archive
	lim  Limits
}

// badArchives returns archives that ReadArchive must reject. Relative escape
// attempts aim at ../sentinel, a sibling of dst.
func badArchives(t testing.TB) []badArchive {
	tgz := func(entries ...entry) []byte { return compress(makeTar(t, entries...)) }
	root := dir("rootfs/")
	many := []entry{root}
	for i := range 200 {
		many = append(many, file("rootfs/f"+strings.Repeat("x", i%50)+string(rune('a'+i%26))+string(rune('a'+i/26)), ""))
	}
	valid := tgz(root, dir("rootfs/etc/"), file("rootfs/etc/hosts", strings.Repeat("127.0.0.1 localhost\n", 5000)))
	paxBomb := root
	paxBomb.hdr.PAXRecords = map[string]string{"comment": strings.Repeat("z", 200<<10)}
	return []badArchive{
		{name: "dotdot", data: tgz(root, file("../x", "pwn"))},
		{name: "rootfs-dotdot", data: tgz(root, file("rootfs/../../x", "pwn"))},
		{name: "inner-dotdot", data: tgz(root, dir("rootfs/a/"), file("rootfs/a/../../sentinel/pwn", "pwn"))},
		{name: "dot-element", data: tgz(root, file("rootfs/./x", "pwn"))},
		{name: "empty-element", data: tgz(root, file("rootfs//x", "pwn"))},
		{name: "absolute", data: tgz(root, file(outsidePath, "pwn"))},
		{name: "absolute-rootfs", data: tgz(root, file("/rootfs/x", "pwn"))},
		{name: "outside-rootfs", data: tgz(root, file("other/x", "pwn"))},
		{name: "rootfs-prefix", data: tgz(root, file("rootfsx", "pwn"))},
		{name: "no-rootfs-entry", data: tgz(file("rootfs/x", "pwn"))},
		{name: "rootfs-not-first", data: tgz(dir("rootfs/a/"), root)},
		{name: "rootfs-twice", data: tgz(root, root)},
		{name: "rootfs-not-dir", data: tgz(file("rootfs", ""))},
		{name: "missing-parent", data: tgz(root, file("rootfs/a/b", "pwn"))},
		{name: "symlink-absolute-write", data: tgz(root, symlink("rootfs/evil", outsidePath), file("rootfs/evil/pwn", "pwn"))},
		{name: "symlink-relative-write", data: tgz(root, symlink("rootfs/evil", "../sentinel"), file("rootfs/evil/pwn", "pwn"))},
		{name: "symlink-dotdot-chain", data: tgz(root, symlink("rootfs/a", ".."), symlink("rootfs/a/b", ".."), file("rootfs/a/b/sentinel/pwn", "pwn"))},
		{name: "symlink-then-dir", data: tgz(root, symlink("rootfs/evil", "../sentinel"), dir("rootfs/evil/"), file("rootfs/evil/pwn", "pwn"))},
		{name: "symlink-then-file", data: tgz(root, symlink("rootfs/evil", "../sentinel/keep"), file("rootfs/evil", "pwn"))},
		{name: "symlink-hardlinked", data: tgz(root, symlink("rootfs/evil", "../sentinel/keep"), hardlink("rootfs/h", "rootfs/evil"))},
		{name: "file-under-file", data: tgz(root, file("rootfs/f", "x"), file("rootfs/f/x", "pwn"))},
		{name: "duplicate", data: tgz(root, file("rootfs/f", "x"), file("rootfs/f", "y"))},
		{name: "hardlink-etc-passwd", data: tgz(root, hardlink("rootfs/h", "/etc/passwd"))},
		{name: "hardlink-dotdot", data: tgz(root, hardlink("rootfs/h", "../sentinel/keep"))},
		{name: "hardlink-rootfs-dotdot", data: tgz(root, hardlink("rootfs/h", "rootfs/../sentinel/keep"))},
		{name: "hardlink-forward", data: tgz(root, hardlink("rootfs/h", "rootfs/later"), file("rootfs/later", "x"))},
		{name: "hardlink-dir", data: tgz(root, dir("rootfs/d/"), hardlink("rootfs/h", "rootfs/d"))},
		{name: "char-device", data: tgz(root, node("rootfs/null", tar.TypeChar))},
		{name: "block-device", data: tgz(root, node("rootfs/sda", tar.TypeBlock))},
		{name: "fifo", data: tgz(root, node("rootfs/fifo", tar.TypeFifo))},
		{name: "global-header", data: tgz(root, entry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}}})},
		{name: "bomb-total-bytes", data: tgz(root, file("rootfs/a", strings.Repeat("a", 600<<10)), file("rootfs/b", strings.Repeat("b", 600<<10))), lim: Limits{MaxBytes: 1 << 20}},
		{name: "bomb-entries", data: tgz(many...), lim: Limits{MaxEntries: 100}},
		{name: "bomb-pax-headers", data: tgz(paxBomb), lim: Limits{MaxBytes: 1, MaxEntries: 1, MaxMetaBytes: 1}},
		{name: "meta-oversized", data: tgz(file(MetaName, strings.Repeat("m", 2<<20)), root)},
		{name: "meta-late", data: tgz(root, file(MetaName, "{}"))},
		{name: "meta-twice", data: tgz(file(MetaName, "{}"), file(MetaName, "{}"), root)},
		{name: "truncated", data: valid[:len(valid)/2]},
		{name: "trailing-garbage", data: append(slices.Clip(valid), "garbage"...)},
		{name: "not-zstd", data: []byte("this is not a zstd stream, just some garbage bytes")},
		{name: "uncompressed-tar", data: makeTar(t, root, file("rootfs/x", "x"))},
		{name: "empty-input", data: nil},
		{name: "empty-archive", data: tgz()},
	}
}

func TestReadArchiveRejectsMalicious(t *testing.T) {
	cases := append(badArchives(t), badArchive{name: "bomb-1GiB", data: bomb(), lim: Limits{MaxBytes: 1 << 20}})
	for _, tc := range cases {
		for _, existing := range []bool{false, true} {
			name := tc.name
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
				_, err := ReadArchive(context.Background(), bytes.NewReader(tc.data), dst, tc.lim, nil)
				if !errors.Is(err, errcode.InvalidArgument) {
					t.Errorf("err = %v (code %v), want InvalidArgument", err, errcode.Of(err))
				}
				checkConfined(t, base, sentinel, dst, err)
				if existing {
					if names, err := os.ReadDir(dst); err != nil || len(names) != 0 {
						t.Errorf("existing dst not left empty: %v %v", names, err)
					}
				}
			})
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
	if _, serr := os.Lstat(outsidePath); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("%s exists: extraction escaped dst", outsidePath)
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

// FuzzReadArchive checks that no input makes ReadArchive panic, write
// outside dst, or leave anything behind when it fails. tarData is
// compressed by the harness unless raw is set, so the fuzzer works on tar
// structure.
func FuzzReadArchive(f *testing.F) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		f.Fatal(err)
	}
	defer dec.Close()
	for _, tc := range badArchives(f) {
		// Large seeds (the bombs) make minimizing an input take minutes;
		// the unit test has them.
		data, err := dec.DecodeAll(tc.data, nil)
		switch {
		case err != nil && len(tc.data) <= 8<<10:
			f.Add(tc.data, true)
		case err == nil && len(data) <= 8<<10:
			f.Add(data, false)
		}
	}
	f.Add(makeTar(f, file(MetaName, "{}"), dir("rootfs/"), dir("rootfs/bin/"), file("rootfs/bin/sh", "#!"),
		hardlink("rootfs/bin/ash", "rootfs/bin/sh"), symlink("rootfs/sh", "bin/sh")), false)
	lim := Limits{MaxBytes: 1 << 20, MaxEntries: 1000, MaxMetaBytes: 1 << 10}
	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		if !raw {
			data = compress(data)
		}
		base, sentinel := sandbox(t)
		dst := filepath.Join(base, "dst")
		_, err := ReadArchive(context.Background(), bytes.NewReader(data), dst, lim, nil)
		checkConfined(t, base, sentinel, dst, err)
		if err != nil {
			if _, serr := os.Lstat(dst); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("failed extraction left dst: %v", err)
			}
		}
	})
}
