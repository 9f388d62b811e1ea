package wireguard

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/testhost"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wireguardGoVersion is the wireguard-go module this package embeds; the
// standalone binary is built from the same version.
const wireguardGoVersion = "golang.zx2c4.com/wireguard@v0.0.0-20260522210424-ecfc5a8d5446"

// BenchmarkWireGuardThroughput measures TCP throughput (Go sockets, one
// connection) from one host's bridge address to another's through
// WireGuard: "embedded" is this driver's in-process device, "wireguard-go"
// the standalone wireguard-go binary of the same version, configured with
// wgctrl through its UAPI socket, with the same addresses and routes. Run:
//
//	MUSTER_ROOT_TESTS=1 go test -run '^$' -bench WireGuardThroughput -benchtime 3s ./drivers/wireguard/
func BenchmarkWireGuardThroughput(b *testing.B) {
	require(b)
	b.Run("embedded", func(b *testing.B) {
		ss := servers(b, 2)
		ss[0].setPeers(b, ss[1])
		ss[1].setPeers(b, ss[0])
		dial := func(addr netip.AddrPort) (net.Conn, error) { return ss[0].dial(addr, 5*time.Second) }
		throughput(b, ss[1].h, ss[1].spec.Local.Addr(), dial)
	})
	b.Run("wireguard-go", func(b *testing.B) {
		bin := buildWireguardGo(b)
		c := testhost.New(b, 2)
		keys := []wgtypes.Key{mustKey(b), mustKey(b)}
		locals := []netip.Prefix{netip.MustParsePrefix("198.19.1.1/24"), netip.MustParsePrefix("198.19.2.1/24")}
		for i, h := range c.Hosts {
			o := 1 - i
			standalone(b, bin, h, i, keys[i], locals[i], wgtypes.PeerConfig{
				PublicKey:  keys[o].PublicKey(),
				Endpoint:   net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.Hosts[o].Addr, DefaultPort)),
				AllowedIPs: []net.IPNet{prefixNet(locals[o].Masked())},
			})
		}
		dial := func(addr netip.AddrPort) (c0 net.Conn, err error) {
			err = c.Hosts[0].Do(func() error {
				dl := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(locals[0].Addr(), 0))}
				c0, err = dl.Dial("tcp", addr.String())
				return err
			})
			return c0, err
		}
		throughput(b, c.Hosts[1], locals[1].Addr(), dial)
	})
}

// throughput sends b.N chunks over one TCP connection to a sink at
// to:7001 on host h and waits until the sink has read them all.
func throughput(b *testing.B, h *testhost.Host, to netip.Addr, dial func(netip.AddrPort) (net.Conn, error)) {
	addr := netip.AddrPortFrom(to, 7001)
	l, err := h.Listen("tcp", addr.String())
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan int64, 2)
	var wg sync.WaitGroup
	defer func() {
		l.Close()
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, c)
			c.Close()
			got <- n
		}
	})
	// Warm up: the first connection waits for the handshake (see
	// server.firstDial).
	for deadline := time.Now().Add(time.Minute); ; {
		warm, err := dial(addr)
		if err == nil {
			warm.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("warming up: %v", err)
		}
	}
	<-got

	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	conn, err := dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	for range b.N {
		if _, err := conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	conn.(*net.TCPConn).CloseWrite()
	select {
	case n := <-got:
		if n != int64(b.N*len(chunk)) {
			b.Fatalf("sink read %d bytes, want %d", n, b.N*len(chunk))
		}
	case <-time.After(time.Minute):
		b.Fatal("the sink did not get everything within a minute")
	}
	b.StopTimer()
}

func mustKey(b testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		b.Fatal(err)
	}
	return k
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// buildWireguardGo builds the standalone wireguard-go binary once per
// process with go install into a GOBIN under the temporary directory, or skips the benchmark
// saying why it could not.
func buildWireguardGo(b *testing.B) string {
	buildOnce.Do(func() {
		// One directory per version, reused by later runs (go install
		// then only checks its build cache).
		dir := filepath.Join(os.TempDir(), "muster-wireguard-go-ecfc5a8d5446")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "install", wireguardGoVersion)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go install %s: %v: %s", wireguardGoVersion, err, out)
			return
		}
		buildBin = filepath.Join(dir, "wireguard")
	})
	if buildErr != nil {
		b.Skipf("cannot build the standalone wireguard-go to compare with: %v", buildErr)
	}
	return buildBin
}

