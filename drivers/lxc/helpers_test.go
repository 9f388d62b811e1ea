package lxc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/roottest"
)

// baseImage is the name of the busybox image in every test server's store.
const baseImage = "base"

// testSubnet is the range containers on a test bridge take addresses from.
// The bridge itself has no address, so the root namespace gets no route
// to it and nothing reaches beyond the bridge.
var testSubnet = "198.19.254.0/24"

func requireLXC(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.Binary("lxc-start"), roottest.Binary("cp"), roottest.Binary("busybox"),
		roottest.Kernel(roottest.Veth), roottest.Kernel(roottest.Bridge))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openTest opens a driver on a fresh server directory whose store holds
// the base image. Cleanup kills and deletes every container and removes
// the directory.
func openTest(t testing.TB) *Driver {
	t.Helper()
	requireLXC(t)
	dir, err := os.MkdirTemp("", "mstlxc")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(context.Background(), dir, nil)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A driver of its own, since the test may have closed d.
		ctx := context.Background()
		cd, err := Open(ctx, dir, nil)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		infos, err := cd.List(ctx)
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, i := range infos {
			if err := cd.Stop(ctx, i.Spec.Name, 0); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			if err := cd.Delete(ctx, i.Spec.Name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		cd.Close()
		d.Close()
		os.RemoveAll(dir)
	})
	if _, err := image.BuildBase(testCtx(t), d.images, baseImage, nil); err != nil {
		t.Fatal(err)
	}
	return d
}

// create makes a container of the base image; mutate may change the spec.
func create(t testing.TB, d *Driver, name string, mutate func(*driver.Spec)) *driver.Info {
	t.Helper()
	spec := &driver.Spec{Name: name, Image: baseImage}
	if mutate != nil {
		mutate(spec)
	}
	info, err := d.Create(testCtx(t), spec)
	if err != nil {
		t.Fatalf("Create %s: %v", name, err)
	}
	return info
}

func start(t testing.TB, d *Driver, name string) {
	t.Helper()
	if err := d.Start(testCtx(t), name); err != nil {
		t.Fatalf("Start %s: %v", name, err)
	}
}

// run execs args in a container and returns its output and exit code.
func run(t testing.TB, d *Driver, name string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code, err := d.Exec(testCtx(t), name, &driver.Process{Args: args, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("Exec %s %q: %v", name, args, err)
	}
	return out.String(), code
}

var bridgeSeq atomic.Int32

// bridgeName matches the bridges testBridge makes; group 1 is the pid.
var bridgeName = regexp.MustCompile(`^mstlxc([0-9]+)x[0-9]+$`)

// testBridge creates a bridge without an address in the root network
// namespace, named mstlxc<pid>x<n>, and removes it in cleanup. Bridges
// that killed test processes left behind are removed first.
func testBridge(t testing.TB) string {
	t.Helper()
	requireLXC(t)
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			m := bridgeName.FindStringSubmatch(l.Attrs().Name)
			if m == nil {
				continue
			}
			pid, _ := strconv.Atoi(m[1])
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				netlink.LinkDel(l)
			}
		}
	}
	name := fmt.Sprintf("mstlxc%dx%d", os.Getpid(), bridgeSeq.Add(1))
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("adding bridge %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("removing bridge %s: %v", name, err)
		}
	})
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return name
}

// lxcpathEntries lists the names in a driver's lxcpath.
func lxcpathEntries(t testing.TB, d *Driver) []string {
	t.Helper()
	entries, err := os.ReadDir(d.lxcpath)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// cgroupFile reads a cgroup file of a process's controller from the host's
// cgroup filesystem, on either hierarchy.
func cgroupFile(t testing.TB, cg cgroupLayout, pid int, controller int, v1Dir, file string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var dir string
		switch {
		case controller == cgroupV1 && f[0] != "0" && hasController(f[1], v1Dir):
			dir = "/sys/fs/cgroup/" + v1Dir
		case controller == cgroupV2 && f[0] == "0":
			dir = unifiedMount(t)
		default:
			continue
		}
		b, err := os.ReadFile(dir + f[2] + "/" + file)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	t.Fatalf("no %s cgroup for pid %d", file, pid)
	return ""
}

func hasController(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

func unifiedMount(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			return strings.Fields(pre)[4]
		}
	}
	t.Fatal("no cgroup2 mount")
	return ""
}
