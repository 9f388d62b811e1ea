package memlb_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/lb/memlb"
)

func TestConformance(t *testing.T) {
	port := uint16(20000)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) driver.Driver {
			d := memlb.New()
			t.Cleanup(func() { d.Close() })
			return d
		},
		Bind: func(t *testing.T) (string, uint16) { port++; return "127.0.0.1", port },
	})
}

func TestPick(t *testing.T) {
	ctx := t.Context()
	d := memlb.New()
	cfg := &driver.Config{Pools: []driver.Pool{
		{Name: "rr", Servers: []driver.Server{{Name: "a", Address: "10.0.0.1", Port: 80}, {Name: "b", Address: "10.0.0.2", Port: 80, Weight: 3}, {Name: "z", Address: "10.0.0.9", Port: 80, Backup: true}}},
		{Name: "sh", Algorithm: driver.SourceHash, Servers: []driver.Server{{Name: "a", Address: "10.0.0.1", Port: 80}, {Name: "b", Address: "10.0.0.2", Port: 80}}},
		{Name: "lc", Algorithm: driver.LeastConnections, Servers: []driver.Server{{Name: "a", Address: "10.0.0.1", Port: 80}, {Name: "b", Address: "10.0.0.2", Port: 80}}},
	}}
	if err := d.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("198.18.0.1")
	count := map[string]int{}
	for range 400 {
		c, err := d.Pick("rr", client)
		if err != nil {
			t.Fatal(err)
		}
		count[c.Server]++
		c.Close()
	}
	if count["a"] != 100 || count["b"] != 300 || count["z"] != 0 {
		t.Fatalf("weighted round robin 1:3 over 400: %v", count)
	}
	first, _ := d.Pick("sh", client)
	for range 50 {
		if c, _ := d.Pick("sh", client); c.Server != first.Server {
			t.Fatalf("source hash moved the client from %s to %s", first.Server, c.Server)
		}
	}
	held, _ := d.Pick("lc", client) // a stays busy
	for range 10 {
		c, _ := d.Pick("lc", client)
		if c.Server == held.Server {
			t.Fatalf("least connections picked the busy server %s", c.Server)
		}
		c.Close()
	}
	// Backups take over when no other server is usable.
	d.SetState(ctx, "rr", "a", driver.Maintenance)
	d.SetHealthy("rr", "b", false)
	if c, err := d.Pick("rr", client); err != nil || c.Server != "z" {
		t.Fatalf("with a in maintenance and b down, Pick = %v, %v; want the backup z", c, err)
	}
	d.SetState(ctx, "rr", "z", driver.Drain)
	if _, err := d.Pick("rr", client); err == nil {
		t.Fatal("Pick with no usable server succeeded")
	}
	st, _ := d.Stats(ctx)
	if got := fmt.Sprintf("%s %s %d %d", st[0].Pool, st[0].Server, st[0].TotalConnections, st[0].CurrentSessions); got != "lc a 1 1" {
		t.Fatalf("stats of lc/a = %s, want one total and one current connection", got)
	}
}
