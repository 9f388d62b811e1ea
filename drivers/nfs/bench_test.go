package nfs_test

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/nfs"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/testhost"
)

// benchSize is the large file's size: 256 MiB (1 GiB took too long per
// run next to other work on this 2-core machine).
const benchSize = 256 << 20

// benchSmall is how many small files (4 KiB) the small-file run copies,
// one nfs-cp each.
const benchSmall = 50

// peers are the two servers a benchmark compares, on two simulated
// servers, and the client host that reads and writes them.
type peers struct {
	driver, hand string // the volume's Source on each
	client       *testhost.Host
}

// setupPeers serves volume "data" of pool "bench" from the driver on
// h0 and from a ganesha configured by hand with the same export on h1.
func setupPeers(b *testing.B) *peers {
	requireNFS(b)
	c := testhost.New(b, 3)
	srv, hand, cli := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	d := open(b, srv, filepath.Join(b.TempDir(), "srv"))
	if err := d.Apply(ctx(b), &driver.Config{Pool: single(srv, "bench"), Self: srv.Name, Volumes: []driver.Volume{{Name: "data"}}}); err != nil {
		b.Fatal(err)
	}
	p := &peers{driver: source(b, d, "data"), client: cli}

	// By hand: the same export, the usual way (rpcbind, ganesha in the
	// foreground on a file written for it).
	dir := b.TempDir()
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	conf := fmt.Sprintf(`NFS_CORE_PARAM { Protocols = 3, 4; mount_path_pseudo = true; Enable_NLM = false; Enable_RQUOTA = false; }
NFSv4 { Graceless = true; RecoveryRoot = "%s/recovery"; }
EXPORT { Export_Id = 1; Path = "%s"; Pseudo = "/bench/data"; Access_Type = RW; Squash = No_Root_Squash; FSAL { Name = VFS; } }
`, dir, filepath.Join(dir, "data"))
	os.WriteFile(filepath.Join(dir, "ganesha.conf"), []byte(conf), 0o600)
	script := `mount -t tmpfs tmpfs /run && rpcbind -f -w & sleep 0.5; exec ganesha.nfsd -F -f "$1/ganesha.conf" -L "$1/ganesha.log" -p "$1/ganesha.pid"`
	cmd := hand.Command(ctx(b), "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // ganesha and rpcbind: one group, ended by its id
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	p.hand = nfs.Source(hand.Addr, nfs.DefaultPort, "bench", "data")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := (client{b, cli, p.hand}).run("nfs-ls", p.hand); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("the ganesha configured by hand does not serve: %v", err)
		}
	}
	return p
}

// compare runs fn(source, i) against the driver's ganesha and the
// hand-configured one in turn (each first every other round), b.N times
// each, and reports the median of each, in seconds, and their ratio
// (driver over hand), and with size (bytes per run) the medians in MB/s.
// i numbers the runs, for file names: a file removed behind ganesha's back
// may stay in its cache.
func compare(b *testing.B, p *peers, size int64, fn func(source string, i int) error) {
	var drv, hand []time.Duration
	type side struct {
		source string
		times  *[]time.Duration
	}
	sides := []side{{p.driver, &drv}, {p.hand, &hand}}
	b.ResetTimer()
	for i := range b.N {
		slices.Reverse(sides)
		for _, side := range sides {
			start := time.Now()
			if err := fn(side.source, i); err != nil {
				b.Fatal(err)
			}
			*side.times = append(*side.times, time.Since(start))
		}
	}
	b.StopTimer()
	md, mh := median(drv), median(hand)
	b.ReportMetric(md.Seconds(), "driver-s")
	b.ReportMetric(mh.Seconds(), "hand-s")
	b.ReportMetric(md.Seconds()/mh.Seconds(), "ratio")
	if size > 0 {
		b.ReportMetric(float64(size)/1e6/md.Seconds(), "driver-MB/s")
		b.ReportMetric(float64(size)/1e6/mh.Seconds(), "hand-MB/s")
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkLargeFile: a 256 MiB file written (NFSv3: libnfs 4.0 writes
// no more than 4 KiB over NFSv4) and read back (NFSv4) with nfs-cp from
// another simulated server.
func BenchmarkLargeFile(b *testing.B) {
	p := setupPeers(b)
	local := filepath.Join(b.TempDir(), "large")
	data := make([]byte, benchSize)
	rand.Read(data)
	os.WriteFile(local, data, 0o600)
	back := filepath.Join(b.TempDir(), "back")
	run := 0
	b.Run("write", func(b *testing.B) {
		run++
		compare(b, p, benchSize, func(source string, i int) error {
			c := client{b, p.client, source}
			return c.run("nfs-cp", local, c.url3(fmt.Sprintf("large-%d-%d", run, i)))
		})
	})
	b.Run("read", func(b *testing.B) {
		compare(b, p, benchSize, func(source string, i int) error {
			os.Remove(back)
			c := client{b, p.client, source}
			return c.run("nfs-cp", c.url(fmt.Sprintf("large-%d-0", run)), back)
		})
	})
}

// BenchmarkSmallFiles: 50 files of 4 KiB written with one nfs-cp each
// (NFSv3), then listed with nfs-ls (NFSv4).
func BenchmarkSmallFiles(b *testing.B) {
	p := setupPeers(b)
	local := filepath.Join(b.TempDir(), "small")
	small := make([]byte, 4096)
	rand.Read(small)
	os.WriteFile(local, small, 0o600)
	compare(b, p, 0, func(source string, i int) error {
		c := client{b, p.client, source}
		for j := range benchSmall {
			if err := c.run("nfs-cp", local, c.url3(fmt.Sprintf("f%d-%d", i, j))); err != nil {
				return err
			}
		}
		return c.run("nfs-ls", source)
	})
}
