package discovery_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/discovery/memdiscovery"
)

func TestPublisher(t *testing.T) {
	ctx := context.Background()
	srv := container.NewServer(memcontainer.New(&memcontainer.Options{Bridges: []string{"br0"}}), nil)
	m, blob := drivertest.BaseImage(t)
	if _, err := srv.PutImage(ctx, m, strings.NewReader(string(blob))); err != nil {
		t.Fatal(err)
	}
	run := func(name, addr string, labels map[string]string) {
		t.Helper()
		spec := &container.Spec{Name: name, Image: "base", Labels: labels,
			Networks: []container.Network{{Bridge: "br0", Address: netip.MustParsePrefix(addr)}}}
		if _, err := srv.Create(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	run("db", "198.19.0.10/24", map[string]string{discovery.LabelService: "mysql", discovery.LabelPort: "3306", discovery.LabelTags: "primary.v8"})
	run("broken", "198.19.0.11/24", map[string]string{discovery.LabelService: "mysql", discovery.LabelPort: "nope"})
	run("plain", "198.19.0.12/24", nil)

	reg, err := discovery.New(memdiscovery.New(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	p, err := discovery.NewPublisher(reg, "s1", srv, &discovery.PublisherOptions{Interval: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("Sync with a bad label: %v", err)
	}
	es, err := reg.Resolve(ctx, "mysql", "primary")
	if err != nil || len(es) != 1 || es[0].ID != "s1.db" || es[0].Address != "198.19.0.10" || es[0].Port != 3306 || es[0].Meta["container"] != "db" {
		t.Fatalf("published: %+v, %v", es, err)
	}

	// The container stops: its instance goes at the next sync.
	if err := srv.Stop(ctx, "db", time.Second); err != nil {
		t.Fatal(err)
	}
	p.Sync(ctx)
	if es, _ := reg.Resolve(ctx, "mysql", ""); len(es) != 0 {
		t.Fatalf("after the container stopped: %+v", es)
	}

	// The publisher's server dies (it stops syncing): the TTL runs out.
	if err := srv.Start(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	p.Sync(ctx)
	if es, _ := reg.Resolve(ctx, "mysql", ""); len(es) != 1 {
		t.Fatalf("after the container started again: %+v", es)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if es, _ := reg.Resolve(ctx, "mysql", ""); len(es) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still answered 5s after its publisher stopped (TTL 1.2s)")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A graceful Run end withdraws everything.
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if es, _ := reg.Resolve(ctx, "mysql", ""); len(es) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not publish")
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if svcs, _ := reg.Services(ctx); len(svcs) != 0 {
		t.Fatalf("after Run ended: services %v", svcs)
	}
}
