package container_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
)

// fault is what the calls to a flaky server meet.
type fault int

const (
	healthy fault = iota
	// crashBefore: the next call fails before its server applies it, as
	// when the agent dies and comes back at once.
	crashBefore
	// crashAfter: the next call is applied, then its reply is lost.
	crashAfter
	// dead: every call fails until revive.
	dead
)

func (f fault) String() string {
	return [...]string{"healthy", "crash-before", "crash-after", "dead"}[f]
}

// flaky is a peered memory server whose agent can crash.
type flaky struct {
	*peered
	mu    sync.Mutex
	fault fault
}

func (f *flaky) set(x fault) {
	f.mu.Lock()
	f.fault = x
	f.mu.Unlock()
}

// do runs op as the server's current fault allows.
func (f *flaky) do(op func() error) error {
	f.mu.Lock()
	x := f.fault
	if x == crashBefore || x == crashAfter {
		f.fault = healthy // the agent is back for the next call
	}
	f.mu.Unlock()
	switch x {
	case crashBefore, dead:
		return errcode.New(errcode.Unavailable, "agent %s is down", f.endpoint)
	case crashAfter:
		op()
		return errcode.New(errcode.Unavailable, "agent %s died before it replied", f.endpoint)
	}
	return op()
}

func (f *flaky) Get(ctx context.Context, name string) (info *driver.Info, err error) {
	err = f.do(func() error { info, err = f.peered.Get(ctx, name); return err })
	return info, err
}

func (f *flaky) Start(ctx context.Context, name string) error {
	return f.do(func() error { return f.peered.Start(ctx, name) })
}

func (f *flaky) Stop(ctx context.Context, name string, timeout time.Duration) error {
	return f.do(func() error { return f.peered.Stop(ctx, name, timeout) })
}

func (f *flaky) Delete(ctx context.Context, name string) error {
	return f.do(func() error { return f.peered.Delete(ctx, name) })
}

func (f *flaky) Export(ctx context.Context, name string, w io.Writer) error {
	return f.do(func() error { return f.peered.Export(ctx, name, w) })
}

func (f *flaky) Import(ctx context.Context, r io.Reader, rename string) (info *driver.Info, err error) {
	err = f.do(func() error { info, err = f.peered.Import(ctx, r, rename); return err })
	return info, err
}

func (f *flaky) Push(ctx context.Context, name, target, rename string, progress func(int64)) (info *driver.Info, err error) {
	err = f.do(func() error { info, err = f.peered.Push(ctx, name, target, rename, progress); return err })
	return info, err
}

func (f *flaky) Pull(ctx context.Context, source, name, rename string, progress func(int64)) (info *driver.Info, err error) {
	err = f.do(func() error { info, err = f.peered.Pull(ctx, source, name, rename, progress); return err })
	return info, err
}

func (f *flaky) ExportChanges(ctx context.Context, name string, base *image.Index, w io.Writer) error {
	return f.do(func() error { return f.peered.ExportChanges(ctx, name, base, w) })
}

func (f *flaky) Stage(ctx context.Context, r io.Reader, name string) (ix *image.Index, err error) {
	err = f.do(func() error { ix, err = f.peered.Stage(ctx, r, name); return err })
	return ix, err
}

func (f *flaky) CommitStaged(ctx context.Context, name string) (info *driver.Info, err error) {
	err = f.do(func() error { info, err = f.peered.CommitStaged(ctx, name); return err })
	return info, err
}

func (f *flaky) DropStaged(ctx context.Context, name string) error {
	return f.do(func() error { return f.peered.DropStaged(ctx, name) })
}

// injection is a fault injected when a transfer reports its event number
// at: the caller's context cancelled, or a server's agent crashing.
type injection struct {
	at     int
	cancel bool
	server string // "a" (the source) or "b" (the target)
	fault  fault
}

func (in injection) String() string {
	if in.cancel {
		return fmt.Sprintf("event%d/cancel", in.at)
	}
	return fmt.Sprintf("event%d/%s-%v", in.at, in.server, in.fault)
}

// TestTransferFaults injects a fault at every step of Copy and Move in
// every mode, and checks that the container is never lost, that a Move
// never leaves two copies unless a server stayed unreachable and the error
// says so, and that the error says where the container is.
func TestTransferFaults(t *testing.T) {
	for _, move := range []bool{false, true} {
		op := map[bool]string{false: "copy", true: "move"}[move]
		t.Run(op, func(t *testing.T) {
			transferModes(t, func(t *testing.T, mode container.TransferMode) {
				testTransferFaults(t, &container.TransferOptions{Mode: mode}, move)
			})
		})
	}
}

// TestPreCopyFaults is TestTransferFaults for pre-copy transfers, whose
// staged copy and commit add steps.
func TestPreCopyFaults(t *testing.T) {
	for _, move := range []bool{false, true} {
		t.Run(map[bool]string{false: "copy", true: "move"}[move], func(t *testing.T) {
			testTransferFaults(t, &container.TransferOptions{PreCopy: true}, move)
		})
	}
}

