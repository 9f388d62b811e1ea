package memcontainer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
)

// staged is a pre-copy's staged copy of a container.
type staged struct {
	meta  []byte // the first pass's spec
	fs    tree
	since time.Time
}

// ExportChanges implements driver.PreCopier.
func (d *Driver) ExportChanges(ctx context.Context, name string, base *image.Index, w io.Writer) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	c, err := d.get(name)
	var t tree
	var meta []byte
	if err == nil {
		t = c.fs.clone()
		meta, err = json.Marshal(c.spec)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	ch := image.Changes{Meta: meta, Since: time.Now().Add(-image.ChangeMargin), Base: base != nil}
	ch.Deleted = base.Deleted(func(p string) bool { _, ok := t["/"+p]; return ok })
	if meta, err = json.Marshal(ch); err != nil {
		return err
	}
	return writeArchive(w, t, meta, func(p string, n *node) bool {
		return !n.mode.IsDir() && base.Unchanged(indexPath(p), n.entry(), n.mtime)
	})
}

// indexPath is the image.Index path of the tree path p.
func indexPath(p string) string { return strings.TrimPrefix(p, "/") }

// entry returns n as an image.IndexEntry.
func (n *node) entry() image.IndexEntry {
	e := image.IndexEntry{Type: image.TypeFile, Mode: n.mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: n.uid, GID: n.gid, Size: int64(len(n.data)), ModTime: n.mtime.Unix(), Target: n.target}
	switch {
	case n.mode.IsDir():
		e.Type = image.TypeDir
	case n.mode&fs.ModeSymlink != 0:
		e.Type = image.TypeSymlink
	}
	return e
}

// Stage implements driver.PreCopier.
func (d *Driver) Stage(ctx context.Context, r io.Reader, name string) (ix *image.Index, err error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	pass, meta, err := readTree(ctx, r, 0, d.opts.ArchiveLimits)
	var ch image.Changes
	if err == nil {
		if err = json.Unmarshal(meta, &ch); err != nil {
			err = errcode.New(errcode.InvalidArgument, "pre-copy pass: metadata: %v", err)
		}
	}
	if err == nil && !ch.Base {
		_, err = importSpec(ch.Meta, name)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.staged[name]
	switch {
	case err != nil:
	case !ch.Base && (s != nil || d.containers[name] != nil):
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists or is being staged", name)
	case ch.Base && s == nil:
		err = errcode.New(errcode.FailedPrecondition, "container %q has no staged copy", name)
	case !ch.Base:
		s = &staged{meta: ch.Meta, fs: tree{}}
		d.staged[name] = s
	}
	if err == nil {
		err = s.apply(pass, ch.Deleted)
	}
	if err != nil {
		delete(d.staged, name)
		return nil, fmt.Errorf("stage container %q: %w", name, err)
	}
	s.since = ch.Since
	ix = &image.Index{Since: s.since, Entries: make(map[string]image.IndexEntry, len(s.fs))}
	for p, n := range s.fs {
		ix.Entries[indexPath(p)] = n.entry()
	}
	return ix, nil
}

// apply merges a pass's tree into the staged one: each entry replaces
// what is at its path unless both are directories, then the deleted
// paths go, unless a parent of one is not a directory any more.
func (s *staged) apply(pass tree, deleted []string) error {
	for p, n := range pass {
		if old, ok := s.fs[p]; ok && !(old.mode.IsDir() && n.mode.IsDir()) {
			s.fs.remove(p)
		}
	}
	for p, n := range pass {
		s.fs[p] = n
	}
	for _, p := range deleted {
		abs := "/" + p
		if p == "" || path.Clean(abs) != abs {
			return errcode.New(errcode.InvalidArgument, "pre-copy pass: bad deleted path %q", p)
		}
		if s.fs.dirs(path.Dir(abs)) {
			s.fs.remove(abs)
		}
	}
	return nil
}

// remove deletes p and everything under it.
func (t tree) remove(p string) {
	delete(t, p)
	for q := range t {
		if strings.HasPrefix(q, p+"/") {
			delete(t, q)
		}
	}
}

// dirs reports whether p and each of its parents is a directory.
func (t tree) dirs(p string) bool {
	for ; p != "/"; p = path.Dir(p) {
		if n, ok := t[p]; !ok || !n.mode.IsDir() {
			return false
		}
	}
	return true
}

// CommitStaged implements driver.PreCopier.
func (d *Driver) CommitStaged(ctx context.Context, name string) (*driver.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.staged[name]
	if s == nil {
		return nil, errcode.New(errcode.NotFound, "container %q has no staged copy", name)
	}
	if _, ok := d.containers[name]; ok {
		return nil, errcode.New(errcode.AlreadyExists, "container %q exists", name)
	}
	spec, err := importSpec(s.meta, name)
	if err != nil {
		return nil, err
	}
	setHostname(s.fs, s.meta, name)
	delete(d.staged, name)
	c := &ctr{spec: spec, state: driver.Stopped, created: d.opts.Now(), fs: s.fs}
	d.containers[name] = c
	return d.info(c), nil
}

// DropStaged implements driver.PreCopier.
func (d *Driver) DropStaged(ctx context.Context, name string) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.staged, name)
	return nil
}
