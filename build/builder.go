package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Options configure a Builder.
type Options struct {
	// Cache keeps the root filesystem after every step; required.
	Cache *Cache
	// TempDir holds the trees being edited; default os.TempDir().
	TempDir string
	// Limits bound the archives the builder reads (parent images, build
	// containers' exports); zero fields take image.DefaultLimits.
	Limits image.Limits
	// Logger receives one debug record per step; nil discards.
	Logger *slog.Logger
}

// Builder builds recipes on one server.
type Builder struct {
	srv  *container.Server
	opts Options
	log  *slog.Logger
}

// New returns a builder that runs build containers on srv and stores
// images in its store.
func New(srv *container.Server, opts *Options) (*Builder, error) {
	if srv == nil || opts == nil || opts.Cache == nil {
		return nil, errcode.New(errcode.InvalidArgument, "build: a server and a cache are required")
	}
	b := &Builder{srv: srv, opts: *opts, log: opts.Logger}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	return b, nil
}

// BuildOptions describe one build.
type BuildOptions struct {
	// Name is the image's name in the server's store (a DNS label). An
	// image of that name with another digest is replaced.
	Name string
	// Context is the directory COPY and ADD read, confined to it.
	Context string
	// Args set ARG values, overriding their defaults.
	Args map[string]string
	// Events, if not nil, receives the build's progress and its steps'
	// output, one call at a time, never after Build returns.
	Events func(Event)
}

// EventKind says what an Event reports.
type EventKind string

const (
	StepStarted EventKind = "started" // a step runs
	StepCached  EventKind = "cached"  // a step's result came from the cache
	StepDone    EventKind = "done"    // a step finished
	StepOutput  EventKind = "output"  // a line a RUN step wrote
)

// Event is a build's progress.
type Event struct {
	Kind EventKind
	// Line and Text are the step's line and instruction.
	Line int
	Text string
	// Output is a StepOutput's line, without its newline.
	Output string
}

