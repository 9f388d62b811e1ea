package drivertest

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/lb/driver"
)

// BenchmarkAddServer measures, for each named pool algorithm, how long a
// server added with AddServer takes to receive its first request (a new
// connection per request, from a client host), and reports it as
// ms-to-traffic (from the call to the first answer, while a client sends
// requests back to back). open returns a fresh balancer running in the root
// namespace. It needs root (a Lab).
func BenchmarkAddServer(b *testing.B, open func(*testing.B) driver.Driver, algs map[string]driver.Algorithm) {
	lab := NewLab(b)
	port := lab.Port()
	var bs []*Backend
	for i := range 3 {
		bs = append(bs, StartBackend(b, lab.Cluster.Hosts[i], port, fmt.Sprintf("h%d", i), 0))
	}
	for _, name := range slices.Sorted(maps.Keys(algs)) {
		b.Run(name, func(b *testing.B) {
			d := open(b)
			fe := netip.AddrPortFrom(lab.Cluster.RootAddr, lab.Port())
			err := d.Apply(b.Context(), &driver.Config{
				Pools:     []driver.Pool{{Name: "web", Algorithm: algs[name], Servers: []driver.Server{bs[0].Server(), bs[1].Server()}}},
				Frontends: []driver.Frontend{{Name: "www", Protocol: driver.HTTP, Address: fe.Addr().String(), Port: fe.Port(), DefaultPool: "web"}},
			})
			if err != nil {
				b.Fatal(err)
			}
			// A client sends requests back to back the whole time and
			// reports when h2 first answers.
			c := lab.Client(lab.Sources[0], false, nil)
			url := "http://" + fe.String() + "/"
			seen := make(chan time.Time, 1)
			var armed atomic.Bool
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if name, err := Get(c, url); err == nil && name == "h2" && armed.CompareAndSwap(true, false) {
						seen <- time.Now()
					}
				}
			})
			defer func() { close(stop); wg.Wait() }()
			var total, worst time.Duration
			b.ResetTimer()
			for range b.N {
				armed.Store(true)
				start := time.Now()
				if err := d.AddServer(b.Context(), "web", bs[2].Server()); err != nil {
					b.Fatal(err)
				}
				var took time.Duration
				select {
				case at := <-seen:
					took = at.Sub(start)
				case <-time.After(10 * time.Second):
					b.Fatal("the added server took no traffic in 10s")
				}
				total += took
				worst = max(worst, took)
				b.StopTimer()
				if err := d.RemoveServer(b.Context(), "web", "h2"); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms-to-traffic")
			b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
		})
	}
}
