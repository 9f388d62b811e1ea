package haproxy_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/roottest"
)

// handWritten is what an operator would write by hand for the config the
// benchmark applies through Muster: one HTTP frontend, two servers.
const handWritten = `global
    stats socket %[1]s/stats.sock mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option forwardfor

frontend www
    bind %[2]s
    default_backend web

backend web
    balance roundrobin
    server h0 %[3]s
    server h1 %[4]s
`

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// wrk runs wrk against url and returns requests per second.
func wrk(b *testing.B, url string) float64 {
	out, err := exec.Command("wrk", "-t2", "-c32", "-d3s", url).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		b.Fatalf("wrk printed no rate:\n%s", out)
	}
	r, _ := strconv.ParseFloat(string(m[1]), 64)
	return r
}

// BenchmarkThroughput compares requests per second through HAProxy
// configured by Muster with a hand-written equivalent haproxy.cfg, in the
// same run, alternating which goes first, over the same two backends.
// A round is 3s of wrk (2 threads, 32 connections) on each; it runs
// max(b.N, 6) rounds, so -benchtime=1x takes about 40s.
func BenchmarkThroughput(b *testing.B) {
	roottest.Require(b, roottest.BinaryFrom("haproxy", "haproxy"), roottest.BinaryFrom("wrk", "wrk"))
	lab := drivertest.NewLab(b)
	h0 := drivertest.StartBackend(b, lab.Cluster.Hosts[0], lab.Port(), "h0", 0)
	h1 := drivertest.StartBackend(b, lab.Cluster.Hosts[1], lab.Port(), "h1", 0)
	root := lab.Cluster.RootAddr

	dir, err := os.MkdirTemp("", "mhap")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	d := openAt(b, filepath.Join(dir, "muster"))
	muster := netip.AddrPortFrom(root, lab.Port())
	err = d.Apply(b.Context(), &driver.Config{
		Pools:     []driver.Pool{{Name: "web", Servers: []driver.Server{h0.Server(), h1.Server()}}},
		Frontends: []driver.Frontend{{Name: "www", Protocol: driver.HTTP, Address: root.String(), Port: muster.Port(), DefaultPool: "web"}},
	})
	if err != nil {
		b.Fatal(err)
	}

	hand := netip.AddrPortFrom(root, lab.Port())
	handDir := filepath.Join(dir, "hand")
	os.MkdirAll(handDir, 0o700)
	cfg := filepath.Join(handDir, "haproxy.cfg")
	os.WriteFile(cfg, fmt.Appendf(nil, handWritten, handDir, hand,
		netip.AddrPortFrom(h0.Host.Addr, h0.Port), netip.AddrPortFrom(h1.Host.Addr, h1.Port)), 0o600)
	cmd := exec.Command("/usr/sbin/haproxy", "-db", "-f", cfg)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	time.Sleep(300 * time.Millisecond)

	urlM, urlH := "http://"+muster.String()+"/", "http://"+hand.String()+"/"
	wrk(b, urlM) // warm up both
	wrk(b, urlH)
	b.ResetTimer()
	// One round is 3s of each, in alternating order; throughput here
	// drifts by more than the difference sought, so the ratio is the
	// median of the rounds' ratios.
	var ms, hs, ratios []float64
	rounds := max(b.N, 10)
	for round := range rounds {
		var m, h float64
		if round%2 == 0 {
			m, h = wrk(b, urlM), wrk(b, urlH)
		} else {
			h, m = wrk(b, urlH), wrk(b, urlM)
		}
		b.Logf("round %d: muster %.0f req/s, hand-written %.0f req/s", round, m, h)
		ms, hs, ratios = append(ms, m), append(hs, h), append(ratios, m/h)
	}
	b.ReportMetric(median(ms), "muster-req/s")
	b.ReportMetric(median(hs), "hand-req/s")
	b.ReportMetric(median(ratios), "ratio")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkAddServer measures how long a server added to a pool takes to
// receive its first request: through the runtime API (round-robin pool)
// and through a reload (a static-rr pool, which has no dynamic servers).
func BenchmarkAddServer(b *testing.B) {
	roottest.Require(b, roottest.BinaryFrom("haproxy", "haproxy"))
	drivertest.BenchmarkAddServer(b, func(b *testing.B) driver.Driver {
		dir, err := os.MkdirTemp("", "mhap")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return openAt(b, filepath.Join(dir, "lb"))
	}, map[string]driver.Algorithm{"runtime": driver.RoundRobin, "reload": driver.Weighted})
}

func openAt(b *testing.B, dir string) interface {
	driver.Driver
	Reloads() int
} {
	d := mustOpen(b, dir)
	b.Cleanup(func() { d.Close() })
	return d
}
