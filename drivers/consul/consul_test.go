package consul

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/drivertest"
	"github.com/musterkit/muster/internal/consultest"
	"github.com/musterkit/muster/internal/freeport"
)

// startDevAgent runs a Consul dev agent on loopback until the test ends
// and returns a driver for it.
func startDevAgent(t testing.TB) *Driver {
	t.Helper()
	d, err := Open(context.Background(), &Options{Address: consultest.StartDev(t, "127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	consultest.Require(t)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:          func(t *testing.T) driver.Driver { return startDevAgent(t) },
		CheckInterval: time.Second,
	})
}

func TestOpenRefuses(t *testing.T) {
	if _, err := Open(context.Background(), &Options{Address: "no port"}); err == nil || !strings.Contains(err.Error(), "address") {
		t.Fatalf("bad address: %v", err)
	}
	// A port the test keeps, where nothing listens: a freed one could be
	// taken meanwhile by an agent a test running in parallel starts.
	addr := freeport.Reserve(t, "127.0.0.1").Addr()
	if _, err := Open(context.Background(), &Options{Address: addr}); err == nil {
		t.Fatal("Open with no agent listening succeeded")
	}
}

// TestLock runs two contenders for one key: one leads, the other waits
// until the first releases; a cancelled wait returns the context's error.
func TestLock(t *testing.T) {
	d := startDevAgent(t)
	ctx := context.Background()
	first, err := d.Lock(ctx, "muster/leader", &LockOptions{Holder: "a", TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := d.Lock(short, "muster/leader", &LockOptions{Holder: "b", TTL: 10 * time.Second}); err == nil {
		t.Fatal("a second contender took a held lock")
	}
	got := make(chan *Leadership, 1)
	go func() {
		l, err := d.Lock(ctx, "muster/leader", &LockOptions{Holder: "b", TTL: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-got:
		t.Fatal("the second contender leads while the first holds the lock")
	case <-time.After(300 * time.Millisecond):
	}
	kv, _, err := d.Client().KV().Get("muster/leader", nil)
	if err != nil || kv == nil || string(kv.Value) != "a" {
		t.Fatalf("the key holds %+v, %v", kv, err)
	}
	released := time.Now()
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	select {
	case second := <-got:
		t.Logf("the second contender led %v after the release", time.Since(released).Round(time.Millisecond))
		if second == nil {
			t.Fatal("no leadership")
		}
		defer second.Release()
		select {
		case <-second.Lost:
			t.Fatal("lost at once")
		default:
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second contender did not take the released lock")
	}
	for _, bad := range []string{"", "/abs", "a/../b", "a b", "a\nb"} {
		if _, err := d.Lock(ctx, bad, nil); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
}
