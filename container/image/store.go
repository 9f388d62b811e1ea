package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Store is a server's image store, a directory holding
//
//	blobs/sha256/<hex>      archives, named by their digest
//	manifests/<name>.json   one Manifest per image name
//	tmp/                    blobs being received
//
// Several names may share a blob. A reference to an image is its name or
// its full digest "sha256:<hex>". Every blob in the store is an archive
// that passed the store's limits when it was put. A Store is safe for
// concurrent use; files appear by atomic rename, so a crash leaves at most
// a stray file in tmp/. Only one Store may manage a directory at a time.
type Store struct {
	dir    string
	limits Limits
	mu     sync.Mutex // serializes changes to manifests and blobs
}

// StoreOptions configure a Store. A nil *StoreOptions means the defaults.
type StoreOptions struct {
	// Limits bound the archives the store takes in (Put) and unpacks
	// (Unpack). Zero fields take the DefaultLimits values.
	Limits Limits
}

// OpenStore opens the store in dir, creating the directory if missing.
func OpenStore(dir string, opts *StoreOptions) (*Store, error) {
	if dir == "" {
		return nil, errcode.New(errcode.InvalidArgument, "open image store: empty directory name")
	}
	for _, d := range []string{"blobs/sha256", "manifests", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("open image store: %w", fsErr(err))
		}
	}
	s := &Store{dir: dir}
	if opts != nil {
		s.limits = opts.Limits
	}
	s.limits = s.limits.orDefault()
	return s, nil
}

