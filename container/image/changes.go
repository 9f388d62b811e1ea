package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"syscall"
	"time"

	"github.com/musterkit/muster/errcode"
)

// A pre-copy copies a tree in passes while it may change: the first pass
// writes the whole tree (WriteChanges with a nil base), the target
// stages it (ApplyArchive), and each later pass writes only what changed
// against the Index of the staged copy. Each pass's metadata is a
// Changes that wraps the caller's.

// ChangeMargin is how long before a pass begins a change must have
// happened for the next pass to trust that the pass read it: it covers
// writes in flight and the coarse clock of file times.
const ChangeMargin = 2 * time.Second

// Changes is the metadata of a pre-copy pass's archive.
type Changes struct {
	// Meta is the caller's metadata.
	Meta json.RawMessage `json:"meta"`
	// Since is when the pass began by the source's clock, less
	// ChangeMargin: an entry changed before Since is whole in it.
	Since time.Time `json:"since"`
	// Base is set when the archive holds only changes against the staged
	// copy of an earlier pass.
	Base bool `json:"base,omitempty"`
	// Deleted lists the paths of the staged copy to remove.
	Deleted []string `json:"deleted,omitempty"`
}

// Index lists what a staged copy holds, to export only what differs.
type Index struct {
	// Since is the Changes.Since of the pass the copy was last updated by.
	Since time.Time `json:"since"`
	// Entries are by path relative to the tree's root.
	Entries map[string]IndexEntry `json:"entries"`
}

// IndexEntry is an entry of an Index: an archive entry's header.
type IndexEntry struct {
	Type    EntryType   `json:"type"`
	Mode    fs.FileMode `json:"mode"`
	UID     int         `json:"uid,omitempty"`
	GID     int         `json:"gid,omitempty"`
	Size    int64       `json:"size,omitempty"`
	ModTime int64       `json:"mtime"` // Unix seconds
	Target  string      `json:"target,omitempty"`
}

// Unchanged reports whether the entry p, now e and last changed at
// changed, need not be sent again: base has it as e and it changed
// before base.Since. A nil base has nothing.
func (base *Index) Unchanged(p string, e IndexEntry, changed time.Time) bool {
	if base == nil {
		return false
	}
	old, ok := base.Entries[p]
	return ok && old == e && changed.Before(base.Since)
}

// Deleted returns base's paths for which exists is false, sorted.
func (base *Index) Deleted(exists func(p string) bool) []string {
	if base == nil {
		return nil
	}
	var out []string
	for _, p := range slices.Sorted(maps.Keys(base.Entries)) {
		if p != "" && !exists(p) {
			out = append(out, p)
		}
	}
	return out
}

// headerEntry returns the IndexEntry of a tree entry's header.
func headerEntry(hdr *tar.Header) IndexEntry {
	e := IndexEntry{Mode: fileMode(hdr), UID: hdr.Uid, GID: hdr.Gid, Size: hdr.Size, ModTime: hdr.ModTime.Unix(), Target: hdr.Linkname}
	switch hdr.Typeflag {
	case tar.TypeDir:
		e.Type = TypeDir
	case tar.TypeSymlink:
		e.Type = TypeSymlink
	case tar.TypeLink:
		e.Type = TypeHardlink
	default:
		e.Type = TypeFile
	}
	return e
}

// WriteChanges writes a pre-copy pass of the tree at root, which may
// change meanwhile, to w: an archive as WriteArchive writes it, whose
// metadata is a Changes wrapping meta. With a nil base it holds every
// entry; else every directory, the entries that base.Unchanged does not
// vouch for (a file with several links always), and in Deleted the paths
// of base the tree lacks. An entry that vanishes or is replaced while it
// is read is left out, and a file that shrinks is padded with zeros:
// they changed after Since, so the next pass sends them. progress is as
// for WriteArchive.
func WriteChanges(ctx context.Context, w io.Writer, root string, meta []byte, base *Index, progress func(written int64)) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fsErr(err)
	}
	defer r.Close()
	c := Changes{Meta: meta, Since: time.Now().Add(-ChangeMargin), Base: base != nil}
	c.Deleted = base.Deleted(func(p string) bool { _, err := r.Lstat(p); return err == nil })
	m, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return writeTree(ctx, w, r, m, progress, &changeFilter{base: base})
}

// changeFilter selects a pass's entries for writeTree.
type changeFilter struct{ base *Index }

// skip reports whether the entry p need not be written.
func (f *changeFilter) skip(p string, hdr *tar.Header, st *syscall.Stat_t) bool {
	if hdr.Typeflag == tar.TypeDir || st.Nlink > 1 && hdr.Typeflag != tar.TypeSymlink {
		return false
	}
	changed := time.Unix(st.Ctim.Unix())
	if m := time.Unix(st.Mtim.Unix()); m.After(changed) {
		changed = m
	}
	return f.base.Unchanged(p, headerEntry(hdr), changed)
}

// vanished reports whether err says the file being read went away.
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// IndexTree returns the Index of the tree at root, with since.
func IndexTree(root string, since time.Time) (*Index, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fsErr(err)
	}
	defer r.Close()
	ix := &Index{Since: since, Entries: map[string]IndexEntry{}}
	err = fs.WalkDir(r.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := treeHeader(r, p, info, nil)
		if hdr != nil && err == nil {
			ix.Entries[treeKey(p)] = headerEntry(hdr)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", root, err)
	}
	return ix, nil
}

// treeKey is the Entry.Path of the walk path p.
func treeKey(p string) string {
	if p == "." {
		return ""
	}
	return p
}

// ApplyArchive applies a WriteChanges archive onto the tree at dst with
// every check and limit of ReadArchive, and returns its Changes. A
// first pass (Changes.Base false) needs dst missing or empty, a later
// one the tree of the passes before it: an entry replaces what dst holds
// at its path unless both are directories, and then Deleted paths are
// removed, never through a symlink. ApplyArchive does not undo a failed
// pass: the caller discards dst.
func ApplyArchive(ctx context.Context, r io.Reader, dst string, lim Limits, progress func(read int64)) (*Changes, error) {
	root, err := os.OpenRoot(dst)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.Mkdir(dst, 0o700); err == nil {
			root, err = os.OpenRoot(dst)
		}
	}
	if err != nil {
		return nil, fsErr(err)
	}
	defer root.Close()
	x := &extractor{root: root, chown: os.Geteuid() == 0, buf: make([]byte, 256<<10), replace: true}
	meta, err := scanArchive(ctx, r, scanOptions{lim: lim, progress: progress}, x.entry)
	var c Changes
	if err == nil {
		if err = json.Unmarshal(meta, &c); err != nil {
			err = errcode.New(errcode.InvalidArgument, "pre-copy pass: metadata: %v", err)
		}
	}
	if err == nil {
		err = x.finish()
	}
	for _, p := range c.Deleted {
		if err != nil {
			break
		}
		err = removeConfined(root, p)
	}
	if err != nil {
		return nil, fmt.Errorf("apply archive onto %s: %w", dst, err)
	}
	return &c, nil
}

// removeConfined removes p and what it holds, unless p is already gone
// or a parent of it is not a directory (then what replaced the parent
// removed p).
func removeConfined(root *os.Root, p string) error {
	if _, err := treePath(treePrefix + p); err != nil || p == "" {
		return errcode.New(errcode.InvalidArgument, "pre-copy pass: bad deleted path %q", p)
	}
	for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
		fi, err := root.Lstat(dir)
		if err != nil || !fi.IsDir() {
			return nil
		}
	}
	return root.RemoveAll(p)
}