// Config is the image's configuration, stored as the image archive's
// metadata (image.MetaName).
type Config struct {
	Env         []string          `json:"env,omitempty"`
	WorkDir     string            `json:"workDir,omitempty"`
	User        string            `json:"user,omitempty"`
	Expose      []string          `json:"expose,omitempty"`
	Volumes     []string          `json:"volumes,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Entrypoint  []string          `json:"entrypoint,omitempty"`
	Cmd         []string          `json:"cmd,omitempty"`
	Healthcheck *Healthcheck      `json:"healthcheck,omitempty"`
	Services    []Service         `json:"services,omitempty"`
}

// Result is a finished build.
type Result struct {
	Image  *image.Manifest
	Config Config
	// Ran and Cached count the steps that changed the root filesystem
	// (RUN, COPY, ADD, WORKDIR) run and taken from the cache.
	Ran, Cached int
}

// StepError is a failed RUN step; it unwraps to an
// errcode.FailedPrecondition error.
type StepError struct {
	Line     int
	Text     string
	ExitCode int
	// Output is the end of what the step wrote (at most 64 KiB).
	Output string
	err    error
}

func (e *StepError) Error() string { return e.err.Error() }
func (e *StepError) Unwrap() error { return e.err }

// defaultPath is the PATH of RUN steps unless ENV sets one.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// state is a stage's state between steps.
type state struct {
	key  string // content key of the root filesystem
	ref  string // digest of an image in the server's store holding it, or ""
	arch string
	cfg  Config
	args map[string]string // ARGs in scope
}

type run struct {
	*Builder
	recipe *Recipe
	bo     *BuildOptions
	ctxDir *os.Root
	stages []*state
	res    *Result
}

// Build builds r and stores the image in the server's store. On error no
// image is stored and no build container is left. Errors about the recipe
// name its line; a failed RUN is a *StepError.
func (b *Builder) Build(ctx context.Context, r *Recipe, opts *BuildOptions) (*Result, error) {
	if r == nil || opts == nil || len(r.Stages) == 0 {
		return nil, errcode.New(errcode.InvalidArgument, "build: a recipe and options are required")
	}
	if err := names.Label(opts.Name); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	x := &run{Builder: b, recipe: r, bo: opts, res: &Result{}}
	if opts.Context != "" {
		root, err := os.OpenRoot(opts.Context)
		if err != nil {
			return nil, errcode.Syscall(err, "build %s: context", opts.Name)
		}
		defer root.Close()
		x.ctxDir = root
	}
	global := map[string]string{}
	for _, s := range r.Args {
		if err := x.arg(global, &s); err != nil {
			return nil, err
		}
	}
	for _, st := range r.Stages {
		s, err := x.stage(ctx, st, global)
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", opts.Name, err)
		}
		x.stages = append(x.stages, s)
	}
	m, err := x.finish(ctx, x.stages[len(x.stages)-1])
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", opts.Name, err)
	}
	x.res.Image = m
	x.res.Config = x.stages[len(x.stages)-1].cfg
	return x.res, nil
}

func (x *run) emit(e Event) {
	if x.bo.Events != nil {
		x.bo.Events(e)
	}
}

// expand substitutes ARG and ENV values in word.
func (st *state) expand(word string, line int) (string, error) {
	env := slices.Clone(st.cfg.Env)
	for k, v := range st.args {
		env = append(env, k+"="+v)
	}
	out, _, err := shell.NewLex('\\').ProcessWord(word, shell.EnvsFromSlice(env))
	if err != nil {
		return "", lineErr(line, "%v", err)
	}
	return out, nil
}

func (st *state) expandAll(words []string, line int) ([]string, error) {
	out := make([]string, len(words))
	for i, w := range words {
		var err error
		if out[i], err = st.expand(w, line); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// arg declares an ARG in args, with the build's value or its default.
func (x *run) arg(args map[string]string, s *Step) error {
	name, def, _ := strings.Cut(s.Args[0], "=")
	if v, ok := x.bo.Args[name]; ok {
		def = v
	}
	args[name] = def
	return nil
}

// stage builds one stage.
func (x *run) stage(ctx context.Context, st *Stage, global map[string]string) (*state, error) {
	from, err := (&state{args: global}).expand(st.From.Args[0], st.From.Line)
	if err != nil {
		return nil, err
	}
	s := &state{args: map[string]string{}}
	if i := x.stageIndex(from); i >= 0 {
		prev := x.stages[i]
		s.key, s.ref, s.arch = prev.key, prev.ref, prev.arch
		s.cfg = cloneConfig(prev.cfg)
	} else {
		m, err := x.srv.Image(ctx, from)
		if err != nil {
			return nil, fmt.Errorf("line %d: FROM %s: %w", st.From.Line, from, err)
		}
		s.key, s.ref, s.arch = hashOf("from", m.Digest), m.Digest, m.Arch
	}
	for i := range st.Steps {
		if err := x.step(ctx, s, &st.Steps[i], global); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func cloneConfig(c Config) Config {
	c.Env, c.Expose, c.Volumes = slices.Clone(c.Env), slices.Clone(c.Expose), slices.Clone(c.Volumes)
	c.Labels, c.Services = maps.Clone(c.Labels), slices.Clone(c.Services)
	c.Entrypoint, c.Cmd = slices.Clone(c.Entrypoint), slices.Clone(c.Cmd)
	return c
}

// hashOf is the content key of its parts.
func hashOf(parts ...any) string {
	b, _ := json.Marshal(parts)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// step runs one instruction of a stage.
func (x *run) step(ctx context.Context, s *state, st *Step, global map[string]string) error {
	if st.Op == "RUN" || st.Op == "CMD" || st.Op == "ENTRYPOINT" || st.Op == "HEALTHCHECK" {
		return x.command(ctx, s, st)
	}
	args, err := s.expandAll(st.Args, st.Line)
	if err != nil {
		return err
	}
	switch st.Op {
	case "ARG":
		name, _, _ := strings.Cut(args[0], "=")
		if _, ok := global[name]; ok && !strings.Contains(st.Args[0], "=") {
			s.args[name] = global[name]
			return nil
		}
		return x.arg(s.args, st)
	case "ENV", "LABEL":
		pairs, err := keyValues(st, args)
		if err != nil {
			return err
		}
		for _, kv := range pairs {
			if st.Op == "ENV" {
				s.cfg.Env = slices.DeleteFunc(s.cfg.Env, func(e string) bool { return strings.HasPrefix(e, kv[0]+"=") })
				s.cfg.Env = append(s.cfg.Env, kv[0]+"="+kv[1])
				continue
			}
			if s.cfg.Labels == nil {
				s.cfg.Labels = map[string]string{}
			}
			s.cfg.Labels[kv[0]] = kv[1]
		}
	case "USER":
		s.cfg.User = args[0]
	case "EXPOSE":
		for _, p := range args {
			port, proto, _ := strings.Cut(p, "/")
			if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || (proto != "" && proto != "tcp" && proto != "udp") {
				return lineErr(st.Line, "EXPOSE %s: want PORT[/tcp|/udp]", p)
			}
		}
		s.cfg.Expose = append(s.cfg.Expose, args...)
	case "VOLUME":
		s.cfg.Volumes = append(s.cfg.Volumes, args...)
	case "SERVICE":
		sv, err := service(st.Line, args)
		if err != nil {
			return err
		}
		s.cfg.Services = append(s.cfg.Services, *sv)
	case "WORKDIR":
		dir := path.Join("/", s.cfg.WorkDir, args[0])
		s.cfg.WorkDir = dir
		return x.edit(ctx, s, st, hashOf(s.key, "WORKDIR", dir), func(root *os.Root) error { return mkdir(root, strings.TrimPrefix(dir, "/"), 0o755) })
	case "COPY", "ADD":
		return x.copy(ctx, s, st, args)
	}
	return nil
}

// keyValues returns ENV's or LABEL's pairs: the parser gives each as
// key, value, separator.
func keyValues(st *Step, args []string) ([][2]string, error) {
	if len(args)%3 != 0 {
		return nil, lineErr(st.Line, "%s takes key=value pairs", st.Op)
	}
	var out [][2]string
	for i := 0; i < len(args); i += 3 {
		if args[i] == "" {
			return nil, lineErr(st.Line, "%s: empty key", st.Op)
		}
		out = append(out, [2]string{args[i], args[i+1]})
	}
	return out, nil
}

// command handles RUN, and the commands CMD, ENTRYPOINT and HEALTHCHECK
// record in the config.
func (x *run) command(ctx context.Context, s *state, st *Step) error {
	switch st.Op {
	case "CMD":
		s.cfg.Cmd = command(st.Args, st.Exec)
	case "ENTRYPOINT":
		s.cfg.Entrypoint = command(st.Args, st.Exec)
	case "HEALTHCHECK":
		h, err := healthcheck(st)
		if err != nil {
			return err
		}
		s.cfg.Healthcheck = h
	case "RUN":
		return x.run(ctx, s, st)
	}
	return nil
}

// hit reports whether key is cached, and moves s to it if so.
func (x *run) hit(s *state, st *Step, key string) bool {
	if !x.opts.Cache.has(key) {
		x.emit(Event{Kind: StepStarted, Line: st.Line, Text: st.Text})
		return false
	}
	s.key, s.ref = key, ""
	x.res.Cached++
	x.emit(Event{Kind: StepCached, Line: st.Line, Text: st.Text})
	return true
}

// done records that the step stored key.
func (x *run) done(s *state, st *Step, key string, start time.Time) {
	s.key, s.ref = key, ""
	x.res.Ran++
	x.emit(Event{Kind: StepDone, Line: st.Line, Text: st.Text})
	x.log.Debug("build step", "image", x.bo.Name, "line", st.Line, "op", st.Op, "took", time.Since(start))
}

// copy runs COPY or ADD.
func (x *run) copy(ctx context.Context, s *state, st *Step, args []string) error {
	srcs, dest := args[:len(args)-1], args[len(args)-1]
	if !path.IsAbs(dest) {
		dest = path.Join("/", s.cfg.WorkDir, dest) + map[bool]string{true: "/"}[strings.HasSuffix(dest, "/")]
	}
	src, confine := x.ctxDir, true
	if from, ok := st.Flags["from"]; ok {
		dir, err := x.stageTree(ctx, from, st.Line)
		if err != nil {
			return err
		}
		defer os.RemoveAll(filepath.Dir(dir.Name()))
		defer dir.Close()
		src, confine = dir, false
	}
	if src == nil {
		return lineErr(st.Line, "%s needs a build context (BuildOptions.Context)", st.Op)
	}
	for _, a := range srcs {
		if strings.Contains(a, "://") {
			return errcode.New(errcode.Unimplemented, "line %d: ADD of URLs is not supported", st.Line)
		}
	}
	entries, digest, err := plan(src, srcs, dest, confine, st.Op == "ADD", st.Line)
	if err != nil {
		return err
	}
	key := hashOf(s.key, st.Op, args, st.Flags, digest)
	return x.edit(ctx, s, st, key, func(root *os.Root) error { return apply(src, root, entries, st.Line) })
}

// stageTree extracts the root filesystem of an earlier stage (by name or
// index) into a temporary directory.
func (x *run) stageTree(ctx context.Context, from string, line int) (*os.Root, error) {
	i, err := strconv.Atoi(from)
	if err != nil {
		i = x.stageIndex(from)
	}
	if i < 0 || i >= len(x.stages) {
		return nil, lineErr(line, "COPY --from=%s names no earlier stage", from)
	}
	s := x.stages[i]
	dir, err := os.MkdirTemp(x.opts.TempDir, "muster-build-")
	if err != nil {
		return nil, errcode.Syscall(err, "build temp dir")
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := x.extract(ctx, s, rootfs); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		os.RemoveAll(dir)
		return nil, errcode.Syscall(err, "build temp dir")
	}
	return root, nil
}
