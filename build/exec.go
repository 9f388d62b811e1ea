package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
)

// maxOutput is how much of a failed step's output its StepError keeps.
const maxOutput = 64 << 10

// stageIndex returns the index of the built stage named name, or -1.
func (x *run) stageIndex(name string) int {
	return slices.IndexFunc(x.recipe.Stages[:len(x.stages)], func(s *Stage) bool { return s.Name != "" && s.Name == name })
}

// openTree streams s's root filesystem: from the cache, or from the
// server's store for a FROM image (then cached).
func (x *run) openTree(ctx context.Context, s *state) (io.ReadCloser, error) {
	if x.opts.Cache.has(s.key) {
		return x.opts.Cache.open(s.key)
	}
	if s.ref == "" {
		return nil, errcode.New(errcode.NotFound, "build cache entry %s was removed during the build", s.key)
	}
	_, rc, err := x.srv.OpenImage(ctx, s.ref)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if err := x.opts.Cache.put(s.key, func(w io.Writer) error { _, err := io.Copy(w, rc); return err }); err != nil {
		return nil, err
	}
	return x.opts.Cache.open(s.key)
}

// extract writes s's root filesystem into dir.
func (x *run) extract(ctx context.Context, s *state, dir string) error {
	rc, err := x.openTree(ctx, s)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = image.ReadArchive(ctx, rc, dir, x.opts.Limits, nil)
	return err
}

// store extracts src into a temporary tree, lets change edit it (through
// an os.Root), sets the mtime of what changed since since to Epoch, and
// caches the tree under key with meta.
func (x *run) store(ctx context.Context, key string, src io.Reader, since time.Time, meta []byte, change func(*os.Root) error) error {
	dir, err := os.MkdirTemp(x.opts.TempDir, "muster-build-")
	if err != nil {
		return errcode.Syscall(err, "build temp dir")
	}
	defer os.RemoveAll(dir)
	rootfs := filepath.Join(dir, "rootfs")
	if _, err := image.ReadArchive(ctx, src, rootfs, x.opts.Limits, nil); err != nil {
		return err
	}
	if since.IsZero() {
		since = time.Now()
	}
	if change != nil {
		root, err := os.OpenRoot(rootfs)
		if err != nil {
			return errcode.Syscall(err, "build tree")
		}
		err = change(root)
		root.Close()
		if err != nil {
			return err
		}
	}
	if err := clamp(rootfs, since); err != nil {
		return errcode.Syscall(err, "build tree")
	}
	return x.opts.Cache.put(key, func(w io.Writer) error { return image.WriteArchive(ctx, w, rootfs, meta, nil) })
}

// edit runs a step that the builder applies to the tree itself.
func (x *run) edit(ctx context.Context, s *state, st *Step, key string, change func(*os.Root) error) error {
	if x.hit(s, st, key) {
		return nil
	}
	start := time.Now()
	rc, err := x.openTree(ctx, s)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := x.store(ctx, key, rc, time.Time{}, nil, change); err != nil {
		return err
	}
	x.done(s, st, key, start)
	return nil
}

// run runs a RUN step in a build container made from the parent tree,
// then caches the container's tree.
func (x *run) run(ctx context.Context, s *state, st *Step) error {
	if s.cfg.User != "" && s.cfg.User != "root" && s.cfg.User != "0" {
		return errcode.New(errcode.Unimplemented, "line %d: RUN as USER %s: build containers run steps as root", st.Line, s.cfg.User)
	}
	argv := command(st.Args, st.Exec)
	env := s.cfg.Env
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		env = append([]string{defaultPath}, env...)
	}
	for k, v := range s.args {
		env = append(env, k+"="+v)
	}
	slices.Sort(env[1:])
	key := hashOf(s.key, "RUN", argv, env, s.cfg.WorkDir)
	if x.hit(s, st, key) {
		return nil
	}
	start := time.Now()
	ref, cleanup, err := x.parentImage(ctx, s)
	if err != nil {
		return err
	}
	defer cleanup()
	name := "mb-" + key[:24]
	if _, err := x.srv.Create(ctx, &container.Spec{Name: name, Image: ref}); err != nil {
		return fmt.Errorf("line %d: build container: %w", st.Line, err)
	}
	defer x.remove(name)
	if err := x.srv.Start(ctx, name); err != nil {
		return fmt.Errorf("line %d: build container: %w", st.Line, err)
	}
	out := &output{emit: func(line string) { x.emit(Event{Kind: StepOutput, Line: st.Line, Text: st.Text, Output: line}) }}
	code, err := x.srv.Exec(ctx, name, &container.Process{Args: argv, Env: env, Dir: s.cfg.WorkDir, Stdout: out, Stderr: out})
	out.flush()
	if err != nil {
		return fmt.Errorf("line %d: %s: %w", st.Line, st.Text, err)
	}
	if code != 0 {
		return &StepError{Line: st.Line, Text: st.Text, ExitCode: code, Output: string(out.tail),
			err: errcode.New(errcode.FailedPrecondition, "line %d: %s: exit code %d; output:\n%s", st.Line, st.Text, code, out.tail)}
	}
	if err := x.srv.Stop(ctx, name, 5*time.Second); err != nil {
		return fmt.Errorf("line %d: build container: %w", st.Line, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(x.srv.Export(ctx, name, pw)) }()
	err = x.store(ctx, key, pr, start, nil, func(root *os.Root) error { return resetHostname(root, name) })
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("line %d: %w", st.Line, err)
	}
	x.done(s, st, key, start)
	return nil
}

