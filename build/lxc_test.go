package build_test

import (
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
	"github.com/musterkit/muster/drivers/lxc"
	"github.com/musterkit/muster/roottest"
)

// busyboxRecipe is a 5-step recipe on the offline busybox base.
const busyboxRecipe = `FROM base
ARG GREETING=hello
RUN echo "$GREETING from RUN" > /greeting && mkdir -p /srv
COPY site/ /srv/site/
RUN ["/bin/sh", "-c", "ls /srv/site > /srv/index"]
WORKDIR /srv
COPY app.conf conf/
SERVICE web port=8080 check=tcp
CMD ["/bin/sh", "-c", "cat /greeting"]
`

// lxcServer opens drivers/lxc on a fresh directory with the busybox base
// image; cleanup removes every container and the directory.
func lxcServer(t *testing.T) *container.Server {
	t.Helper()
	roottest.Require(t, roottest.Binary("lxc-start"), roottest.BinaryFrom("busybox", "busybox-static"))
	dir := t.TempDir()
	d, err := lxc.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := container.NewServer(d, nil)
	t.Cleanup(func() {
		ctx := context.Background()
		infos, _ := srv.List(ctx)
		for _, i := range infos {
			srv.Stop(ctx, i.Spec.Name, time.Second)
			srv.Delete(ctx, i.Spec.Name)
		}
		srv.Close()
	})
	store, err := image.OpenStore(filepath.Join(t.TempDir(), "base"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := image.BuildBase(t.Context(), store, "base", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, rc, err := store.Open(t.Context(), m.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := srv.PutImage(t.Context(), m, rc); err != nil {
		t.Fatal(err)
	}
	return srv
}

func TestLXCBuildRunRebuild(t *testing.T) {
	srv := lxcServer(t)
	ctxDir := t.TempDir()
	os.MkdirAll(filepath.Join(ctxDir, "site"), 0o755)
	os.WriteFile(filepath.Join(ctxDir, "site", "index.html"), []byte("<h1>hi</h1>\n"), 0o644)
	os.WriteFile(filepath.Join(ctxDir, "app.conf"), []byte("port=8080\n"), 0o644)
	cache, err := build.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := build.New(srv, &build.Options{Cache: cache, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := build.Parse(strings.NewReader(busyboxRecipe))
	if err != nil {
		t.Fatal(err)
	}
	opts := &build.BuildOptions{Name: "web", Context: ctxDir}
	first, err := b.Build(t.Context(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	if first.Ran != 5 {
		t.Errorf("cold build ran %d steps, want 5", first.Ran)
	}

	if _, err := srv.Create(t.Context(), &container.Spec{Name: "web1", Image: "web"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(t.Context(), "web1"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, err := srv.Exec(t.Context(), "web1", &container.Process{Args: []string{"/bin/cat", "/greeting", "/srv/index", "/srv/conf/app.conf", "/srv/site/index.html"}, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("exec: %d, %v: %s", code, err, out.String())
	}
	if want := "hello from RUN\nindex.html\nport=8080\n<h1>hi</h1>\n"; out.String() != want {
		t.Errorf("files in the built container:\n%s\nwant\n%s", out.String(), want)
	}

	start := time.Now()
	again, err := b.Build(t.Context(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unchanged rebuild: %v", time.Since(start))
	if again.Ran != 0 || again.Cached != 5 || again.Image.Digest != first.Image.Digest {
		t.Errorf("unchanged rebuild ran %d, cached %d, digest %s; want 0, 5, %s", again.Ran, again.Cached, again.Image.Digest, first.Image.Digest)
	}
	os.WriteFile(filepath.Join(ctxDir, "app.conf"), []byte("port=9090\n"), 0o644)
	last, err := b.Build(t.Context(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	if last.Ran != 1 || last.Cached != 4 {
		t.Errorf("rebuild after changing app.conf ran %d, cached %d; want 1, 4", last.Ran, last.Cached)
	}

	_, err = b.Build(t.Context(), mustParse(t, "FROM base\nRUN echo failing; exit 3\n"), &build.BuildOptions{Name: "bad"})
	var se *build.StepError
	if !errors.As(err, &se) || se.Line != 2 || se.ExitCode != 3 || !strings.Contains(se.Output, "failing") {
		t.Fatalf("failed RUN: %v", err)
	}
	infos, _ := srv.List(t.Context())
	if len(infos) != 1 {
		t.Errorf("%d containers after the failed build, want 1 (web1)", len(infos))
	}
}

func mustParse(t *testing.T, src string) *build.Recipe {
	t.Helper()
	r, err := build.Parse(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	return r
}
