package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/musterkit/muster/errcode"
)

const (
	// maxPathLen bounds entry names; a symlink target must be shorter
	// (Linux PATH_MAX, which counts the terminating NUL).
	maxPathLen = 4096
	// maxNameLen bounds each element of an entry name (Linux NAME_MAX).
	maxNameLen = 255
	// maxID is the largest uid or gid: 2^32-1 is (uid_t)-1, which chown
	// reads as "leave unchanged".
	maxID = 1<<32 - 2
	// entryOverhead is the decompressed stream allowed per entry on top of
	// its content: tar header, PAX records, padding.
	entryOverhead = 16 << 10
	// maxWindow bounds the zstd window a decoder allocates.
	maxWindow = 64 << 20
	// ratioFloor is the smallest compressed size MaxRatio is applied to:
	// a small archive may always decompress to MaxRatio MiB.
	ratioFloor = 1 << 20
)

// Limits bound what ReadArchive, ScanArchive, Store.Put and Store.Unpack
// accept, against decompression bombs and resource exhaustion. A zero
// field means the DefaultLimits value. An archive over a limit is refused
// with code errcode.InvalidArgument, and the message names the limit and
// its value.
type Limits struct {
	// MaxBytes bounds the total size of the tree's file contents.
	MaxBytes int64
	// MaxEntries bounds the number of tree entries.
	MaxEntries int
	// MaxMetaBytes bounds the MetaName entry.
	MaxMetaBytes int64
	// MaxRatio bounds the decompressed tar stream, headers included, to
	// MaxRatio times the compressed size, a compressed size under 1 MiB
	// counting as 1 MiB. When the compressed size is not known in advance
	// (a stream), it is the bytes read so far, which is stricter.
	MaxRatio int
}

// DefaultLimits returns 16 GiB of content, 1,000,000 entries, 1 MiB of
// metadata and an expansion ratio of 100.
//
// A Debian minbase root file system is about 200 MB in some ten thousand
// entries and compresses by a factor of 3 to 5; a whole Debian workstation
// with desktop and toolchains is about 500,000 entries and 16 GB. Zip-bomb
// guards use the same ratio: Apache POI's ZipSecureFile refuses entries
// that inflate more than 100 times. Compressed data past that ratio is
// mostly runs of zeros, which a root file system rarely holds; raise
// MaxRatio for images that do.
func DefaultLimits() Limits {
	return Limits{MaxBytes: 16 << 30, MaxEntries: 1_000_000, MaxMetaBytes: 1 << 20, MaxRatio: 100}
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
	if l.MaxRatio <= 0 {
		l.MaxRatio = d.MaxRatio
	}
	return l
}

// streamBytes bounds the whole decompressed tar stream, headers included.
func (l Limits) streamBytes() int64 {
	n := float64(l.MaxBytes) + float64(l.MaxMetaBytes) + float64(l.MaxEntries+2)*entryOverhead
	return int64(min(n, math.MaxInt64/2))
}

// limitErr returns the error for an archive over the limit name.
func limitErr(name string, value int64, format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, "archive exceeds the limit %s = %d: %s", name, value, fmt.Sprintf(format, args...))
}

// EntryType is the type of a tree entry.
type EntryType uint8

// The entry types of the archive format.
const (
	TypeDir EntryType = iota + 1
	TypeFile
	TypeSymlink
	TypeHardlink
)

func (t EntryType) String() string {
	switch t {
	case TypeDir:
		return "dir"
	case TypeFile:
		return "file"
	case TypeSymlink:
		return "symlink"
	case TypeHardlink:
		return "hardlink"
	}
	return fmt.Sprintf("EntryType(%d)", uint8(t))
}