func (s *Store) blobPath(digest string) string {
	return filepath.Join(s.dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

func (s *Store) manifestPath(name string) string {
	return filepath.Join(s.dir, "manifests", name+".json")
}

// Put stores blob, an archive, as the image m.Name. It streams blob to a
// temporary file while hashing it and reading it as ScanArchive does, with
// the store's limits, then fills in m.Digest and m.Size; if the caller set
// them, they must match. A blob that is not a valid archive within the
// limits, or does not match, is refused with code errcode.InvalidArgument,
// and nothing is kept. A zero m.Created becomes the current time and an empty
// m.Arch the running GOARCH. If m.Name exists with the same digest, Put
// does nothing and returns the stored manifest (without reading blob when
// m.Digest was given); with another digest the error has code
// errcode.AlreadyExists.
func (s *Store) Put(ctx context.Context, m Manifest, blob io.Reader) (*Manifest, error) {
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	if m.Arch == "" {
		m.Arch = runtime.GOARCH
	}
	if err := m.validate(false); err != nil {
		return nil, fmt.Errorf("put image: %w", err)
	}
	if m.Digest != "" {
		// Known digest: settle an existing name without reading blob.
		if old, err := s.existing(&m); old != nil || err != nil {
			return old, err
		}
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "blob-")
	if err != nil {
		return nil, fmt.Errorf("put image %s: %w", m.Name, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	h := sha256.New()
	// One pass: what the reader checks is what is written and hashed.
	body := io.TeeReader(&ctxReader{ctx: ctx, r: blob}, io.MultiWriter(tmp, h))
	_, err = scanArchive(ctx, body, scanOptions{lim: s.limits}, nil)
	var n int64
	if err == nil {
		n, err = tmp.Seek(0, io.SeekCurrent)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("put image %s: %w", m.Name, err)
	}
	digest := digestOf(h)
	if m.Digest != "" && m.Digest != digest {
		return nil, errcode.New(errcode.InvalidArgument, "put image %s: blob digest is %s, not %s", m.Name, digest, m.Digest)
	}
	if m.Size != 0 && m.Size != n {
		return nil, errcode.New(errcode.InvalidArgument, "put image %s: blob is %d bytes, not %d", m.Name, n, m.Size)
	}
	m.Digest, m.Size = digest, n

	s.mu.Lock()
	defer s.mu.Unlock()
	if old, err := s.existing(&m); old != nil || err != nil {
		return old, err
	}
	blobPath := s.blobPath(m.Digest)
	_, err = os.Stat(blobPath)
	newBlob := errors.Is(err, fs.ErrNotExist)
	if newBlob {
		err = os.Rename(tmp.Name(), blobPath)
	}
	if err != nil {
		return nil, fmt.Errorf("put image %s: %w", m.Name, err)
	}
	data, err := json.MarshalIndent(&m, "", "  ")
	if err == nil {
		err = renameio.WriteFile(s.manifestPath(m.Name), append(data, '\n'), 0o644)
	}
	if err != nil {
		if newBlob {
			os.Remove(blobPath)
		}
		return nil, fmt.Errorf("put image %s: %w", m.Name, err)
	}
	return &m, nil
}

// existing returns the stored manifest of m.Name if it has m.Digest, an
// AlreadyExists error if it has another, and nil, nil if there is none.
func (s *Store) existing(m *Manifest) (*Manifest, error) {
	old, err := s.readManifest(m.Name)
	switch {
	case err == nil && old.Digest == m.Digest:
		return old, nil
	case err == nil:
		return nil, errcode.New(errcode.AlreadyExists, "put image %s: the name is taken by %s", m.Name, old.Digest)
	case errors.Is(err, errcode.NotFound):
		return nil, nil
	}
	return nil, err
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// readManifest reads the manifest of name; errcode.NotFound if missing.
func (s *Store) readManifest(name string) (*Manifest, error) {
	data, err := os.ReadFile(s.manifestPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errcode.New(errcode.NotFound, "image %s not found", name)
	}
	if err != nil {
		return nil, err
	}
	m := new(Manifest)
	if err := json.Unmarshal(data, m); err != nil {
		return nil, errcode.New(errcode.Internal, "image %s: corrupt manifest: %w", name, err)
	}
	if err := m.Validate(); err != nil || m.Name != name {
		return nil, errcode.New(errcode.Internal, "image %s: corrupt manifest: %v", name, err)
	}
	return m, nil
}

// list returns all manifests, sorted by name.
func (s *Store) list() ([]*Manifest, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "manifests"))
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || names.Label(name) != nil {
			continue // renameio's temporary files
		}
		m, err := s.readManifest(name)
		if errors.Is(err, errcode.NotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b *Manifest) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// resolve returns the manifests ref names: one for a name, every one with
// that blob for a digest.
func (s *Store) resolve(ref string) ([]*Manifest, error) {
	if !strings.HasPrefix(ref, "sha256:") {
		if err := names.Label(ref); err != nil {
			return nil, errcode.New(errcode.InvalidArgument, "image reference %.80q is neither a name nor a sha256 digest: %w", ref, err)
		}
		m, err := s.readManifest(ref)
		if err != nil {
			return nil, err
		}
		return []*Manifest{m}, nil
	}
	if err := validDigest(ref); err != nil {
		return nil, err
	}
	all, err := s.list()
	if err != nil {
		return nil, err
	}
	all = slices.DeleteFunc(all, func(m *Manifest) bool { return m.Digest != ref })
	if len(all) == 0 {
		return nil, errcode.New(errcode.NotFound, "image %s not found", ref)
	}
	return all, nil
}

// Get returns the manifest of ref, a name or a digest (then the first of
// the names sharing that blob). Unknown: errcode.NotFound.
func (s *Store) Get(ctx context.Context, ref string) (*Manifest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ms, err := s.resolve(ref)
	if err != nil {
		return nil, err
	}
	return ms[0], nil
}

// List returns every image, sorted by name.
func (s *Store) List(ctx context.Context) ([]*Manifest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.list()
}

// Delete removes the image ref: one name, or for a digest every name of
// that blob. The blob goes once no name refers to it. Unknown:
// errcode.NotFound.
func (s *Store) Delete(ctx context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ms, err := s.resolve(ref)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := os.Remove(s.manifestPath(m.Name)); err != nil {
			return fmt.Errorf("delete image %s: %w", m.Name, err)
		}
	}
	rest, err := s.list()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(rest, func(m *Manifest) bool { return m.Digest == ms[0].Digest }) {
		if err := os.Remove(s.blobPath(ms[0].Digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete image %s: %w", ref, err)
		}
	}
	return nil
}

// Open returns the manifest of ref and its blob, for transfer; the caller
// closes the blob. The receiving side checks the digest (Put with
// m.Digest set). Unknown: errcode.NotFound.
func (s *Store) Open(ctx context.Context, ref string) (*Manifest, io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ms, err := s.resolve(ref)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.Open(s.blobPath(ms[0].Digest))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, errcode.New(errcode.Internal, "image %s: blob %s is missing", ms[0].Name, ms[0].Digest)
	}
	if err != nil {
		return nil, nil, err
	}
	return ms[0], f, nil
}

// Unpack extracts the image ref into dst as ReadArchive does, with the
// store's limits, and checks the blob's digest and size while reading. The
// manifest's Size is the compressed size for Limits.MaxRatio, so a file
// that cannot fit is refused before a byte of it is written. A blob over
// the limits (the store's limits were lowered since Put) gives
// errcode.InvalidArgument, naming the limit; a blob that no longer matches
// its manifest gives errcode.Internal. dst is left as ReadArchive leaves
// it on error. Unknown ref: errcode.NotFound.
func (s *Store) Unpack(ctx context.Context, ref string, dst string) (*Manifest, error) {
	m, _, err := s.unpack(ctx, ref, dst)
	return m, err
}

// unpack is Unpack; written is the number of content bytes it wrote.
func (s *Store) unpack(ctx context.Context, ref string, dst string) (*Manifest, int64, error) {
	m, f, err := s.Open(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	h := sha256.New()
	r := io.TeeReader(f, h)
	verify := func() error {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
		if digestOf(h) != m.Digest {
			return errcode.New(errcode.Internal, "image %s: blob %s is corrupt: its content hashes to %s", m.Name, m.Digest, digestOf(h))
		}
		return nil
	}
	_, written, err := readArchive(ctx, r, dst, scanOptions{lim: s.limits, size: m.Size}, verify)
	if errors.Is(err, errcode.InvalidArgument) {
		// A blob that passed Put is well formed: report corruption as such.
		if verr := verify(); verr != nil {
			err = verr
		}
	}
	if err != nil {
		return nil, written, fmt.Errorf("unpack image %s: %w", m.Name, err)
	}
	return m, written, nil
}
