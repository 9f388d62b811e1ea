package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/build"
	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
)

// memBase puts a tiny base image in srv's store: the memcontainer
// built-ins as files in bin.
func memBase(t *testing.T, srv *container.Server) {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	for _, p := range []string{"true", "false", "echo", "tee", "cat", "sh"} {
		os.WriteFile(filepath.Join(dir, "bin", p), []byte("#!\n"), 0o755)
	}
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, build.Epoch, build.Epoch) })
	var blob bytes.Buffer
	if err := image.WriteArchive(t.Context(), &blob, dir, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PutImage(t.Context(), &image.Manifest{Name: "base", Arch: "amd64"}, &blob); err != nil {
		t.Fatal(err)
	}
}

type env struct {
	srv   *container.Server
	b     *build.Builder
	cache *build.Cache
	ctx   string // build context
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := container.NewServer(memcontainer.New(nil), nil)
	memBase(t, srv)
	cache, err := build.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := build.New(srv, &build.Options{Cache: cache, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return &env{srv: srv, b: b, cache: cache, ctx: t.TempDir()}
}

func (e *env) write(t *testing.T, name, content string) {
	t.Helper()
	p := filepath.Join(e.ctx, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (e *env) build(t *testing.T, recipe string, events func(build.Event)) (*build.Result, error) {
	t.Helper()
	r, err := build.Parse(strings.NewReader(recipe))
	if err != nil {
		t.Fatal(err)
	}
	return e.b.Build(t.Context(), r, &build.BuildOptions{Name: "app", Context: e.ctx, Events: events})
}

const fiveSteps = `FROM base
ARG WHO=world
RUN ["echo", "hello"]
COPY a.txt /srv/a.txt
RUN ["tee", "/srv/made"]
WORKDIR /srv
COPY b.txt sub/
ENV MODE=prod
SERVICE web port=8080 tags=v1 check=http:/health
CMD ["cat", "/srv/a.txt"]
`

func TestCache(t *testing.T) {
	e := newEnv(t)
	e.write(t, "a.txt", "a")
	e.write(t, "b.txt", "b")
	var out []string
	first, err := e.build(t, fiveSteps, func(ev build.Event) {
		if ev.Kind == build.StepOutput {
			out = append(out, ev.Output)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if first.Ran != 5 || first.Cached != 0 {
		t.Errorf("cold build ran %d, cached %d; want 5, 0", first.Ran, first.Cached)
	}
	if len(out) != 1 || out[0] != "hello" {
		t.Errorf("output events = %q, want [hello]", out)
	}
	if s := first.Config.Services; len(s) != 1 || s[0].Port != 8080 || s[0].Check.Path != "/health" {
		t.Errorf("services = %+v", s)
	}
	if first.Config.WorkDir != "/srv" || first.Config.Env[0] != "MODE=prod" {
		t.Errorf("config = %+v", first.Config)
	}

	again, err := e.build(t, fiveSteps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Ran != 0 || again.Cached != 5 || again.Image.Digest != first.Image.Digest {
		t.Errorf("unchanged rebuild ran %d, cached %d, digest %s; want 0, 5, %s", again.Ran, again.Cached, again.Image.Digest, first.Image.Digest)
	}

	e.write(t, "a.txt", "changed")
	changed, err := e.build(t, fiveSteps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if changed.Ran != 4 || changed.Cached != 1 || changed.Image.Digest == first.Image.Digest {
		t.Errorf("after changing a.txt: ran %d, cached %d; want 4, 1 and a new digest", changed.Ran, changed.Cached)
	}
	e.write(t, "b.txt", "changed")
	last, err := e.build(t, fiveSteps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if last.Ran != 1 || last.Cached != 4 {
		t.Errorf("after changing b.txt: ran %d, cached %d; want 1, 4", last.Ran, last.Cached)
	}

	// A fresh cache and server give the same digest: reproducible.
	e.write(t, "a.txt", "a")
	e.write(t, "b.txt", "b")
	fresh := newEnv(t)
	fresh.ctx = e.ctx
	time.Sleep(time.Second) // other mtimes than the first build's
	again, err = fresh.build(t, fiveSteps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Ran != 5 || again.Image.Digest != first.Image.Digest {
		t.Errorf("fresh build: ran %d, digest %s; want 5, %s", again.Ran, again.Image.Digest, first.Image.Digest)
	}
	ctrs, _ := e.srv.List(t.Context())
	imgs, _ := e.srv.Images(t.Context())
	if len(ctrs) != 0 || len(imgs) != 2 {
		t.Errorf("left %d containers and %d images, want 0 and 2 (base, app)", len(ctrs), len(imgs))
	}
}

func TestFailedRun(t *testing.T) {
	e := newEnv(t)
	_, err := e.build(t, "FROM base\nRUN [\"echo\", \"boom\"]\nRUN [\"cat\", \"/missing\"]\n", nil)
	var se *build.StepError
	if !errors.As(err, &se) || se.Line != 3 || se.ExitCode == 0 || !strings.Contains(se.Output, "missing") || errcode.Of(err) != errcode.FailedPrecondition {
		t.Fatalf("err = %v, want a StepError for line 3 with the output", err)
	}
	ctrs, _ := e.srv.List(t.Context())
	imgs, _ := e.srv.Images(t.Context())
	if len(ctrs) != 0 || len(imgs) != 1 {
		t.Errorf("left %d containers and %d images, want 0 and 1 (base)", len(ctrs), len(imgs))
	}
	if _, err := e.srv.Image(t.Context(), "app"); !errors.Is(err, errcode.NotFound) {
		t.Errorf("image app: %v, want NotFound", err)
	}
}

func TestContextConfinement(t *testing.T) {
	e := newEnv(t)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o644)
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(e.ctx, "abs"))
	os.Symlink("../../x", filepath.Join(e.ctx, "rel"))
	os.MkdirAll(filepath.Join(e.ctx, "d"), 0o755)
	os.Symlink("../../etc/passwd", filepath.Join(e.ctx, "d", "deep"))
	for _, src := range []string{"../secret", "/etc/passwd", "a/../../x", "abs", "rel", "d"} {
		_, err := e.build(t, "FROM base\n\nCOPY "+src+" /x\n", nil)
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "line 3") {
			t.Errorf("COPY %s: %v, want a line-3 InvalidArgument", src, err)
		}
	}
	if _, err := e.build(t, "FROM base\nCOPY nothere /x\n", nil); !errors.Is(err, errcode.NotFound) {
		t.Errorf("COPY of a missing file: %v, want NotFound", err)
	}
	if _, err := e.build(t, "FROM nosuch\n", nil); !errors.Is(err, errcode.NotFound) || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("FROM an unknown image: %v, want a line-1 NotFound", err)
	}
}

func TestMultiStageAndAdd(t *testing.T) {
	e := newEnv(t)
	e.write(t, "app.txt", "app")
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	tw.WriteHeader(&tar.Header{Name: "pkg/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "pkg/file", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2})
	tw.Write([]byte("hi"))
	tw.Close()
	e.write(t, "pkg.tar", tarball.String())
	recipe := "FROM base AS build\nCOPY app.txt /out/app\nRUN [\"tee\", \"/out/log\"]\n" +
		"FROM base\nCOPY --from=build /out /app/\nADD pkg.tar /opt/\nRUN [\"cat\", \"/app/app\", \"/opt/pkg/file\"]\n"
	var out []string
	res, err := e.build(t, recipe, func(ev build.Event) {
		if ev.Kind == build.StepOutput {
			out = append(out, ev.Output)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ran != 5 || strings.Join(out, "") != "apphi" {
		t.Errorf("ran %d, output %q; want 5, apphi", res.Ran, out)
	}
	bad := tar.NewWriter(&tarball)
	tarball.Reset()
	bad.WriteHeader(&tar.Header{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644})
	bad.Close()
	e.write(t, "evil.tar", tarball.String())
	if _, err := e.build(t, "FROM base\nADD evil.tar /\n", nil); errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("ADD of an archive leaving its directory: %v", err)
	}
}

func TestYAMLSameImage(t *testing.T) {
	e := newEnv(t)
	e.write(t, "a.txt", "a")
	cf, err := e.build(t, "FROM base\nCOPY a.txt /a\nRUN [\"echo\", \"x\"]\nLABEL org.example/v=1\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := build.ParseYAML(strings.NewReader("stages:\n  - from: base\n    steps:\n      - copy: a.txt /a\n      - run: '[\"echo\", \"x\"]'\n      - label: org.example/v=1\n"))
	if err != nil {
		t.Fatal(err)
	}
	y, err := e.b.Build(t.Context(), r, &build.BuildOptions{Name: "app", Context: e.ctx})
	if err != nil {
		t.Fatal(err)
	}
	if y.Image.Digest != cf.Image.Digest || y.Ran != 0 || y.Image.Labels["org.example/v"] != "1" {
		t.Errorf("YAML build: digest %s ran %d labels %v; want %s, 0 and the label", y.Image.Digest, y.Ran, y.Image.Labels, cf.Image.Digest)
	}
	_, err = build.ParseYAML(strings.NewReader("stages:\n  - from: base\n    steps:\n      - bogus: x\n"))
	if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "line 4") {
		t.Errorf("YAML unknown instruction: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"FROM base\nBOGUS x\n", "line 2: unknown instruction BOGUS"},
		{"RUN true\n", "line 1: RUN before the first FROM"},
		{"FROM base\n\n\nCOPY a\n", "line 4: COPY takes"},
		{"FROM base\nCOPY --from=nope a b\n", "line 2: COPY --from=nope"},
		{"FROM base\nCOPY --chown=1 a b\n", "line 2: COPY does not take"},
		{"FROM base\nSERVICE web\n", "line 2: SERVICE"},
		{"FROM base\nSERVICE web port=x\n", "line 2: SERVICE"},
		{"FROM base\nSERVICE Bad_Name port=80\n", "line 2: SERVICE"},
		{"FROM base\nSERVICE web port=80 check=smtp\n", "line 2: SERVICE"},
		{"FROM base\nHEALTHCHECK --interval=x CMD true\n", "line 2: HEALTHCHECK --interval"},
		{"FROM base AS a\nFROM base AS a\n", "line 2: stage \"a\" is named twice"},
		{"", "recipe"}, {"ARG x\n", "no FROM"},
	} {
		_, err := build.Parse(strings.NewReader(c.src))
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want InvalidArgument containing %q", c.src, err, c.want)
		}
	}
}

func TestGC(t *testing.T) {
	e := newEnv(t)
	e.write(t, "a.txt", "a")
	e.write(t, "b.txt", "b")
	if _, err := e.build(t, fiveSteps, nil); err != nil {
		t.Fatal(err)
	}
	res, err := e.cache.GC(context.Background(), build.GCOptions{MaxAge: time.Hour})
	if err != nil || res.Removed != 0 || res.Kept < 6 {
		t.Fatalf("GC by age = %+v, %v; want nothing removed", res, err)
	}
	res, err = e.cache.GC(context.Background(), build.GCOptions{MaxBytes: 1})
	if err != nil || res.Kept != 0 || res.Bytes != 0 {
		t.Fatalf("GC to 1 byte = %+v, %v; want everything removed", res, err)
	}
	again, err := e.build(t, fiveSteps, nil)
	if err != nil || again.Ran != 5 {
		t.Fatalf("after GC: ran %d, %v; want 5", again.Ran, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(fiveSteps)
	f.Add("FROM base AS b\nCOPY --from=b a b\nHEALTHCHECK NONE\nEXPOSE 80/tcp\n")
	f.Add("FROM a\nRUN echo \\\n hi\nSERVICE x port=1 check=ttl:10s\n")
	f.Fuzz(func(t *testing.T, src string) {
		r, err := build.Parse(strings.NewReader(src))
		if err != nil {
			if errcode.Of(err) != errcode.InvalidArgument {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if len(r.Stages) == 0 {
			t.Fatal("a recipe without stages passed")
		}
		for _, st := range r.Stages {
			for _, s := range append([]build.Step{st.From}, st.Steps...) {
				if s.Line < 1 || s.Op == "" {
					t.Fatalf("step %+v has no line or instruction", s)
				}
			}
		}
	})
}
