// Package imagetest builds archives of package image's format by hand, for
// the tests of everything that reads them (image.ReadArchive,
// image.ScanArchive, image.Store, in-memory drivers): hostile archives
// that every reader must refuse, and a decompression bomb.
package imagetest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/musterkit/muster/container/image"
)

// OutsidePath is an absolute path that hostile archives try to reach;
// nothing may ever create it.
const OutsidePath = "/tmp/muster-image-test-outside"

// Entry is one tar entry of a hand-made archive; Body is the content
// (Header.Size defaults to its length).
type Entry struct {
	Header tar.Header
	Body   []byte
}

// Dir returns a directory entry; name should end in '/'.
func Dir(name string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

// File returns a regular file entry.
func File(name, body string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, Body: []byte(body)}
}

// Symlink returns a symlink entry.
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// Hardlink returns a hard link entry.
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

// Node returns a device node or fifo entry of type typ.
func Node(name string, typ byte) Entry {
	return Entry{Header: tar.Header{Typeflag: typ, Name: name, Mode: 0o666, Devmajor: 1, Devminor: 3}}
}

// Tar writes entries as an uncompressed tar stream.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if h.Size == 0 {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var encoder = sync.OnceValue(func() *zstd.Encoder {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		panic(err)
	}
	return enc
})

// Compress compresses data as one zstd frame.
func Compress(data []byte) []byte { return encoder().EncodeAll(data, nil) }

// Archive returns entries as a compressed archive.
func Archive(t testing.TB, entries ...Entry) []byte { return Compress(Tar(t, entries...)) }

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Bomb returns a well-formed archive holding one file of 1 GiB of zeros,
// about 210 KB compressed. It is built once per process.
var Bomb = sync.OnceValue(func() []byte {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		panic(err)
	}
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "rootfs/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "rootfs/zeros", Mode: 0o644, Size: 1 << 30})
	if _, err := io.CopyN(tw, zeros{}, 1<<30); err != nil {
		panic(err)
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
})

// Hostile is an archive that every reader must refuse with code
// errcode.InvalidArgument, with Limits (zero fields: the defaults).
type Hostile struct {
	Name   string
	Data   []byte // compressed archive
	Limits image.Limits
	// Reason is part of the error message: the check that refuses it.
	Reason string
}

