package gluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/daemon"
	"github.com/musterkit/muster/internal/mountinfo"
	"github.com/musterkit/muster/storage/driver"
)

// mounter keeps this server's FUSE mounts, dir/<volume>, each served by a
// glusterfs client whose pid is in dir/<volume>.pid.
type mounter struct {
	dir, logDir string
	opts        *Options
	log         *slog.Logger

	mu      sync.Mutex
	probing map[string]chan struct{} // health probes in flight, by path
}

func (m *mounter) path(volume string) string    { return filepath.Join(m.dir, volume) }
func (m *mounter) pidFile(volume string) string { return filepath.Join(m.dir, volume+".pid") }

// reconcile makes this server's mounts those cfg names: it adopts a
// healthy mount of the same volume and access, mounts the others, then
// ends the mounts cfg does not name.
func (m *mounter) reconcile(ctx context.Context, cfg *driver.Config, undo *undoList) error {
	want := map[string]bool{}
	for _, mnt := range cfg.Mounts {
		want[mnt.Volume] = true
		if m.adopt(ctx, cfg, mnt) {
			continue
		}
		if err := m.mount(ctx, cfg, mnt); err != nil {
			return err
		}
		undo.add("mount "+mnt.Volume, func(ctx context.Context) error { return m.unmount(ctx, mnt.Volume, true) })
	}
	for _, v := range m.present() {
		if !want[v] {
			if err := m.unmount(ctx, v, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// present lists the volumes with a mount point or pid file here.
func (m *mounter) present() []string {
	entries, _ := os.ReadDir(m.dir)
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		v := strings.TrimSuffix(e.Name(), ".pid")
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// argv is the client's command line for mnt.
func (m *mounter) argv(cfg *driver.Config, mnt driver.Mount) []string {
	argv := []string{m.opts.Glusterfs, "-N", "--process-name", "fuse"}
	for _, member := range cfg.Pool.Members {
		argv = append(argv, "--volfile-server="+member.Addr.Unmap().String())
	}
	argv = append(argv, "--volfile-id="+mnt.Volume, "--log-file="+filepath.Join(m.logDir, "mount-"+mnt.Volume+".log"))
	if mnt.ReadOnly {
		argv = append(argv, "--read-only")
	}
	return append(argv, m.path(mnt.Volume))
}

// adopt reports whether a client of an earlier run serves mnt as cfg
// would mount it, and answers; a mount that does not is ended.
func (m *mounter) adopt(ctx context.Context, cfg *driver.Config, mnt driver.Mount) bool {
	p := m.path(mnt.Volume)
	e, mounted := mountinfo.At("/proc/self/mountinfo", p)
	pid := m.pid(mnt.Volume)
	if !mounted && pid == 0 {
		return false
	}
	if mounted && e.FSType == "fuse.glusterfs" && pid != 0 && e.ReadOnly == mnt.ReadOnly &&
		bytes.Equal(cmdline(pid), []byte(strings.Join(m.argv(cfg, mnt), "\x00")+"\x00")) {
		// A client reconnects to restarted bricks within seconds.
		deadline := time.Now().Add(m.opts.PingTimeout + 5*time.Second)
		for !m.healthy(p) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
		}
		if m.healthy(p) {
			m.log.InfoContext(ctx, "gluster: mount adopted", "volume", mnt.Volume, "path", p, "pid", pid)
			return true
		}
	}
	m.log.WarnContext(ctx, "gluster: ending a mount that is not as configured or does not answer", "volume", mnt.Volume, "path", p, "pid", pid)
	m.unmount(ctx, mnt.Volume, true)
	return false
}

// mount starts a client for mnt and waits until the mount answers.
func (m *mounter) mount(ctx context.Context, cfg *driver.Config, mnt driver.Mount) error {
	p := m.path(mnt.Volume)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return errcode.Syscall(err, "gluster: mount point %s", p)
	}
	logPath := filepath.Join(m.logDir, "mount-"+mnt.Volume+".log")
	var offset int64
	if fi, err := os.Stat(logPath); err == nil {
		offset = fi.Size()
	}
	argv := m.argv(cfg, mnt)
	if m.opts.NetNS != "" {
		argv = append([]string{"nsenter", "--net=" + m.opts.NetNS}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = m.dir
	proc, err := daemon.Start(cmd)
	if err != nil {
		return errcode.Wrap(errcode.Unavailable, fmt.Errorf("gluster: starting the client of %q: %w", mnt.Volume, err))
	}
	if err := os.WriteFile(m.pidFile(mnt.Volume), []byte(strconv.Itoa(proc.Pid())+"\n"), 0o600); err != nil {
		proc.Stop(time.Second)
		return errcode.Syscall(err, "gluster: pid file of %q", mnt.Volume)
	}
	deadline := time.Now().Add(m.opts.Timeout)
	for {
		if e, ok := mountinfo.At("/proc/self/mountinfo", p); ok && e.FSType == "fuse.glusterfs" && m.healthy(p) {
			m.log.InfoContext(ctx, "gluster: mounted", "volume", mnt.Volume, "path", p, "pid", proc.Pid(), "readOnly", mnt.ReadOnly)
			return nil
		}
		var why error
		select {
		case <-ctx.Done():
			why = ctx.Err()
		case <-proc.Done():
			msg := readFrom(logPath, offset)
			code := errcode.Unavailable
			if bytes.Contains(msg, []byte("Authentication failed")) {
				code = errcode.PermissionDenied
			}
			why = errcode.New(code, "gluster: mounting volume %q: the client exited (%v): %s", mnt.Volume, proc.Err(), lastLines(msg, 3))
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				why = errcode.New(errcode.Unavailable, "gluster: volume %q was not mounted within %v: %s", mnt.Volume, m.opts.Timeout, lastLines(readFrom(logPath, offset), 3))
			}
		}
		if why != nil {
			m.unmount(context.WithoutCancel(ctx), mnt.Volume, true)
			return why
		}
	}
}

// unmount ends volume's mount and its client. A busy mount is
// errcode.FailedPrecondition unless force, which detaches it lazily.
func (m *mounter) unmount(ctx context.Context, volume string, force bool) error {
	p := m.path(volume)
	if _, mounted := mountinfo.At("/proc/self/mountinfo", p); mounted {
		err := syscall.Unmount(p, 0)
		if errors.Is(err, syscall.EBUSY) && force {
			err = syscall.Unmount(p, syscall.MNT_DETACH)
		}
		switch {
		case errors.Is(err, syscall.EBUSY):
			return errcode.New(errcode.FailedPrecondition, "gluster: the mount of volume %q at %s is busy; end its users or force", volume, p)
		case err != nil && !errors.Is(err, syscall.EINVAL):
			return errcode.Syscall(err, "gluster: unmounting %s", p)
		}
		m.log.InfoContext(ctx, "gluster: unmounted", "volume", volume, "path", p)
	}
	if pid := m.pid(volume); pid != 0 {
		// The client exits once its mount is gone.
		if !waitGone([]int{pid}, 3*time.Second) {
			syscall.Kill(pid, syscall.SIGTERM)
			if !waitGone([]int{pid}, 3*time.Second) {
				syscall.Kill(pid, syscall.SIGKILL)
				waitGone([]int{pid}, 2*time.Second)
			}
		}
	}
	if err := os.Remove(m.pidFile(volume)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errcode.Syscall(err, "gluster: removing %s", m.pidFile(volume))
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errcode.Syscall(err, "gluster: removing %s", p)
	}
	return nil
}

// unmountAll ends every mount; see unmount.
func (m *mounter) unmountAll(ctx context.Context, force bool) error {
	var errs []error
	for _, v := range m.present() {
		errs = append(errs, m.unmount(ctx, v, force))
	}
	return errors.Join(errs...)
}

// pid returns the pid of volume's client if its pid file names a live
// glusterfs process serving that mount point, else 0.
func (m *mounter) pid(volume string) int {
	b, err := os.ReadFile(m.pidFile(volume))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || !alive(pid) {
		return 0
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	args := bytes.Split(cmdline(pid), []byte{0})
	if strings.TrimSpace(string(comm)) != "glusterfs" || len(args) < 2 || string(args[len(args)-2]) != m.path(volume) {
		return 0
	}
	return pid
}

func cmdline(pid int) []byte {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return b
}

// healthy reports whether the file system at p answers a stat within
// 2 s. A probe that hangs stays the only one for p until it returns.
func (m *mounter) healthy(p string) bool {
	m.mu.Lock()
	if m.probing == nil {
		m.probing = map[string]chan struct{}{}
	}
	done, busy := m.probing[p]
	if !busy {
		done = make(chan struct{})
		m.probing[p] = done
	}
	m.mu.Unlock()
	if busy {
		return false
	}
	var err error
	go func() {
		_, err = os.Stat(p)
		m.mu.Lock()
		delete(m.probing, p)
		m.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return err == nil
	case <-time.After(2 * time.Second):
		return false
	}
}

// status reports cfg's mounts.
func (m *mounter) status(cfg *driver.Config) []driver.MountStatus {
	out := []driver.MountStatus{}
	for _, mnt := range cfg.Mounts {
		p := m.path(mnt.Volume)
		e, ok := mountinfo.At("/proc/self/mountinfo", p)
		out = append(out, driver.MountStatus{Mount: mnt, Path: p, Healthy: ok && e.FSType == "fuse.glusterfs" && m.healthy(p)})
	}
	return out
}

// readFrom returns what file holds after offset (at most 64 KiB).
func readFrom(file string, offset int64) []byte {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return nil
	}
	b := make([]byte, 64<<10)
	n, _ := f.Read(b)
	return b[:n]
}

// lastLines returns the last n lines of b.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
