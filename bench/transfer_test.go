package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/roottest"
)

// rootfsBytes is the payload added to the moved container's root filesystem.
const rootfsBytes = 200 << 20

// BenchmarkMove200MB moves a stopped container holding 200 MB of files
// between two simulated servers, back and forth, once in each transfer
// mode (relay through the benchmark process, push, pull) per iteration,
// so that the modes share whatever drifts during the run (the page cache,
// other load), and in each iteration also copies the same tree with
// tar | TCP socket | tar over the same underlay. It reports each mode's
// throughput and its ratio to the peer's (peer time / mode time).
func BenchmarkMove200MB(b *testing.B) {
	roottest.Require(b, roottest.Binary("lxc-start"), roottest.Binary("tar"))
	ctx := context.Background()
	dir := b.TempDir()
	agentBin, err := fleet.BuildAgent(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	f, err := fleet.Start(ctx, 2, fleet.Options{AgentBinary: agentBin})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	m, blob := drivertest.BaseImage(b)
	src, _ := f.Cluster.Server("s0")
	if _, err := src.PutImage(ctx, m, bytes.NewReader(blob)); err != nil {
		b.Fatal(err)
	}
	if _, err := src.Create(ctx, &container.Spec{Name: "big", Image: "base"}); err != nil {
		b.Fatal(err)
	}
	fillTree(b, filepath.Join(f.Servers[0].Dir, "containers", "big", "rootfs", "data"), rootfsBytes)

	modes := []container.TransferMode{container.Relay, container.Push, container.Pull}
	ours := make([]time.Duration, len(modes))
	var peer time.Duration
	at := 0 // the server holding the container
	b.ResetTimer()
	for i := range b.N {
		for m, mode := range modes {
			from, to := f.Servers[at], f.Servers[1-at]
			began := time.Now()
			if _, err := f.Cluster.Move(ctx, "big", from.Name, to.Name, &container.TransferOptions{Mode: mode}); err != nil {
				b.Fatalf("%v: %v", mode, err)
			}
			ours[m] += time.Since(began)
			at = 1 - at
		}

		from, to := f.Servers[at], f.Servers[1-at]
		tree := filepath.Join(from.Dir, "containers", "big", "rootfs")
		out := filepath.Join(to.Dir, fmt.Sprintf("peer-%d", i))
		began := time.Now()
		tarSocketTar(b, from, to, tree, out)
		peer += time.Since(began)
		b.StopTimer()
		os.RemoveAll(out)
		b.StartTimer()
	}
	mb := float64(rootfsBytes) / 1e6 * float64(b.N)
	for m, mode := range modes {
		b.ReportMetric(mb/ours[m].Seconds(), mode.String()+"-MB/s")
		b.ReportMetric(peer.Seconds()/ours[m].Seconds(), mode.String()+"-ratio")
	}
	b.ReportMetric(mb/peer.Seconds(), "tar-MB/s")
}

// fillTree writes about n bytes in dir: half in 1 MiB files of random
// bytes, half in 64 KiB files of text, as a root filesystem mixes binaries
// and compressible files.
func fillTree(b *testing.B, dir string, n int) {
	for _, sub := range []string{"bin", "text"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	random := make([]byte, 1<<20)
	for i := 0; i < n/2/len(random); i++ {
		rand.Read(random)
		if err := os.WriteFile(filepath.Join(dir, "bin", fmt.Sprintf("f%04d", i)), random, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var text strings.Builder
	for i := 0; text.Len() < 64<<10; i++ {
		fmt.Fprintf(&text, "line %d: the quick brown fox %x jumps over the lazy dog\n", i, i*7919)
	}
	for i := 0; i < n/2/text.Len(); i++ {
		if err := os.WriteFile(filepath.Join(dir, "text", fmt.Sprintf("t%05d", i)), []byte(text.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// tarSocketTar copies tree from server src into dst on server to with tar
// -c in src, a TCP connection from src to to over the underlay, and tar -x
// in to.
func tarSocketTar(b *testing.B, src, to *fleet.Server, tree, dst string) {
	ctx := context.Background()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		b.Fatal(err)
	}
	l, err := to.Host.Listen("tcp", net.JoinHostPort(to.Host.Addr.String(), "0"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	untar := to.Host.Command(ctx, "tar", "-x", "-C", dst, "-f", "-")
	untarIn, err := untar.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	tarCmd := src.Host.Command(ctx, "tar", "-c", "-C", tree, "-f", "-", ".")
	tarOut, err := tarCmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []interface{ Start() error }{untar, tarCmd} {
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var recvErr error
	wg.Go(func() {
		conn, err := l.Accept()
		if err != nil {
			recvErr = err
			return
		}
		defer conn.Close()
		_, recvErr = io.Copy(untarIn, conn)
		untarIn.Close()
	})
	var conn net.Conn
	if err := src.Host.Do(func() (err error) {
		conn, err = net.Dial("tcp", l.Addr().String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(conn, tarOut); err != nil {
		b.Fatal(err)
	}
	conn.Close()
	wg.Wait()
	if err := tarCmd.Wait(); err != nil {
		b.Fatal(err)
	}
	if err := untar.Wait(); err != nil || recvErr != nil {
		b.Fatal(err, recvErr)
	}
}
