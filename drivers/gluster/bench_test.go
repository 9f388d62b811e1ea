package gluster

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/internal/mountinfo"
	"github.com/musterkit/muster/storage/driver"
)

// BenchmarkIO compares I/O through the driver's mount of a replica-2
// volume over two simulated servers with the same volume mounted by hand
// (glusterfs with the same options, the same server) and with the local
// file system under the test's directory, in the same run: a 1 GiB
// sequential write (1 MiB writes, then fsync), reading it back after
// dropping its cached pages (posix_fadvise DONTNEED), and writing 10,000
// files of 4 KiB. One iteration is one such pass; run with -benchtime=1x.
func BenchmarkIO(b *testing.B) {
	c := newCluster(b, 2)
	pool := driver.Pool{Name: "bench", Members: []driver.Member{c.member(0), c.member(1)}, Layout: driver.Layout{Kind: driver.Replicate, Copies: 2}}
	ds := []*Driver{c.open(b, 0, "bench", nil), c.open(b, 1, "bench", nil)}
	cfgs := configs(pool, []driver.Volume{{Name: "data"}}, false)
	cfgs[0].Mounts = []driver.Mount{{Volume: "data"}}
	applyAll(b, ds, cfgs)

	hand := filepath.Join(c.base, "hand")
	mountByHand(b, ds[0], cfgs[0], hand)
	local := filepath.Join(c.base, "local")
	os.MkdirAll(local, 0o755)

	dirs := []struct{ name, dir string }{{"driver", ds[0].MountPath("data")}, {"hand", hand}, {"local", local}}
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	for _, d := range dirs {
		file := filepath.Join(d.dir, "seq")
		b.Run("write-1GiB/"+d.name, func(b *testing.B) {
			b.SetBytes(1 << 30)
			for b.Loop() {
				f, err := os.Create(file)
				if err != nil {
					b.Fatal(err)
				}
				for range 1024 {
					if _, err := f.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
		b.Run("read-1GiB/"+d.name, func(b *testing.B) {
			b.SetBytes(1 << 30)
			for b.Loop() {
				f, err := os.Open(file)
				if err != nil {
					b.Fatal(err)
				}
				unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				n := 0
				for {
					k, err := f.Read(buf)
					n += k
					if err != nil {
						break
					}
				}
				f.Close()
				if n != 1<<30 {
					b.Fatalf("read %d bytes", n)
				}
			}
		})
		os.Remove(file)
		b.Run("10000-files/"+d.name, func(b *testing.B) {
			small := buf[:4096]
			for b.Loop() {
				sub, err := os.MkdirTemp(d.dir, "small")
				if err != nil {
					b.Fatal(err)
				}
				for i := range 10000 {
					if err := os.WriteFile(filepath.Join(sub, strconv.Itoa(i)), small, 0o644); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(10000*b.N), "µs/file")
		})
	}
}

// mountByHand mounts cfg's pool's volume data at dir with the glusterfs
// command line an administrator would type (the driver's options), and
// unmounts it at the end.
func mountByHand(b *testing.B, d *Driver, cfg *driver.Config, dir string) {
	b.Helper()
	os.MkdirAll(dir, 0o755)
	args := []string{"--net=" + d.opts.NetNS, "glusterfs", "--process-name", "fuse",
		"--volfile-server=" + cfg.Pool.Members[0].Addr.String(), "--volfile-server=" + cfg.Pool.Members[1].Addr.String(),
		"--volfile-id=data", "--log-file=" + dir + ".log", dir}
	if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
		b.Fatalf("mounting by hand: %v: %s", err, out)
	}
	b.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if e, ok := mountinfo.At("/proc/self/mountinfo", dir); ok && e.FSType == "fuse.glusterfs" {
			if _, err := os.Stat(dir); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("the mount by hand did not come up")
		}
	}
}

// BenchmarkCreateMounted measures the time from asking for a replicated
// volume on a formed pool of two servers until it is mounted on the
// first: through the driver (Apply with the volume and its mount), and by
// hand with the gluster CLI (volume create, set network.ping-timeout,
// start, then glusterfs and a wait for the mount). Each iteration makes a
// new volume; they are removed at the end.
func BenchmarkCreateMounted(b *testing.B) {
	c := newCluster(b, 2)
	pool := driver.Pool{Name: "create", Members: []driver.Member{c.member(0), c.member(1)}, Layout: driver.Layout{Kind: driver.Replicate, Copies: 2}}
	ds := []*Driver{c.open(b, 0, "create", nil), c.open(b, 1, "create", nil)}
	cfgs := configs(pool, nil, false)
	applyAll(b, ds, cfgs)
	n := 0
	b.Run("driver", func(b *testing.B) {
		for b.Loop() {
			n++
			cfg := *cfgs[0]
			v := fmt.Sprintf("d%d", n)
			cfg.Volumes = append(cfg.Volumes, driver.Volume{Name: v})
			cfg.Mounts = append(cfg.Mounts, driver.Mount{Volume: v})
			apply(b, ds[0], &cfg)
			cfgs[0] = &cfg
		}
	})
	b.Run("cli", func(b *testing.B) {
		for b.Loop() {
			n++
			v := fmt.Sprintf("h%d", n)
			ctx := context.Background()
			for _, args := range [][]string{
				{"volume", "create", v, "replica", "2", pool.Members[0].Addr.String() + ":" + BrickRoot + "/" + v, pool.Members[1].Addr.String() + ":" + BrickRoot + "/" + v, "force"},
				{"volume", "set", v, "network.ping-timeout", "2"},
				{"volume", "start", v},
			} {
				if _, err := ds[0].run.cliOnce(ctx, args...); err != nil {
					b.Fatal(err)
				}
			}
			dir := filepath.Join(c.base, "hand-"+v)
			os.MkdirAll(dir, 0o755)
			args := []string{"--net=" + ds[0].opts.NetNS, "glusterfs", "--process-name", "fuse",
				"--volfile-server=" + pool.Members[0].Addr.String(), "--volfile-server=" + pool.Members[1].Addr.String(),
				"--volfile-id=" + v, "--log-file=" + dir + ".log", dir}
			if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
				b.Fatalf("mounting by hand: %v: %s", err, out)
			}
			b.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			for {
				if e, ok := mountinfo.At("/proc/self/mountinfo", dir); ok && e.FSType == "fuse.glusterfs" {
					if _, err := os.Stat(dir); err == nil {
						break
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	})
}
