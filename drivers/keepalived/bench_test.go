package keepalived_test

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/testhost"
)

// BenchmarkFailover measures the floating address's outage: host 0's
// keepalived (master, priority 150) is killed with SIGKILL, and the time
// runs until a client on host 2 gets an answer from host 1 through the
// address (a TCP connection every 5 ms, each given 50 ms). Host 0's
// keepalived is then started again and takes the address back before the
// next round. One iteration is one failover; run with -benchtime=20x.
//
// kill=pid kills the process the driver started; keepalived's VRRP child
// then stops on its own, sending a priority-0 advert (unless the driver's
// clean-up kills it first). kill=group kills the whole process group at
// once, as a machine crash would: the backup only notices the silence
// (3 advert intervals plus skew). advert=1s is keepalived's default.
//
// It reports p50-ms, p99-ms and max-ms of the outages.
func BenchmarkFailover(b *testing.B) {
	requireRoot(b)
	for _, advert := range []time.Duration{100 * time.Millisecond, time.Second} {
		for _, group := range []bool{false, true} {
			name := fmt.Sprintf("advert=%v/kill=pid", advert)
			if group {
				name = fmt.Sprintf("advert=%v/kill=group", advert)
			}
			b.Run(name, func(b *testing.B) { benchFailover(b, advert, group) })
		}
	}
}

func benchFailover(b *testing.B, advert time.Duration, group bool) {
	c := testhost.New(b, 3)
	h0, h1, client := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	serve(b, h0, 8080)
	serve(b, h1, 8080)
	d0, d1 := openIn(b, h0), openIn(b, h1)
	cfg0, cfg1 := config(c, 0, 2, 150), config(c, 1, 2, 100)
	cfg0.AdvertInterval, cfg1.AdvertInterval = advert, advert
	if err := d0.Apply(b.Context(), cfg0); err != nil {
		b.Fatal(err)
	}
	waitState(b, d0, driver.Master, 10*time.Second)
	if err := d1.Apply(b.Context(), cfg1); err != nil {
		b.Fatal(err)
	}
	waitState(b, d1, driver.Backup, 10*time.Second)
	var outages []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		waitState(b, d0, driver.Master, 20*time.Second)
		waitServed(b, client, vip(c), 8080, "h0", 10*time.Second)
		b.StartTimer()
		pid := d0.Pid()
		if group {
			pid = -pid
		}
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		back := waitServed(b, client, vip(c), 8080, "h1", 20*time.Second)
		outages = append(outages, back.Sub(killed))
		b.StopTimer()
		waitState(b, d0, driver.Stopped, 5*time.Second)
		if err := d0.Apply(b.Context(), cfg0); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(outages)
	q := func(p float64) float64 {
		i := int(p*float64(len(outages))+0.5) - 1
		i = max(0, min(i, len(outages)-1))
		return float64(outages[i]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(outages[len(outages)-1])/float64(time.Millisecond), "max-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d failovers, outages %v", len(outages), roundAll(outages))
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
