package vxlan

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/internal/testhost"
	"github.com/musterkit/muster/network/driver"
)

// sinkServer listens on addr in host; each connection is read to EOF and
// then answered with one byte, so the sender knows everything arrived.
func sinkServer(b *testing.B, host *testhost.Host, addr string) {
	b.Helper()
	l, err := host.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				c.Write([]byte{1})
			}()
		}
	}()
}

// stream sends total bytes from host to addr over streams parallel TCP
// connections and returns how long it took, from the first dial to the
// last acknowledgement.
func stream(host *testhost.Host, addr string, streams int, total int64) (time.Duration, error) {
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	err := host.Do(func() error {
		for range streams {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	var wg sync.WaitGroup
	errs := make([]error, streams)
	for i, c := range conns {
		wg.Go(func() {
			left := total / int64(streams)
			for left > 0 {
				n := min(left, int64(len(buf)))
				if _, err := c.Write(buf[:n]); err != nil {
					errs[i] = err
					return
				}
				left -= n
			}
			c.(*net.TCPConn).CloseWrite()
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				errs[i] = err
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// BenchmarkVXLANThroughput compares a TCP stream between two simulated
// servers over the VXLAN overlay with the same stream over the bare
// underlay (the veth pairs and switch bridge the VXLAN packets cross), in
// the same run. One op is 1 MiB over each path.
func BenchmarkVXLANThroughput(b *testing.B) {
	requireKernel(b)
	o := newOverlay(b, 2)
	o.setPeers(b, 0, 1)
	o.setPeers(b, 1, 0)
	overlayAddr := netip.AddrPortFrom(localAddr(0), 7100).String()
	underlayAddr := netip.AddrPortFrom(o.c.Hosts[0].Addr, 7101).String()
	sinkServer(b, o.c.Hosts[0], overlayAddr)
	sinkServer(b, o.c.Hosts[0], underlayAddr)
	const mib = 1 << 20
	for _, streams := range []int{1, 4} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			total := int64(b.N) * mib
			b.ResetTimer()
			under, err := stream(o.c.Hosts[1], underlayAddr, streams, total)
			if err != nil {
				b.Fatalf("underlay: %v", err)
			}
			over, err := stream(o.c.Hosts[1], overlayAddr, streams, total)
			if err != nil {
				b.Fatalf("vxlan: %v", err)
			}
			b.StopTimer()
			vx := float64(total) / 1e6 / over.Seconds()
			ul := float64(total) / 1e6 / under.Seconds()
			b.ReportMetric(vx, "vxlan-MB/s")
			b.ReportMetric(ul, "underlay-MB/s")
			b.ReportMetric(vx/ul, "vxlan/underlay")
		})
	}
}

// BenchmarkFDBProgramming compares programming 1,000 FDB entries (one
// all-zeros entry per peer) with SetPeers against `bridge -batch` with the
// same 1,000 `fdb append` lines, in the same run. batch-ms includes
// starting the bridge program in the namespace; batch-start-ms is that
// start alone (an empty batch), so batch-ms minus it is the kernel work.
func BenchmarkFDBProgramming(b *testing.B) {
	requireKernel(b)
	const entries = 1000
	c := testhost.New(b, 1)
	host := c.Hosts[0]
	d, _ := openOn(b, host)
	spec := func(id string, vni uint32) *driver.Spec {
		return &driver.Spec{ID: id, Mode: driver.VXLAN, Subnet: netip.MustParsePrefix("198.19.10.0/24"),
			Local: netip.MustParsePrefix("198.19.10.1/24"), Underlay: host.Addr, VNI: vni}
	}
	if _, err := d.EnsureNetwork(tctx(b), spec("fdb-drv", 11)); err != nil {
		b.Fatal(err)
	}
	st, err := d.EnsureNetwork(tctx(b), spec("fdb-bat", 12))
	if err != nil {
		b.Fatal(err)
	}
	_, vn := LinkNames(st.Spec.ID)
	peers := make([]driver.Peer, entries)
	var batch strings.Builder
	a := netip.MustParseAddr("198.19.200.0")
	for i := range peers {
		a = a.Next()
		peers[i] = driver.Peer{Name: fmt.Sprintf("p%d", i), Underlay: a}
		fmt.Fprintf(&batch, "fdb append 00:00:00:00:00:00 dev %s dst %s self permanent\n", vn, a)
	}
	dir := b.TempDir()
	full, empty := filepath.Join(dir, "full.batch"), filepath.Join(dir, "empty.batch")
	if err := os.WriteFile(full, []byte(batch.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	runBatch := func(path string) time.Duration {
		start := time.Now()
		if out, err := host.Command(tctx(b), "bridge", "-batch", path).CombinedOutput(); err != nil {
			b.Fatalf("bridge -batch: %v: %s", err, out)
		}
		return time.Since(start)
	}
	var drv, bat, batStart time.Duration
	iters := 0
	for b.Loop() {
		iters++
		start := time.Now()
		if err := d.SetPeers(tctx(b), "fdb-drv", peers); err != nil {
			b.Fatal(err)
		}
		drv += time.Since(start)
		bat += runBatch(full)
		batStart += runBatch(empty)

		b.StopTimer()
		for _, id := range []string{"fdb-drv", "fdb-bat"} {
			n, err := d.lookup(id)
			if err != nil {
				b.Fatal(err)
			}
			if got, err := d.fdb(n.vx); err != nil || len(got) != entries {
				b.Fatalf("%s has %d FDB entries (%v), want %d", id, len(got), err, entries)
			}
			if err := d.SetPeers(tctx(b), id, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	ms := func(t time.Duration) float64 { return float64(t) / float64(iters) / 1e6 }
	b.ReportMetric(ms(drv), "setpeers-ms")
	b.ReportMetric(ms(bat), "batch-ms")
	b.ReportMetric(ms(batStart), "batch-start-ms")
	b.ReportMetric(ms(drv)/ms(bat), "setpeers/batch")
	b.ReportMetric(ms(drv)/(ms(bat)-ms(batStart)), "setpeers/batch-kernel")
}
