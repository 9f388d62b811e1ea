package consul

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/discovery/driver"
)

// BenchmarkWatchLatency measures the time from a registration to its
// appearance in a watch, through this driver's Watch (discovery.Registry
// on Driver.Wait) and through Consul's own blocking query used directly
// (Health().Service with WaitIndex), both watching the same registrations
// in the same run. Run:
//
//	PATH=$PWD/bin:$PATH MUSTER_ROOT_TESTS=1 go test -run '^$' -bench WatchLatency -benchtime 200x ./drivers/consul/
func BenchmarkWatchLatency(b *testing.B) {
	d := startDevAgent(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	registered := map[string]time.Time{}
	seen := map[string]map[string]time.Duration{"muster": {}, "consul": {}}
	note := func(who string, ids []string) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if t0, ok := registered[id]; ok {
				if _, done := seen[who][id]; !done {
					seen[who][id] = now.Sub(t0)
				}
			}
		}
	}
	reg, err := discovery.New(d, nil)
	if err != nil {
		b.Fatal(err)
	}
	ch, err := reg.Watch(ctx, "bench", 0)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for u := range ch {
			var ids []string
			for _, e := range u.Entries {
				ids = append(ids, e.ID)
			}
			note("muster", ids)
		}
	}()
	go func() {
		var index uint64
		for ctx.Err() == nil {
			ses, meta, err := d.Client().Health().Service("bench", "", false, (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(ctx))
			if err != nil {
				continue
			}
			index = meta.LastIndex
			var ids []string
			for _, se := range ses {
				ids = append(ids, se.Service.ID)
			}
			note("consul", ids)
		}
	}()
	time.Sleep(200 * time.Millisecond) // both watches in place
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("bench-%d", i)
		i++
		mu.Lock()
		registered[id] = time.Now()
		mu.Unlock()
		if err := d.Register(ctx, &driver.Instance{ID: id, Service: "bench", Address: "198.19.0.9", Port: 80}); err != nil {
			b.Fatal(err)
		}
		// Until both saw it, so that registrations do not pile up.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Microsecond) {
			mu.Lock()
			_, m := seen["muster"][id]
			_, c := seen["consul"][id]
			mu.Unlock()
			if m && c {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s not seen in 10s (muster %v, consul %v)", id, m, c)
			}
		}
	}
	pct := func(who string, p float64) float64 {
		mu.Lock()
		defer mu.Unlock()
		var ds []time.Duration
		for _, v := range seen[who] {
			ds = append(ds, v)
		}
		slices.Sort(ds)
		return float64(ds[min(len(ds)-1, int(p*float64(len(ds))))]) / 1e6
	}
	b.ReportMetric(pct("muster", 0.5), "muster-p50-ms")
	b.ReportMetric(pct("muster", 0.99), "muster-p99-ms")
	b.ReportMetric(pct("consul", 0.5), "consul-p50-ms")
	b.ReportMetric(pct("consul", 0.99), "consul-p99-ms")
	b.ReportMetric(pct("muster", 0.5)/pct("consul", 0.5), "p50-ratio")
	b.ReportMetric(pct("muster", 0.99)/pct("consul", 0.99), "p99-ratio")
}
