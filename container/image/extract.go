package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/errcode"
)

// ReadArchive extracts the archive in r, as WriteArchive writes it, into
// dst and returns its metadata (nil if it has none). dst is created if
// missing (its parent must exist) and must be empty if it exists; the
// "rootfs/" entry gives dst its mode. ReadArchive consumes r to its end.
//
// Extraction is confined to dst and never follows a symlink: every entry's
// parent must be a directory extracted earlier from the same archive, and
// files are created exclusively through an os.Root. A symlink's target is
// stored as is and may point anywhere.
//
// The archive is read by ScanArchive, the one reader of the format, and
// rejected, with code errcode.InvalidArgument, if it is not a well-formed
// zstd-compressed tar (with nothing but zero padding after the tar stream
// and nothing after the zstd stream), an entry other than a leading
// MetaName is not under "rootfs/", "rootfs/" is not the first tree entry,
// a name is longer than 4096 bytes or has an empty, "." or ".." element or
// one longer than 255 bytes, a name repeats, a parent is not a directory,
// a hard link does not name a regular file extracted earlier, a uid or gid
// is outside 0..4294967294, an entry is sparse, a device node, a fifo or
// of another type, or lim is exceeded (the message names the limit). If
// dst exists but is not empty the error has code errcode.AlreadyExists.
//
// On any error, including ctx's cancellation, everything ReadArchive
// created is removed: dst if it created dst, else dst's contents. An error
// returned by r itself is passed through. progress, if not nil, is called
// on the calling goroutine with the total bytes read from r so far.
func ReadArchive(ctx context.Context, r io.Reader, dst string, lim Limits, progress func(read int64)) (meta []byte, err error) {
	meta, _, err = readArchive(ctx, r, dst, scanOptions{lim: lim, progress: progress}, nil)
	return meta, err
}

// readArchive is ReadArchive; verify, if not nil, is called once r has
// been consumed, and its error rolls the extraction back. written is the
// number of content bytes written to files, even on error.
func readArchive(ctx context.Context, r io.Reader, dst string, o scanOptions, verify func() error) (meta []byte, written int64, err error) {
	root, created, err := openDst(dst)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			rollback(root, dst, created)
		}
		root.Close()
	}()
	x := &extractor{root: root, chown: os.Geteuid() == 0, buf: make([]byte, 256<<10)}
	meta, err = scanArchive(ctx, r, o, x.entry)
	if err == nil && verify != nil {
		err = verify()
	}
	if err == nil {
		err = x.finish()
	}
	if err != nil {
		return nil, x.written, fmt.Errorf("extract archive into %s: %w", dst, err)
	}
	return meta, x.written, nil
}

// openDst opens dst as a Root, creating it if missing; created reports
// whether it did.
func openDst(dst string) (root *os.Root, created bool, err error) {
	if err := os.Mkdir(dst, 0o700); err == nil {
		created = true
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, false, fsErr(err)
	}
	root, err = os.OpenRoot(dst)
	if err != nil {
		if created {
			os.Remove(dst)
		}
		if errcode.Of(fsErr(err)) != errcode.Unknown {
			return nil, false, fsErr(err)
		}
		return nil, false, errcode.Wrap(errcode.InvalidArgument, err) // not a directory
	}
	if !created {
		f, err := root.Open(".")
		if err != nil {
			root.Close()
			return nil, false, fsErr(err)
		}
		names, err := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			root.Close()
			return nil, false, errcode.New(errcode.AlreadyExists, "extract archive: %s is not empty", dst)
		}
		if err != nil && err != io.EOF {
			root.Close()
			return nil, false, err
		}
	}
	return root, created, nil
}

// rollback removes what an extraction created.
func rollback(root *os.Root, dst string, created bool) {
	if created {
		os.RemoveAll(dst)
		return
	}
	f, err := root.Open(".")
	if err != nil {
		return
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	for _, n := range names {
		root.RemoveAll(n)
	}
}

// extractor writes the entries that the scanner passes into dst. It
// trusts nothing on disk: the scanner has checked that every parent is a
// directory of the archive, and everything is created exclusively through
// an os.Root.
type extractor struct {
	root    *os.Root
	dirs    []dirMeta
	chown   bool
	buf     []byte
	written int64
	// replace has an entry replace what the tree holds at its path,
	// unless both are directories (ApplyArchive).
	replace bool
}

// dirMeta is a directory's metadata, applied after its contents.
type dirMeta struct {
	name     string
	mode     fs.FileMode
	uid, gid int
	mtime    time.Time
}

func (x *extractor) entry(e *Entry, content io.Reader) error {
	name := e.Path
	keep, err := x.clear(e)
	if err != nil {
		return err
	}
	switch e.Type {
	case TypeDir:
		if name == "" {
			name = "."
		} else if !keep {
			if err := x.root.Mkdir(name, 0o700); err != nil {
				return err
			}
		}
		x.dirs = append(x.dirs, dirMeta{name: name, mode: e.Mode, uid: e.UID, gid: e.GID, mtime: e.ModTime})
	case TypeFile:
		if err := x.file(e, content); err != nil {
			return err
		}
		return x.root.Chtimes(name, e.ModTime, e.ModTime)
	case TypeSymlink:
		if err := x.root.Symlink(e.Target, name); err != nil {
			return err
		}
		if x.chown {
			if err := x.root.Lchown(name, e.UID, e.GID); err != nil {
				return err
			}
		}
		return lchtimes(x.root, name, e.ModTime)
	case TypeHardlink:
		return x.root.Link(e.Target, name)
	}
	return nil
}

// clear removes what the tree holds at e's path if x.replace, unless
// both are directories: then keep is true. The scanner has checked that
// every parent is a directory of the archive, so Lstat follows no link.
func (x *extractor) clear(e *Entry) (keep bool, err error) {
	if !x.replace || e.Path == "" {
		return e.Path == "", nil
	}
	fi, err := x.root.Lstat(e.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	case fi.IsDir() && e.Type == TypeDir:
		return true, nil
	}
	return false, x.root.RemoveAll(e.Path)
}

func (x *extractor) file(e *Entry, content io.Reader) error {
	f, err := x.root.OpenFile(e.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, content, x.buf)
	x.written += n
	if err != nil {
		return err
	}
	if x.chown {
		if err := f.Chown(e.UID, e.GID); err != nil {
			return err
		}
	}
	if err := f.Chmod(e.Mode); err != nil {
		return err
	}
	return f.Close()
}

// finish applies the directories' metadata, children before parents, so
// writing a child neither needs a parent's final permissions nor changes
// its mtime.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if x.chown {
			if err := x.root.Lchown(d.name, d.uid, d.gid); err != nil {
				return err
			}
		}
		if err := x.root.Chmod(d.name, d.mode); err != nil {
			return err
		}
		if err := x.root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return err
		}
	}
	return nil
}

// lchtimes sets the times of the symlink name itself; os.Root.Chtimes
// would follow it.
func lchtimes(root *os.Root, name string, t time.Time) error {
	dir, base := path.Split(name)
	if dir == "" {
		dir = "."
	}
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.UtimesNanoAt(int(d.Fd()), base, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// fsErr gives a file system error about the caller's path its code.
func fsErr(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errcode.Wrap(errcode.NotFound, err)
	case errors.Is(err, fs.ErrPermission):
		return errcode.Wrap(errcode.PermissionDenied, err)
	case errors.Is(err, syscall.ENOTDIR):
		return errcode.Wrap(errcode.InvalidArgument, err)
	}
	return err
}
