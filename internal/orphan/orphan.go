// Package orphan ends what an earlier run of a managed daemon left behind.
//
// The balancer drivers start HAProxy and Nginx masters each in a process
// group of its own and record the master's pid in the instance's pid file.
// If the process that managed them dies, the daemons go on serving (which
// is what a data plane should do while its control plane restarts), and
// hold their ports: the next start of the instance must end them first.
package orphan

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Reap kills, by pid, every process named comm (its /proc comm) in the
// process group of the pid that pidFile records, and waits up to two
// seconds until they are gone (every thread of theirs), so that their
// ports are free. A missing or unreadable pid file, or a group with no such
// process, is nothing to do. It returns the pids it killed.
func Reap(pidFile, comm string, log *slog.Logger) []int {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil
	}
	group, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || group <= 1 {
		return nil
	}
	var killed []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, pgrp, _, ok := stat(filepath.Join("/proc", e.Name(), "stat"))
		if ok && name == comm && pgrp == group && running(pid) {
			if log != nil {
				log.Warn("ending a process an earlier run left", "pid", pid, "comm", comm, "group", group)
			}
			syscall.Kill(pid, syscall.SIGKILL)
			killed = append(killed, pid)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !slices.ContainsFunc(killed, running) {
			break
		}
	}
	return killed
}

// stat reads the comm, process group and state of a process or a thread
// from its stat file (/proc/PID/stat, /proc/PID/task/TID/stat).
func stat(path string) (comm string, pgrp int, state string, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, "", false
	}
	// pid (comm) state ppid pgrp ...: comm may hold spaces and ')'.
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return "", 0, "", false
	}
	f := strings.Fields(string(b[j+1:]))
	if len(f) < 3 {
		return "", 0, "", false
	}
	pgrp, err = strconv.Atoi(f[2])
	return string(b[i+1 : j]), pgrp, f[0], err == nil
}

// running reports whether a thread of process pid exists and is not a
// zombie. The main thread alone does not say: it is a zombie once it
// exited, while the process's other threads run on and hold its files (a
// multi-threaded HAProxy worker's listening sockets).
func running(pid int) bool {
	tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	for _, t := range tasks {
		_, _, state, ok := stat(filepath.Join("/proc", strconv.Itoa(pid), "task", t.Name(), "stat"))
		if ok && state != "Z" && state != "X" {
			return true
		}
	}
	return false
}
