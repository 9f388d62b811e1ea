package moosefs_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/moosefs"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/drivertest"
	"github.com/musterkit/muster/testhost"
)

func requireRoot(t testing.TB) {
	roottest.Require(t, roottest.BinaryFrom("mfsmaster", "moosefs-master"), roottest.BinaryFrom("mfschunkserver", "moosefs-chunkserver"),
		roottest.BinaryFrom("mfsmount", "moosefs-client"), roottest.BinaryFrom("nsenter", "util-linux"), roottest.Kernel(roottest.FUSE))
}

// server is a simulated server with a directory for its drivers.
type server struct {
	host *testhost.Host
	base string
}

// servers builds n simulated servers; at the test's end every MooseFS
// mount under their directories is ended (Close leaves them) and their
// mfsmount processes are gone.
func servers(t testing.TB, n int) []server {
	t.Helper()
	requireRoot(t)
	c := testhost.New(t, n)
	base, err := os.MkdirTemp("", "mmfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmountUnder(t, base)
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("removing %s: %v", base, err)
		}
	})
	var out []server
	for _, h := range c.Hosts {
		out = append(out, server{host: h, base: filepath.Join(base, h.Name)})
	}
	return out
}

// open opens s's driver for pool; the test's end closes it.
func (s server) open(t testing.TB, pool string) *moosefs.Driver {
	t.Helper()
	d, err := moosefs.Open(t.Context(), filepath.Join(s.base, pool), &moosefs.Options{NetNS: "/run/netns/" + s.host.Netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// unmountUnder detaches every mount under base (what Close leaves) and
// waits until the mfsmount processes serving them have exited; those
// that linger, trying to tell a stopped master that their session ended,
// are killed by pid after a few seconds.
func unmountUnder(t testing.TB, base string) {
	for _, m := range mountsUnder(base) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m, err)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		pids := mfsmounts(base)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Logf("mfsmount processes %v of mounts whose master had stopped were killed", pids)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mountsUnder(base string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && strings.HasPrefix(fs[4], base+"/") {
			out = append([]string{fs[4]}, out...)
		}
	}
	return out
}

// mfsmounts returns the pids of live mfsmount processes mounted under
// base (mfsmount names its mount point in its command line).
func mfsmounts(base string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if bytes.HasPrefix(cmd, []byte("mfsmount")) && bytes.Contains(cmd, []byte(base+"/")) && !bytes.Contains(stat, []byte(") Z ")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestConformance(t *testing.T) {
	requireRoot(t)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Layout:  driver.Layout{Kind: driver.Replicate, Copies: 2},
		Members: 2,
		Servers: func(t *testing.T, n int) []drivertest.Server {
			var out []drivertest.Server
			for _, s := range servers(t, n) {
				out = append(out, drivertest.Server{Name: s.host.Name, Addr: s.host.Addr,
					Open: func(t *testing.T, pool string) driver.Driver { return s.open(t, pool) }})
			}
			return out
		},
	})
}

// pool is a pool over the first members of srvs.
func pool(srvs []server, members int, layout driver.Layout) driver.Pool {
	p := driver.Pool{Name: "tank", Layout: layout}
	for _, s := range srvs[:members] {
		p.Members = append(p.Members, driver.Member{Server: s.host.Name, Addr: s.host.Addr})
	}
	return p
}

// apply applies cfgs in the order a pool forms: the members but the
// coordinator (without their mounts, which need the master), the
// coordinator, then the members' mounts and the clients.
func apply(t testing.TB, ds []*moosefs.Driver, cfgs []*driver.Config, members int) {
	t.Helper()
	do := func(i int, cfg *driver.Config) {
		t.Helper()
		if err := ds[i].Apply(t.Context(), cfg); err != nil {
			t.Fatalf("Apply on server %d: %v", i, err)
		}
	}
	for i := 1; i < members; i++ {
		bare := *cfgs[i]
		bare.Mounts = nil
		if old, _ := ds[i].Config(t.Context()); old != nil {
			bare.Mounts = old.Mounts
		}
		do(i, &bare)
	}
	do(0, cfgs[0])
	for i := 1; i < len(ds); i++ {
		do(i, cfgs[i])
	}
}

func configs(srvs []server, p driver.Pool, vols []driver.Volume, mounts map[int][]driver.Mount) []*driver.Config {
	var out []*driver.Config
	for i, s := range srvs {
		out = append(out, &driver.Config{Pool: p, Self: s.host.Name, Volumes: vols, Mounts: mounts[i]})
	}
	return out
}

func randomFile(t *testing.T, path string, n int) [32]byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestCrossServer: a file written through one server's mount reads
// byte-identical through the mounts of another member and a client, in a
// distributed pool of three.
func TestCrossServer(t *testing.T) {
	srvs := servers(t, 4)
	var ds []*moosefs.Driver
	for _, s := range srvs {
		ds = append(ds, s.open(t, "tank"))
	}
	p := pool(srvs, 3, driver.Layout{Kind: driver.Distribute})
	all := map[int][]driver.Mount{}
	for i := range srvs {
		all[i] = []driver.Mount{{Volume: "data"}}
	}
	apply(t, ds, configs(srvs, p, []driver.Volume{{Name: "data"}}, all), 3)
	want := randomFile(t, filepath.Join(ds[1].MountPath("data"), "blob"), 48<<20)
	for _, i := range []int{0, 2, 3} {
		if got := sum(t, filepath.Join(ds[i].MountPath("data"), "blob")); got != want {
			t.Fatalf("server %d reads sha256 %x, want %x", i, got, want)
		}
	}
	st, err := ds[0].Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if !m.Up || m.CapacityBytes == 0 {
			t.Errorf("member %+v", m)
		}
	}
	if v := st.Volumes[0]; v.Health != driver.Healthy || v.UsedBytes != 48<<20 || v.Source != srvs[0].host.Addr.String()+":9421:/data" {
		t.Errorf("volume %+v", v)
	}
}

// waitHealth polls the coordinator's status of volume 0 until it is h.
func waitHealth(t *testing.T, d *moosefs.Driver, h driver.Health, within time.Duration) driver.VolumeStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := d.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if st.Volumes[0].Health == h || time.Now().After(deadline) {
			if st.Volumes[0].Health != h {
				t.Fatalf("volume %+v, members %+v; want %s within %v", st.Volumes[0], st.Members, h, within)
			}
			return st.Volumes[0]
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestChunkServerLoss: with goal 2 over two members, a file stays
// readable while one member's chunk server is stopped; the volume is
// degraded with pending chunks meanwhile, and healthy once it returns.
func TestChunkServerLoss(t *testing.T) {
	srvs := servers(t, 2)
	ds := []*moosefs.Driver{srvs[0].open(t, "tank"), srvs[1].open(t, "tank")}
	p := pool(srvs, 2, driver.Layout{Kind: driver.Distribute})
	cfgs := configs(srvs, p, []driver.Volume{{Name: "data", Copies: 2}}, map[int][]driver.Mount{0: {{Volume: "data"}}})
	apply(t, ds, cfgs, 2)
	path := filepath.Join(ds[0].MountPath("data"), "blob")
	want := randomFile(t, path, 70<<20) // two chunks
	waitHealth(t, ds[0], driver.Healthy, 10*time.Second)

	if err := ds[1].Close(); err != nil { // stops h1's chunk server
		t.Fatal(err)
	}
	v := waitHealth(t, ds[0], driver.Degraded, 20*time.Second)
	if v.Pending != 2 {
		t.Errorf("pending %d, want the file's 2 chunks", v.Pending)
	}
	st, _ := ds[0].Status(t.Context())
	if st.Members[1].Up {
		t.Errorf("members %+v: h1 up with its chunk server stopped", st.Members)
	}
	if got := sum(t, path); got != want {
		t.Fatal("the file reads differently with one copy")
	}
	ds[1] = srvs[1].open(t, "tank")
	if err := ds[1].Apply(t.Context(), cfgs[1]); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, ds[0], driver.Healthy, 20*time.Second)
	if got := sum(t, path); got != want {
		t.Fatal("the file reads differently after the return")
	}
}

// TestRestartAdoptsMounts: Close then Open on the same directories and
// the same Apply: the daemons run again, the mounts are the same ones
// (the same mfsmount processes: a container's bind mount stays valid),
// and the data is intact.
func TestRestartAdoptsMounts(t *testing.T) {
	srvs := servers(t, 3)
	ds := []*moosefs.Driver{srvs[0].open(t, "tank"), srvs[1].open(t, "tank"), srvs[2].open(t, "tank")}
	p := pool(srvs, 2, driver.Layout{Kind: driver.Replicate, Copies: 2})
	cfgs := configs(srvs, p, []driver.Volume{{Name: "data"}, {Name: "logs", QuotaBytes: 8 << 20}},
		map[int][]driver.Mount{0: {{Volume: "data"}}, 2: {{Volume: "data", ReadOnly: true}, {Volume: "logs"}}})
	apply(t, ds, cfgs, 2)
	want := randomFile(t, filepath.Join(ds[0].MountPath("data"), "kept"), 5<<20)
	before := mfsmounts(srvs[2].base)
	pid := ds[0].ChunkServerPid()
	for _, d := range ds {
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if ds[0].ChunkServerPid() != 0 {
		t.Fatal("Close left the chunk server running")
	}
	if got := mfsmounts(srvs[2].base); len(got) != 2 || len(before) != 2 {
		t.Fatalf("mfsmount processes %v before Close, %v after; want the 2 client mounts to stay", before, got)
	}
	for i, s := range srvs {
		ds[i] = s.open(t, "tank")
	}
	apply(t, ds, cfgs, 2)
	if ds[0].ChunkServerPid() == 0 || ds[0].ChunkServerPid() == pid {
		t.Fatal("no new chunk server after the restart")
	}
	if got := mfsmounts(srvs[2].base); !equalSets(got, before) {
		t.Fatalf("mfsmount processes %v after the restart, %v before: want them adopted", got, before)
	}
	if got := sum(t, filepath.Join(ds[2].MountPath("data"), "kept")); got != want {
		t.Fatal("data differs after the restart")
	}
	st, err := ds[2].Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Mounts {
		if !m.Healthy {
			t.Errorf("mount %+v after the restart", m)
		}
	}
	// An equal Apply changes nothing, and the quota still holds.
	apply(t, ds, cfgs, 2)
	err = os.WriteFile(filepath.Join(ds[2].MountPath("logs"), "big"), make([]byte, 16<<20), 0o644)
	if !errors.Is(err, syscall.EDQUOT) || errcode.Of(errcode.Syscall(err, "write")) == errcode.Unknown {
		t.Fatalf("writing 16 MiB into an 8 MiB quota: %v; want EDQUOT", err)
	}
}

func equalSets(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[int]bool{}
	for _, x := range a {
		m[x] = true
	}
	for _, x := range b {
		if !m[x] {
			return false
		}
	}
	return true
}

// TestRefusals: removing a mounted or non-empty volume without Force is
// refused and destroys nothing; a rw mount of a volume whose export does
// not admit the client fails with nothing half-made; Apply on a server
// that never joined creates nothing when it fails.
func TestRefusals(t *testing.T) {
	srvs := servers(t, 2)
	ds := []*moosefs.Driver{srvs[0].open(t, "tank"), srvs[1].open(t, "tank")}
	p := pool(srvs, 1, driver.Layout{Kind: driver.Distribute})
	shut := []driver.Export{{Clients: []netip.Prefix{netip.PrefixFrom(srvs[0].host.Addr, 32)}, Access: driver.ReadWrite}}
	vols := []driver.Volume{{Name: "data"}, {Name: "shut", Exports: shut}}
	cfgs := configs(srvs, p, vols, map[int][]driver.Mount{0: {{Volume: "data"}}, 1: {{Volume: "data"}}})
	apply(t, ds, cfgs, 1)
	want := randomFile(t, filepath.Join(ds[1].MountPath("data"), "f"), 1<<20)

	err := ds[0].RemoveVolume(t.Context(), "data", nil)
	if errcode.Of(err) != errcode.FailedPrecondition || !strings.Contains(err.Error(), "mounted") {
		t.Fatalf("RemoveVolume of a mounted volume = %v", err)
	}
	for i := range cfgs {
		cfgs[i].Mounts = nil
	}
	apply(t, ds, cfgs, 1)
	err = ds[0].RemoveVolume(t.Context(), "data", nil)
	if errcode.Of(err) != errcode.FailedPrecondition || !strings.Contains(err.Error(), "holds") {
		t.Fatalf("RemoveVolume of a non-empty volume = %v", err)
	}
	cfgs[1].Mounts = []driver.Mount{{Volume: "data"}}
	apply(t, ds, cfgs, 1)
	if got := sum(t, filepath.Join(ds[1].MountPath("data"), "f")); got != want {
		t.Fatal("the refused removals changed the data")
	}

	// h1 is no client of "shut": its mount is refused, and its "data"
	// mount stays as it was.
	bad := *cfgs[1]
	bad.Mounts = append(bad.Mounts, driver.Mount{Volume: "shut"})
	err = ds[1].Apply(t.Context(), &bad)
	if errcode.Of(err) != errcode.PermissionDenied {
		t.Fatalf("mounting a volume not exported to the client = %v", err)
	}
	if _, err := os.Stat(ds[1].MountPath("shut")); err == nil {
		t.Error("the refused mount left its mount point")
	}
	if cfg, _ := ds[1].Config(t.Context()); len(cfg.Mounts) != 1 {
		t.Errorf("config after a refused Apply: %+v", cfg.Mounts)
	}
	if got := sum(t, filepath.Join(ds[1].MountPath("data"), "f")); got != want {
		t.Fatal("the refused Apply changed the data")
	}

	// A fresh driver whose first Apply fails (a member that never
	// connects) leaves no daemon and no master state behind.
	cfg := &driver.Config{Pool: driver.Pool{Name: "lone", Layout: driver.Layout{Kind: driver.Distribute}, Members: []driver.Member{
		{Server: srvs[1].host.Name, Addr: srvs[1].host.Addr}, {Server: "ghost", Addr: netip.MustParseAddr("198.51.100.7")}}},
		Self: srvs[1].host.Name}
	lone2, err := moosefs.Open(t.Context(), filepath.Join(srvs[1].base, "lone"), &moosefs.Options{NetNS: "/run/netns/" + srvs[1].host.Netns, JoinTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lone2.Close() })
	err = lone2.Apply(t.Context(), cfg)
	if errcode.Of(err) != errcode.Unavailable {
		t.Fatalf("Apply with a member that never connects = %v", err)
	}
	if lone2.ChunkServerPid() != 0 {
		t.Error("the failed Apply left a chunk server")
	}
	if _, err := os.Stat(filepath.Join(lone2.Dir(), "master", "data", "metadata.mfs")); err == nil {
		t.Error("the failed Apply left the master's metadata")
	}
	if c, _ := lone2.Config(t.Context()); c != nil {
		t.Error("the failed Apply is in force")
	}
}
