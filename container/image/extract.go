package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/errcode"
)

const (
	// maxPathLen bounds entry names and link targets (Linux PATH_MAX).
	maxPathLen = 4096
	// entryOverhead is the decompressed stream allowed per entry on top of
	// its content: tar header, PAX records, padding.
	entryOverhead = 16 << 10
	// maxWindow bounds the zstd window a decoder allocates.
	maxWindow = 64 << 20
)

// Limits bound what ReadArchive accepts, against decompression bombs and
// resource exhaustion. A zero field means the DefaultLimits value. The
// decompressed stream as a whole, headers included, may not exceed
// MaxBytes + MaxMetaBytes + 16 KiB per entry.
type Limits struct {
	// MaxBytes bounds the total size of the entries' contents.
	MaxBytes int64
	// MaxEntries bounds the number of tree entries.
	MaxEntries int
	// MaxMetaBytes bounds the MetaName entry.
	MaxMetaBytes int64
}

// DefaultLimits returns 16 GiB of content, 2,000,000 entries and 1 MiB of
// metadata.
func DefaultLimits() Limits {
	return Limits{MaxBytes: 16 << 30, MaxEntries: 2_000_000, MaxMetaBytes: 1 << 20}
}

func (l Limits) orDefault() Limits {
	d := DefaultLimits()
	if l.MaxBytes <= 0 {
		l.MaxBytes = d.MaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxMetaBytes <= 0 {
		l.MaxMetaBytes = d.MaxMetaBytes
	}
	return l
}

// streamBytes bounds the whole decompressed tar stream, headers included.
func (l Limits) streamBytes() int64 {
	n := float64(l.MaxBytes) + float64(l.MaxMetaBytes) + float64(l.MaxEntries+2)*entryOverhead
	return int64(min(n, math.MaxInt64/2))
}

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
// The archive is rejected, with code errcode.InvalidArgument, if it is not
// a well-formed zstd-compressed tar, an entry other than a leading MetaName
// is not under "rootfs/", "rootfs/" is not the first tree entry, a name has
// an empty, "." or ".." element, a name repeats, a parent is not a
// directory, a hard link does not name a regular file extracted earlier,
// an entry is a device node, fifo or of another type, or lim is exceeded.
// If dst exists but is not empty the error has code errcode.AlreadyExists.
//
// On any error, including ctx's cancellation, everything ReadArchive
// created is removed: dst if it created dst, else dst's contents. An error
// returned by r itself is passed through. progress, if not nil, is called
// on the calling goroutine with the total bytes read from r so far.
func ReadArchive(ctx context.Context, r io.Reader, dst string, lim Limits, progress func(read int64)) (meta []byte, err error) {
	return readArchive(ctx, r, dst, lim, progress, nil)
}

// readArchive is ReadArchive; verify, if not nil, is called once r has
// been consumed, and its error rolls the extraction back.
func readArchive(ctx context.Context, r io.Reader, dst string, lim Limits, progress func(int64), verify func() error) (meta []byte, err error) {
	lim = lim.orDefault()
	root, created, err := openDst(dst)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			rollback(root, dst, created)
		}
		root.Close()
	}()
	src := &sourceReader{r: r, fn: progress}
	// Synchronous decoding: r is only read from this goroutine.
	zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	x := &extractor{
		ctx:   ctx,
		src:   src,
		root:  root,
		lim:   lim,
		kinds: make(map[string]kind),
		chown: os.Geteuid() == 0,
		buf:   make([]byte, 256<<10),
	}
	stream := &ctxReader{ctx: ctx, r: &boundedReader{r: zr, n: lim.streamBytes()}}
	meta, err = x.extract(tar.NewReader(stream))
	if err == nil {
		// Read to the end, so zstd checks its frame checksum and
		// trailing garbage is rejected.
		if _, err = io.CopyBuffer(io.Discard, stream, x.buf); err != nil {
			err = x.streamErr(err)
		}
	}
	if err == nil && verify != nil {
		err = verify()
	}
	if err == nil {
		err = x.finish()
	}
	if err != nil {
		return nil, fmt.Errorf("extract archive into %s: %w", dst, err)
	}
	return meta, nil
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