// HostileArchives returns the archives that every reader must refuse,
// without writing anything outside its destination. Relative escape
// attempts aim at ../sentinel, a sibling of the destination.
func HostileArchives(t testing.TB) []Hostile {
	arc := func(entries ...Entry) []byte { return Archive(t, entries...) }
	root := Dir("rootfs/")
	many := []Entry{root}
	for i := range 200 {
		many = append(many, File("rootfs/f"+strings.Repeat("x", i%50)+string(rune('a'+i%26))+string(rune('a'+i/26)), ""))
	}
	valid := arc(root, Dir("rootfs/etc/"), File("rootfs/etc/hosts", strings.Repeat("127.0.0.1 localhost\n", 5000)))
	paxBomb := root
	paxBomb.Header.PAXRecords = map[string]string{"comment": strings.Repeat("z", 200<<10)}
	withIDs := func(e Entry, uid, gid int) Entry { e.Header.Uid, e.Header.Gid = uid, gid; return e }
	// tar.Writer writes no content for a directory: made by hand.
	dirWithContent := withRoot(t, slices.Concat(ustar("rootfs/d/", tar.TypeDir, 6, "ustar\x0000"), pad([]byte("hidden"))))
	junkAfterTar := append(Tar(t, root, File("rootfs/x", "x")), "junk that another tar might read"...)
	const (
		notUnder = "not under"
		element  = `empty, "." or ".." element`
		parent   = "parent is not a directory"
		twice    = "appears twice"
		hardlink = "hard link target"
		device   = "device nodes and fifos"
	)
	return []Hostile{
		{Name: "dotdot", Data: arc(root, File("../x", "pwn")), Reason: notUnder},
		{Name: "rootfs-dotdot", Data: arc(root, File("rootfs/../../x", "pwn")), Reason: element},
		{Name: "inner-dotdot", Data: arc(root, Dir("rootfs/a/"), File("rootfs/a/../../sentinel/pwn", "pwn")), Reason: element},
		{Name: "dot-element", Data: arc(root, File("rootfs/./x", "pwn")), Reason: element},
		{Name: "empty-element", Data: arc(root, File("rootfs//x", "pwn")), Reason: element},
		{Name: "name-10000-bytes", Data: arc(root, File("rootfs/"+strings.Repeat("a/", 5000)+"x", "pwn")), Reason: "longer than 4096 bytes"},
		{Name: "element-256-bytes", Data: arc(root, File("rootfs/"+strings.Repeat("a", 256), "pwn")), Reason: "element longer than 255 bytes"},
		{Name: "absolute", Data: arc(root, File(OutsidePath, "pwn")), Reason: notUnder},
		{Name: "absolute-rootfs", Data: arc(root, File("/rootfs/x", "pwn")), Reason: notUnder},
		{Name: "outside-rootfs", Data: arc(root, File("other/x", "pwn")), Reason: notUnder},
		{Name: "rootfs-prefix", Data: arc(root, File("rootfsx", "pwn")), Reason: notUnder},
		{Name: "no-rootfs-entry", Data: arc(File("rootfs/x", "pwn")), Reason: "comes before"},
		{Name: "rootfs-not-first", Data: arc(Dir("rootfs/a/"), root), Reason: "comes before"},
		{Name: "rootfs-twice", Data: arc(root, root), Reason: "must be the first tree entry"},
		{Name: "rootfs-not-dir", Data: arc(File("rootfs", "")), Reason: "must be the first tree entry"},
		{Name: "missing-parent", Data: arc(root, File("rootfs/a/b", "pwn")), Reason: parent},
		{Name: "symlink-absolute-write", Data: arc(root, Symlink("rootfs/evil", OutsidePath), File("rootfs/evil/pwn", "pwn")), Reason: parent},
		{Name: "symlink-relative-write", Data: arc(root, Symlink("rootfs/evil", "../sentinel"), File("rootfs/evil/pwn", "pwn")), Reason: parent},
		{Name: "symlink-dotdot-chain", Data: arc(root, Symlink("rootfs/a", ".."), Symlink("rootfs/a/b", ".."), File("rootfs/a/b/sentinel/pwn", "pwn")), Reason: parent},
		{Name: "symlink-then-dir", Data: arc(root, Symlink("rootfs/evil", "../sentinel"), Dir("rootfs/evil/"), File("rootfs/evil/pwn", "pwn")), Reason: twice},
		{Name: "symlink-then-file", Data: arc(root, Symlink("rootfs/evil", "../sentinel/keep"), File("rootfs/evil", "pwn")), Reason: twice},
		{Name: "symlink-hardlinked", Data: arc(root, Symlink("rootfs/evil", "../sentinel/keep"), Hardlink("rootfs/h", "rootfs/evil")), Reason: hardlink},
		{Name: "symlink-target-4096-bytes", Data: arc(root, Symlink("rootfs/long", strings.Repeat("a/", 2048))), Reason: "symlink target is empty, too long"},
		{Name: "file-under-file", Data: arc(root, File("rootfs/f", "x"), File("rootfs/f/x", "pwn")), Reason: parent},
		{Name: "duplicate", Data: arc(root, File("rootfs/f", "x"), File("rootfs/f", "y")), Reason: twice},
		{Name: "hardlink-etc-passwd", Data: arc(root, Hardlink("rootfs/h", "/etc/passwd")), Reason: hardlink},
		{Name: "hardlink-dotdot", Data: arc(root, Hardlink("rootfs/h", "../sentinel/keep")), Reason: hardlink},
		{Name: "hardlink-rootfs-dotdot", Data: arc(root, Hardlink("rootfs/h", "rootfs/../sentinel/keep")), Reason: hardlink},
		{Name: "hardlink-forward", Data: arc(root, Hardlink("rootfs/h", "rootfs/later"), File("rootfs/later", "x")), Reason: hardlink},
		{Name: "hardlink-dir", Data: arc(root, Dir("rootfs/d/"), Hardlink("rootfs/h", "rootfs/d")), Reason: hardlink},
		{Name: "char-device", Data: arc(root, Node("rootfs/null", tar.TypeChar)), Reason: device},
		{Name: "block-device", Data: arc(root, Node("rootfs/sda", tar.TypeBlock)), Reason: device},
		{Name: "fifo", Data: arc(root, Node("rootfs/fifo", tar.TypeFifo)), Reason: device},
		{Name: "global-header", Data: arc(root, Entry{Header: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}}}), Reason: notUnder},
		{Name: "dir-with-content", Data: Compress(dirWithContent), Reason: "only a regular file has content"},
		{Name: "pax-uid-2^32", Data: arc(root, withIDs(File("rootfs/suid", "x"), 1<<32, 0)), Reason: "uid 4294967296 or gid 0 is outside 0..4294967294"},
		{Name: "pax-gid-2^32", Data: arc(root, withIDs(Dir("rootfs/d/"), 0, 1<<32)), Reason: "gid 4294967296"},
		{Name: "pax-uid-2^32-1", Data: arc(root, withIDs(Symlink("rootfs/l", "x"), 1<<32-1, 0)), Reason: "uid 4294967295"},
		{Name: "pax-uid-negative", Data: arc(root, withIDs(File("rootfs/f", "x"), -1, 0)), Reason: "uid -1"},
		{Name: "pax-sparse", Data: Compress(sparseTar(t)), Reason: "sparse files are not allowed"},
		{Name: "gnu-sparse", Data: Compress(oldGNUSparseTar(t)), Reason: "only a regular file has content"},
		{Name: "bomb-total-bytes", Data: arc(root, File("rootfs/a", strings.Repeat("a", 600<<10)), File("rootfs/b", strings.Repeat("b", 600<<10))), Limits: image.Limits{MaxBytes: 1 << 20}, Reason: "MaxBytes = 1048576"},
		{Name: "bomb-entries", Data: arc(many...), Limits: image.Limits{MaxEntries: 100}, Reason: "MaxEntries = 100"},
		{Name: "bomb-pax-headers", Data: arc(paxBomb), Limits: image.Limits{MaxBytes: 1, MaxEntries: 1, MaxMetaBytes: 1}, Reason: "decompressed archive exceeds"},
		{Name: "bomb-1GiB", Data: Bomb(), Limits: image.Limits{MaxBytes: 1 << 20}, Reason: "MaxBytes = 1048576"},
		{Name: "bomb-ratio", Data: Bomb(), Limits: image.Limits{MaxRatio: 2}, Reason: "MaxRatio = 2"},
		{Name: "meta-oversized", Data: arc(File(image.MetaName, strings.Repeat("m", 2<<20)), root), Reason: "MaxMetaBytes = 1048576"},
		{Name: "meta-late", Data: arc(root, File(image.MetaName, "{}")), Reason: notUnder},
		{Name: "meta-twice", Data: arc(File(image.MetaName, "{}"), File(image.MetaName, "{}"), root), Reason: notUnder},
		{Name: "truncated", Data: valid[:len(valid)/2], Reason: "malformed archive"},
		{Name: "trailing-garbage", Data: append(slices.Clip(valid), "garbage"...), Reason: "malformed archive"},
		{Name: "data-after-tar", Data: Compress(junkAfterTar), Reason: "data after the end of the tar stream"},
		{Name: "not-zstd", Data: []byte("this is not a zstd stream, just some garbage bytes"), Reason: "malformed archive"},
		{Name: "uncompressed-tar", Data: Tar(t, root, File("rootfs/x", "x")), Reason: "malformed archive"},
		{Name: "empty-input", Data: nil, Reason: "has no"},
		{Name: "empty-archive", Data: arc(), Reason: "has no"},
	}
}

