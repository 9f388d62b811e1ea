package lxc

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Destroy throws a server's state directory away: it kills the init of
// every container a driver opened on dir started (the very process Start
// recorded, never another that took its PID), which ends the container,
// and removes dir. It is for state whose driver is gone, such as what a
// killed test run or demo left behind; no driver may be open on dir.
func Destroy(dir string) error {
	d := &Driver{lxcpath: filepath.Join(dir, "containers")}
	entries, err := os.ReadDir(d.lxcpath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var errs []error
	for _, e := range entries {
		pid := d.hiddenInit(e.Name())
		if pid == 0 {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
			continue
		}
		for deadline := time.Now().Add(10 * time.Second); d.hiddenInit(e.Name()) != 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(append(errs, os.RemoveAll(dir))...)
}
