package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
)

// fakeDaemon stands for a real binary. "check PATH" rejects a file holding
// BAD. "run DIR" records its pid, loads DIR/fake.conf (copies it to
// DIR/loaded, and counts loads in DIR/loads) at start and on SIGHUP, exits
// at start on CRASH, logs "refused" and keeps what it loaded on REFUSE,
// and ignores a file holding HANG (a reload that never completes).
const fakeDaemon = `#!/bin/sh
case "$1" in
check)
	echo check >>checks
	if grep -q BAD "$2"; then echo "line 1: BAD is not a directive"; exit 1; fi
	exit 0;;
run)
	dir=$2
	echo $$ >"$dir/fake.pid"
	load() {
		if grep -q HANG "$dir/fake.conf"; then return; fi
		if grep -q REFUSE "$dir/fake.conf"; then echo "refused the new configuration"; return; fi
		cp "$dir/fake.conf" "$dir/loaded.tmp" && mv "$dir/loaded.tmp" "$dir/loaded"
		loads=$((loads+1)) && echo $loads >"$dir/loads"
	}
	if grep -q CRASH "$dir/fake.conf"; then echo "cannot start: CRASH"; exit 3; fi
	loads=0
	load
	trap load HUP
	trap 'exit 0' TERM
	while :; do sleep 0.02; done;;
esac
`

type fake struct {
	dir, bin string
	in       *Instance
}

func newFake(t *testing.T) *fake {
	t.Helper()
	f := &fake{dir: t.TempDir(), bin: filepath.Join(t.TempDir(), "fakedaemon")}
	if err := os.WriteFile(f.bin, []byte(fakeDaemon), 0o755); err != nil {
		t.Fatal(err)
	}
	f.in = New(f.spec())
	t.Cleanup(f.in.Stop)
	return f
}

func (f *fake) spec() Spec {
	return Spec{
		Name: "fakedaemon", Dir: f.dir, ConfigFile: "fake.conf", PidFile: "fake.pid", LogFile: "fake.log", FilesDir: "files",
		Timeout: time.Second,
		Check:   func(path string) *exec.Cmd { return exec.Command(f.bin, "check", path) },
		Command: func() (*exec.Cmd, error) { return exec.Command(f.bin, "run", f.dir), nil },
		Ready:   func(*Process) bool { return bytes.Equal(f.read("loaded"), f.read("fake.conf")) },
		Reload: func(ctx context.Context, p *Process) error {
			conf, loads := f.read("fake.conf"), f.read("loads")
			return f.in.AwaitReload(ctx, p, "refused", func() error { return p.Signal(syscall.SIGHUP) },
				func() bool { return !bytes.Equal(f.read("loads"), loads) && bytes.Equal(f.read("loaded"), conf) })
		},
	}
}

// apply applies conf, without files; an error ends the test.
func (f *fake) apply(t *testing.T, conf string) {
	t.Helper()
	if err := f.in.Apply(t.Context(), []byte(conf), nil); err != nil {
		t.Fatal(err)
	}
}

func (f *fake) read(name string) []byte {
	b, _ := os.ReadFile(filepath.Join(f.dir, name))
	return b
}

// checks counts the runs of the check.
func (f *fake) checks() int { return bytes.Count(f.read("checks"), []byte("check")) }

// want checks that the file in force, the file on disk and what the
// daemon loaded are conf, that pid runs, and the count of reloads.
func (f *fake) want(t *testing.T, conf string, pid, reloads int) {
	t.Helper()
	if got := string(f.in.Config()); got != conf {
		t.Errorf("Config = %q, want %q", got, conf)
	}
	if got := string(f.read("fake.conf")); got != conf {
		t.Errorf("the file holds %q, want %q", got, conf)
	}
	if got := string(f.read("loaded")); got != conf {
		t.Errorf("the daemon runs %q, want %q", got, conf)
	}
	if got := f.in.Pid(); got != pid || !f.in.Running() {
		t.Errorf("pid %d (running %v), want %d", got, f.in.Running(), pid)
	}
	if got := f.in.Reloads(); got != reloads {
		t.Errorf("%d starts and reloads, want %d", got, reloads)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "candidate-fake.conf")); err == nil {
		t.Error("the candidate file was left")
	}
}

func TestApplyStartsAndReloads(t *testing.T) {
	f := newFake(t)
	f.apply(t, "one\n")
	pid := f.in.Pid()
	f.want(t, "one\n", pid, 1)
	f.apply(t, "two\n")
	f.want(t, "two\n", pid, 2)
}

// TestRejectedNeverReplaces: a configuration the check rejects is
// errcode.InvalidArgument with the binary's message, and neither the file
// nor the running daemon changes.
func TestRejectedNeverReplaces(t *testing.T) {
	f := newFake(t)
	f.apply(t, "good\n")
	pid := f.in.Pid()
	err := f.in.Apply(t.Context(), []byte("BAD\n"), nil)
	if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), "BAD is not a directive") {
		t.Fatalf("Apply = %v, want InvalidArgument with the check's message", err)
	}
	f.want(t, "good\n", pid, 1)
	// Rejected before anything ran: no file, no daemon.
	g := newFake(t)
	if err := g.in.Apply(t.Context(), []byte("BAD\n"), nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("first Apply = %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(filepath.Join(g.dir, "fake.conf")); err == nil || g.in.Running() || g.in.Config() != nil {
		t.Fatal("a rejected first configuration was written or started")
	}
}

