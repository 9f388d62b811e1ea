package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/drivers/consul"
	"github.com/musterkit/muster/internal/consultest"
)

// TestContainersPublishedToConsul publishes the labelled LXC containers of
// a server, read through its agent, into a real Consul agent: a running
// container is answered with its address on the network, a stopped one is
// withdrawn, and when the server's agent dies its instances expire.
func TestContainersPublishedToConsul(t *testing.T) {
	consultest.Require(t)
	f := startFleet(t, 2)
	ctx := context.Background()
	fab := fabricOf(t, f)
	ensureVXLAN(t, fab, "pub", "198.19.132.0/24", 4302)
	n := runOn(t, f, fab, "pub", "s1", "db", map[string]string{discovery.LabelService: "mysql", discovery.LabelPort: "3306"})
	s1, _ := f.Cluster.Server("s1")
	d, err := consul.Open(ctx, &consul.Options{Address: consultest.StartDev(t, "127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	reg := discovery.New(d, nil)
	p, err := discovery.NewPublisher(reg, "s1", s1, &discovery.PublisherOptions{Interval: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	es, err := reg.Resolve(ctx, "mysql", "")
	if err != nil || len(es) != 1 || es[0].Address != n.Address.Addr().String() || es[0].ID != "s1.db" {
		t.Fatalf("Consul answers %+v, %v; want db at %v", es, err, n.Address.Addr())
	}
	if err := s1.Stop(ctx, "db", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if es, err := reg.Resolve(ctx, "mysql", ""); err != nil || len(es) != 0 {
		t.Fatalf("after the container stopped: %+v, %v", es, err)
	}
	if err := s1.Start(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The server's agent dies: the publisher can no longer list its
	// containers nor keep them alive, and Consul lets them expire.
	if err := f.Servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if err := p.Sync(ctx); err == nil {
			t.Fatal("Sync succeeded with the server's agent dead")
		}
		if es, err := reg.Resolve(ctx, "mysql", ""); err == nil && len(es) == 0 {
			t.Logf("db left Consul's answers %v after its server died (TTL 1.2s)", time.Since(died).Round(100*time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("db still answered a minute after its server died")
		}
	}
}
