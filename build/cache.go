package build

import (
	"cmp"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/musterkit/muster/errcode"
)

// Cache keeps root filesystems (image archives) under content keys in a
// directory on the machine that builds. A key is the hex sha256 of a
// step's parent key, its instruction and the digests of its inputs, so an
// entry never changes once written. It is safe for concurrent use by
// builds in one or several processes: entries appear by an atomic rename.
type Cache struct {
	dir string
}

// OpenCache opens (creating it) a cache directory.
func OpenCache(dir string) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errcode.Syscall(err, "build cache %s", dir)
	}
	return &Cache{dir: dir}, nil
}

func (c *Cache) path(key string) string { return filepath.Join(c.dir, key+".tar.zst") }

// has reports whether key is cached, and marks it used for GC.
func (c *Cache) has(key string) bool {
	now := time.Now()
	return os.Chtimes(c.path(key), now, now) == nil
}

// open returns the archive cached under key.
func (c *Cache) open(key string) (*os.File, error) {
	f, err := os.Open(c.path(key))
	if err != nil {
		return nil, errcode.Syscall(err, "build cache entry %s", key)
	}
	return f, nil
}

// put stores what write writes under key; on error nothing is stored.
func (c *Cache) put(key string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(c.dir, ".tmp-*")
	if err != nil {
		return errcode.Syscall(err, "build cache")
	}
	defer os.Remove(f.Name())
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), c.path(key))
}

// GCOptions bound what a cache keeps; a zero field does not bound.
type GCOptions struct {
	// MaxAge removes entries not used for longer.
	MaxAge time.Duration
	// MaxBytes removes the least recently used entries until the rest
	// take at most this many bytes.
	MaxBytes int64
}

// GCResult says what GC removed.
type GCResult struct {
	Removed int
	Freed   int64
	Kept    int
	Bytes   int64 // kept
}

// GC removes entries unused for longer than MaxAge, then the least
// recently used ones until the rest fit in MaxBytes, and leftovers of
// interrupted writes older than an hour.
func (c *Cache) GC(ctx context.Context, opts GCOptions) (*GCResult, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, errcode.Syscall(err, "build cache %s", c.dir)
	}
	type entry struct {
		name string
		used time.Time
		size int64
	}
	var live []entry
	res := &GCResult{}
	now := time.Now()
	remove := func(e entry) {
		if os.Remove(filepath.Join(c.dir, e.name)) == nil {
			res.Removed++
			res.Freed += e.size
		}
	}
	for _, d := range ents {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		info, err := d.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		e := entry{d.Name(), info.ModTime(), info.Size()}
		switch {
		case strings.HasPrefix(e.name, ".tmp-"):
			if now.Sub(e.used) > time.Hour {
				remove(e)
			}
		case opts.MaxAge > 0 && now.Sub(e.used) > opts.MaxAge:
			remove(e)
		default:
			live = append(live, e)
			res.Bytes += e.size
		}
	}
	slices.SortFunc(live, func(a, b entry) int { return cmp.Or(a.used.Compare(b.used), strings.Compare(a.name, b.name)) })
	for _, e := range live {
		if opts.MaxBytes <= 0 || res.Bytes <= opts.MaxBytes {
			res.Kept++
			continue
		}
		res.Bytes -= e.size
		remove(e)
	}
	return res, nil
}
