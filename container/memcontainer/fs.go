package memcontainer

import (
	"archive/tar"
	"bytes"
	"context"
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

// readTree reads an archive of package image into a tree with
// image.ScanArchive, the reader every driver uses: the same checks, and
// lim bounds what it keeps in memory. size is r's length if known, else 0.
func readTree(ctx context.Context, r io.Reader, size int64, lim image.Limits) (tree, []byte, error) {
	t := tree{}
	meta, err := image.ScanArchive(ctx, r, size, lim, func(e *image.Entry, content io.Reader) error {
		n := &node{mode: e.Mode, uid: e.UID, gid: e.GID, mtime: e.ModTime}
		switch e.Type {
		case image.TypeDir:
			n.mode |= fs.ModeDir
		case image.TypeFile:
			data, err := readContent(content, e.Size)
			if err != nil {
				return err
			}
			n.data = data
		case image.TypeSymlink:
			n.mode |= fs.ModeSymlink
			n.target = e.Target
		case image.TypeHardlink:
			cp := *t[path.Join("/", e.Target)]
			n = &cp
		}
		t[path.Join("/", e.Path)] = n
		return nil
	})
	return t, meta, err
}

// readContent reads a file of size bytes. The buffer grows with what
// arrives rather than with what the header promises, so memory follows the
// stream, which the archive limits bound.
func readContent(r io.Reader, size int64) ([]byte, error) {
	data := make([]byte, 0, min(size, 64<<10))
	for int64(len(data)) < size {
		if len(data) == cap(data) {
			data = slices.Grow(data, int(min(int64(len(data)), size-int64(len(data)))))
		}
		n, err := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return data, nil
}

// writeArchive writes t, with meta first, in package image's format,
// leaving out the entries skip, if not nil, reports true for.
func writeArchive(w io.Writer, t tree, meta []byte, skip func(p string, n *node) bool) error {
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
		if skip != nil && skip(p, n) {
			continue
		}
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
