package schedule

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
)

// TestFenceStopsActions: once the fence says no, the controller takes no
// further action.
func TestFenceStopsActions(t *testing.T) {
	cl, _ := testCluster(t)
	actions, allowed := 0, 2
	deposed := errcode.New(errcode.FailedPrecondition, "leadership lost")
	c := NewController(cl, &ControllerOptions{
		Events: func(Event) { actions++ },
		Fence: func(context.Context) error {
			if actions >= allowed {
				return deposed
			}
			return nil
		},
	})
	err := c.Reconcile(t.Context(), []Deployment{web(6, "1")})
	if !errors.Is(err, deposed) || actions != allowed {
		t.Fatalf("Reconcile = %v after %d actions; want the fence's error after %d", err, actions, allowed)
	}
	if _, total := jobReplicas(t, cl, "web"); total != allowed {
		t.Fatalf("%d replicas exist; the fence allowed %d", total, allowed)
	}
}

// TestRun reconciles what the store holds, and returns when ctx ends.
func TestRun(t *testing.T) {
	cl, _ := testCluster(t)
	store := NewMemStore()
	d := web(3, "1")
	if err := store.Put(t.Context(), &d); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	c := NewController(cl, &ControllerOptions{Store: store})
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, 10*time.Millisecond) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := store.Stable(t.Context(), "web"); st != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not converge the stored deployment")
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if _, total := jobReplicas(t, cl, "web"); total != 3 {
		t.Fatalf("%d replicas; want 3", total)
	}
}