// Entry is a tree entry of an archive that passed every check.
type Entry struct {
	// Path is the entry's name under "rootfs/", slash-separated and
	// relative: "" for "rootfs/" itself (always the first entry), else
	// elements of 1 to 255 bytes other than "." and "..", whose parent is
	// a directory entry seen earlier.
	Path string
	Type EntryType
	// Mode holds the permission, setuid, setgid and sticky bits.
	Mode fs.FileMode
	// UID and GID are 0 to 4294967294.
	UID, GID int
	// ModTime is the modification time.
	ModTime time.Time
	// Size is a regular file's length; 0 for other types.
	Size int64
	// Target is a symlink's target, stored as is, so it may point
	// anywhere; for a hard link, the Path of a regular file seen earlier.
	Target string
}

// EntryFunc receives an archive's tree entries, in order. For a regular
// file, content yields its e.Size bytes; for other types it is empty.
// Content not read when EntryFunc returns is skipped, still within the
// limits. A read error from content is the archive's error: return it.
type EntryFunc func(e *Entry, content io.Reader) error

// ScanArchive reads the archive in r, as WriteArchive writes it, with every
// check and limit of ReadArchive, and returns its metadata (nil if it has
// none). It extracts nothing: it calls fn, if not nil, with each tree
// entry. It is the one reader of the format; ReadArchive and Store are
// built on it, and in-memory drivers should be too. size is r's length in
// bytes if the caller knows it, else 0 (see Limits.MaxRatio). ScanArchive
// consumes r to its end.
//
// Errors about the archive have code errcode.InvalidArgument; ctx's error,
// an error returned by r and one returned by fn are passed through.
func ScanArchive(ctx context.Context, r io.Reader, size int64, lim Limits, fn EntryFunc) ([]byte, error) {
	meta, err := scanArchive(ctx, r, scanOptions{lim: lim, size: size}, fn)
	if err != nil {
		return nil, fmt.Errorf("read archive: %w", err)
	}
	return meta, nil
}

type scanOptions struct {
	lim      Limits
	size     int64 // the compressed size if known, else 0
	progress func(read int64)
}

type kind uint8

const (
	kindDir kind = iota + 1
	kindFile
	kindSymlink
)

// pathKey identifies a path by its SHA-256, so that remembering an entry
// costs the same whatever the length of its name.
type pathKey [sha256.Size]byte

func keyOf(p string) pathKey { return sha256.Sum256([]byte(p)) }

// scanner checks an archive's entries; kinds records every path seen
// ("" is the tree's root), so no sink needs to trust what it created.
type scanner struct {
	ctx     context.Context
	lim     Limits
	size    int64
	src     *sourceReader
	stream  *limitReader
	fn      EntryFunc
	kinds   map[pathKey]kind
	entries int
	bytes   int64
}

func scanArchive(ctx context.Context, r io.Reader, o scanOptions, fn EntryFunc) ([]byte, error) {
	src := &sourceReader{r: r, fn: o.progress}
	// Synchronous decoding: r is only read from the caller's goroutine.
	zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	s := &scanner{ctx: ctx, lim: o.lim.orDefault(), size: max(o.size, 0), src: src, fn: fn, kinds: make(map[pathKey]kind)}
	s.stream = &limitReader{r: zr, s: s, max: s.lim.streamBytes()}
	meta, err := s.run(tar.NewReader(s.stream))
	if err == nil {
		err = s.end()
	}
	if err != nil {
		return nil, err
	}
	return meta, nil
}

func (s *scanner) run(tr *tar.Reader) (meta []byte, err error) {
	for first := true; ; first = false {
		hdr, err := tr.Next()
		if err == io.EOF {
			if len(s.kinds) == 0 {
				return nil, errcode.New(errcode.InvalidArgument, "archive has no %q entry", treePrefix)
			}
			return meta, nil
		}
		if err != nil {
			return nil, s.streamErr(err)
		}
		if err := s.ctx.Err(); err != nil {
			return nil, err
		}
		if err := checkHeader(hdr); err != nil {
			return nil, err
		}
		if first && hdr.Name == MetaName && hdr.Typeflag == tar.TypeReg {
			if meta, err = s.meta(hdr, tr); err != nil {
				return nil, err
			}
			continue
		}
		e, err := s.entry(hdr)
		if err != nil {
			return nil, err
		}
		if s.fn == nil {
			continue
		}
		var content io.Reader = strings.NewReader("")
		if e.Type == TypeFile {
			content = &contentReader{s: s, r: tr}
		}
		if err := s.fn(e, content); err != nil {
			return nil, err
		}
	}
}

