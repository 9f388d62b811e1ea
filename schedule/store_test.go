package schedule

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
)

func checkStore(t *testing.T, s Store) {
	ctx := t.Context()
	a, b := web(3, "1"), web(2, "2")
	b.Name = "api"
	for _, d := range []*Deployment{&a, &b} {
		if err := s.Put(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	bad := web(-1, "1")
	if err := s.Put(ctx, &bad); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Put of an invalid deployment: %v", err)
	}
	got, err := s.Deployments(ctx)
	if err != nil || len(got) != 2 || got[0].Name != "api" || got[1].Name != "web" || got[1].Version() != a.Version() {
		t.Fatalf("Deployments = %+v, %v", got, err)
	}
	if st, err := s.Stable(ctx, "web"); err != nil || st != nil {
		t.Fatalf("Stable before any = %+v, %v", st, err)
	}
	if err := s.SetStable(ctx, &a); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Stable(ctx, "web"); err != nil || st == nil || st.Version() != a.Version() {
		t.Fatalf("Stable = %+v, %v", st, err)
	}
	if err := s.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "web"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if st, _ := s.Stable(ctx, "web"); st != nil {
		t.Fatal("the stable version outlived its deployment")
	}
}

func TestMemStore(t *testing.T) { checkStore(t, newMemStore()) }

func TestBoltStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "schedule.db")
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	checkStore(t, s)
	if _, err := OpenStore(path); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("a second open while held: %v", err)
	}
	s.Close()
	again, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got, err := again.Deployments(t.Context()); err != nil || len(got) != 1 || got[0].Name != "api" {
		t.Fatalf("after reopening: %+v, %v", got, err)
	}
}

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
	store := newMemStore()
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