// testTransferFaults injects every fault at every event of a transfer
// with base's options.
func testTransferFaults(t *testing.T, base *container.TransferOptions, move bool) {
	events := len(transferEvents(t, base, move))
	for at := range events {
		injections := []injection{{at: at, cancel: true}}
		for _, server := range []string{"a", "b"} {
			for _, f := range []fault{crashBefore, crashAfter, dead} {
				injections = append(injections, injection{at: at, server: server, fault: f})
			}
		}
		for _, in := range injections {
			t.Run(in.String(), func(t *testing.T) {
				t.Parallel()
				testTransferFault(t, base, move, in)
			})
		}
	}
}

// transferEvents returns the events of a transfer without faults.
func transferEvents(t *testing.T, base *container.TransferOptions, move bool) []container.Event {
	cl, _ := newFaultCluster(t, func(p *peered) peer { return &flaky{peered: p} })
	var events []container.Event
	opts := *base
	opts.Progress = func(e container.Event) { events = append(events, e) }
	if _, err := transferOp(cl, move)(context.Background(), "web", "a", "b", &opts); err != nil {
		t.Fatal(err)
	}
	return events
}

func transferOp(cl *container.Cluster, move bool) func(context.Context, string, string, string, *container.TransferOptions) (*container.Info, error) {
	if move {
		return cl.Move
	}
	return cl.Copy
}

func testTransferFault(t *testing.T, base *container.TransferOptions, move bool, in injection) {
	servers := map[string]*flaky{}
	cl, data := newFaultCluster(t, func(p *peered) peer {
		f := &flaky{peered: p}
		servers[p.endpoint[:1]] = f
		return f
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	opts := *base
	opts.FinishTimeout = 100 * time.Millisecond
	opts.Progress = func(e container.Event) {
		if n == in.at {
			if in.cancel {
				cancel()
			} else {
				servers[in.server].set(in.fault)
			}
		}
		n++
	}
	info, err := transferOp(cl, move)(ctx, "web", "a", "b", &opts)
	for _, s := range servers {
		s.set(healthy)
	}

	holds := map[string]bool{}             // servers holding a complete copy
	states := map[string]container.State{} // and the copy's state
	for _, name := range []string{"a", "b"} {
		s, _ := cl.Server(name)
		got, gerr := s.Get(context.Background(), "web")
		if errors.Is(gerr, errcode.NotFound) {
			continue
		}
		if gerr != nil {
			t.Fatalf("reading %s afterwards: %v", name, gerr)
		}
		states[name] = got.State
		if got.State != container.Running {
			if serr := s.Start(context.Background(), "web"); serr != nil {
				t.Fatalf("the copy on %s does not start: %v", name, serr)
			}
		}
		if !bytes.Equal(readData(t, s, "web"), data) {
			t.Fatalf("the copy on %s is not complete", name)
		}
		holds[name] = true
	}
	t.Logf("err: %v; copies: %v", err, holds)

	if err == nil {
		want := map[string]bool{"a": !move, "b": true}
		if holds["a"] != want["a"] || holds["b"] != want["b"] || info == nil || info.State != container.Running {
			t.Fatalf("a successful %+v left copies %v (info %+v), want %v", *base, holds, info, want)
		}
		return
	}
	var te *container.TransferError
	if !errors.As(err, &te) {
		t.Fatalf("the error is no *TransferError: %v", err)
	}
	if errcode.Of(err) == errcode.Unknown {
		t.Errorf("the error has no errcode: %v", err)
	}
	if !holds[te.At] {
		t.Fatalf("the error says the container is on %q, but it is not there: %v", te.At, err)
	}
	other := map[string]string{"a": "b", "b": "a"}[te.At]
	if holds[other] && te.Leftover != other {
		t.Fatalf("%s holds a copy the error does not mention: %v", other, err)
	}
	if te.Leftover != "" && !(in.fault == dead && in.server == te.Leftover) {
		t.Fatalf("a leftover on %q, though its agent stayed reachable: %v", te.Leftover, err)
	}
	if te.At == "a" && states["a"] != container.Running && !(in.fault == dead && in.server == "a") {
		t.Fatalf("the rollback left the source %s: %v", states["a"], err)
	}
	if !move && te.At != "a" {
		t.Fatalf("a failed copy reports the container on %q", te.At)
	}
}

// newFaultCluster is newClusterOf with an image of two small files and 4 KiB
// of data: the faults do not depend on the size, and the cases are many.
func newFaultCluster(t *testing.T, wrap func(*peered) peer) (*container.Cluster, []byte) {
	t.Helper()
	src := t.TempDir()
	for _, dir := range []string{"bin", "root"} {
		if err := os.MkdirAll(filepath.Join(src, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, prog := range []string{"cat", "tee", "rm", "chmod", "ln"} { // memcontainer runs them, if the image has them
		if err := os.WriteFile(filepath.Join(src, "bin", prog), []byte("#!\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var blob bytes.Buffer
	if err := image.WriteArchive(context.Background(), &blob, src, nil, nil); err != nil {
		t.Fatal(err)
	}
	return newClusterOf(t, wrap, &image.Manifest{Name: "base"}, blob.Bytes(), bytes.Repeat([]byte("fault!\n"), 585))
}