// resetHostname empties etc/hostname if the build container's name is
// what its driver wrote there.
func resetHostname(root *os.Root, name string) error {
	if b, err := root.ReadFile("etc/hostname"); err == nil && string(b) == name+"\n" {
		return root.WriteFile("etc/hostname", nil, 0o644)
	}
	return nil
}

// parentImage returns an image reference on the server holding s's tree,
// putting it there (under a name of its key) if it is only in the cache;
// cleanup removes what parentImage put.
func (x *run) parentImage(ctx context.Context, s *state) (ref string, cleanup func(), err error) {
	if s.ref != "" {
		return s.ref, func() {}, nil
	}
	name := "mb-" + s.key[:24]
	if m, err := x.srv.Image(ctx, name); err == nil {
		return m.Digest, func() {}, nil
	}
	f, err := x.opts.Cache.open(s.key)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	m, err := x.srv.PutImage(ctx, &image.Manifest{Name: name, Created: Epoch, Arch: s.archOr()}, f)
	if err != nil {
		return "", nil, err
	}
	return m.Digest, func() {
		if err := x.srv.DeleteImage(context.WithoutCancel(ctx), name); err != nil {
			x.log.Warn("build: remove parent image", "image", name, "err", err)
		}
	}, nil
}

func (s *state) archOr() string {
	if s.arch != "" {
		return s.arch
	}
	return runtime.GOARCH
}

// remove stops and deletes a build container, even after ctx ended.
func (x *run) remove(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := x.srv.Stop(ctx, name, time.Second)
	if err == nil || errors.Is(err, errcode.NotFound) {
		err = x.srv.Delete(ctx, name)
	}
	if err != nil && !errors.Is(err, errcode.NotFound) {
		x.log.Warn("build: remove build container", "container", name, "err", err)
	}
}

// finish writes the image (the last stage's tree with its config as
// metadata), caches it, and stores it on the server under the build's
// name, replacing an image of that name with another digest.
func (x *run) finish(ctx context.Context, s *state) (*image.Manifest, error) {
	meta, err := json.Marshal(s.cfg)
	if err != nil {
		return nil, err
	}
	key := hashOf(s.key, "image", string(meta))
	if !x.opts.Cache.has(key) {
		rc, err := x.openTree(ctx, s)
		if err != nil {
			return nil, err
		}
		err = x.store(ctx, key, rc, time.Now(), meta, nil)
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	m := &image.Manifest{Name: x.bo.Name, Created: Epoch, Arch: s.archOr(), Labels: s.cfg.Labels}
	put := func() (*image.Manifest, error) {
		f, err := x.opts.Cache.open(key)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return x.srv.PutImage(ctx, m, f)
	}
	out, err := put()
	if errors.Is(err, errcode.AlreadyExists) {
		if err = x.srv.DeleteImage(ctx, x.bo.Name); err == nil {
			out, err = put()
		}
	}
	return out, err
}

// output collects a step's output (stdout and stderr, written
// concurrently), emitting it line by line and keeping its last maxOutput
// bytes.
type output struct {
	mu      sync.Mutex
	emit    func(string)
	partial []byte
	tail    []byte
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.tail = append(o.tail, p...)
	if len(o.tail) > maxOutput {
		o.tail = o.tail[len(o.tail)-maxOutput:]
	}
	o.partial = append(o.partial, p...)
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		o.emit(string(o.partial[:i]))
		o.partial = o.partial[i+1:]
	}
	return len(p), nil
}

func (o *output) flush() {
	if len(o.partial) > 0 {
		o.emit(string(o.partial))
		o.partial = nil
	}
}
