package orphan

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestReap starts a "sleep" leader with a child in a group of its own,
// kills the leader as a dead manager would leave it, and reaps the rest.
func TestReap(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 60 & exec sleep 60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	pidFile := filepath.Join(t.TempDir(), "x.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0; time.Sleep(10 * time.Millisecond) {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, _ := strconv.Atoi(e.Name())
			if comm, pgrp, ok := stat(pid); ok && comm == "sleep" && pgrp == cmd.Process.Pid && pid != cmd.Process.Pid {
				child = pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no child")
		}
	}
	if got := Reap(pidFile, "nothing-like-it", nil); len(got) != 0 {
		t.Fatalf("reaped %v by another name", got)
	}
	killed := Reap(pidFile, "sleep", nil)
	if len(killed) != 2 || running(child) {
		t.Fatalf("reaped %v; child %d running %v", killed, child, running(child))
	}
	if got := Reap(filepath.Join(t.TempDir(), "none.pid"), "sleep", nil); got != nil {
		t.Fatalf("without a pid file: %v", got)
	}
}
