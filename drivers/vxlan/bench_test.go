package vxlan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
	"github.com/vishvananda/netlink"
)

// iperf3 runs an iperf3 client in host against server for seconds with
// streams parallel streams and returns the received throughput in MB/s.
func iperf3(b *testing.B, host *testhost.Host, server netip.Addr, streams int, seconds int) float64 {
	b.Helper()
	out, err := host.Command(tctx(b), "iperf3", "-c", server.String(), "-p", "5201", "-t", fmt.Sprint(seconds),
		"-P", fmt.Sprint(streams), "-J").Output()
	if err != nil {
		b.Fatalf("iperf3 to %s: %v: %s", server, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 output: %v: %s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond / 8e6
}

// bridgeNetfilter sets the bridge-nf-call-* sysctls of hosts' namespaces
// to value ("0" or "1") until b ends. With br_netfilter loaded (it is on
// this machine) they default to 1: every frame a bridge forwards or
// delivers passes the IP hooks, rules or not.
func bridgeNetfilter(b *testing.B, hosts []*testhost.Host, value string) {
	b.Helper()
	for _, h := range hosts {
		for _, f := range []string{"iptables", "ip6tables", "arptables"} {
			path := "/proc/sys/net/bridge/bridge-nf-call-" + f
			var old []byte
			err := h.Do(func() error {
				var err error
				if old, err = os.ReadFile(path); err != nil {
					return err
				}
				return os.WriteFile(path, []byte(value), 0o644)
			})
			if errors.Is(err, fs.ErrNotExist) {
				return // no br_netfilter: nothing to set
			}
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { h.Do(func() error { return os.WriteFile(path, old, 0o644) }) })
		}
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkVXLANThroughput compares TCP throughput between two simulated
// servers over three paths, measured by iperf3 (Debian) in the same run:
// the VXLAN network this driver built, an equal VXLAN network built by
// hand with iproute2 (ip link add ... type vxlan, bridge fdb append), and
// the bare underlay (the veth pairs and switch bridge the VXLAN packets
// cross). Each op is one 2-second run over each path, in rotating order;
// the metrics are medians over the ops (throughput on this VM drifts over
// a run). The bridge-nf=off runs turn br_netfilter's calls off in both
// hosts (see bridgeNetfilter). Run:
//
//	MUSTER_ROOT_TESTS=1 go test -run '^$' -bench VXLANThroughput -benchtime 8x ./drivers/vxlan/
func BenchmarkVXLANThroughput(b *testing.B) {
	requireKernel(b)
	roottest.Require(b, roottest.BinaryFrom("iperf3", "iperf3"))
	o := newOverlay(b, 2)
	o.setPeers(b, 0, 1)
	o.setPeers(b, 1, 0)
	hand := handVXLAN(b, o.c.Hosts)
	server := o.c.Hosts[0].Command(context.Background(), "iperf3", "-s", "-p", "5201")
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		server.Process.Kill()
		server.Wait()
	})
	time.Sleep(300 * time.Millisecond) // the server's listen
	paths := []struct {
		name string
		addr netip.Addr
	}{{"underlay", o.c.Hosts[0].Addr}, {"vxlan", localAddr(0)}, {"hand", hand}}
	for _, tc := range []struct {
		name    string
		streams int
		nf      string
	}{{"streams=1", 1, "1"}, {"streams=4", 4, "1"}, {"streams=1/bridge-nf=off", 1, "0"}, {"streams=4/bridge-nf=off", 4, "0"}} {
		b.Run(tc.name, func(b *testing.B) {
			bridgeNetfilter(b, o.c.Hosts, tc.nf)
			got := map[string][]float64{}
			var ratio, handRatio, vsHand []float64
			i := 0
			for b.Loop() {
				mbs := map[string]float64{}
				for k := range paths {
					p := paths[(i+k)%len(paths)]
					mbs[p.name] = iperf3(b, o.c.Hosts[1], p.addr, tc.streams, 2)
					got[p.name] = append(got[p.name], mbs[p.name])
				}
				i++
				ratio = append(ratio, mbs["vxlan"]/mbs["underlay"])
				handRatio = append(handRatio, mbs["hand"]/mbs["underlay"])
				vsHand = append(vsHand, mbs["vxlan"]/mbs["hand"])
			}
			for _, p := range paths {
				b.ReportMetric(median(got[p.name]), p.name+"-MB/s")
			}
			b.ReportMetric(median(ratio), "vxlan/underlay")
			b.ReportMetric(median(handRatio), "hand/underlay")
			b.ReportMetric(median(vsHand), "vxlan/hand")
		})
	}
}

// handVXLAN builds, with iproute2 in each host, a VXLAN network like the
// driver's (VNI 77 on the default port, learning off, a bridge with MTU
// 1450, one all-zeros forwarding entry per peer) on 198.19.11.0/24, and
// returns host 0's address on it.
func handVXLAN(b *testing.B, hosts []*testhost.Host) netip.Addr {
	b.Helper()
	for i, h := range hosts {
		peer := hosts[1-i].Addr.String()
		for _, args := range [][]string{
			{"ip", "link", "add", "mstvx0", "type", "vxlan", "id", "77", "local", h.Addr.String(), "dstport", "4789", "nolearning"},
			{"ip", "link", "add", "mstbr0", "type", "bridge"},
			{"ip", "link", "set", "mstvx0", "master", "mstbr0", "mtu", "1450", "up"},
			{"ip", "link", "set", "mstbr0", "mtu", "1450", "up"},
			{"ip", "addr", "add", fmt.Sprintf("198.19.11.%d/24", i+1), "dev", "mstbr0"},
			{"bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "mstvx0", "dst", peer},
		} {
			if out, err := h.Command(tctx(b), args[0], args[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %v: %s", args, err, out)
			}
		}
	}
	return netip.MustParseAddr("198.19.11.1")
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

// overlay is the 3-host cluster of the packet tests.
type overlay struct {
	c     *testhost.Cluster
	d     []*Driver
	h     []*netlink.Handle
	specs []*driver.Spec
	macs  []net.HardwareAddr // bridge MACs
}

const testVNI = 4242

func localAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 10, byte(i + 1)}) }

func newOverlay(t testing.TB, n int) *overlay {
	t.Helper()
	o := &overlay{c: testhost.New(t, n)}
	for i, host := range o.c.Hosts {
		d, h := openOn(t, host)
		spec := &driver.Spec{
			ID: "ovl", Mode: driver.VXLAN,
			Subnet:   netip.MustParsePrefix("198.19.10.0/24"),
			Local:    netip.PrefixFrom(localAddr(i), 24),
			Underlay: host.Addr, VNI: testVNI,
		}
		st, err := d.EnsureNetwork(tctx(t), spec)
		if err != nil {
			t.Fatalf("EnsureNetwork on %s: %v", host.Name, err)
		}
		if st.MTU != 1450 {
			t.Errorf("MTU on %s = %d, want 1500-50", host.Name, st.MTU)
		}
		br, err := h.LinkByName(st.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		o.d, o.h, o.specs = append(o.d, d), append(o.h, h), append(o.specs, spec)
		o.macs = append(o.macs, br.Attrs().HardwareAddr)
	}
	return o
}

// peers returns host i's view of hosts js.
func (o *overlay) peers(js ...int) []driver.Peer {
	var ps []driver.Peer
	for _, j := range js {
		ps = append(ps, driver.Peer{
			Name: o.c.Hosts[j].Name, Underlay: o.c.Hosts[j].Addr,
			Endpoints: []driver.Endpoint{{Address: localAddr(j), MAC: o.macs[j]}},
		})
	}
	return ps
}

func (o *overlay) setPeers(t testing.TB, i int, js ...int) {
	t.Helper()
	if err := o.d[i].SetPeers(tctx(t), "ovl", o.peers(js...)); err != nil {
		t.Fatalf("SetPeers on %s: %v", o.c.Hosts[i].Name, err)
	}
}