type kind uint8

const (
	kindDir kind = iota + 1
	kindFile
	kindSymlink
)

// extractor extracts tree entries; kinds records every path it created
// ("" is dst itself), so it never needs to trust what is on disk.
type extractor struct {
	ctx     context.Context
	src     *sourceReader
	root    *os.Root
	lim     Limits
	kinds   map[string]kind
	dirs    []dirMeta
	chown   bool
	buf     []byte
	entries int
	bytes   int64
}

// dirMeta is a directory's metadata, applied after its contents.
type dirMeta struct {
	name     string
	mode     fs.FileMode
	uid, gid int
	mtime    time.Time
}

func (x *extractor) extract(tr *tar.Reader) (meta []byte, err error) {
	for first := true; ; first = false {
		hdr, err := tr.Next()
		if err == io.EOF {
			if len(x.kinds) == 0 {
				return nil, errcode.New(errcode.InvalidArgument, "archive has no %q entry", treePrefix)
			}
			return meta, nil
		}
		if err != nil {
			return nil, x.streamErr(err)
		}
		if err := x.ctx.Err(); err != nil {
			return nil, err
		}
		if first && hdr.Name == MetaName && hdr.Typeflag == tar.TypeReg {
			if hdr.Size > x.lim.MaxMetaBytes {
				return nil, errcode.New(errcode.InvalidArgument, "archive metadata is %d bytes, over the limit of %d", hdr.Size, x.lim.MaxMetaBytes)
			}
			if meta, err = io.ReadAll(tr); err != nil {
				return nil, x.streamErr(err)
			}
			continue
		}
		if err := x.entry(hdr, tr); err != nil {
			return nil, err
		}
	}
}

// badEntry returns an InvalidArgument error about entry name.
func badEntry(name, format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, "archive entry %.200q: %s", name, fmt.Sprintf(format, args...))
}

func (x *extractor) entry(hdr *tar.Header, tr *tar.Reader) error {
	x.entries++
	if x.entries > x.lim.MaxEntries {
		return errcode.New(errcode.InvalidArgument, "archive has more than %d entries", x.lim.MaxEntries)
	}
	if x.bytes += hdr.Size; x.bytes > x.lim.MaxBytes {
		return errcode.New(errcode.InvalidArgument, "archive content exceeds the limit of %d bytes", x.lim.MaxBytes)
	}
	name, err := treePath(hdr.Name)
	if err != nil {
		return err
	}
	if strings.HasSuffix(hdr.Name, "/") && hdr.Typeflag != tar.TypeDir {
		return badEntry(hdr.Name, "only a directory name may end in '/'")
	}
	if name == "" {
		if hdr.Typeflag != tar.TypeDir || len(x.kinds) > 0 {
			return badEntry(hdr.Name, "must be the first tree entry, a directory")
		}
		x.kinds[""] = kindDir
		x.dirs = append(x.dirs, x.dirMeta(".", hdr))
		return nil
	}
	if len(x.kinds) == 0 {
		return badEntry(hdr.Name, "comes before the %q entry", treePrefix)
	}
	if _, dup := x.kinds[name]; dup {
		return badEntry(hdr.Name, "appears twice")
	}
	if parent, _ := path.Split(name); x.kinds[strings.TrimSuffix(parent, "/")] != kindDir {
		return badEntry(hdr.Name, "parent is not a directory of the archive")
	}
	mtime := hdr.ModTime
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := x.root.Mkdir(name, 0o700); err != nil {
			return err
		}
		x.kinds[name] = kindDir
		x.dirs = append(x.dirs, x.dirMeta(name, hdr))
	case tar.TypeReg:
		x.kinds[name] = kindFile
		if err := x.file(name, hdr, tr); err != nil {
			return err
		}
		return x.root.Chtimes(name, mtime, mtime)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) > maxPathLen {
			return badEntry(hdr.Name, "symlink target is empty or too long")
		}
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		x.kinds[name] = kindSymlink
		if x.chown {
			if err := x.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
		}
		return lchtimes(x.root, name, mtime)
	case tar.TypeLink:
		target, err := treePath(hdr.Linkname)
		if err != nil || x.kinds[target] != kindFile {
			return badEntry(hdr.Name, "hard link target %.200q is not a regular file extracted earlier", hdr.Linkname)
		}
		if err := x.root.Link(target, name); err != nil {
			return err
		}
		x.kinds[name] = kindFile
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return badEntry(hdr.Name, "device nodes and fifos are not allowed")
	default:
		return badEntry(hdr.Name, "unsupported entry type %q", hdr.Typeflag)
	}
	return nil
}

