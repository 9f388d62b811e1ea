package image

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
)

// requireBusybox fails the test if Debian's busybox-static is missing:
// BuildBase needs it, and nothing may skip silently.
func requireBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("/bin/busybox is missing (install Debian's busybox-static): %v", err)
	}
}

func TestBuildBase(t *testing.T) {
	requireBusybox(t)
	ctx := context.Background()
	s1, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m1, err := BuildBase(ctx, s1, "base", nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := BuildBase(ctx, s2, "base", &BaseOptions{Busybox: "/bin/busybox"})
	if err != nil {
		t.Fatal(err)
	}
	if m1.Digest != m2.Digest || m1.Size != m2.Size || !m1.Created.Equal(m2.Created) {
		t.Errorf("two builds differ: %+v and %+v", m1, m2)
	}
	// Building again into the same store is a no-op.
	if m, err := BuildBase(ctx, s1, "base", nil); err != nil || m.Digest != m1.Digest {
		t.Errorf("rebuild = %+v, %v", m, err)
	}

	dst := filepath.Join(t.TempDir(), "rootfs")
	if _, err := s1.Unpack(ctx, "base", dst); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("/bin/busybox", "sh", "-n", filepath.Join(dst, "sbin/init")).CombinedOutput(); err != nil {
		t.Errorf("sbin/init does not parse: %s %v", out, err)
	}
	if target, err := os.Readlink(filepath.Join(dst, "bin/sh")); err != nil || target != "../bin/busybox" {
		t.Errorf("bin/sh -> %q, %v", target, err)
	}
	out, err := exec.Command(filepath.Join(dst, "bin/busybox"), "echo", "ok").Output()
	if err != nil || string(out) != "ok\n" {
		t.Errorf("bin/busybox echo ok: %q, %v", out, err)
	}
	// Every applet link resolves to the binary inside the tree.
	list, err := exec.Command("/bin/busybox", "--list-full").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "sbin/init" {
			continue // the image's own
		}
		p := filepath.Join(dst, applet)
		resolved, err := filepath.EvalSymlinks(p)
		if err != nil || resolved != filepath.Join(dst, "bin/busybox") {
			t.Errorf("%s resolves to %q, %v", applet, resolved, err)
		}
	}

	for p, mode := range map[string]fs.FileMode{
		"tmp":            fs.ModeDir | fs.ModeSticky | 0o777,
		"root":           fs.ModeDir | 0o700,
		"dev":            fs.ModeDir | 0o755,
		"proc":           fs.ModeDir | 0o555,
		"var/log":        fs.ModeDir | 0o755,
		"home":           fs.ModeDir | 0o755,
		"run":            fs.ModeDir | 0o755,
		"bin/busybox":    0o755,
		"etc/init.d/rcS": 0o755,
		"sbin/init":      0o755,
		"etc/passwd":     0o644,
	} {
		if fi, err := os.Lstat(filepath.Join(dst, p)); err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v, %v; want %v", p, fi.Mode(), err, mode)
		}
	}
	if _, err := os.Lstat(filepath.Join(dst, "etc/inittab")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("etc/inittab (for busybox's init, which the image does not run): %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "etc/hostname")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("etc/hostname: %v", err)
	}
	passwd, _ := os.ReadFile(filepath.Join(dst, "etc/passwd"))
	if !strings.HasPrefix(string(passwd), "root:x:0:0:") {
		t.Errorf("etc/passwd = %q", passwd)
	}
	if out, err := exec.Command("/bin/busybox", "sh", "-n", filepath.Join(dst, "etc/init.d/rcS")).CombinedOutput(); err != nil {
		t.Errorf("rcS does not parse: %s %v", out, err)
	}
}

func TestBuildBaseRejects(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dynamic, err := filepath.EvalSymlinks("/bin/sh") // dash, linked against libc
	if err != nil {
		t.Fatal(err)
	}
	notELF := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		image, busybox string
		code           errcode.Code
	}{
		"bad name":       {"Base", "/bin/busybox", errcode.InvalidArgument},
		"missing":        {"base", filepath.Join(t.TempDir(), "busybox"), errcode.NotFound},
		"not ELF":        {"base", notELF, errcode.InvalidArgument},
		"dynamic binary": {"base", dynamic, errcode.InvalidArgument},
	} {
		_, err := BuildBase(ctx, s, tc.image, &BaseOptions{Busybox: tc.busybox})
		if !errors.Is(err, tc.code) {
			t.Errorf("%s: %v, want %v", name, err, tc.code)
		}
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("rejected builds stored %v", list)
	}
}

func TestWalkOrder(t *testing.T) {
	// A tree walk visits a/b before a-c although "a-c" < "a/b" as strings.
	paths := []string{"a-c", "a/b", "", "a", "b/c/d", "b"}
	want := []string{"", "a", "a/b", "a-c", "b", "b/c/d"}
	slices.SortFunc(paths, walkOrder)
	if strings.Join(paths, ",") != strings.Join(want, ",") {
		t.Errorf("walk order %q, want %q", paths, want)
	}
}
