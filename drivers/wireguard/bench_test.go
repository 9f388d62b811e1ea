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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/internal/testhost"
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
