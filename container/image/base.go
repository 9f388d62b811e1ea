package image

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// BaseOptions configure BuildBase. The zero value means the defaults.
type BaseOptions struct {
	// Busybox is the static busybox binary to use; default "/bin/busybox"
	// (Debian's busybox-static).
	Busybox string
}

// baseTime is the mtime of every entry and the Created time of a base
// image, so that building twice gives the same blob and manifest.
var baseTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// baseFiles are the base image's files besides bin/busybox.
var baseFiles = map[string]string{
	"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
	"etc/group":  "root:x:0:\n",
	// Empty: the container keeps the host name LXC gives it unless its
	// creator writes one here.
	"etc/hostname": "",
	"etc/hosts":    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	// init runs rcS and waits, reaping orphans; on the halt signal it
	// ends every process (TERM, KILL after 10 s) and exits as soon as
	// they are gone. Busybox's own init sleeps two seconds on the way
	// down whatever runs.
	"sbin/init": "#!/bin/sh\n" +
		"halt() {\n" +
		"\tkill -TERM -1 2>/dev/null\n" +
		"\ti=0\n" +
		"\twhile kill -0 -1 2>/dev/null; do\n" +
		"\t\ti=$((i + 1))\n" +
		"\t\t[ $i -eq 200 ] && kill -KILL -1 2>/dev/null\n" +
		"\t\tsleep 0.05\n" +
		"\tdone\n" +
		"\tsync\n" +
		"\texit 0\n" +
		"}\n" +
		"trap halt USR2 USR1 TERM PWR\n" +
		"/etc/init.d/rcS\n" +
		"while :; do\n" +
		"\tsleep 3600 &\n" +
		"\twait $!\n" +
		"done\n",
	// LXC has mounted /proc, /sys and /dev already.
	"etc/init.d/rcS": "#!/bin/sh\n" +
		"[ -s /etc/hostname ] && hostname -F /etc/hostname\n" +
		"ip link set lo up\n",
}

// baseDirs are the base image's directories and their modes; parents of
// applet links are added with mode 0755.
var baseDirs = map[string]int64{
	"": 0o755, "bin": 0o755, "dev": 0o755, "etc": 0o755, "etc/init.d": 0o755,
	"home": 0o755, "proc": 0o555, "root": 0o700, "run": 0o755, "sbin": 0o755,
	"sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
	"var": 0o755, "var/log": 0o755,
}

// BuildBase builds the offline base image from a static busybox and puts
// it in s under name. The tree holds bin/busybox, a relative symlink to it
// for every applet of `busybox --list-full` but init, the usual top-level
// directories (tmp with mode 1777), etc/passwd and etc/group with root
// only, an empty etc/hostname, etc/hosts, sbin/init, a shell script that
// runs etc/init.d/rcS, reaps orphans and, on the halt signal (SIGUSR2, as
// the LXC driver sends, or TERM, USR1, PWR), ends every process and exits
// once they are gone (busybox's init sleeps two seconds on the way down),
// and rcS, which sets the host name from
// etc/hostname if that is not empty and brings lo up; rcS mounts nothing,
// as LXC mounts /proc, /sys and /dev. Every entry has owner 0:0 and a
// fixed mtime, and Created is fixed too, so the same busybox always gives
// the same manifest. A busybox that is not a static ELF binary is rejected
// with errcode.InvalidArgument; a missing one with errcode.NotFound.
func BuildBase(ctx context.Context, s *Store, name string, opts *BaseOptions) (*Manifest, error) {
	if err := names.Label(name); err != nil {
		return nil, err
	}
	bb := "/bin/busybox"
	if opts != nil && opts.Busybox != "" {
		bb = opts.Busybox
	}
	if err := checkStatic(bb); err != nil {
		return nil, fmt.Errorf("build base image %s: %w", name, err)
	}
	out, err := exec.CommandContext(ctx, bb, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("build base image %s: %s --list-full: %w", name, bb, err)
	}
	entries, err := baseEntries(strings.Fields(string(out)))
	if err != nil {
		return nil, fmt.Errorf("build base image %s: %w", name, err)
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(writeBase(pw, bb, entries))
	}()
	m, err := s.Put(ctx, Manifest{Name: name, Created: baseTime, Arch: runtime.GOARCH}, pr)
	pr.Close() // stops the writer if Put failed early
	<-done
	if err != nil {
		return nil, fmt.Errorf("build base image: %w", err)
	}
	return m, nil
}

// checkStatic returns an error unless bb is an ELF executable without an
// interpreter.
func checkStatic(bb string) error {
	f, err := elf.Open(bb)
	if err != nil {
		if _, serr := os.Stat(bb); serr != nil {
			return fsErr(serr)
		}
		return errcode.New(errcode.InvalidArgument, "%s is not an ELF binary: %w", bb, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errcode.New(errcode.InvalidArgument, "%s is dynamically linked; a static busybox is needed (Debian busybox-static)", bb)
		}
	}
	return nil
}

// baseEntries returns the headers of the base tree in walk order; regular
// files other than bin/busybox carry their content in baseFiles.
func baseEntries(applets []string) ([]*tar.Header, error) {
	hdrs := make(map[string]*tar.Header)
	add := func(p string, typ byte, mode int64) *tar.Header {
		name := treePrefix + p
		if typ == tar.TypeDir && p != "" {
			name += "/"
		}
		h := &tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: baseTime}
		hdrs[p] = h
		return h
	}
	for _, a := range applets {
		if p, err := treePath(treePrefix + a); err != nil || p == "" {
			return nil, errcode.New(errcode.InvalidArgument, "busybox applet path %q is not a clean relative path", a)
		}
		add(a, tar.TypeSymlink, 0o777).Linkname = strings.Repeat("../", strings.Count(a, "/")) + "bin/busybox"
		for d := path.Dir(a); d != "."; d = path.Dir(d) {
			add(d, tar.TypeDir, 0o755)
		}
	}
	for d, mode := range baseDirs {
		add(d, tar.TypeDir, mode)
	}
	for f := range baseFiles {
		add(f, tar.TypeReg, 0o644).Size = int64(len(baseFiles[f]))
	}
	hdrs["etc/init.d/rcS"].Mode = 0o755
	hdrs["sbin/init"].Mode = 0o755
	add("bin/busybox", tar.TypeReg, 0o755)
	paths := slices.Collect(maps.Keys(hdrs))
	slices.SortFunc(paths, walkOrder)
	out := make([]*tar.Header, len(paths))
	for i, p := range paths {
		out[i] = hdrs[p]
	}
	return out, nil
}

// walkOrder orders slash-separated paths as a lexical tree walk visits
// them: element by element, a directory before its contents.
func walkOrder(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// writeBase writes the base archive to w.
func writeBase(w io.Writer, bb string, hdrs []*tar.Header) (err error) {
	f, err := os.Open(bb)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	aw, err := newArchiveWriter(w, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			aw.abort()
		}
	}()
	for _, h := range hdrs {
		var body io.Reader
		if h.Typeflag == tar.TypeReg {
			body = bytes.NewReader([]byte(baseFiles[strings.TrimPrefix(h.Name, treePrefix)]))
			if h.Name == treePrefix+"bin/busybox" {
				h.Size, body = fi.Size(), f
			}
		}
		if err := aw.add(h, body); err != nil {
			return err
		}
	}
	return aw.close()
}
