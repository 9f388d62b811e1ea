package orphan

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
			if comm, pgrp, _, ok := stat(filepath.Join("/proc", e.Name(), "stat")); ok && comm == "sleep" && pgrp == cmd.Process.Pid && pid != cmd.Process.Pid {
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

// TestMain runs the test binary as threadsHelper when the environment says.
func TestMain(m *testing.M) {
	if file := os.Getenv("ORPHAN_THREADS_HELPER"); file != "" {
		threadsHelper(file)
	}
	os.Exit(m.Run())
}

func init() {
	if os.Getenv("ORPHAN_THREADS_HELPER") != "" {
		runtime.LockOSThread() // main runs on the main thread
	}
}

var helperListener net.Listener

// threadsHelper listens on loopback, writes the address to file, and ends
// its main thread alone: the main thread is then a zombie, while the
// process's other threads run on and hold the listener.
func threadsHelper(file string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.Exit(2)
	}
	helperListener = l
	if err := os.WriteFile(file, []byte(l.Addr().String()), 0o600); err != nil {
		os.Exit(2)
	}
	syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0)
}

// TestReapWaitsForThreads: a process whose main thread exited still holds
// its listener while its other threads run; Reap ends it and returns once
// the port is free.
func TestReapWaitsForThreads(t *testing.T) {
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "ORPHAN_THREADS_HELPER="+addrFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	pid := cmd.Process.Pid
	stateFile := filepath.Join("/proc", strconv.Itoa(pid), "stat")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, _, state, _ := stat(stateFile); state == "Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper's main thread did not exit")
		}
	}
	addr, err := os.ReadFile(addrFile)
	if err != nil {
		t.Fatal(err)
	}
	if !running(pid) {
		t.Fatal("a process with live threads counts as gone")
	}
	if l, err := net.Listen("tcp", string(addr)); err == nil {
		l.Close()
		t.Fatal("the helper does not hold its listener")
	}
	pidFile := filepath.Join(dir, "x.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	comm := filepath.Base(os.Args[0])
	if len(comm) > 15 {
		comm = comm[:15] // the kernel's TASK_COMM_LEN
	}
	if killed := Reap(pidFile, comm, nil); len(killed) != 1 || killed[0] != pid {
		t.Fatalf("reaped %v, want [%d]", killed, pid)
	}
	l, err := net.Listen("tcp", string(addr))
	if err != nil {
		t.Fatalf("the port is still taken after Reap: %v", err)
	}
	l.Close()
}
