package image

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
)

// MetaName is the name of the optional first archive entry, which holds the
// caller's metadata (an image or container description) verbatim.
const MetaName = "muster.json"

// treePrefix is the directory every tree entry of an archive lives under.
const treePrefix = "rootfs/"

// WriteArchive writes the tree at root to w as a zstd-compressed tar. If
// meta is not nil, the first entry is a regular file named MetaName holding
// meta. The tree follows as entries under "rootfs/", starting with
// "rootfs/" itself, in lexical walk order. Regular files, directories,
// symlinks and hard links (a second path of the same inode) are written
// with their mode, uid, gid and mtime (whole seconds); sockets, fifos and
// device nodes are skipped. Files are read through an os.Root, so a tree
// that changes during the walk cannot make WriteArchive read outside root.
// progress, if not nil, is called on the calling goroutine with the total
// bytes written to w so far. An error leaves w with an incomplete stream
// that ReadArchive rejects.
func WriteArchive(ctx context.Context, w io.Writer, root string, meta []byte, progress func(written int64)) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fsErr(err)
	}
	defer r.Close()
	return writeTree(ctx, w, r, meta, progress, nil)
}

// writeTree writes the tree of r: every entry if pass is nil, else a
// pre-copy pass's (see WriteChanges).
func writeTree(ctx context.Context, w io.Writer, r *os.Root, meta []byte, progress func(written int64), pass *changeFilter) (err error) {
	aw, err := newArchiveWriter(&progressWriter{w: w, fn: progress}, meta)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			aw.abort()
		}
	}()
	links := make(map[fileID]string)
	err = fs.WalkDir(r.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			err = ctx.Err()
		}
		var info fs.FileInfo
		if err == nil {
			info, err = d.Info()
		}
		var hdr *tar.Header
		if err == nil {
			hdr, err = treeHeader(r, p, info, links)
		}
		if pass != nil && vanished(err) && p != "." {
			return nil // gone: the next pass sends what replaced it
		}
		if hdr == nil || err != nil {
			return err
		}
		if pass != nil && pass.skip(treeKey(p), hdr, info.Sys().(*syscall.Stat_t)) {
			return nil
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
			return aw.add(hdr, nil)
		}
		f, err := openSame(r, p, info)
		if err != nil {
			return err
		}
		if f == nil {
			if pass == nil {
				return fmt.Errorf("%s changed while being archived", p)
			}
			delete(links, inode(info)) // the next pass sends what replaced it
			return nil
		}
		defer f.Close()
		if pass != nil {
			return aw.add(hdr, io.MultiReader(f, zeros{}))
		}
		return aw.add(hdr, f)
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", r.Name(), err)
	}
	return aw.close()
}

// openSame opens the file at p if it is still the one info describes,
// else returns nil.
func openSame(r *os.Root, p string, info fs.FileInfo) (*os.File, error) {
	f, err := r.Open(p)
	if vanished(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil || !os.SameFile(fi, info) {
		f.Close()
		return nil, err
	}
	return f, nil
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

type fileID struct{ dev, ino uint64 }

func inode(info fs.FileInfo) fileID {
	st := info.Sys().(*syscall.Stat_t)
	return fileID{uint64(st.Dev), st.Ino}
}

// treeHeader returns the tar header of the file at p, or nil for a file
// type that is not archived. links, if not nil, maps inodes with several links to the
// entry name they were first written as.
func treeHeader(r *os.Root, p string, info fs.FileInfo, links map[fileID]string) (*tar.Header, error) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no stat information", p)
	}
	hdr := &tar.Header{
		Name:    treePrefix,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: info.ModTime().Truncate(time.Second),
	}
	if p != "." {
		hdr.Name += p
	}
	switch mode := info.Mode(); {
	case mode.IsDir():
		hdr.Typeflag = tar.TypeDir
		if p != "." {
			hdr.Name += "/"
		}
	case mode.IsRegular():
		hdr.Typeflag = tar.TypeReg
		hdr.Size = info.Size()
		if st.Nlink > 1 && links != nil {
			id := inode(info)
			if first, ok := links[id]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[id] = hdr.Name
			}
		}
	case mode&fs.ModeSymlink != 0:
		target, err := r.Readlink(p)
		if err != nil {
			return nil, err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	default:
		return nil, nil
	}
	return hdr, nil
}

// archiveWriter writes the archive format; WriteArchive feeds it a tree on
// disk, BuildBase a tree made in memory.
type archiveWriter struct {
	zw *zstd.Encoder
	tw *tar.Writer
}

func newArchiveWriter(w io.Writer, meta []byte) (*archiveWriter, error) {
	// Synchronous encoding: w is only written from the caller's goroutine,
	// and the output does not depend on GOMAXPROCS.
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	aw := &archiveWriter{zw: zw, tw: tar.NewWriter(zw)}
	if meta != nil {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: MetaName, Mode: 0o644, Size: int64(len(meta)), ModTime: time.Unix(0, 0)}
		if err := aw.add(hdr, strings.NewReader(string(meta))); err != nil {
			aw.abort()
			return nil, err
		}
	}
	return aw, nil
}

// add writes hdr and hdr.Size bytes of body.
func (a *archiveWriter) add(hdr *tar.Header, body io.Reader) error {
	if err := a.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Size > 0 {
		if _, err := io.CopyN(a.tw, body, hdr.Size); err != nil {
			if err == io.EOF {
				err = fmt.Errorf("%s shrank while being archived", hdr.Name)
			}
			return err
		}
	}
	return nil
}

// close ends the tar stream and the zstd frame. After an error the
// caller calls abort.
func (a *archiveWriter) close() error {
	if err := a.tw.Close(); err != nil {
		return err
	}
	return a.zw.Close()
}

// abort releases the encoder without completing the frame, so a failed
// write never looks like a complete archive.
func (a *archiveWriter) abort() {
	a.zw.Reset(io.Discard)
	a.zw.Close()
}

// progressWriter counts the bytes written and reports the total to fn.
type progressWriter struct {
	w  io.Writer
	fn func(int64)
	n  int64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n += int64(n)
	if p.fn != nil && n > 0 {
		p.fn(p.n)
	}
	return n, err
}
