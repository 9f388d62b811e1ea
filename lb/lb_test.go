package lb_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/memlb"
)

func TestBalancer(t *testing.T) {
	var logs bytes.Buffer
	b, err := lb.New("edge", memlb.New(), &lb.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := t.Context()
	cfg := &lb.Config{Pools: []lb.Pool{{Name: "web", Servers: []lb.Server{{Name: "a", Address: "198.18.0.1", Port: 80}}}}}
	if err := b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "balancer applied") || !strings.Contains(logs.String(), "balancer=edge") {
		t.Fatalf("log: %s", logs.String())
	}
	err = b.RemoveServer(ctx, "web", "nope")
	if !errors.Is(err, errcode.NotFound) || strings.Count(err.Error(), `balancer "edge"`) != 1 {
		t.Fatalf("RemoveServer of an unknown server: %v", err)
	}
	err = b.SetWeight(ctx, "web", "a", 0)
	if !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("weight 0: %v", err)
	}
	err = b.SetState(ctx, "web", "a", "gone")
	if !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("unknown state: %v", err)
	}
	cfg.Pools[0].Servers[0].Address = "198.18.0.1;"
	if err := b.Apply(ctx, cfg); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("injected address: %v", err)
	}
	if _, err := lb.New("Bad Name", memlb.New(), nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("bad balancer name: %v", err)
	}
	if _, err := lb.New("x", nil, nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("nil driver: %v", err)
	}
	st, err := b.Stats(ctx)
	if err != nil || len(st) != 1 || st[0].State != driver.Up {
		t.Fatalf("Stats = %v, %v", st, err)
	}
}
