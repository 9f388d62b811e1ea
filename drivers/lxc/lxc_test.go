package lxc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	golxc "github.com/lxc/go-lxc"
	"github.com/vishvananda/netlink"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

func TestConformance(t *testing.T) {
	requireLXC(t)
	br := testBridge(t)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:         func(t *testing.T) driver.Driver { return openTest(t) },
		Image:        baseImage,
		Bridge:       br,
		Subnet:       netip.MustParsePrefix(testSubnet),
		MountSource:  t.TempDir(),
		ReportsUsage: true,
	})
}

// TestLimits checks that limits reach the container's cgroup files on the
// host, whichever hierarchy manages them, and that starting, exec and
// stopping leave the calling process in its own cgroups.
func TestLimits(t *testing.T) {
	d := openTest(t)
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	create(t, d, "limited", func(s *driver.Spec) {
		s.Limits = driver.Limits{MemoryBytes: 96 << 20, MilliCPU: 250, Pids: 50}
	})
	start(t, d, "limited")
	info, err := d.Get(testCtx(t), "limited")
	if err != nil {
		t.Fatal(err)
	}
	cg := d.cgroups
	switch cg.Memory {
	case cgroupV1:
		if got := cgroupFile(t, cg, info.PID, cgroupV1, "memory", "memory.limit_in_bytes"); got != strconv.Itoa(96<<20) {
			t.Errorf("memory.limit_in_bytes = %s", got)
		}
	case cgroupV2:
		if got := cgroupFile(t, cg, info.PID, cgroupV2, "", "memory.max"); got != strconv.Itoa(96<<20) {
			t.Errorf("memory.max = %s", got)
		}
	}
	if got := cgroupFile(t, cg, info.PID, cg.Pids, "pids", "pids.max"); got != "50" {
		t.Errorf("pids.max = %s", got)
	}
	switch cg.CPU {
	case cgroupV1:
		if got := cgroupFile(t, cg, info.PID, cgroupV1, "cpu", "cpu.cfs_quota_us"); got != "25000" {
			t.Errorf("cpu.cfs_quota_us = %s", got)
		}
	case cgroupV2:
		if got := cgroupFile(t, cg, info.PID, cgroupV2, "", "cpu.max"); got != "25000 100000" {
			t.Errorf("cpu.max = %s", got)
		}
	}
	// The container sees its own limits in its cgroup filesystem.
	inside := map[int]string{cgroupV1: "/sys/fs/cgroup/pids/pids.max", cgroupV2: "/sys/fs/cgroup/pids.max"}[cg.Pids]
	if out, _ := run(t, d, "limited", "cat", inside); out != "50\n" {
		t.Errorf("%s inside = %q", inside, out)
	}
	// Usage comes from the same cgroups.
	run(t, d, "limited", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
	info, err = d.Get(testCtx(t), "limited")
	if err != nil {
		t.Fatal(err)
	}
	if u := info.Usage; u.CPU <= 0 || u.MemoryBytes <= 0 || u.Pids < 1 {
		t.Errorf("usage %+v", u)
	}
	// The pids limit holds inside.
	out, _ := run(t, d, "limited", "sh", "-c", "for i in $(seq 80); do sleep 5 & done 2>&1; echo done")
	if !strings.Contains(out, "can't fork") && !strings.Contains(out, "Resource temporarily unavailable") {
		t.Errorf("80 background processes under pids.max 50: %q", out)
	}
	if err := d.Stop(testCtx(t), "limited", 0); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile("/proc/self/cgroup"); !bytes.Equal(now, self) {
		t.Errorf("the test process changed cgroups:\nbefore %s\nafter %s", self, now)
	}
}

func TestReadOnlyBindMount(t *testing.T) {
	d := openTest(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	create(t, d, "binder", func(s *driver.Spec) {
		s.Mounts = []driver.Mount{{Source: src, Target: "/data/in", ReadOnly: true}}
	})
	start(t, d, "binder")
	if out, code := run(t, d, "binder", "cat", "/data/in/f"); code != 0 || out != "hi\n" {
		t.Fatalf("cat: %q %d", out, code)
	}
	out, _ := run(t, d, "binder", "cat", "/proc/mounts")
	var opts []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[1] == "/data/in" {
			opts = strings.Split(f[3], ",")
		}
	}
	if !slices.Contains(opts, "ro") {
		t.Errorf("/data/in is mounted with %v, not read-only:\n%s", opts, out)
	}
	if _, code := run(t, d, "binder", "touch", "/data/in/new"); code == 0 {
		t.Error("touch in a read-only mount succeeded")
	}
}

// TestNetwork gives two containers static addresses on a bridge: each sees
// its address, they ping each other, and a container without networks has
// only loopback.
func TestNetwork(t *testing.T) {
	d := openTest(t)
	br := testBridge(t)
	subnet := netip.MustParsePrefix(testSubnet)
	a := netip.PrefixFrom(subnet.Addr().Next().Next().Next(), subnet.Bits())
	b := netip.PrefixFrom(a.Addr().Next(), subnet.Bits())
	for name, addr := range map[string]netip.Prefix{"na": a, "nb": b} {
		create(t, d, name, func(s *driver.Spec) {
			s.Networks = []driver.Network{{Bridge: br, Address: addr, MTU: 1400}}
		})
		start(t, d, name)
	}
	create(t, d, "alone", nil)
	start(t, d, "alone")

	if out, _ := run(t, d, "na", "ip", "addr", "show", "eth0"); !strings.Contains(out, a.String()) || !strings.Contains(out, "mtu 1400") {
		t.Errorf("ip addr in na lacks %s or mtu 1400:\n%s", a, out)
	}
	if out, code := run(t, d, "na", "ping", "-c", "1", "-W", "3", b.Addr().String()); code != 0 {
		t.Errorf("ping na -> nb: exit %d\n%s", code, out)
	}
	if out, _ := run(t, d, "na", "ip", "route"); strings.Contains(out, "default") {
		t.Errorf("container has a default route:\n%s", out)
	}
	out, _ := run(t, d, "alone", "ip", "-o", "link")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "lo:") {
		t.Errorf("a container without networks sees links:\n%s", out)
	}
	// The host side carries the driver's veth name and sits on the bridge.
	veth, err := netlink.LinkByName(vethName(d.lxcpath, "na", 0))
	if err != nil {
		t.Fatal(err)
	}
	brLink, err := netlink.LinkByName(br)
	if err != nil {
		t.Fatal(err)
	}
	if veth.Attrs().MasterIndex != brLink.Attrs().Index {
		t.Errorf("%s is not on %s", veth.Attrs().Name, br)
	}
	info, err := d.Get(testCtx(t), "na")
	if err != nil || !slices.Equal(info.Addresses, []netip.Addr{a.Addr()}) {
		t.Errorf("Get addresses = %v, %v; want [%s]", info.Addresses, err, a.Addr())
	}
}

