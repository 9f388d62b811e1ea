package memdiscovery

import (
	"context"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery/driver"
)

// TestDeregisterAfter backdates a failing instance's critical state past
// its DeregisterAfter (a minute at least) instead of waiting for it.
func TestDeregisterAfter(t *testing.T) {
	r := New(nil)
	defer r.Close()
	ctx := context.Background()
	inst := &driver.Instance{ID: "gone-1", Service: "gone", Address: "127.0.0.1", Port: 1,
		Check: &driver.Check{Type: driver.TCPCheck, Interval: 100 * time.Millisecond, DeregisterAfter: time.Minute}}
	if err := r.Register(ctx, inst); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if es, _ := r.Resolve(ctx, driver.Query{Service: "gone", Critical: true}); len(es) != 1 || es[0].Health != driver.Critical {
		t.Fatalf("before its time: %+v", es)
	}
	r.mu.Lock()
	r.instances["gone-1"].criticalSince = time.Now().Add(-61 * time.Second)
	r.mu.Unlock()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		es, _ := r.Resolve(ctx, driver.Query{Service: "gone", Critical: true})
		if len(es) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still registered after being critical past DeregisterAfter: %+v", es)
		}
	}
}