// end reads what follows the tar stream: zero padding only, then the end
// of the zstd stream (which checks its checksum and refuses trailing
// garbage), then the end of r.
func (s *scanner) end() error {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.stream.Read(buf)
		for _, b := range buf[:n] {
			if b != 0 {
				return errcode.New(errcode.InvalidArgument, "malformed archive: data after the end of the tar stream")
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return s.streamErr(err)
		}
	}
	if n, err := io.CopyBuffer(io.Discard, s.src, buf); err != nil || n > 0 {
		if err != nil {
			return s.streamErr(err)
		}
		return errcode.New(errcode.InvalidArgument, "malformed archive: %d bytes after the zstd stream", n)
	}
	return nil
}

// checkHeader refuses what no entry may have.
func checkHeader(hdr *tar.Header) error {
	if hdr.Size < 0 {
		return badEntry(hdr.Name, "negative size")
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			// Holes would expand outside every stream limit.
			return badEntry(hdr.Name, "sparse files are not allowed")
		}
	}
	return nil
}

func (s *scanner) meta(hdr *tar.Header, tr *tar.Reader) ([]byte, error) {
	if hdr.Size > s.lim.MaxMetaBytes {
		return nil, limitErr("MaxMetaBytes", s.lim.MaxMetaBytes, "the %s entry is %d bytes", MetaName, hdr.Size)
	}
	meta := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, meta); err != nil {
		return nil, s.streamErr(err)
	}
	return meta, nil
}

// badEntry returns an InvalidArgument error about entry name.
func badEntry(name, format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, "archive entry %.200q: %s", name, fmt.Sprintf(format, args...))
}

// entry checks a tree entry against the limits and the entries before it.
func (s *scanner) entry(hdr *tar.Header) (*Entry, error) {
	if s.entries++; s.entries > s.lim.MaxEntries {
		return nil, limitErr("MaxEntries", int64(s.lim.MaxEntries), "the archive has more tree entries")
	}
	if hdr.Typeflag == tar.TypeReg {
		if s.bytes += hdr.Size; s.bytes > s.lim.MaxBytes {
			return nil, limitErr("MaxBytes", s.lim.MaxBytes, "file contents come to at least %d bytes", s.bytes)
		}
		if s.size > 0 && hdr.Size > s.allowed()-s.stream.n {
			// The compressed size is known: this file cannot fit.
			return nil, s.ratioErr()
		}
	} else if hdr.Size != 0 {
		return nil, badEntry(hdr.Name, "only a regular file has content")
	}
	name, err := treePath(hdr.Name)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(hdr.Name, "/") && hdr.Typeflag != tar.TypeDir {
		return nil, badEntry(hdr.Name, "only a directory name may end in '/'")
	}
	if hdr.Uid < 0 || hdr.Uid > maxID || hdr.Gid < 0 || hdr.Gid > maxID {
		return nil, badEntry(hdr.Name, "uid %d or gid %d is outside 0..%d", hdr.Uid, hdr.Gid, maxID)
	}
	e := &Entry{Path: name, Mode: fileMode(hdr), UID: hdr.Uid, GID: hdr.Gid, ModTime: hdr.ModTime}
	if name == "" {
		if hdr.Typeflag != tar.TypeDir || len(s.kinds) > 0 {
			return nil, badEntry(hdr.Name, "must be the first tree entry, a directory")
		}
		s.kinds[keyOf("")] = kindDir
		e.Type = TypeDir
		return e, nil
	}
	if len(s.kinds) == 0 {
		return nil, badEntry(hdr.Name, "comes before the %q entry", treePrefix)
	}
	key := keyOf(name)
	if _, dup := s.kinds[key]; dup {
		return nil, badEntry(hdr.Name, "appears twice")
	}
	if parent, _ := path.Split(name); s.kinds[keyOf(strings.TrimSuffix(parent, "/"))] != kindDir {
		return nil, badEntry(hdr.Name, "parent is not a directory of the archive")
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		e.Type, s.kinds[key] = TypeDir, kindDir
	case tar.TypeReg:
		e.Type, e.Size, s.kinds[key] = TypeFile, hdr.Size, kindFile
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) >= maxPathLen || strings.ContainsRune(hdr.Linkname, 0) {
			return nil, badEntry(hdr.Name, "symlink target is empty, too long or holds a NUL")
		}
		e.Type, e.Target, s.kinds[key] = TypeSymlink, hdr.Linkname, kindSymlink
	case tar.TypeLink:
		target, err := treePath(hdr.Linkname)
		if err != nil || s.kinds[keyOf(target)] != kindFile {
			return nil, badEntry(hdr.Name, "hard link target %.200q is not a regular file extracted earlier", hdr.Linkname)
		}
		e.Type, e.Target, s.kinds[key] = TypeHardlink, target, kindFile
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return nil, badEntry(hdr.Name, "device nodes and fifos are not allowed")
	default:
		return nil, badEntry(hdr.Name, "unsupported entry type %q", hdr.Typeflag)
	}
	return e, nil
}