// standalone runs wireguard-go in host h as device mwgb<pid>x<i>, with key,
// port DefaultPort and peer; puts local on a bridge and routes the peer's
// allowed IPs through the device, as the driver does.
func standalone(b *testing.B, bin string, h *testhost.Host, i int, key wgtypes.Key, local netip.Prefix, peer wgtypes.PeerConfig) {
	name := fmt.Sprintf("mwgb%dx%d", os.Getpid()%1000000, i)
	sock := "/var/run/wireguard/" + name + ".sock"
	cmd := h.Command(context.Background(), bin, "-f", name)
	cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
	logf, err := os.Create(filepath.Join(b.TempDir(), "wireguard-go.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf // its banner would break the benchmark's output
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		defer logf.Close()
		if b.Failed() {
			if out, err := os.ReadFile(logf.Name()); err == nil {
				b.Logf("wireguard-go %s:\n%s", name, out)
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		os.Remove(sock)
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("wireguard-go made no socket %s", sock)
		}
	}
	// The UAPI socket is a filesystem path: wgctrl reaches it from this
	// process's namespace.
	wg, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	defer wg.Close()
	port := DefaultPort
	ka := Keepalive
	peer.PersistentKeepaliveInterval = &ka
	if err := wg.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key, ListenPort: &port, Peers: []wgtypes.PeerConfig{peer}}); err != nil {
		b.Fatal(err)
	}
	nl, err := h.Handle()
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	if err != nil {
		b.Fatal(err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "mwb-bench"}}
	steps := []func() error{
		func() error { return nl.LinkSetUp(link) },
		func() error { return nl.LinkAdd(br) },
		func() error { return nl.LinkSetUp(br) },
		func() error { return nl.AddrAdd(br, &netlink.Addr{IPNet: ipNet(local)}) },
		func() error {
			return nl.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: &peer.AllowedIPs[0], Src: local.Addr().AsSlice(), Scope: netlink.SCOPE_LINK})
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRouteProgramming compares programming the routes of 1,000
// peers (one route per peer range through the device, with source Local:
// what SetPeers does after configuring the device) with `ip -batch` adding
// the same 1,000 routes (route add <range> dev <link> src <Local> table
// 100, since the main table holds ours) to an empty bridge, in the same
// run. batch-ms includes starting ip in the namespace; batch-start-ms is
// that start alone (an empty batch). setpeers-ms is one whole SetPeers of
// the 1,000 peers, measured once: its device part is WireGuard's own work
// (a Diffie-Hellman precomputation per peer and, with persistent
// keepalive, a handshake initiation each), which no batch does. Run:
//
//	MUSTER_ROOT_TESTS=1 go test -run '^$' -bench RouteProgramming -benchtime 10x ./drivers/wireguard/
func BenchmarkRouteProgramming(b *testing.B) {
	require(b)
	const n = 1000
	s := servers(b, 1)[0]
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "mstbench0"}}
	if err := s.nl.LinkAdd(br); err != nil {
		b.Fatal(err)
	}
	if err := s.nl.LinkSetUp(br); err != nil {
		b.Fatal(err)
	}
	if err := s.nl.AddrAdd(br, &netlink.Addr{IPNet: ipNet(s.spec.Local)}); err != nil {
		b.Fatal(err)
	}
	peers := make([]driver.Peer, n)
	var batch strings.Builder
	for i := range peers {
		// Ranges: /28s of 198.19.64.0/18; endpoints in 198.18.128.0/22,
		// which no route of the host leads to, so the keepalives go
		// nowhere.
		rng := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(64 + i/16), byte(i % 16 * 16)}), 28)
		under := netip.AddrFrom4([4]byte{198, 18, byte(128 + i/250), byte(1 + i%250)})
		peers[i] = driver.Peer{Name: fmt.Sprintf("p%d", i), Underlay: under, Range: rng, PublicKey: mustKey(b).PublicKey().String()}
		fmt.Fprintf(&batch, "route add %s dev %s src %s table 100\n", rng, br.Name, s.spec.Local.Addr())
	}
	dir := b.TempDir()
	for name, text := range map[string]string{"full": batch.String(), "empty": "", "flush": "route flush table 100\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	runBatch := func(name string) time.Duration {
		start := time.Now()
		if out, err := s.h.Command(testCtx(b), "ip", "-batch", filepath.Join(dir, name)).CombinedOutput(); err != nil {
			b.Fatalf("ip -batch %s: %v: %s", name, err, out)
		}
		return time.Since(start)
	}
	start := time.Now()
	if err := s.d.SetPeers(testCtx(b), netID, peers); err != nil {
		b.Fatal(err)
	}
	setPeers := time.Since(start)
	s.d.mu.Lock()
	nw := s.d.networks[netID]
	s.d.mu.Unlock()
	link, err := s.nl.LinkByName(nw.ifname)
	if err != nil {
		b.Fatal(err)
	}
	var drv, bat, batStart time.Duration
	iters := 0
	for b.Loop() {
		b.StopTimer()
		routes, err := s.nl.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range routes {
			if err := s.nl.RouteDel(&r); err != nil {
				b.Fatal(err)
			}
		}
		runBatch("flush")
		b.StartTimer()

		iters++
		start := time.Now()
		s.d.mu.Lock()
		err = s.d.syncRoutes(testCtx(b), nw)
		s.d.mu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
		drv += time.Since(start)
		bat += runBatch("full")
		batStart += runBatch("empty")
		if got := len(s.routes(b)); got != n {
			b.Fatalf("%d routes through the device, want %d", got, n)
		}
	}
	ms := func(t time.Duration) float64 { return float64(t) / float64(iters) / 1e6 }
	b.ReportMetric(float64(setPeers)/1e6, "setpeers-ms")
	b.ReportMetric(ms(drv), "routes-ms")
	b.ReportMetric(ms(bat), "batch-ms")
	b.ReportMetric(ms(batStart), "batch-start-ms")
	b.ReportMetric(ms(drv)/ms(bat), "routes/batch")
	b.ReportMetric(ms(drv)/(ms(bat)-ms(batStart)), "routes/batch-kernel")
}
