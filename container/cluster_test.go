package container_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
)

// peered is a memory server that, as agents do, pushes containers to and
// pulls them from the servers of its network, found by endpoint. If
// failAfter is not zero, its imports fail after reading that many bytes of
// the stream, as a server that dies mid-transfer does.
type peered struct {
	*memcontainer.Driver
	endpoint  string
	network   map[string]driver.Transferer
	failAfter int64
}

func (p *peered) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	if p.failAfter == 0 {
		return p.Driver.Import(ctx, r, rename)
	}
	n, _ := io.Copy(io.Discard, io.LimitReader(r, p.failAfter))
	return nil, errcode.New(errcode.Unavailable, "target died after %d bytes", n)
}

func (p *peered) Endpoint() string { return p.endpoint }

func (p *peered) Push(ctx context.Context, name, target, rename string, progress func(int64)) (*driver.Info, error) {
	return driver.Pipe(ctx, p, name, p.network[target], rename, progress)
}

func (p *peered) Pull(ctx context.Context, source, name, rename string, progress func(int64)) (*driver.Info, error) {
	return driver.Pipe(ctx, p.network[source], name, p, rename, progress)
}

var (
	_ driver.Pusher   = (*peered)(nil)
	_ driver.Puller   = (*peered)(nil)
	_ driver.Endpoint = (*peered)(nil)
)

// newCluster returns a cluster of peered memory servers a, b and c (c
// fails imports), with the base image on a, and a running container "web"
// holding /root/data on a.
func newCluster(t *testing.T) (*container.Cluster, []byte) {
	m, blob := drivertest.BaseImage(t)
	data := bytes.Repeat([]byte("muster!\n"), 1<<18) // 2 MiB
	return newClusterOf(t, func(p *peered) peer {
		if p.endpoint == "c:7444" {
			p.failAfter = 64 << 10
		}
		return p
	}, m, blob, data)
}

// peer is a server's driver as the cluster and the other servers see it.
type peer interface {
	driver.Driver
	driver.Transferer
}