func TestCreateRollback(t *testing.T) {
	d := openTest(t)
	ctx := testCtx(t)
	before := lxcpathEntries(t, d)
	for _, tc := range []struct {
		spec driver.Spec
		code errcode.Code
	}{
		{driver.Spec{Name: "nobr", Image: baseImage, Networks: []driver.Network{{Bridge: "mstnosuchbr0"}}}, errcode.NotFound},
		{driver.Spec{Name: "notbr", Image: baseImage, Networks: []driver.Network{{Bridge: "lo"}}}, errcode.FailedPrecondition},
		{driver.Spec{Name: "noimage", Image: "no-such-image"}, errcode.NotFound},
		{driver.Spec{Name: "bad", Image: baseImage, Mounts: []driver.Mount{{Source: "/tmp", Target: "/a b"}}}, errcode.InvalidArgument},
	} {
		_, err := d.Create(ctx, &tc.spec)
		if !errors.Is(err, tc.code) {
			t.Errorf("Create %s: %v, want code %v", tc.spec.Name, err, tc.code)
		}
	}
	if after := lxcpathEntries(t, d); !slices.Equal(before, after) {
		t.Errorf("failed creates left %v (before %v)", after, before)
	}
}

// TestStopKillsStubbornInit replaces init with a shell loop that has no
// handler for the halt signal, so Stop must kill it when the timeout ends.
func TestStopKillsStubbornInit(t *testing.T) {
	d := openTest(t)
	create(t, d, "stubborn", nil)
	init := d.path("stubborn", "rootfs", "sbin", "init")
	if err := os.Remove(init); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(init, []byte("#!/bin/sh\nwhile :; do sleep 1; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start(t, d, "stubborn")
	began := time.Now()
	if err := d.Stop(testCtx(t), "stubborn", 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 1500*time.Millisecond || took > 5*time.Second {
		t.Errorf("Stop took %v, want the 1.5s timeout and a kill", took)
	}
	if info, _ := d.Get(testCtx(t), "stubborn"); info.State != driver.Stopped {
		t.Errorf("state %s after Stop", info.State)
	}

	// busybox init, by contrast, powers off on the halt signal.
	create(t, d, "polite", nil)
	start(t, d, "polite")
	began = time.Now()
	if err := d.Stop(testCtx(t), "polite", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("graceful Stop took %v", took)
	}
}

func TestExecBackgroundAndCancel(t *testing.T) {
	d := openTest(t)
	create(t, d, "bg", nil)
	start(t, d, "bg")
	// A process left in the background holding stdout does not hold Exec.
	began := time.Now()
	if out, code := run(t, d, "bg", "sh", "-c", "sleep 30 & echo started"); out != "started\n" || code != 0 {
		t.Errorf("background: %q exit %d", out, code)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("exec with a background process took %v", took)
	}
	// Nor does one that keeps writing.
	if _, code := run(t, d, "bg", "sh", "-c", "yes & sleep 0.2"); code != 0 {
		t.Errorf("background writer: exit %d", code)
	}
	run(t, d, "bg", "killall", "yes")
	// Cancelling kills a process that keeps writing.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var out countWriter
	began = time.Now()
	_, err := d.Exec(ctx, "bg", &driver.Process{Args: []string{"yes"}, Stdout: &out})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled exec: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("cancelled exec took %v", took)
	}
	if out.n.Load() == 0 {
		t.Error("yes wrote nothing before the cancel")
	}
	if ps, _ := run(t, d, "bg", "ps"); strings.Contains(ps, " yes") {
		t.Errorf("yes survived the cancel:\n%s", ps)
	}
	// Exit codes.
	for args, want := range map[string]int{"true": 0, "false": 1, "/no/such": 127, "sh -c 'kill -9 $$'": 137} {
		if _, code := run(t, d, "bg", "sh", "-c", args); code != want {
			t.Errorf("%s exited %d, want %d", args, code, want)
		}
	}
}

type countWriter struct{ n atomic.Int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestExecNoFDLeak(t *testing.T) {
	d := openTest(t)
	create(t, d, "fds", nil)
	start(t, d, "fds")
	execs := func(n int) {
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				ctx := context.Background()
				var out bytes.Buffer
				p := &driver.Process{Args: []string{"cat"}, Stdin: strings.NewReader("x"), Stdout: &out, Stderr: &out}
				switch i % 4 {
				case 1:
					p = &driver.Process{Args: []string{"/no/such"}}
				case 2:
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, 50*time.Millisecond)
					defer cancel()
					p = &driver.Process{Args: []string{"sleep", "10"}, Stdout: &out}
				case 3:
					p = &driver.Process{Args: []string{"sh", "-c", "echo out; echo err >&2"}, Stdout: &out}
				}
				d.Exec(ctx, "fds", p)
			})
		}
		wg.Wait()
	}
	execs(4) // warm up: the runtime's poller opens its descriptors once
	before := openFDs(t)
	execs(60)
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before 60 execs, %d after", before, after)
	}
}

