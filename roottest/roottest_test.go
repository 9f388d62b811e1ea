package roottest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// fakeTB records Skip and Fatal; like the real ones they end the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skip(args ...any) {
	f.skipped, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fakeTB) Fatal(args ...any) {
	f.failed, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls require on a fake TB in its own goroutine and returns the outcome.
func run(env string, euid int, needs ...Need) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		require(f, env, euid, needs)
	}()
	<-done
	return f
}

func TestRequire(t *testing.T) {
	checked := false
	spy := Need{what: "spy", check: func() (string, error) { checked = true; return "", errors.New("spy missing") }}

	f := run("", 0, spy)
	if !f.skipped || f.failed || !strings.Contains(f.msg, "MUSTER_ROOT_TESTS=1") {
		t.Errorf("unset env: got skipped=%v failed=%v msg=%q, want skip", f.skipped, f.failed, f.msg)
	}
	if checked {
		t.Error("unset env: needs were checked; want skip before any check")
	}
	if f := run("0", 0); !f.skipped {
		t.Errorf("env=0: want skip, got %+v", f)
	}

	if f := run("1", 1000); !f.failed || !strings.Contains(f.msg, "not root") {
		t.Errorf("non-root: got failed=%v msg=%q, want fail", f.failed, f.msg)
	}

	if f := run("1", 0, Binary("sh")); f.failed || f.skipped {
		t.Errorf("all met: got %+v, want pass", f)
	}

	f = run("1", 0, BinaryFrom("muster-no-such-program", "muster-pkg"), spy, Binary("sh"))
	if !f.failed {
		t.Fatalf("missing binary: got %+v, want fail", f)
	}
	for _, want := range []string{"muster-no-such-program", "Debian package muster-pkg", "spy missing"} {
		if !strings.Contains(f.msg, want) {
			t.Errorf("missing binary: message %q lacks %q", f.msg, want)
		}
	}
	if f := run("1", 0, Binary("muster-no-such-program")); !f.failed || strings.Contains(f.msg, "Debian") {
		t.Errorf("missing binary without hint: got %+v", f)
	}

	if f := run("1", 0, Kernel(WireGuard)); !f.skipped || f.msg != MissingKernelFeatures[WireGuard] {
		t.Errorf("listed feature: got %+v, want skip with listed reason", f)
	}
	if f := run("1", 0, Kernel(IPVS), spy); !f.failed {
		t.Errorf("listed feature plus missing need: got %+v, want fail", f)
	}
	if f := run("1", 0, Kernel("muster-bogus")); !f.failed || !strings.Contains(f.msg, "unknown kernel feature") {
		t.Errorf("unknown feature: got %+v, want fail", f)
	}
	if f := run("1", 0, Need{}); !f.failed {
		t.Errorf("zero Need: got %+v, want fail", f)
	}
}

func TestMissingFeaturesHaveReasons(t *testing.T) {
	for _, f := range []Feature{WireGuard, IPVS, NFS} {
		if MissingKernelFeatures[f] == "" {
			t.Errorf("%s: no reason listed", f)
		}
	}
	for f := range MissingKernelFeatures {
		if _, ok := probes[f]; !ok {
			t.Errorf("%s: listed as missing but has no probe", f)
		}
	}
}

func TestProbe(t *testing.T) {
	cfg := func(m map[string]string) func() (map[string]string, error) {
		return func() (map[string]string, error) { return m, nil }
	}
	noCfg := func() (map[string]string, error) { return nil, os.ErrNotExist }

	if err := (probe{configs: []string{"CONFIG_A"}}).present(cfg(map[string]string{"CONFIG_A": "y"})); err != nil {
		t.Errorf("built in: %v", err)
	}
	if err := (probe{configs: []string{"CONFIG_A", "CONFIG_B"}}).present(cfg(map[string]string{"CONFIG_A": "y"})); err == nil || !strings.Contains(err.Error(), "CONFIG_B") {
		t.Errorf("one symbol unset: got %v, want error naming CONFIG_B", err)
	}
	if err := (probe{configs: []string{"CONFIG_A"}, dev: "/nonexistent/muster"}).present(cfg(map[string]string{"CONFIG_A": "y"})); err == nil {
		t.Error("missing device: want error")
	}
	if err := (probe{configs: []string{"CONFIG_A"}, module: "muster_no_such_module"}).present(noCfg); err == nil {
		t.Error("no config, no module: want error")
	}
}

func TestParse(t *testing.T) {
	cfg := parseKernelConfig([]byte("# comment\nCONFIG_VETH=y\n# CONFIG_IP_VS is not set\nCONFIG_TUN=m\nCONFIG_X=\"s\"\n"))
	if cfg["CONFIG_VETH"] != "y" || cfg["CONFIG_TUN"] != "m" || cfg["CONFIG_IP_VS"] != "" || cfg["CONFIG_X"] != `"s"` {
		t.Errorf("parseKernelConfig: %v", cfg)
	}
	fs := []byte("nodev\tsysfs\n\text4\nnodev\tfuse\nnodev\tfusectl\n")
	if !hasFilesystem(fs, "fuse") || !hasFilesystem(fs, "ext4") || hasFilesystem(fs, "overlay") || hasFilesystem(fs, "fus") {
		t.Error("hasFilesystem: wrong answer")
	}
}

// TestRequireReadsEnv runs this test binary as a child to check that Require
// itself reads MUSTER_ROOT_TESTS and the real euid.
func TestRequireReadsEnv(t *testing.T) {
	if os.Getenv("ROOTTEST_CHILD") == "1" {
		Require(t, BinaryFrom("muster-no-such-program", "muster-pkg"))
		return
	}
	child := func(rootTests string) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRequireReadsEnv$", "-test.v")
		cmd.Env = append(os.Environ(), "ROOTTEST_CHILD=1", EnvVar+"="+rootTests)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := child("")
	if err != nil || !strings.Contains(out, "--- SKIP") {
		t.Errorf("%s unset: err=%v, output:\n%s", EnvVar, err, out)
	}
	out, err = child("1")
	want := "muster-no-such-program"
	if os.Geteuid() != 0 {
		want = "not root"
	}
	if err == nil || !strings.Contains(out, "--- FAIL") || !strings.Contains(out, want) {
		t.Errorf("%s=1: err=%v, want failure mentioning %q, output:\n%s", EnvVar, err, want, out)
	}
}

// TestThisMachine checks the probes against the running kernel: every feature
// the project needs present is present.
func TestThisMachine(t *testing.T) {
	Require(t, BinaryFrom("ip", "iproute2"),
		Kernel(Veth), Kernel(Bridge), Kernel(VXLAN), Kernel(Macvlan),
		Kernel(TUN), Kernel(OverlayFS), Kernel(FUSE))
}

func TestListedFeatureSkips(t *testing.T) {
	Require(t, Kernel(NFS))
	t.Fatal("Kernel(NFS) did not skip")
}