// newClusterOf is newCluster with each server's driver made by wrap, the
// image m (blob) as "base" and data in /root/data.
func newClusterOf(t *testing.T, wrap func(*peered) peer, m *image.Manifest, blob, data []byte) (*container.Cluster, []byte) {
	t.Helper()
	ctx := context.Background()
	cl := container.NewCluster(nil)
	network := map[string]driver.Transferer{}
	for _, name := range []string{"a", "b", "c"} {
		d := wrap(&peered{Driver: memcontainer.New(&memcontainer.Options{Hostname: name}), endpoint: name + ":7444", network: network})
		network[name+":7444"] = d
		if err := cl.AddServer(name, container.NewServer(d, nil)); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := cl.Server("a")
	if _, err := a.PutImage(ctx, m, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(ctx, &container.Spec{Name: "web", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if code, err := a.Exec(ctx, "web", &container.Process{Args: []string{"tee", "/root/data"}, Stdin: bytes.NewReader(data)}); err != nil || code != 0 {
		t.Fatalf("writing /root/data: exit %d, %v", code, err)
	}
	return cl, data
}

func readData(t *testing.T, s *container.Server, name string) []byte {
	t.Helper()
	var out bytes.Buffer
	if code, err := s.Exec(context.Background(), name, &container.Process{Args: []string{"cat", "/root/data"}, Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("cat /root/data in %s: exit %d, %v", name, code, err)
	}
	return out.Bytes()
}

// transferModes runs f in a subtest for each transfer mode.
func transferModes(t *testing.T, f func(t *testing.T, mode container.TransferMode)) {
	for _, mode := range []container.TransferMode{container.Relay, container.Push, container.Pull} {
		t.Run(mode.String(), func(t *testing.T) { f(t, mode) })
	}
}

func TestMoveKeepsFilesAndReportsProgress(t *testing.T) {
	transferModes(t, testMoveKeepsFilesAndReportsProgress)
}

func testMoveKeepsFilesAndReportsProgress(t *testing.T, mode container.TransferMode) {
	ctx := context.Background()
	cl, data := newCluster(t)
	var phases []container.Phase
	var lastBytes int64
	info, err := cl.Move(ctx, "web", "a", "b", &container.TransferOptions{Mode: mode, Progress: func(e container.Event) {
		if len(phases) == 0 || phases[len(phases)-1] != e.Phase {
			phases = append(phases, e.Phase)
		}
		lastBytes = e.Bytes
	}})
	if err != nil {
		t.Fatal(err)
	}
	if info.State != container.Running {
		t.Fatalf("moved container is %s, want running", info.State)
	}
	want := []container.Phase{container.PhaseStop, container.PhaseTransfer, container.PhaseStart, container.PhaseCleanup, container.PhaseDone}
	if !slices.Equal(phases, want) {
		t.Fatalf("phases %v, want %v", phases, want)
	}
	if lastBytes <= 0 {
		t.Fatal("progress reported no bytes")
	}
	b, _ := cl.Server("b")
	if !bytes.Equal(readData(t, b, "web"), data) {
		t.Fatal("moved container's file differs")
	}
	a, _ := cl.Server("a")
	if _, err := a.Get(ctx, "web"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("source still there after a move: %v", err)
	}
	p, err := cl.Find(ctx, "web")
	if err != nil || p.Server != "b" {
		t.Fatalf("Find = %+v, %v", p, err)
	}
}

func TestMoveToFailingTargetLeavesSourceRunning(t *testing.T) {
	transferModes(t, testMoveToFailingTargetLeavesSourceRunning)
}

func testMoveToFailingTargetLeavesSourceRunning(t *testing.T, mode container.TransferMode) {
	ctx := context.Background()
	cl, data := newCluster(t)
	var rolledBack bool
	_, err := cl.Move(ctx, "web", "a", "c", &container.TransferOptions{Mode: mode, Progress: func(e container.Event) {
		rolledBack = rolledBack || e.Phase == container.PhaseRollback
	}})
	if !errors.Is(err, errcode.Unavailable) || !strings.Contains(err.Error(), "target died") {
		t.Fatalf("Move to a failing target: %v", err)
	}
	if !rolledBack {
		t.Fatal("no rollback event")
	}
	a, _ := cl.Server("a")
	info, err := a.Get(ctx, "web")
	if err != nil || info.State != container.Running {
		t.Fatalf("source after failed move: %+v, %v; want running", info, err)
	}
	if !bytes.Equal(readData(t, a, "web"), data) {
		t.Fatal("source's file changed")
	}
	c, _ := cl.Server("c")
	if list, _ := c.List(ctx); len(list) != 0 {
		t.Fatalf("target kept %d containers", len(list))
	}
}

func TestCopyKeepsSourceAndRenames(t *testing.T) {
	ctx := context.Background()
	cl, data := newCluster(t)
	info, err := cl.Copy(ctx, "web", "a", "b", &container.TransferOptions{Rename: "web-2"})
	if err != nil {
		t.Fatal(err)
	}
	if info.Spec.Name != "web-2" || info.State != container.Running {
		t.Fatalf("copy: %+v", info)
	}
	a, _ := cl.Server("a")
	b, _ := cl.Server("b")
	if st, _ := a.Get(ctx, "web"); st == nil || st.State != container.Running {
		t.Fatal("source not running after copy")
	}
	if !bytes.Equal(readData(t, b, "web-2"), data) {
		t.Fatal("copy's file differs")
	}
	all, err := cl.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var where []string
	for _, p := range all {
		where = append(where, p.Server+"/"+p.Spec.Name)
	}
	if !slices.Equal(where, []string{"a/web", "b/web-2"}) {
		t.Fatalf("Containers = %v", where)
	}
}

func TestTransferRejects(t *testing.T) {
	ctx := context.Background()
	cl, _ := newCluster(t)
	cases := []struct {
		name, ctr, from, to string
		opts                *container.TransferOptions
		code                errcode.Code
	}{
		{"same server", "web", "a", "a", nil, errcode.InvalidArgument},
		{"unknown server", "web", "a", "zz", nil, errcode.NotFound},
		{"unknown container", "nope", "a", "b", nil, errcode.NotFound},
		{"bad rename", "web", "a", "b", &container.TransferOptions{Rename: "Bad/Name"}, errcode.InvalidArgument},
	}
	for _, c := range cases {
		if _, err := cl.Move(ctx, c.ctr, c.from, c.to, c.opts); !errors.Is(err, c.code) {
			t.Errorf("%s: %v, want %v", c.name, err, c.code)
		}
	}
	b, _ := cl.Server("b")
	if _, err := b.Create(ctx, &container.Spec{Name: "web", Image: "base"}); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("b has no image yet, create: %v", err)
	}
	var events []container.ImageEvent
	m, err := cl.CopyImage(ctx, "base", "a", "b", &container.ImageCopyOptions{Progress: func(e container.ImageEvent) { events = append(events, e) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(events) == 0 {
		t.Fatal("no progress events")
	}
	for i, e := range events {
		if e.Image != "base" || e.From != "a" || e.To != "b" || e.Total != m.Size || (i > 0 && e.Bytes <= events[i-1].Bytes) {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	if last := events[len(events)-1]; last.Bytes != m.Size {
		t.Fatalf("last event %+v, want all %d bytes", last, m.Size)
	}
	again := 0
	if _, err := cl.CopyImage(ctx, "base", "a", "b", &container.ImageCopyOptions{Progress: func(container.ImageEvent) { again++ }}); err != nil || again != 0 {
		t.Fatalf("copying an image the target holds: %v, %d events", err, again)
	}
	if _, err := b.Create(ctx, &container.Spec{Name: "web", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Move(ctx, "web", "a", "b", nil); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("move onto an existing name: %v", err)
	}
	a, _ := cl.Server("a")
	if info, _ := a.Get(ctx, "web"); info == nil || info.State != container.Running {
		t.Fatal("a refused move touched the source")
	}
}

// TestDirectModesNeedDriverSupport moves to and from a plain memory
// server, which has no endpoint and neither pushes nor pulls.
func TestDirectModesNeedDriverSupport(t *testing.T) {
	ctx := context.Background()
	cl, data := newCluster(t)
	plain := container.NewServer(memcontainer.New(nil), nil)
	if err := cl.AddServer("plain", plain); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []container.TransferMode{container.Push, container.Pull} {
		var events []container.Event
		_, err := cl.Move(ctx, "web", "a", "plain", &container.TransferOptions{Mode: mode, Progress: func(e container.Event) { events = append(events, e) }})
		if !errors.Is(err, errcode.Unimplemented) {
			t.Errorf("%v to a server without an endpoint: got %v, want Unimplemented", mode, err)
		}
		if len(events) != 0 {
			t.Errorf("%v: a refused move reported %+v", mode, events)
		}
	}
	if _, err := cl.Move(ctx, "web", "a", "b", &container.TransferOptions{Mode: 7}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("move in an unknown mode: got %v, want InvalidArgument", err)
	}
	a, _ := cl.Server("a")
	if info, err := a.Get(ctx, "web"); err != nil || info.State != container.Running {
		t.Fatalf("source after refused moves: %+v, %v; want running", info, err)
	}
	if !bytes.Equal(readData(t, a, "web"), data) {
		t.Fatal("source's file changed")
	}
	if list, _ := plain.List(ctx); len(list) != 0 {
		t.Fatalf("the plain server got %d containers", len(list))
	}
}

func TestClusterServers(t *testing.T) {
	ctx := context.Background()
	cl, _ := newCluster(t)
	if err := cl.AddServer("a", container.NewServer(memcontainer.New(nil), nil)); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("duplicate Add: %v", err)
	}
	if err := cl.AddServer("Not_A_Label", container.NewServer(memcontainer.New(nil), nil)); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("invalid Add: %v", err)
	}
	st := cl.Servers(ctx)
	if len(st) != 3 || st[0].Name != "a" || !st[0].Healthy() || st[0].Host.Running != 1 || st[0].Host.Hostname != "a" {
		t.Fatalf("Servers = %+v", st)
	}
	if _, err := cl.RemoveServer("c"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.RemoveServer("c"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("second Remove: %v", err)
	}
	if len(cl.Servers(ctx)) != 2 {
		t.Fatal("Remove kept the server")
	}
}