func (x *extractor) file(name string, hdr *tar.Header, tr *tar.Reader) error {
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	body := &errReader{r: tr}
	if _, err := io.CopyBuffer(f, body, x.buf); err != nil {
		if body.err != nil {
			return x.streamErr(body.err)
		}
		return err
	}
	if x.chown {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := f.Chmod(fileMode(hdr)); err != nil {
		return err
	}
	return f.Close()
}

func (x *extractor) dirMeta(name string, hdr *tar.Header) dirMeta {
	return dirMeta{name: name, mode: fileMode(hdr), uid: hdr.Uid, gid: hdr.Gid, mtime: hdr.ModTime}
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

// streamErr classifies an error met while reading the archive: the
// context's error, the source reader's own error, or a malformed archive.
func (x *extractor) streamErr(err error) error {
	if ctxErr := x.ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if x.src.err != nil {
		return x.src.err
	}
	if errcode.Of(err) != errcode.Unknown {
		return err
	}
	return errcode.New(errcode.InvalidArgument, "malformed archive: %w", err)
}

// treePath returns the path relative to dst of an entry under "rootfs/"
// ("" for "rootfs/" itself), rejecting any name that is not plainly inside.
func treePath(name string) (string, error) {
	if len(name) > maxPathLen {
		return "", badEntry(name, "name is longer than %d bytes", maxPathLen)
	}
	rest, ok := strings.CutPrefix(strings.TrimSuffix(name, "/"), strings.TrimSuffix(treePrefix, "/"))
	if !ok {
		return "", badEntry(name, "not under %q", treePrefix)
	}
	if rest == "" {
		return "", nil
	}
	rest, ok = strings.CutPrefix(rest, "/")
	if !ok {
		return "", badEntry(name, "not under %q", treePrefix)
	}
	for elem := range strings.SplitSeq(rest, "/") {
		if elem == "" || elem == "." || elem == ".." || strings.ContainsRune(elem, 0) {
			return "", badEntry(name, "name has an empty, \".\" or \"..\" element")
		}
	}
	return rest, nil
}

// fileMode returns the permission, setuid, setgid and sticky bits of hdr.
func fileMode(hdr *tar.Header) fs.FileMode {
	return hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
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

// sourceReader counts the bytes read from the caller's reader and keeps
// its first error other than io.EOF.
type sourceReader struct {
	r   io.Reader
	fn  func(int64)
	n   int64
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.n += int64(n)
		if s.fn != nil {
			s.fn(s.n)
		}
	}
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// boundedReader fails once more than n bytes have been read.
type boundedReader struct {
	r io.Reader
	n int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, errcode.New(errcode.InvalidArgument, "decompressed archive exceeds the limits")
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	return n, err
}

// ctxReader fails once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// errReader keeps the first read error other than io.EOF, to tell it from
// a write error in io.Copy.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}
