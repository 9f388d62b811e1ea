package lxc

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/container/driver"
)

// Run with
//
//	MUSTER_ROOT_TESTS=1 go test -run '^$' -bench . -benchtime 20x ./drivers/lxc/
//
// Both benchmarks make a container of the busybox base image, start it, stop
// it gracefully and delete it, and report the median of each phase in ms.
// The CLI peer makes the same container the same way (same image unpacked,
// same config) and runs the LXC programs: lxc-start and lxc-wait, lxc-stop,
// lxc-destroy.

// phases collects the durations of an iteration's phases.
type phases map[string][]time.Duration

func (p phases) time(name string, f func() error) error {
	began := time.Now()
	err := f()
	p[name] = append(p[name], time.Since(began))
	return err
}

func (p phases) report(b *testing.B) {
	for name, ds := range p {
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2])/float64(time.Millisecond), name+"-ms")
	}
}

func BenchmarkCreateStartStop(b *testing.B) {
	d := openTest(b)
	ctx := context.Background()
	p := phases{}
	for b.Loop() {
		err := p.time("create", func() error {
			_, err := d.Create(ctx, &driver.Spec{Name: "bench", Image: baseImage})
			return err
		})
		if err == nil {
			err = p.time("start", func() error { return d.Start(ctx, "bench") })
		}
		if err == nil {
			err = p.time("stop", func() error { return d.Stop(ctx, "bench", 10*time.Second) })
		}
		if err == nil {
			err = p.time("delete", func() error { return d.Delete(ctx, "bench") })
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	p.report(b)
}

func BenchmarkCLICreateStartStop(b *testing.B) {
	d := openTest(b)
	ctx := context.Background()
	lxc := func(prog string, args ...string) error {
		out, err := exec.Command(prog, append([]string{"-P", d.lxcpath, "-n", "bench"}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s: %v: %s", prog, err, out)
		}
		return nil
	}
	spec := &driver.Spec{Name: "bench", Image: baseImage}
	p := phases{}
	for b.Loop() {
		p.time("create", func() error {
			dir := d.path("bench")
			if err := os.Mkdir(dir, 0o700); err != nil {
				b.Fatal(err)
			}
			if _, err := d.images.Unpack(ctx, baseImage, d.path("bench", "rootfs")); err != nil {
				b.Fatal(err)
			}
			if err := setHostname(d.path("bench", "rootfs"), "bench"); err != nil {
				b.Fatal(err)
			}
			conf, err := renderConfig(spec, configEnv{LXCPath: d.lxcpath, Cgroups: d.cgroups})
			if err == nil {
				err = os.WriteFile(d.path("bench", "config"), conf, 0o600)
			}
			if err != nil {
				b.Fatal(err)
			}
			return nil
		})
		p.time("start", func() error {
			lxc("lxc-start")
			return lxc("lxc-wait", "-s", "RUNNING", "-t", "30")
		})
		p.time("stop", func() error { return lxc("lxc-stop", "-t", "10") })
		p.time("delete", func() error { return lxc("lxc-destroy") })
	}
	p.report(b)
}
