package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/fleet"
)

// TestMoveFaultsThroughAgents moves a running LXC container between two
// agents with a fault injected before or after the move's commit: the
// caller's context cancelled, the target's agent killed and restarted, or
// killed and left dead. The container is never lost and never doubled,
// and the result says where it is. (container's TestTransferFaults injects
// every fault at every step in every mode with an in-memory driver.)
func TestMoveFaultsThroughAgents(t *testing.T) {
	f := startFleet(t, 2)
	ctx := context.Background()
	s0, _ := f.Cluster.Server("s0")
	if _, err := s0.Create(ctx, &container.Spec{Name: "mv", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if err := s0.Start(ctx, "mv"); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	if code, err := s0.Exec(ctx, "mv", &container.Process{Args: []string{"tee", "/root/data"}, Stdin: bytes.NewReader(data)}); err != nil || code != 0 {
		t.Fatalf("writing data: exit %d, %v", code, err)
	}

	type scenario struct {
		name string
		at   container.Phase
		// inject runs at the phase's event with the move's cancel and
		// the target; it returns what to do once Move returned.
		inject func(t *testing.T, cancel context.CancelFunc, target *fleet.Server) (after func())
		// committed: Move fails after its commit; undone: it fails
		// before, and is rolled back (else it succeeds).
		committed, undone bool
	}
	kill := func(t *testing.T, target *fleet.Server) {
		if err := target.Kill(); err != nil {
			t.Fatalf("killing the target's agent: %v", err)
		}
	}
	restart := func(t *testing.T, target *fleet.Server) {
		if err := target.Restart(context.Background()); err != nil {
			t.Fatalf("restarting the target's agent: %v", err)
		}
	}
	scenarios := []scenario{
		{name: "cancel-before-stop", at: container.PhaseStop, undone: true,
			inject: func(t *testing.T, cancel context.CancelFunc, _ *fleet.Server) func() { cancel(); return func() {} }},
		{name: "target-killed-and-restarted-at-transfer", at: container.PhaseTransfer, undone: true,
			inject: func(t *testing.T, _ context.CancelFunc, target *fleet.Server) func() {
				kill(t, target)
				done := make(chan struct{})
				go func() { defer close(done); time.Sleep(300 * time.Millisecond); restart(t, target) }()
				return func() { <-done }
			}},
		{name: "cancel-during-cleanup", at: container.PhaseCleanup,
			inject: func(t *testing.T, cancel context.CancelFunc, _ *fleet.Server) func() { cancel(); return func() {} }},
		{name: "target-killed-and-restarted-at-cleanup", at: container.PhaseCleanup,
			inject: func(t *testing.T, _ context.CancelFunc, target *fleet.Server) func() {
				kill(t, target)
				done := make(chan struct{})
				go func() { defer close(done); time.Sleep(300 * time.Millisecond); restart(t, target) }()
				return func() { <-done }
			}},
		{name: "target-killed-and-left-dead-at-cleanup", at: container.PhaseCleanup, committed: true,
			inject: func(t *testing.T, _ context.CancelFunc, target *fleet.Server) func() {
				kill(t, target)
				return func() { restart(t, target) }
			}},
		{name: "target-killed-and-left-dead-at-start", at: container.PhaseStart, committed: true,
			inject: func(t *testing.T, _ context.CancelFunc, target *fleet.Server) func() {
				kill(t, target)
				return func() { restart(t, target) }
			}},
	}

	at := 0 // the server holding the container
	// Each scenario runs in one mode, the modes in turn, so that every
	// mode meets two of them (container's TestTransferFaults runs every
	// fault in every mode).
	for i, sc := range scenarios {
		mode := modes[i%len(modes)]
		{
			ok := t.Run(mode.String()+"/"+sc.name, func(t *testing.T) {
				from, to := f.Servers[at], f.Servers[1-at]
				mctx, cancel := context.WithCancel(ctx)
				defer cancel()
				after := func() {}
				injected := false
				info, err := f.Cluster.Move(mctx, "mv", from.Name, to.Name, &container.TransferOptions{
					Mode: mode, StopTimeout: time.Second, FinishTimeout: 5 * time.Second,
					Progress: func(e container.Event) {
						if e.Phase == sc.at && !injected {
							injected = true
							after = sc.inject(t, cancel, to)
						}
					}})
				after()
				t.Logf("move: %+v, %v", info, err)
				var te *container.TransferError
				if sc.undone {
					if !errors.As(err, &te) || te.At != from.Name || te.Leftover != "" {
						t.Fatalf("move failing before its commit: %v; want a TransferError at %s, no leftover", err, from.Name)
					}
					src, _ := f.Cluster.Server(from.Name)
					if got, err := src.Get(ctx, "mv"); err != nil || got.State != container.Running {
						t.Fatalf("the source after the rollback: %+v, %v; want running", got, err)
					}
					dst, _ := f.Cluster.Server(to.Name)
					if _, err := dst.Get(ctx, "mv"); !errors.Is(err, errcode.NotFound) {
						t.Fatalf("the target after the rollback: %v; want nothing", err)
					}
					return
				}
				switch {
				case sc.committed:
					if !errors.As(err, &te) || te.At != to.Name || te.Leftover != "" || errcode.Of(err) != errcode.Unavailable {
						t.Fatalf("move past its commit with the target dead: %v; want a TransferError at %s, unavailable, no leftover", err, to.Name)
					}
				case err != nil:
					t.Fatalf("move: %v", err)
				case info.State != container.Running:
					t.Fatalf("moved container is %s", info.State)
				}
				at = 1 - at
				src, _ := f.Cluster.Server(from.Name)
				if _, err := src.Get(ctx, "mv"); !errors.Is(err, errcode.NotFound) {
					t.Fatalf("the source still holds the container: %v", err)
				}
				dst, _ := f.Cluster.Server(to.Name)
				if err := dst.Start(ctx, "mv"); err != nil && !errors.Is(err, errcode.FailedPrecondition) {
					t.Fatalf("starting the moved container: %v", err)
				}
				var out bytes.Buffer
				if code, err := dst.Exec(ctx, "mv", &container.Process{Args: []string{"cat", "/root/data"}, Stdout: &out}); err != nil || code != 0 || !bytes.Equal(out.Bytes(), data) {
					t.Fatalf("the moved container's data: exit %d, %v, %d bytes equal=%v", code, err, out.Len(), bytes.Equal(out.Bytes(), data))
				}
			})
			if !ok {
				return // the container is not where the next scenario expects it
			}
		}
	}
}
