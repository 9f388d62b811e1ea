package testhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/roottest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// serve accepts connections on l and writes msg to each, until l is closed.
func serve(t *testing.T, l net.Listener, msg string) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, msg)
			c.Close()
		}
	}()
}

// fetch dials addr and returns what the server sent.
func fetch(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestHostsReachEachOther(t *testing.T) {
	c := New(t, 3)
	if len(c.Hosts) != 3 {
		t.Fatalf("got %d hosts, want 3", len(c.Hosts))
	}
	addrs := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		if want := nthAddr(c.Subnet, i+1); h.Addr != want || !c.Subnet.Contains(h.Addr) {
			t.Errorf("%s: address %s, want %s", h.Name, h.Addr, want)
		}
		l, err := h.Listen("tcp", netip.AddrPortFrom(h.Addr, 0).String())
		if err != nil {
			t.Fatalf("%s: listen: %v", h.Name, err)
		}
		serve(t, l, h.Name)
		addrs[i] = l.Addr().String()
	}
	for _, from := range c.Hosts {
		for j, to := range c.Hosts {
			var got string
			err := from.Do(func() error {
				var err error
				got, err = fetch(addrs[j])
				return err
			})
			if err != nil || got != to.Name {
				t.Errorf("%s -> %s (%s): got %q, %v", from.Name, to.Name, addrs[j], got, err)
			}
		}
	}
}

func TestRootReachesHosts(t *testing.T) {
	c := New(t, 2)
	if c.RootAddr != nthAddr(c.Subnet, 254) {
		t.Errorf("RootAddr %s, want .254 of %s", c.RootAddr, c.Subnet)
	}
	for _, h := range c.Hosts {
		l, err := h.Listen("tcp", netip.AddrPortFrom(h.Addr, 0).String())
		if err != nil {
			t.Fatalf("%s: listen: %v", h.Name, err)
		}
		serve(t, l, h.Name)
		if got, err := fetch(l.Addr().String()); err != nil || got != h.Name {
			t.Errorf("root -> %s: got %q, %v", h.Name, got, err)
		}
	}
}

