package moosefs_test

import (
	"fmt"

	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/moosefs"
	"github.com/musterkit/muster/storage/driver"
)

const (
	bigFile    = 1 << 30
	smallFiles = 10000
	smallSize  = 4 << 10
)

// BenchmarkMooseFS compares, in one run, the same volume of a pool over
// two simulated servers (distribute, goal 1) through the mount the
// driver made and through one made by hand with mfsmount and the same
// options, with the local file system (the disk the chunks live on)
// beside: a sequential write of 1 GiB (1 MiB writes, then close, which
// mfsmount turns into an fsync to the chunk servers), a sequential read
// of it, and the creation of 10,000 files of 4 KiB. Run it with
// -benchtime 1x -count 3 and take the medians.
func BenchmarkMooseFS(b *testing.B) {
	srvs := servers(b, 2)
	d0, d1 := srvs[0].open(b, "tank"), srvs[1].open(b, "tank")

	p := pool(srvs, 2, driver.Layout{Kind: driver.Distribute})
	cfgs := configs(srvs, p, []driver.Volume{{Name: "bench"}}, map[int][]driver.Mount{0: {{Volume: "bench"}}})
	apply(b, []*moosefs.Driver{d0, d1}, cfgs, 2)

	hand := filepath.Join(srvs[0].base, "hand")
	if err := os.MkdirAll(hand, 0o755); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("nsenter", "--net=/run/netns/"+srvs[0].host.Netns, "mfsmount", hand,
		"-H", srvs[0].host.Addr.String(), "-P", "9421", "-S", "/bench").CombinedOutput()
	if err != nil {
		b.Fatalf("mfsmount by hand: %v: %s", err, out)
	}
	b.Cleanup(func() { syscall.Unmount(hand, syscall.MNT_DETACH) })
	local := filepath.Join(srvs[0].base, "local")
	targets := []struct{ name, dir string }{
		{"driver", filepath.Join(d0.MountPath("bench"), "driver")},
		{"hand", filepath.Join(hand, "hand")},
		{"local", local},
	}
	for _, tg := range targets {
		if err := os.MkdirAll(tg.dir, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	for _, tg := range targets {
		b.Run("write1GiB/"+tg.name, func(b *testing.B) {
			b.SetBytes(bigFile)
			for range b.N {
				writeBig(b, filepath.Join(tg.dir, "big"), buf)
			}
		})
	}
	for _, tg := range targets {
		b.Run("read1GiB/"+tg.name, func(b *testing.B) {
			b.SetBytes(bigFile)
			for range b.N {
				readBig(b, filepath.Join(tg.dir, "big"), buf)
			}
		})
		os.Remove(filepath.Join(tg.dir, "big"))
	}
	small := buf[:smallSize]
	for _, tg := range targets {
		b.Run("small10k/"+tg.name, func(b *testing.B) {
			for n := range b.N {
				dir := filepath.Join(tg.dir, fmt.Sprintf("small%d", n))
				if err := os.Mkdir(dir, 0o755); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				for i := range smallFiles {
					if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), small, 0o644); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(smallFiles/time.Since(start).Seconds(), "files/s")
				b.StopTimer()
				os.RemoveAll(dir)
				b.StartTimer()
			}
		})
	}
}

func writeBig(b *testing.B, path string, buf []byte) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	for range bigFile / len(buf) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

func readBig(b *testing.B, path string, buf []byte) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	n := 0
	for {
		m, err := f.Read(buf)
		n += m
		if err != nil {
			break
		}
	}
	if n != bigFile {
		b.Fatalf("read %d bytes of %s, want %d", n, path, bigFile)
	}
}