// sparseTar returns a tar stream whose rootfs/sparse is a GNU PAX 1.0
// sparse file: 1 GiB of holes and one byte, in about 3 KB. tar.Writer
// writes no sparse files, so the entry is made by hand.
func sparseTar(t testing.TB) []byte {
	records := ""
	for _, kv := range [][2]string{
		{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"},
		{"GNU.sparse.name", "rootfs/sparse"}, {"GNU.sparse.realsize", "1073741825"},
	} {
		records += paxRecord(kv[0], kv[1])
	}
	data := string(pad([]byte("1\n1073741824\n1\n"))) + "x" // map: one byte at 1 GiB
	raw := slices.Concat(
		ustar("rootfs/PaxHeaders/sparse", tar.TypeXHeader, len(records), "ustar\x0000"), pad([]byte(records)),
		ustar("rootfs/GNUSparseFile.0/sparse", tar.TypeReg, len(data), "ustar\x0000"), pad([]byte(data)))
	return withRoot(t, raw)
}

// oldGNUSparseTar returns a tar stream whose rootfs/sparse is an old GNU
// sparse file ('S'): 1 GiB of holes and one byte.
func oldGNUSparseTar(t testing.TB) []byte {
	hdr := ustar("rootfs/sparse", tar.TypeGNUSparse, 1, "ustar  \x00")
	copy(hdr[386:], fmt.Sprintf("%011o\x00%011o\x00", 1<<30, 1)) // offset, length of the one data block
	copy(hdr[483:], fmt.Sprintf("%011o\x00", 1<<30+1))           // real size
	checksum(hdr)
	return withRoot(t, slices.Concat(hdr, pad([]byte("x"))))
}

// withRoot returns a tar stream of the "rootfs/" entry, raw blocks, and
// the end of the archive.
func withRoot(t testing.TB, raw []byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	root := Dir("rootfs/")
	if err := tw.WriteHeader(&root.Header); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	buf.Write(raw)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ustar returns a header block with the given name, type, size and magic
// ("ustar\x0000" for POSIX, "ustar  \x00" for GNU).
func ustar(name string, typ byte, size int, magic string) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typ
	copy(b[257:], magic)
	checksum(b)
	return b
}

// checksum fills in a header block's checksum.
func checksum(b []byte) {
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// paxRecord returns "<length> key=value\n", the length counting itself.
func paxRecord(k, v string) string {
	n := len(k) + len(v) + 3
	for n != len(fmt.Sprint(n))+len(k)+len(v)+3 {
		n = len(fmt.Sprint(n)) + len(k) + len(v) + 3
	}
	return fmt.Sprintf("%d %s=%s\n", n, k, v)
}

// pad pads b with zeros to a multiple of 512 bytes.
func pad(b []byte) []byte {
	return append(b, make([]byte, (512-len(b)%512)%512)...)
}