// allowed returns how many decompressed bytes MaxRatio allows so far.
func (s *scanner) allowed() int64 {
	c := max(s.src.n, s.size, ratioFloor)
	if c > math.MaxInt64/int64(s.lim.MaxRatio) {
		return math.MaxInt64
	}
	return c * int64(s.lim.MaxRatio)
}

func (s *scanner) ratioErr() error {
	return limitErr("MaxRatio", int64(s.lim.MaxRatio), "it decompresses to more than %d bytes from %d compressed bytes (sizes under 1 MiB count as 1 MiB)",
		s.allowed(), max(s.src.n, s.size))
}

// streamErr classifies an error met while reading the archive: the
// context's error, the source reader's own error, or a malformed archive.
func (s *scanner) streamErr(err error) error {
	if ctxErr := s.ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if s.src.err != nil {
		return s.src.err
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
		if len(elem) > maxNameLen {
			return "", badEntry(name, "name has an element longer than %d bytes", maxNameLen)
		}
	}
	return rest, nil
}

// fileMode returns the permission, setuid, setgid and sticky bits of hdr.
func fileMode(hdr *tar.Header) fs.FileMode {
	return hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
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

// limitReader is the decompressed stream: it fails once ctx is done, once
// more than max bytes have been read, or once MaxRatio is exceeded.
type limitReader struct {
	r   io.Reader
	s   *scanner
	n   int64
	max int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if err := l.s.ctx.Err(); err != nil {
		return 0, err
	}
	if l.n >= l.max {
		return 0, errcode.New(errcode.InvalidArgument, "decompressed archive exceeds %d bytes, what MaxBytes, MaxMetaBytes and %d bytes of headers for each of MaxEntries allow", l.max, entryOverhead)
	}
	if int64(len(p)) > l.max-l.n {
		p = p[:l.max-l.n]
	}
	n, err := l.r.Read(p)
	if l.n += int64(n); l.n > l.s.allowed() {
		return 0, l.s.ratioErr()
	}
	return n, err
}

// contentReader is a regular file's content: its errors are classified
// as the archive's.
type contentReader struct {
	s *scanner
	r io.Reader
}

func (c *contentReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = c.s.streamErr(err)
	}
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