func TestImportLeavesNothing(t *testing.T) {
	d := openTest(t)
	ctx := testCtx(t)
	create(t, d, "src", nil)
	var buf bytes.Buffer
	if err := d.Export(ctx, "src", &buf); err != nil {
		t.Fatal(err)
	}
	before := lxcpathEntries(t, d)
	archive := buf.Bytes()
	for _, cut := range []int{len(archive) / 2, len(archive) - 1, 10} {
		if _, err := d.Import(ctx, bytes.NewReader(archive[:cut]), "cut"); err == nil {
			t.Errorf("importing %d of %d bytes succeeded", cut, len(archive))
		}
	}
	// A well-formed archive whose spec is invalid.
	var bad bytes.Buffer
	if err := image.WriteArchive(ctx, &bad, d.path("src", "rootfs"), []byte(`{"name":"Bad\nlxc.init.cmd = /x","image":"base"}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Import(ctx, &bad, ""); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("import of an invalid spec: %v", err)
	}
	if _, err := d.Import(ctx, bytes.NewReader(archive), ""); !errors.Is(err, errcode.AlreadyExists) {
		t.Errorf("import over an existing container: %v", err)
	}
	if after := lxcpathEntries(t, d); !slices.Equal(before, after) {
		t.Errorf("failed imports left %v (before %v)", after, before)
	}
}

func TestOpenSweepsStaging(t *testing.T) {
	d := openTest(t)
	left := filepath.Join(d.lxcpath, stagingPrefix+"crashed", "rootfs", "etc")
	if err := os.MkdirAll(left, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(testCtx(t), filepath.Dir(d.lxcpath), nil); err != nil {
		t.Fatal(err)
	}
	if entries := lxcpathEntries(t, d); len(entries) != 0 {
		t.Errorf("lxcpath after Open: %v", entries)
	}
}

// TestDestroyEndsOrphanedContainers throws away the state of a server
// whose driver is gone while a container runs: the container's init dies
// and the directory goes.
func TestDestroyEndsOrphanedContainers(t *testing.T) {
	d := openTest(t)
	create(t, d, "orphan", nil)
	start(t, d, "orphan")
	info, err := d.Get(testCtx(t), "orphan")
	if err != nil || info.PID <= 0 {
		t.Fatalf("Get: %+v, %v", info, err)
	}
	dir := filepath.Dir(d.lxcpath)
	if err := Destroy(dir); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(info.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the container's init %d still runs: %v", info.PID, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the state directory is still there: %v", err)
	}
	os.MkdirAll(d.lxcpath, 0o700) // an empty server for openTest's cleanup
}

// TestServersShareMachine runs a container of the same name on two
// servers of one machine at once.
func TestServersShareMachine(t *testing.T) {
	d1, d2 := openTest(t), openTest(t)
	br := testBridge(t)
	pids := map[int]bool{}
	for _, d := range []*Driver{d1, d2} {
		create(t, d, "web", func(s *driver.Spec) { s.Networks = []driver.Network{{Bridge: br}} })
		start(t, d, "web")
		info, err := d.Get(testCtx(t), "web")
		if err != nil || info.State != driver.Running {
			t.Fatalf("Get: %+v, %v", info, err)
		}
		pids[info.PID] = true
	}
	if len(pids) != 2 {
		t.Errorf("both containers have PID %v", pids)
	}
	for _, d := range []*Driver{d1, d2} {
		if err := d.Stop(testCtx(t), "web", 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServerNamespace runs the driver in a simulated server's network
// namespace, as the agent runs: in a process started with
// nsenter --net=/run/netns/<server>, which keeps the mount namespace and so
// the cgroup filesystems. The container's veth and bridge live in the
// server's namespace, and so does LXC's command socket: from the root
// namespace LXC sees the running container stopped, and the driver, which
// recorded its init, refuses to start, stop or delete it.
func TestServerNamespace(t *testing.T) {
	roottest.Require(t, roottest.Binary("nsenter"))
	d := openTest(t)
	h := testhost.New(t, 1).Hosts[0]
	hh, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	gw := netip.MustParsePrefix(nsGateway)
	if err := hh.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := hh.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	inServer := func(op string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+h.Netns, os.Args[0])
		cmd.Env = append(os.Environ(), "MUSTER_LXC_CHILD_DIR="+filepath.Dir(d.lxcpath), "MUSTER_LXC_CHILD_OP="+op)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s in the server's namespace: %v\n%s", op, err, out)
		}
	}
	if _, err := d.Create(ctx, &driver.Spec{Name: "other", Image: baseImage, Networks: []driver.Network{{Bridge: "br0"}}}); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("Create from the root namespace, where br0 is unknown: %v", err)
	}
	t.Cleanup(func() { inServer("stop") }) // before openTest's cleanup, which cannot stop it
	inServer("start")
	// From the root namespace LXC says stopped; the driver knows better.
	c, err := golxc.NewContainer("inns", d.lxcpath)
	if err != nil {
		t.Fatal(err)
	}
	if st := c.State(); st != golxc.STOPPED {
		t.Errorf("LXC from the root namespace: %s", st)
	}
	c.Release()
	if info, err := d.Get(ctx, "inns"); err != nil || info.State != driver.Running || info.PID == 0 {
		t.Errorf("Get from the root namespace: %+v, %v; want running with its PID", info, err)
	}
	for op, err := range map[string]error{
		"Start":  d.Start(ctx, "inns"),
		"Delete": d.Delete(ctx, "inns"),
		"Stop":   d.Stop(ctx, "inns", 0),
	} {
		if !errors.Is(err, errcode.FailedPrecondition) {
			t.Errorf("%s from the root namespace: %v, want code %v", op, err, errcode.FailedPrecondition)
		}
	}
	addr := netip.PrefixFrom(gw.Addr().Next(), gw.Bits())
	if out, err := h.Command(ctx, "busybox", "ping", "-c", "1", "-W", "3", addr.Addr().String()).CombinedOutput(); err != nil {
		t.Errorf("ping from the server to its container: %v\n%s", err, out)
	}
}

// nsGateway is the address of the server's bridge in TestServerNamespace.
const nsGateway = "198.19.253.1/24"

// TestMain runs serverChild instead of the tests in TestServerNamespace's
// driver process.
func TestMain(m *testing.M) {
	if op := os.Getenv("MUSTER_LXC_CHILD_OP"); op != "" {
		if err := serverChild(op, os.Getenv("MUSTER_LXC_CHILD_DIR")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serverChild starts (with a pids limit, an address and a gateway, which
// it pings) or stops and deletes the container of TestServerNamespace.
func serverChild(op, dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Open(ctx, dir, nil)
	if err != nil {
		return err
	}
	gw := netip.MustParsePrefix(nsGateway)
	addr := netip.PrefixFrom(gw.Addr().Next(), gw.Bits())
	switch op {
	case "start":
		spec := &driver.Spec{Name: "inns", Image: baseImage, Limits: driver.Limits{Pids: 64},
			Networks: []driver.Network{{Bridge: "br0", Address: addr, Gateway: gw.Addr()}}}
		if _, err := d.Create(ctx, spec); err != nil {
			return err
		}
		if err := d.Start(ctx, "inns"); err != nil {
			return err
		}
		info, err := d.Get(ctx, "inns")
		if err != nil || info.State != driver.Running || !slices.Contains(info.Addresses, addr.Addr()) {
			return fmt.Errorf("Get in the server's namespace: %+v, %v", info, err)
		}
		var out bytes.Buffer
		code, err := d.Exec(ctx, "inns", &driver.Process{Args: []string{"ping", "-c", "1", "-W", "3", gw.Addr().String()}, Stdout: &out, Stderr: &out})
		if err != nil || code != 0 {
			return fmt.Errorf("ping from the container to the server: exit %d, %v\n%s", code, err, out.String())
		}
	case "stop":
		if err := d.Stop(ctx, "inns", 0); err != nil && !errors.Is(err, errcode.NotFound) {
			return err
		}
		if err := d.Delete(ctx, "inns"); err != nil && !errors.Is(err, errcode.NotFound) {
			return err
		}
	}
	return nil
}
