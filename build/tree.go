package build

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/errcode"
)

// Epoch is the mtime of every entry a step creates or changes, so that
// the same recipe and inputs give the same archive.
var Epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// copyEntry is one entry a COPY or ADD writes: from, relative to its
// source root, to, relative to the root filesystem.
type copyEntry struct {
	from, to string
	mode     fs.FileMode
	target   string // a symlink's
	archive  bool   // ADD: a tar archive extracted into to
}

// plan lists what COPY or ADD copies from src (the build context if
// confine, else a stage's root filesystem) to dest, an absolute path in
// the image, and returns the digest of the sources' names, modes, targets
// and contents. Sources are relative paths or globs, without "..";
// a symlink in the context is copied as a symlink and must point inside
// it.
func plan(src *os.Root, srcs []string, dest string, confine, add bool, line int) ([]copyEntry, string, error) {
	destDir := strings.HasSuffix(dest, "/") || len(srcs) > 1
	dest = strings.TrimPrefix(path.Clean(dest), "/")
	var out []copyEntry
	h := sha256.New()
	for _, s := range srcs {
		if !confine { // a stage's root filesystem: absolute paths are in it
			s = "./" + strings.TrimLeft(s, "/")
		}
		if path.IsAbs(s) || s == ".." || strings.HasPrefix(s, "../") || strings.Contains(s, "/../") || strings.HasSuffix(s, "/..") {
			return nil, "", lineErr(line, "source %q leaves the build context: use a relative path without ..", s)
		}
		matches := []string{path.Clean(s)}
		var err error
		if strings.ContainsAny(s, `*?[\`) {
			matches, err = fs.Glob(src.FS(), matches[0])
		} else {
			_, err = src.Lstat(matches[0])
		}
		if err != nil || len(matches) == 0 {
			return nil, "", errcode.New(errcode.NotFound, "line %d: source %q: no such file in the build context", line, s)
		}
		destDir = destDir || len(matches) > 1
		for _, m := range matches {
			visit := func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(m, p)
				to := path.Join(dest, rel)
				if p == m && !d.IsDir() && destDir {
					to = path.Join(dest, path.Base(m))
				}
				e := copyEntry{from: p, to: to, mode: d.Type()}
				info, err := d.Info()
				if err != nil {
					return err
				}
				e.mode = info.Mode()
				switch {
				case d.Type()&fs.ModeSymlink != 0:
					if e.target, err = src.Readlink(p); err != nil {
						return err
					}
					if j := path.Join(path.Dir(p), e.target); confine && (path.IsAbs(e.target) || j == ".." || strings.HasPrefix(j, "../")) {
						return lineErr(line, "symlink %s points out of the build context (to %s)", p, e.target)
					}
					fmt.Fprintf(h, "l %q %q %q\n", p, to, e.target)
				case d.IsDir():
					fmt.Fprintf(h, "d %q %q %o\n", p, to, e.mode)
				case e.mode.IsRegular():
					sum, isTar, err := hashFile(src, p, add)
					if err != nil {
						return err
					}
					if e.archive = isTar; isTar {
						e.to = dest
					}
					fmt.Fprintf(h, "f %q %q %o %s %t\n", p, e.to, e.mode, sum, isTar)
				default:
					return lineErr(line, "%s is not a file, directory or symlink", p)
				}
				out = append(out, e)
				return nil
			}
			// WalkDir follows a symlink it starts at: visit one alone.
			info, err := src.Lstat(m)
			if err == nil && info.Mode()&fs.ModeSymlink != 0 {
				err = visit(m, fs.FileInfoToDirEntry(info), nil)
			} else if err == nil {
				err = fs.WalkDir(src.FS(), m, visit)
			}
			if err != nil {
				if errcode.Of(err) == errcode.Unknown {
					err = errcode.Syscall(err, "line %d: read %s", line, m)
				}
				return nil, "", err
			}
		}
	}
	return out, hex.EncodeToString(h.Sum(nil)), nil
}

// hashFile returns the sha256 of a file and, if sniff, whether it is a
// tar archive (plain or gzip), which ADD extracts.
func hashFile(r *os.Root, p string, sniff bool) (string, bool, error) {
	f, err := r.Open(p)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", false, err
	}
	isTar := false
	if sniff {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", false, err
		}
		tr, err := tarReader(f)
		if err == nil {
			_, err = tr.Next()
		}
		isTar = err == nil
	}
	return hex.EncodeToString(h.Sum(nil)), isTar, nil
}

// tarReader reads a plain or gzip-compressed tar stream.
func tarReader(r io.Reader) (*tar.Reader, error) {
	br := bufio.NewReader(r)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		return tar.NewReader(zr), nil
	}
	return tar.NewReader(br), nil
}

// apply writes the planned entries from src into dst, replacing files and
// symlinks in the way; nothing is written outside dst.
func apply(src, dst *os.Root, entries []copyEntry, line int) error {
	for _, e := range entries {
		if err := applyOne(src, dst, e, line); err != nil {
			if errcode.Of(err) == errcode.Unknown {
				err = errcode.Syscall(err, "line %d: copy %s to /%s", line, e.from, e.to)
			}
			return err
		}
	}
	return nil
}

func applyOne(src, dst *os.Root, e copyEntry, line int) error {
	if e.archive {
		f, err := src.Open(e.from)
		if err != nil {
			return err
		}
		defer f.Close()
		return extractTar(f, dst, e.to, line)
	}
	switch {
	case e.mode.IsDir():
		return mkdir(dst, e.to, e.mode.Perm())
	case e.mode&fs.ModeSymlink != 0:
		return writeEntry(dst, e.to, func() error { return dst.Symlink(e.target, e.to) })
	}
	f, err := src.Open(e.from)
	if err != nil {
		return err
	}
	defer f.Close()
	return writeFile(dst, e.to, e.mode.Perm()|e.mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), f)
}

// mkdir makes dir and its parents if missing, and gives dir perm.
func mkdir(r *os.Root, dir string, perm fs.FileMode) error {
	if dir == "" || dir == "." {
		return nil
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return r.Chmod(dir, perm)
}

// writeEntry makes name's parents and removes what is at name (but a
// directory), then runs create.
func writeEntry(r *os.Root, name string, create func() error) error {
	if err := r.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if info, err := r.Lstat(name); err == nil {
		if info.IsDir() {
			return fmt.Errorf("/%s is a directory", name)
		}
		if err := r.Remove(name); err != nil {
			return err
		}
	}
	return create()
}

func writeFile(r *os.Root, name string, mode fs.FileMode, content io.Reader) error {
	return writeEntry(r, name, func() error {
		f, err := r.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = r.Chmod(name, os.FileMode(mode))
		}
		return err
	})
}

// extractTar extracts a tar archive (ADD) into dir of r: directories,
// regular files, symlinks and hard links, with their permissions, owned
// by the builder. Names with ".." or absolute ones are refused.
func extractTar(f io.Reader, r *os.Root, dir string, line int) error {
	tr, err := tarReader(f)
	if err != nil {
		return lineErr(line, "ADD: %v", err)
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return lineErr(line, "ADD: %v", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if clean := path.Clean(name); path.IsAbs(name) || clean != name || name == "." || name == ".." || strings.HasPrefix(name, "../") {
			if name != "." && name != "" {
				return lineErr(line, "ADD: archive entry %q is not a clean relative path", hdr.Name)
			}
			continue
		}
		to := path.Join(dir, name)
		mode := fs.FileMode(hdr.Mode) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = mkdir(r, to, mode)
		case tar.TypeReg:
			err = writeFile(r, to, mode, tr)
		case tar.TypeSymlink:
			err = writeEntry(r, to, func() error { return r.Symlink(hdr.Linkname, to) })
		case tar.TypeLink:
			old := path.Clean(hdr.Linkname)
			if path.IsAbs(old) || old == ".." || strings.HasPrefix(old, "../") {
				return lineErr(line, "ADD: hard link %q to %q leaves the archive", hdr.Name, hdr.Linkname)
			}
			err = writeEntry(r, to, func() error { return r.Link(path.Join(dir, old), to) })
		default:
			return lineErr(line, "ADD: archive entry %q has a type (%c) ADD does not extract", hdr.Name, hdr.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

// clamp sets to Epoch the mtime of every entry under dir changed since
// since, without following symlinks.
func clamp(dir string, since time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(Epoch.UnixNano()), unix.NsecToTimespec(Epoch.UnixNano())}
	since = since.Truncate(time.Second)
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil || info.ModTime().Before(since) {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}
