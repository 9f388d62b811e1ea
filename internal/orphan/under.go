package orphan

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/musterkit/muster/internal/mountinfo"
)

// EndUnder kills every process (but this one) whose command line names a
// path in dir, an absolute, clean directory that belongs to the caller
// alone (a test's or a fleet's state): daemons and FUSE clients a run left
// there. It waits up to two seconds until they are gone and returns their
// pids.
func EndUnder(dir string) []int {
	needle := []byte(dir + "/")
	var killed []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for arg := range bytes.SplitSeq(cmdline, []byte{0}) {
			if string(arg) == dir || bytes.Contains(arg, needle) {
				syscall.Kill(pid, syscall.SIGKILL)
				killed = append(killed, pid)
				break
			}
		}
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !slices.ContainsFunc(killed, running) {
			break
		}
	}
	return killed
}

// UnmountUnder detaches every mount at or under dir in this process's
// mount namespace, deepest first, so that dir can be removed.
func UnmountUnder(dir string) error {
	targets, err := mountinfo.Under(dir)
	if err != nil {
		return err
	}
	var first error
	for _, t := range targets {
		if err := syscall.Unmount(t, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && first == nil {
			first = &os.PathError{Op: "unmount", Path: t, Err: err}
		}
	}
	return first
}
