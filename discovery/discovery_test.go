package discovery_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/errcode"
)

func next(t *testing.T, ch <-chan discovery.Update) discovery.Update {
	t.Helper()
	select {
	case u, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no update in 10s")
	}
	return discovery.Update{}
}

func ids(es []discovery.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

func TestWatchStreamsAndResumes(t *testing.T) {
	ctx := context.Background()
	reg, err := discovery.New(memdiscovery.New(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	inst := func(id string) *discovery.Instance {
		return &discovery.Instance{ID: id, Service: "mysql", Address: "198.19.0.10", Port: 3306}
	}
	if err := reg.Register(ctx, inst("m1")); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	ch, err := reg.Watch(wctx, "mysql", 0)
	if err != nil {
		t.Fatal(err)
	}
	if u := next(t, ch); !slices.Equal(ids(u.Entries), []string{"m1"}) {
		t.Fatalf("first update %+v", u)
	}
	if err := reg.Register(ctx, inst("m2")); err != nil {
		t.Fatal(err)
	}
	u := next(t, ch)
	if !slices.Equal(ids(u.Entries), []string{"m1", "m2"}) {
		t.Fatalf("after registering m2: %+v", u)
	}
	// The watcher goes away; changes happen; a new watch from the last
	// index sees them at once.
	stop()
	for range ch {
	}
	if err := reg.Deregister(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	ch, err = reg.Watch(ctx, "mysql", u.Index)
	if err != nil {
		t.Fatal(err)
	}
	if u := next(t, ch); !slices.Equal(ids(u.Entries), []string{"m2"}) {
		t.Fatalf("resumed watch: %+v", u)
	}
	if _, err := reg.Watch(ctx, "My SQL", 0); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
}

// flaky fails its first Waits, as a registry behind a broken connection.
type flaky struct {
	driver.Driver
	fails int
}

func (f *flaky) Wait(ctx context.Context, service string, index uint64) (*driver.Result, error) {
	if f.fails > 0 {
		f.fails--
		return nil, errcode.New(errcode.Unavailable, "connection refused")
	}
	return f.Driver.Wait(ctx, service, index)
}

func TestWatchReportsErrorsAndGoesOn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := memdiscovery.New(nil)
	mem.Register(ctx, &discovery.Instance{ID: "w1", Service: "web", Address: "198.19.0.20", Port: 80})
	reg, err := discovery.New(&flaky{Driver: mem, fails: 2}, &discovery.Options{Retry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := reg.Watch(ctx, "web", 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if u := next(t, ch); !errors.Is(u.Err, errcode.Unavailable) {
			t.Fatalf("update %+v, want the error", u)
		}
	}
	if u := next(t, ch); u.Err != nil || !slices.Equal(ids(u.Entries), []string{"w1"}) {
		t.Fatalf("after the errors: %+v", u)
	}
}
