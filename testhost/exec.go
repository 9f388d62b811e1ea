package testhost

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// execMarker, as the first argument, makes a program that imports testhost
// act as the re-exec helper of Host.Command (see init).
const execMarker = "__muster_testhost_exec__"

// execSpec is what the re-exec helper does: restore the cgroup mounts,
// then exec Path with Args.
type execSpec struct {
	Mounts []cgroupMount
	Path   string
	Args   []string
}

// cgroupMount is one mount under /sys/fs/cgroup.
type cgroupMount struct {
	Target, Source, FSType, Data string
}

func init() {
	if len(os.Args) == 3 && os.Args[1] == execMarker {
		fmt.Fprintln(os.Stderr, "testhost exec:", reexec(os.Args[2]))
		os.Exit(126)
	}
}

// Command returns a command that runs program name with args inside the
// host's network namespace; no shell is involved. It runs `ip netns exec`,
// which gives the program a mount namespace of its own with a /sys for the
// host's network namespace (so /sys/class/net shows the host's links), and
// in it restores the machine's cgroup mounts under /sys/fs/cgroup, which
// that fresh /sys lacks and LXC needs. Everything else (filesystem,
// environment, other namespaces) is the caller's. The restoring is done by
// a copy of the calling program itself, which is why importing testhost
// registers an init hook.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.Netns, "true")
	self, err := os.Executable()
	if err != nil {
		cmd.Err = err
		return cmd
	}
	spec := execSpec{Path: name, Args: append([]string{name}, args...)}
	if spec.Path, err = exec.LookPath(name); err != nil {
		cmd.Err = err
		return cmd
	}
	if spec.Mounts, err = cgroupMounts(); err != nil {
		cmd.Err = err
		return cmd
	}
	data, err := json.Marshal(spec)
	if err != nil {
		cmd.Err = err
		return cmd
	}
	cmd.Args = []string{"ip", "netns", "exec", h.Netns, self, execMarker, string(data)}
	return cmd
}

// reexec restores the cgroup mounts in this process's private mount
// namespace and execs the program; it returns only on failure.
func reexec(specJSON string) error {
	var spec execSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	for _, m := range spec.Mounts {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(m.Source, m.Target, m.FSType, 0, m.Data); err != nil {
			return fmt.Errorf("mount %s (%s %s): %w", m.Target, m.FSType, m.Data, err)
		}
	}
	return syscall.Exec(spec.Path, spec.Args, os.Environ())
}

// cgroupMounts returns this process's mounts at and under /sys/fs/cgroup,
// parents first, as /proc/self/mountinfo lists them.
func cgroupMounts() ([]cgroupMount, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []cgroupMount
	for line := range strings.Lines(string(data)) {
		// ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
		pre, post, ok := strings.Cut(strings.TrimSpace(line), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || f[4] != "/sys/fs/cgroup" && !strings.HasPrefix(f[4], "/sys/fs/cgroup/") {
			continue
		}
		// Super options without rw/ro, which cgroup filesystems reject as data.
		opts := slices.DeleteFunc(strings.Split(g[2], ","), func(o string) bool { return o == "rw" || o == "ro" })
		mounts = append(mounts, cgroupMount{Target: f[4], Source: g[1], FSType: g[0], Data: strings.Join(opts, ",")})
	}
	return mounts, nil
}

// mntPrefix starts the names of the files in lockDir that hold hosts'
// mount namespaces; the host's namespace name follows.
const mntPrefix = "mnt-"

// ServerCommand is Command in a mount namespace that belongs to the host
// for its whole life, instead of a fresh one each time: what one such
// process mounts (a FUSE file system), the next one sees, as processes of
// a real server do. Like Command's, the namespace has a /sys for the
// host's network namespace and the machine's cgroup mounts. It is made on
// first use (with nsenter from util-linux entering it) and removed when
// the cluster closes.
func (h *Host) ServerCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	h.mntOnce.Do(func() { h.mntErr = h.makeMountNS() })
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--mount=" + h.mntFile, "--net=" + filepath.Join(netnsDir, h.Netns), "--", name}, args...)...)
	if h.mntErr != nil {
		cmd.Err = h.mntErr
	}
	return cmd
}

// makeMountNS makes the host's mount namespace: a process started as
// Command starts one waits while its namespace is bound to a file.
func (h *Host) makeMountNS() error {
	cmd := h.Command(context.Background(), "/bin/sh", "-c", "read _")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer stdin.Close()
	// The re-exec helper execs sh once it has restored the cgroup mounts.
	comm := filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "comm")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if b, _ := os.ReadFile(comm); string(b) == "sh\n" {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("testhost: making %s's mount namespace: its first process did not start", h.Name)
		}
	}
	file := filepath.Join(lockDir, mntPrefix+h.Netns)
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		return err
	}
	src := filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "ns", "mnt")
	if err := syscall.Mount(src, file, "", syscall.MS_BIND, ""); err != nil {
		os.Remove(file)
		return fmt.Errorf("testhost: keeping %s's mount namespace: %w", h.Name, err)
	}
	h.mntFile = file
	return nil
}

// releaseMountNS unbinds a host's mount namespace file and removes it; the
// namespace goes when its last process does.
func releaseMountNS(file string) error {
	if err := syscall.Unmount(file, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
		return fmt.Errorf("testhost: unbinding %s: %w", file, err)
	}
	if err := os.Remove(file); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}
