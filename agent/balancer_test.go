package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/musterkit/muster/errcode"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/lb/memlb"
)

func memKinds() map[string]BalancerKind {
	return map[string]BalancerKind{"memory": func(context.Context, string) (lbdriver.Driver, error) { return memlb.New(), nil }}
}

// TestBalancerConformance runs the load-balancer suite on balancers
// deployed through an agent (memlb behind it).
func TestBalancerConformance(t *testing.T) {
	cl := newCluster(t, nil)
	bs, err := OpenBalancers(context.Background(), t.TempDir(), memKinds(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cl.balancers = bs
	c := cl.dial(t, cl.serve(t, memServer(t)))
	var n, port atomic.Int32
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) lbdriver.Driver {
			d := c.Balancer("memory", fmt.Sprintf("lb%d", n.Add(1)))
			t.Cleanup(func() { d.Close() })
			return d
		},
		Bind: func(*testing.T) (string, uint16) { return "198.18.0.1", uint16(8000 + port.Add(1)) },
	})
}

func TestBalancersRestoreAndRefuse(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bs, err := OpenBalancers(ctx, dir, memKinds(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "web", Protocol: lbdriver.HTTP, Address: "198.18.0.1", Port: 80, DefaultPool: "app"}},
		Pools:     []lbdriver.Pool{{Name: "app", Servers: []lbdriver.Server{{Name: "a", Address: "198.19.0.5", Port: 8080}}}},
	}
	if err := bs.Deploy(ctx, "front", "memory", cfg); err != nil {
		t.Fatal(err)
	}
	if err := bs.Do(ctx, "front", func(d lbdriver.Driver) error {
		return d.AddServer(ctx, "app", lbdriver.Server{Name: "b", Address: "198.19.0.6", Port: 8080})
	}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "front.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record: %v, %v", fi, err)
	}

	// Refusals change nothing.
	if err := bs.Deploy(ctx, "other", "nginx", cfg); !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("unknown kind: %v", err)
	}
	kinds := memKinds()
	kinds["other"] = kinds["memory"]
	bs.kinds = kinds
	if err := bs.Deploy(ctx, "front", "other", cfg); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("another kind under the same name: %v", err)
	}
	bad := *cfg
	bad.Pools = []lbdriver.Pool{{Name: "app", Servers: []lbdriver.Server{{Name: "a", Address: "198.19.0.5\nbind :22", Port: 8080}}}}
	if err := bs.Deploy(ctx, "broken", "memory", &bad); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("invalid config: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "broken")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a balancer that failed to deploy left its directory: %v", err)
	}
	if got := bs.List(); len(got) != 1 || got[0] != (Info{Name: "front", Kind: "memory"}) {
		t.Fatalf("List = %v", got)
	}

	// A restart brings it back with the added server.
	if err := bs.Close(); err != nil {
		t.Fatal(err)
	}
	bs2, err := OpenBalancers(ctx, dir, memKinds(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got *lbdriver.Config
	if err := bs2.Do(ctx, "front", func(d lbdriver.Driver) (err error) { got, err = d.Config(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	if len(got.Pools) != 1 || len(got.Pools[0].Servers) != 2 {
		t.Fatalf("restored config %+v", got)
	}
	if err := bs2.Remove(ctx, "front"); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("Remove left %v", entries)
	}
}

func TestBalancerClientRefusesBadNames(t *testing.T) {
	cl := newCluster(t, nil)
	bs, err := OpenBalancers(context.Background(), t.TempDir(), memKinds(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cl.balancers = bs
	c := cl.dial(t, cl.serve(t, memServer(t)))
	ctx := context.Background()
	if err := c.Balancer("memory", "../etc").Apply(ctx, &lbdriver.Config{}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
	if err := c.Balancer("memory", "ok").RemoveServer(ctx, "p", "a/b"); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("bad server name: %v", err)
	}
	if err := c.Balancer("memory", "never").SetWeight(ctx, "p", "a", 2); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("a balancer never deployed: %v", err)
	}
	if bl, err := c.Balancers(ctx); err != nil || len(bl) != 0 {
		t.Fatalf("Balancers = %v, %v", bl, err)
	}
}
