package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/errcode"
)

// fileState is what a round trip must preserve of a file.
type fileState struct {
	Mode     fs.FileMode
	Size     int64
	SHA256   string
	Target   string
	MTime    int64
	UID, GID uint32
}

// treeState describes every file under dir by its slash-separated path.
func treeState(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := make(map[string]fileState)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		s := fileState{Mode: info.Mode(), MTime: info.ModTime().Unix(), UID: st.Uid, GID: st.Gid}
		switch {
		case info.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			s.Size, s.SHA256 = info.Size(), hex.EncodeToString(sum[:])
		case info.Mode()&fs.ModeSymlink != 0:
			if s.Target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeTestTree makes a tree with every kind of entry the format carries,
// plus a fifo and a socket that it must skip.
func writeTestTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 1<<20+123)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, d := range []string{"bin", "data/nested/deep", "sticky", "locked"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	files := []struct {
		path string
		mode fs.FileMode
		data []byte
	}{
		{"bin/tool", 0o755, []byte("#!/bin/sh\necho tool\n")},
		{"data/empty", 0o644, nil},
		{"data/random", 0o640, random},
		{"data/nested/deep/file.txt", 0o644, []byte("deep\n")},
		{"data/private", 0o600, []byte("secret")},
		{"data/setuid", 0o755 | fs.ModeSetuid, []byte("suid")},
		{"locked/inside", 0o444, []byte("read only")},
		{"hard1", 0o644, []byte("shared inode")},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.path)
		must(os.WriteFile(p, f.data, 0o600))
		must(os.Chmod(p, f.mode))
	}
	must(os.Link(filepath.Join(dir, "hard1"), filepath.Join(dir, "data/hard2")))
	must(os.Symlink("data/empty", filepath.Join(dir, "link-rel")))
	must(os.Symlink("/etc/passwd", filepath.Join(dir, "link-abs")))
	must(os.Symlink("../../nowhere", filepath.Join(dir, "data/nested/dangling")))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	must(err)
	t.Cleanup(func() { l.Close() })
	if os.Geteuid() == 0 {
		must(os.Lchown(filepath.Join(dir, "data/random"), 1234, 5678))
		must(os.Lchown(filepath.Join(dir, "link-rel"), 4321, 8765))
		must(os.Chmod(filepath.Join(dir, "data/setuid"), 0o755|fs.ModeSetuid)) // chown clears it
	}
	// Distinct mtimes, directories last: creating entries changes them.
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, p := range []string{"bin/tool", "data/empty", "data/random", "hard1", "locked/inside"} {
		mtime = mtime.Add(time.Hour)
		must(os.Chtimes(filepath.Join(dir, p), mtime, mtime))
	}
	for _, p := range []string{"link-rel", "link-abs", "data/nested/dangling"} {
		mtime = mtime.Add(time.Hour)
		must(unix.Lutimes(filepath.Join(dir, p), []unix.Timeval{unix.NsecToTimeval(mtime.UnixNano()), unix.NsecToTimeval(mtime.UnixNano())}))
	}
	for _, d := range []string{"bin", "data/nested/deep", "data/nested", "data", "sticky", "locked", "."} {
		mtime = mtime.Add(time.Hour)
		must(os.Chtimes(filepath.Join(dir, d), mtime, mtime))
	}
	must(os.Chmod(filepath.Join(dir, "sticky"), 0o777|fs.ModeSticky))
	must(os.Chmod(filepath.Join(dir, "locked"), 0o500))
	t.Cleanup(func() { os.Chmod(filepath.Join(dir, "locked"), 0o700) }) // for TempDir's removal when not root
	must(os.Chmod(dir, 0o751))
}

func TestArchiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestTree(t, src)
	want := treeState(t, src)
	delete(want, "fifo")
	delete(want, "sock")

	meta := []byte(`{"name":"web"}`)
	var buf bytes.Buffer
	var wrote int64
	if err := WriteArchive(ctx, &buf, src, meta, func(n int64) { wrote = n }); err != nil {
		t.Fatal(err)
	}
	if wrote != int64(buf.Len()) {
		t.Errorf("write progress ended at %d, archive is %d bytes", wrote, buf.Len())
	}
	blob := buf.Bytes()

	for _, existing := range []bool{false, true} {
		dst := filepath.Join(t.TempDir(), "dst")
		if existing {
			if err := os.Mkdir(dst, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		var read int64
		got, err := ReadArchive(ctx, bytes.NewReader(blob), dst, Limits{}, func(n int64) { read = n })
		if err != nil {
			t.Fatalf("existing dst %v: %v", existing, err)
		}
		if !bytes.Equal(got, meta) {
			t.Errorf("meta = %q, want %q", got, meta)
		}
		if read != int64(len(blob)) {
			t.Errorf("read progress ended at %d, archive is %d bytes", read, len(blob))
		}
		t.Cleanup(func() { os.Chmod(filepath.Join(dst, "locked"), 0o700) })
		have := treeState(t, dst)
		for p, w := range want {
			if h, ok := have[p]; !ok {
				t.Errorf("%s: missing after round trip", p)
			} else if h != w {
				t.Errorf("%s: got %+v, want %+v", p, h, w)
			}
		}
		for p := range have {
			if _, ok := want[p]; !ok {
				t.Errorf("%s: extra after round trip", p)
			}
		}
		a, err1 := os.Stat(filepath.Join(dst, "hard1"))
		b, err2 := os.Stat(filepath.Join(dst, "data/hard2"))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("hard1 and data/hard2 are not one inode (%v, %v)", err1, err2)
		}
	}
}

func TestArchiveWithoutMeta(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, meta := range [][]byte{nil, {}} {
		var buf bytes.Buffer
		if err := WriteArchive(ctx, &buf, src, meta, nil); err != nil {
			t.Fatal(err)
		}
		got, err := ReadArchive(ctx, &buf, filepath.Join(t.TempDir(), "dst"), Limits{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (meta == nil) || len(got) != 0 {
			t.Errorf("meta %#v came back as %#v", meta, got)
		}
	}
}

func TestWriteArchiveErrors(t *testing.T) {
	ctx := context.Background()
	err := WriteArchive(ctx, io.Discard, filepath.Join(t.TempDir(), "missing"), nil, nil)
	if !errors.Is(err, errcode.NotFound) {
		t.Errorf("missing root: %v, want NotFound", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	var buf bytes.Buffer
	if err := WriteArchive(canceled, &buf, t.TempDir(), nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	// What a failed write left behind is no archive.
	if _, err := ReadArchive(ctx, &buf, filepath.Join(t.TempDir(), "dst"), Limits{}, nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("reading a failed write's output: %v, want InvalidArgument", err)
	}
}

func TestReadArchiveDestination(t *testing.T) {
	ctx := context.Background()
	var buf bytes.Buffer
	if err := WriteArchive(ctx, &buf, t.TempDir(), nil, nil); err != nil {
		t.Fatal(err)
	}
	blob := buf.Bytes()

	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadArchive(ctx, bytes.NewReader(blob), full, Limits{}, nil); !errors.Is(err, errcode.AlreadyExists) {
		t.Errorf("non-empty dst: %v, want AlreadyExists", err)
	}
	if _, err := os.Stat(filepath.Join(full, "keep")); err != nil {
		t.Errorf("non-empty dst was changed: %v", err)
	}
	if _, err := ReadArchive(ctx, bytes.NewReader(blob), filepath.Join(full, "keep"), Limits{}, nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("dst is a file: %v, want InvalidArgument", err)
	}
	if _, err := ReadArchive(ctx, bytes.NewReader(blob), filepath.Join(full, "no", "dst"), Limits{}, nil); !errors.Is(err, errcode.NotFound) {
		t.Errorf("dst parent missing: %v, want NotFound", err)
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	dst := filepath.Join(t.TempDir(), "dst")
	if _, err := ReadArchive(canceled, bytes.NewReader(blob), dst, Limits{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("canceled extraction left dst: %v", err)
	}

	sourceErr := errcode.New(errcode.Unavailable, "connection reset")
	r := io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), &failingReader{sourceErr})
	if _, err := ReadArchive(ctx, r, dst, Limits{}, nil); !errors.Is(err, errcode.Unavailable) {
		t.Errorf("source error: %v, want the source's Unavailable", err)
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }
