package memcontainer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/musterkit/muster/container/image"
)

// tree is a container's filesystem: clean absolute paths to nodes. The
// root "/" is always present.
type tree map[string]*node

type node struct {
	mode   fs.FileMode // type bits and permissions
	data   []byte      // regular file content (shared copy-on-write: never mutated in place)
	target string      // symlink target
	uid    int
	gid    int
	mtime  time.Time
}

func (t tree) clone() tree {
	c := make(tree, len(t))
	for p, n := range t {
		cp := *n
		c[p] = &cp
	}
	return c
}

// resolve follows symlinks in p (at most 40, as Linux does) and returns the
// clean path of what p names inside the tree; the result may not exist.
func (t tree) resolve(p string) (string, error) {
	parts := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		if part == "" {
			continue
		}
		next := path.Join(cur, part)
		n, ok := t[next]
		if !ok || n.mode&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target := n.target
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		parts = append(strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/"), parts...)
		cur = "/"
	}
	return cur, nil
}

func (t tree) readFile(p string) ([]byte, error) {
	rp, err := t.resolve(p)
	if err != nil {
		return nil, err
	}
	n, ok := t[rp]
	switch {
	case !ok:
		return nil, fmt.Errorf("%s: No such file or directory", p)
	case n.mode.IsDir():
		return nil, fmt.Errorf("%s: Is a directory", p)
	}
	return n.data, nil
}

func (t tree) writeFile(p string, data []byte, perm fs.FileMode) error {
	rp, err := t.resolve(p)
	if err != nil {
		return err
	}
	if dir, ok := t[path.Dir(rp)]; !ok || !dir.mode.IsDir() {
		return fmt.Errorf("%s: No such file or directory", p)
	}
	if n, ok := t[rp]; ok {
		if n.mode.IsDir() {
			return fmt.Errorf("%s: Is a directory", p)
		}
		perm = n.mode.Perm()
	}
	t[rp] = &node{mode: perm, data: slices.Clone(data), mtime: time.Now()}
	return nil
}

// lookPath finds a program as a shell would, through PATH in the tree.
func (t tree) lookPath(prog string) (string, bool) {
	candidates := []string{prog}
	if !strings.Contains(prog, "/") {
		candidates = nil
		for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
			candidates = append(candidates, path.Join(dir, prog))
		}
	}
	for _, c := range candidates {
		if rp, err := t.resolve(c); err == nil {
			if n, ok := t[rp]; ok && n.mode.IsRegular() && n.mode&0o111 != 0 {
				return c, true
			}
		}
	}
	return "", false
}

// maxArchiveBytes caps what one archive may unpack to in memory.
const maxArchiveBytes = 1 << 30

// readArchive parses an archive of package image. With wantMeta it returns
// the leading metadata entry too. Every path is checked as package image
// checks it: entries live under rootfs/, no "..", no device nodes, hard
// links only to entries already read.
func readArchive(r io.Reader, wantMeta bool) (tree, []byte, error) {
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256<<20))
	if err != nil {
		return nil, nil, err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	t := tree{"/": {mode: fs.ModeDir | 0o755}}
	var meta []byte
	var total int64
	for i := 0; ; i++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading archive: %w", err)
		}
		if i == 0 && h.Name == image.MetaName {
			if meta, err = io.ReadAll(io.LimitReader(tr, 1<<20)); err != nil {
				return nil, nil, err
			}
			continue
		}
		name, ok := strings.CutPrefix(h.Name, "rootfs/")
		if !ok && h.Name != "rootfs" {
			return nil, nil, fmt.Errorf("entry %q is outside rootfs/", h.Name)
		}
		p := path.Clean("/" + name)
		if slices.Contains(strings.Split(name, "/"), "..") {
			return nil, nil, fmt.Errorf("entry %q climbs out with ..", h.Name)
		}
		if parent, ok := t[path.Dir(p)]; p != "/" && (!ok || !parent.mode.IsDir()) {
			return nil, nil, fmt.Errorf("entry %q has no parent directory in the archive", h.Name)
		}
		n := &node{mode: fs.FileMode(h.Mode).Perm(), uid: h.Uid, gid: h.Gid, mtime: h.ModTime}
		switch h.Typeflag {
		case tar.TypeDir:
			n.mode |= fs.ModeDir
		case tar.TypeReg:
			if total += h.Size; total > maxArchiveBytes {
				return nil, nil, fmt.Errorf("archive unpacks to more than %d bytes", maxArchiveBytes)
			}
			if n.data, err = io.ReadAll(tr); err != nil {
				return nil, nil, err
			}
		case tar.TypeSymlink:
			n.mode |= fs.ModeSymlink
			n.target = h.Linkname
		case tar.TypeLink:
			ln, _ := strings.CutPrefix(h.Linkname, "rootfs/")
			src, ok := t[path.Clean("/"+ln)]
			if !ok || !src.mode.IsRegular() {
				return nil, nil, fmt.Errorf("hard link %q points at %q, not a file read before", h.Name, h.Linkname)
			}
			cp := *src
			n = &cp
		default:
			return nil, nil, fmt.Errorf("entry %q has unsupported type %q", h.Name, h.Typeflag)
		}
		t[p] = n
	}
	if wantMeta && meta == nil {
		return nil, nil, fmt.Errorf("archive has no %s", image.MetaName)
	}
	return t, meta, nil
}

// writeArchive writes t, with meta first, in package image's format.
func writeArchive(w io.Writer, t tree, meta []byte) error {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: image.MetaName, Mode: 0o644, Size: int64(len(meta)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(meta); err != nil {
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(t)) {
		n := t[p]
		h := &tar.Header{Name: "rootfs" + p, Mode: int64(n.mode.Perm()), Uid: n.uid, Gid: n.gid, ModTime: n.mtime}
		switch {
		case n.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, strings.TrimSuffix(h.Name, "/")+"/"
		case n.mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, n.target
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(n.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, bytes.NewReader(n.data)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}