// TestFailedReloadRestores: a reload that fails puts the previous file
// back. If the daemon said it kept the old configuration (NotLoaded), that
// is all; otherwise (here: it did not answer in time) the daemon is made
// to load the previous file again.
func TestFailedReloadRestores(t *testing.T) {
	f := newFake(t)
	f.apply(t, "good\n")
	pid := f.in.Pid()

	err := f.in.Apply(t.Context(), []byte("REFUSE\n"), nil)
	var nl notLoaded
	if !errors.Is(err, errcode.FailedPrecondition) || !errors.As(err, &nl) || !strings.Contains(err.Error(), "refused the new configuration") {
		t.Fatalf("Apply = %v, want FailedPrecondition marked NotLoaded quoting the log", err)
	}
	f.want(t, "good\n", pid, 1) // no reload of the previous file

	err = f.in.Apply(t.Context(), []byte("HANG\n"), nil)
	if !errors.Is(err, errcode.Unavailable) || !strings.Contains(err.Error(), "did not reload within") {
		t.Fatalf("Apply = %v, want Unavailable", err)
	}
	f.want(t, "good\n", pid, 2) // the previous file reloaded

	// Cancelled during the reload: the rollback's reload still runs.
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	if err := f.in.Apply(ctx, []byte("HANG again\n"), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want context.Canceled", err)
	}
	f.want(t, "good\n", pid, 3)
}

// TestFailedStart: a daemon that exits at start is FailedPrecondition
// quoting its log; the previous file goes back, or none stays.
func TestFailedStart(t *testing.T) {
	f := newFake(t)
	err := f.in.Apply(t.Context(), []byte("CRASH\n"), nil)
	if !errors.Is(err, errcode.FailedPrecondition) || !strings.Contains(err.Error(), "cannot start: CRASH") {
		t.Fatalf("Apply = %v, want FailedPrecondition quoting the log", err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "fake.conf")); err == nil || f.in.Running() || f.in.Config() != nil || f.in.Reloads() != 0 {
		t.Fatal("the failed first configuration stayed")
	}
	f.apply(t, "good\n")
	f.in.Stop()
	if err := f.in.Apply(t.Context(), []byte("CRASH\n"), nil); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Apply = %v, want FailedPrecondition", err)
	}
	if got := string(f.read("fake.conf")); got != "good\n" || f.in.Running() {
		t.Fatalf("after a failed restart the file holds %q, running %v", got, f.in.Running())
	}
	// The next Apply of the good configuration starts it again.
	f.apply(t, "good\n")
	f.want(t, "good\n", f.in.Pid(), 2)
}

// TestEqualIsNoop: equal bytes while the daemon runs check and reload
// nothing; while it does not, they start it.
func TestEqualIsNoop(t *testing.T) {
	f := newFake(t)
	f.apply(t, "one\n")
	pid, checks := f.in.Pid(), f.checks()
	f.apply(t, "one\n")
	if f.checks() != checks {
		t.Fatal("an equal configuration was checked")
	}
	f.want(t, "one\n", pid, 1)
	f.in.Stop()
	if f.in.Running() || f.in.Pid() != 0 {
		t.Fatal("running after Stop")
	}
	f.apply(t, "one\n")
	f.want(t, "one\n", f.in.Pid(), 2)
}

// TestFiles: the files a configuration names are written before the
// check; those it no longer names go after a successful Apply.
func TestFiles(t *testing.T) {
	f := newFake(t)
	files := filepath.Join(f.dir, "files")
	if err := os.Mkdir(files, 0o700); err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(files, "a"), filepath.Join(files, "b")
	if err := f.in.Apply(t.Context(), []byte("a\n"), map[string][]byte{a: []byte("A")}); err != nil {
		t.Fatal(err)
	}
	if err := f.in.Apply(t.Context(), []byte("BAD b\n"), map[string][]byte{b: []byte("B")}); err == nil {
		t.Fatal("BAD accepted")
	}
	if _, err := os.Stat(a); err != nil {
		t.Fatal("a rejected configuration removed a file in force")
	}
	if err := f.in.Apply(t.Context(), []byte("b\n"), map[string][]byte{b: []byte("B")}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(b); string(got) != "B" {
		t.Fatalf("b = %q, %v", got, err)
	}
	if _, err := os.Stat(a); err == nil {
		t.Fatal("a file no longer named stayed")
	}
}

// TestNewEndsOrphans: New ends the daemon an earlier run left running
// (its pid file's process group), and only processes of its name.
func TestNewEndsOrphans(t *testing.T) {
	f := newFake(t)
	if err := os.WriteFile(filepath.Join(f.dir, "fake.conf"), []byte("left\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(f.bin, "run", f.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-exited })
	for deadline := time.Now().Add(5 * time.Second); string(f.read("fake.pid")) != strconv.Itoa(cmd.Process.Pid)+"\n"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the orphan wrote no pid file")
		}
	}
	New(f.spec())
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("New left the orphan running")
	}
}