func TestCommandAndPing(t *testing.T) {
	c := New(t, 2)
	roottest.Require(t, roottest.Binary("busybox"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h0, h1 := c.Hosts[0], c.Hosts[1]
	out, err := h0.Command(ctx, "ip", "-4", "-o", "addr", "show", "dev", h0.Link).CombinedOutput()
	if err != nil || !strings.Contains(string(out), h0.Addr.String()+"/24") {
		t.Errorf("ip addr in %s: %v: %s", h0.Netns, err, out)
	}
	out, err = h0.Command(ctx, "busybox", "ping", "-c1", "-W1", h1.Addr.String()).CombinedOutput()
	if err != nil {
		t.Errorf("ping %s from %s: %v: %s", h1.Addr, h0.Name, err, out)
	}
}

func TestNoDefaultRoute(t *testing.T) {
	c := New(t, 2)
	isDefault := func(r netlink.Route) bool {
		if r.Dst == nil {
			return true
		}
		ones, _ := r.Dst.Mask.Size()
		return ones == 0
	}
	for _, h := range c.Hosts {
		nh, err := h.Handle()
		if err != nil {
			t.Fatal(err)
		}
		routes, err := nh.RouteList(nil, netlink.FAMILY_ALL)
		nh.Close()
		if err != nil {
			t.Fatal(err)
		}
		connected := false
		for _, r := range routes {
			if isDefault(r) {
				t.Errorf("%s has a default route: %v", h.Name, r)
			}
			if r.Dst != nil && r.Dst.String() == c.Subnet.String() {
				connected = true
			}
		}
		if !connected {
			t.Errorf("%s lacks the connected route to %s: %v", h.Name, c.Subnet, routes)
		}
	}
	// The root namespace's link carries only the connected /24.
	l, err := netlink.LinkByName(c.Name)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Dst == nil || routes[0].Dst.String() != c.Subnet.String() {
		t.Errorf("root link %s routes: %v, want only %s", c.Name, routes, c.Subnet)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestCloseRemovesEverything(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("ip", "iproute2"))
	c, err := Build(context.Background(), 2, &Options{MTU: 9000})
	if err != nil {
		t.Fatal(err)
	}
	lock := c.lock.Name()
	nss := append([]string(nil), c.namespaces...)
	if len(nss) != 3 {
		t.Errorf("namespaces %v, want switch and 2 hosts", nss)
	}
	for _, ns := range nss {
		if !exists(filepath.Join(netnsDir, ns)) {
			t.Errorf("namespace %s missing while the cluster is open", ns)
		}
	}
	if l, err := netlink.LinkByName(c.Name); err != nil {
		t.Errorf("root link %s: %v", c.Name, err)
	} else if l.Attrs().MTU != 9000 {
		t.Errorf("root link MTU %d, want 9000", l.Attrs().MTU)
	}
	if !exists(lock) {
		t.Errorf("lock file %s missing while the cluster is open", lock)
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, ns := range nss {
		if exists(filepath.Join(netnsDir, ns)) {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
	if _, err := netlink.LinkByName(c.Name); !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Errorf("root link %s after Close: %v, want not found", c.Name, err)
	}
	if exists(lock) {
		t.Errorf("lock file %s left after Close", lock)
	}
	if err := c.Hosts[0].Do(func() error { return nil }); err == nil {
		t.Error("Do after Close succeeded")
	}
}

func TestBuildRejectsBadSize(t *testing.T) {
	for _, n := range []int{0, -1, 254} {
		if c, err := Build(context.Background(), n, nil); err == nil {
			c.Close()
			t.Errorf("Build(%d) succeeded", n)
		}
	}
}

// deadPid returns the pid of a process that has exited.
func deadPid(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if alive(pid) {
		t.Fatalf("pid %d of an exited process is alive", pid)
	}
	return pid
}

func TestSweep(t *testing.T) {
	New(t, 1) // gate, and a live cluster Sweep must leave alone
	ctx := context.Background()
	addNetns := func(name string) {
		t.Helper()
		if err := ipNetns(ctx, "add", name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if exists(filepath.Join(netnsDir, name)) {
				ipNetns(ctx, "delete", name)
			}
		})
	}

	// Leftovers of a killed run: a namespace, a root link into it, a lock file.
	dead := fmt.Sprintf("%s%dc0", Prefix, deadPid(t))
	addNetns(dead + "sw")
	out, err := exec.Command("ip", "link", "add", dead, "type", "veth", "peer", "name", "root", "netns", dead+"sw").CombinedOutput()
	if err != nil {
		t.Fatalf("adding leftover link: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(dead); err == nil {
			netlink.LinkDel(l)
		}
	})
	staleLock := lockPath(numSubnet - 1)
	if !exists(staleLock) {
		if err := os.WriteFile(staleLock, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Things of a live process: this one's.
	live := fmt.Sprintf("%s%dc%dsw", Prefix, os.Getpid(), seq.Add(1)-1)
	addNetns(live)
	var heldLock *os.File
	for i := numSubnet - 2; heldLock == nil && i >= 0; i-- {
		if heldLock, err = tryLock(lockPath(i), true); err != nil {
			t.Fatal(err)
		}
	}
	if heldLock == nil {
		t.Fatal("no lock file free to hold")
	}
	defer releaseLock(heldLock)

	if err := Sweep(); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if exists(filepath.Join(netnsDir, dead+"sw")) {
		t.Errorf("dead namespace %s survived Sweep", dead+"sw")
	}
	if _, err := netlink.LinkByName(dead); err == nil {
		t.Errorf("dead root link %s survived Sweep", dead)
	}
	if exists(staleLock) {
		t.Errorf("unheld lock file %s survived Sweep", staleLock)
	}
	if !exists(filepath.Join(netnsDir, live)) {
		t.Errorf("live namespace %s removed by Sweep", live)
	}
	if !exists(heldLock.Name()) {
		t.Errorf("held lock file %s removed by Sweep", heldLock.Name())
	}
}

func TestTwoClusters(t *testing.T) {
	a, b := New(t, 1), New(t, 1)
	if a.Subnet == b.Subnet || a.Subnet.Overlaps(b.Subnet) {
		t.Fatalf("clusters share subnet %s / %s", a.Subnet, b.Subnet)
	}
	if a.Name == b.Name || a.Hosts[0].Netns == b.Hosts[0].Netns {
		t.Fatalf("clusters share names: %s %s", a.Name, b.Name)
	}
	for _, c := range []*Cluster{a, b} {
		if !underlay.Contains(c.Subnet.Addr()) || c.Subnet.Bits() != 24 {
			t.Errorf("subnet %s not a /24 of %s", c.Subnet, underlay)
		}
		h := c.Hosts[0]
		l, err := h.Listen("tcp", netip.AddrPortFrom(h.Addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		serve(t, l, c.Name)
		if got, err := fetch(l.Addr().String()); err != nil || got != c.Name {
			t.Errorf("root -> %s/%s: got %q, %v", c.Name, h.Name, got, err)
		}
	}
	// Hosts of different clusters do not reach each other.
	err := a.Hosts[0].Do(func() error {
		_, err := net.DialTimeout("tcp", netip.AddrPortFrom(b.Hosts[0].Addr, 9).String(), time.Second)
		return err
	})
	if err == nil {
		t.Error("a host reached another cluster")
	}
}

func TestNames(t *testing.T) {
	for name, want := range map[string]int{
		"mst123c0":          123,
		"mst123c0sw":        123,
		"mst4194304c17h252": 4194304,
	} {
		if pid, ok := ownerPid(name); !ok || pid != want {
			t.Errorf("ownerPid(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
	for _, name := range []string{"mstp0", "mst", "mst0c1", "mst12", "eth0", "xmst12c0"} {
		if pid, ok := ownerPid(name); ok {
			t.Errorf("ownerPid(%q) = %d, want not owned", name, pid)
		}
	}
	if got := subnet(0).String(); got != "198.18.0.0/24" {
		t.Errorf("subnet(0) = %s", got)
	}
	if got := subnet(257).String(); got != "198.19.1.0/24" {
		t.Errorf("subnet(257) = %s", got)
	}
	if got := subnet(numSubnet - 1); !underlay.Contains(got.Addr()) {
		t.Errorf("subnet(%d) = %s outside %s", numSubnet-1, got, underlay)
	}
}

// TestDoRestoresThread checks that Do runs fn in the host's namespace and hands
// back threads that are in the caller's namespace again.
func TestDoRestoresThread(t *testing.T) {
	c := New(t, 1)
	h := c.Hosts[0]
	inRoot := func() (bool, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cur, err := netns.Get()
		if err != nil {
			return false, err
		}
		defer cur.Close()
		return cur.Equal(rootNs), nil
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				err := h.Do(func() error {
					cur, err := netns.Get()
					if err != nil {
						return err
					}
					defer cur.Close()
					if !cur.Equal(h.ns) {
						return errors.New("fn does not run in the host's namespace")
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				if ok, err := inRoot(); err != nil || !ok {
					t.Errorf("thread left outside the root namespace after Do (err %v)", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := h.Do(func() error { return errSentinel }); err != errSentinel {
		t.Errorf("Do returned %v, want fn's error", err)
	}
}

var errSentinel = errors.New("sentinel")

var rootNs = func() netns.NsHandle {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return -1
	}
	return ns
}()

// TestBuildFailureCleansUp makes Build fail half-way (the second host's
// namespace name is taken) and checks it removed what it made and nothing else.
func TestBuildFailureCleansUp(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("ip", "iproute2"))
	ctx := context.Background()
	name := fmt.Sprintf("%s%dc%d", Prefix, os.Getpid(), seq.Load())
	taken := name + "h1"
	if err := ipNetns(ctx, "add", taken); err != nil {
		t.Fatal(err)
	}
	defer ipNetns(ctx, "delete", taken)
	locksBefore, _ := filepath.Glob(filepath.Join(lockDir, "subnet-*.lock"))

	c, err := Build(ctx, 2, nil)
	if err == nil {
		c.Close()
		t.Fatalf("Build succeeded though %s exists", taken)
	}
	for _, ns := range []string{name + "sw", name + "h0"} {
		if exists(filepath.Join(netnsDir, ns)) {
			t.Errorf("namespace %s left after failed Build", ns)
		}
	}
	if !exists(filepath.Join(netnsDir, taken)) {
		t.Errorf("failed Build removed %s, which it did not create", taken)
	}
	if _, err := netlink.LinkByName(name); err == nil {
		t.Errorf("root link %s left after failed Build", name)
	}
	// A new lock file that nobody holds is the failed Build's leftover.
	locksAfter, _ := filepath.Glob(filepath.Join(lockDir, "subnet-*.lock"))
	for _, path := range locksAfter {
		if slices.Contains(locksBefore, path) {
			continue
		}
		if f, _ := tryLock(path, false); f != nil {
			releaseLock(f)
			t.Errorf("lock file %s left after failed Build", path)
		}
	}
}

// TestCommandSeesHostLinksAndCgroups checks what LXC needs of a program
// started with Command: /sys/class/net shows the host's links, and every
// cgroup mount of the machine is there.
func TestCommandSeesHostLinksAndCgroups(t *testing.T) {
	c := New(t, 1)
	h := c.Hosts[0]
	out, err := h.Command(context.Background(), "ls", "/sys/class/net").Output()
	if err != nil {
		t.Fatal(err)
	}
	if links := strings.Fields(string(out)); !slices.Contains(links, "eth0") || slices.Contains(links, c.Name) {
		t.Fatalf("/sys/class/net in the host lists %v; want eth0 and not the root's %s", links, c.Name)
	}
	mounts, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	out, err = h.Command(context.Background(), "cat", "/proc/self/mountinfo").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if !strings.Contains(string(out), " "+m.Target+" ") {
			t.Errorf("cgroup mount %s is missing in the host's command", m.Target)
		}
	}
	if err := h.Command(context.Background(), "no-such-program-here").Run(); err == nil {
		t.Fatal("a missing program ran")
	}
}
