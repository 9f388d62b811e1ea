package lxc

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/container/driver"
)

// Run with
//
//	MUSTER_ROOT_TESTS=1 go test -run '^$' -bench . -benchtime 20x ./drivers/lxc/
//
// Each iteration makes a busybox container, starts it, stops it gracefully
// and deletes it twice, interleaved so both see the same machine: once
// through the SDK (the base image), once with the LXC programs
// (lxc-create -t busybox, lxc-start + lxc-wait, lxc-stop, lxc-destroy) in
// another lxcpath. It reports the median of each phase in ms and the
// SDK/CLI ratio of the medians of start and of the whole cycle.

// phases collects the durations of each iteration's phases.
type phases map[string][]time.Duration

func (p phases) time(name string, f func() error) error {
	began := time.Now()
	err := f()
	p[name] = append(p[name], time.Since(began))
	return err
}

func (p phases) median(name string) float64 {
	ds := slices.Sorted(slices.Values(p[name]))
	return float64(ds[len(ds)/2]) / float64(time.Millisecond)
}

func BenchmarkCreateStartStop(b *testing.B) {
	d := openTest(b)
	ctx := context.Background()
	cliPath := filepath.Join(b.TempDir(), "cli")
	peerConf := filepath.Join(b.TempDir(), "peer.conf")
	// The CLI peer's defaults: no network (the SDK container has none
	// either) and no AppArmor profile, as the driver's config.
	if err := os.WriteFile(peerConf, []byte("lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	lxc := func(prog string, args ...string) error {
		out, err := exec.Command(prog, append([]string{"-P", cliPath, "-n", "bench"}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s: %v: %s", prog, err, out)
		}
		return nil
	}
	sdk, cli := phases{}, phases{}
	for b.Loop() {
		began := time.Now()
		err := sdk.time("create", func() error {
			_, err := d.Create(ctx, &driver.Spec{Name: "bench", Image: baseImage})
			return err
		})
		if err == nil {
			err = sdk.time("start", func() error { return d.Start(ctx, "bench") })
		}
		if err == nil {
			err = sdk.time("stop", func() error { return d.Stop(ctx, "bench", 10*time.Second) })
		}
		sdk["cycle"] = append(sdk["cycle"], time.Since(began))
		if err == nil {
			err = sdk.time("delete", func() error { return d.Delete(ctx, "bench") })
		}
		if err != nil {
			b.Fatal(err)
		}

		began = time.Now()
		cli.time("create", func() error { return lxc("lxc-create", "-t", "busybox", "-f", peerConf) })
		cli.time("start", func() error {
			lxc("lxc-start")
			return lxc("lxc-wait", "-s", "RUNNING", "-t", "30")
		})
		cli.time("stop", func() error { return lxc("lxc-stop", "-t", "10") })
		cli["cycle"] = append(cli["cycle"], time.Since(began))
		cli.time("delete", func() error { return lxc("lxc-destroy") })
	}
	for _, name := range []string{"create", "start", "stop", "cycle"} {
		b.ReportMetric(sdk.median(name), "sdk-"+name+"-ms")
		b.ReportMetric(cli.median(name), "cli-"+name+"-ms")
	}
	b.ReportMetric(sdk.median("start")/cli.median("start"), "start-ratio")
	b.ReportMetric(sdk.median("cycle")/cli.median("cycle"), "cycle-ratio")
}
