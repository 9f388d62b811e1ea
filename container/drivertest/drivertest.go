// Package drivertest is the conformance suite every container driver
// passes. A driver's tests call RunConformanceTests with a Harness that
// opens fresh servers; the suite drives them through container.Server, so
// it checks the portable type's validation too. The same test names run on
// every driver: memcontainer, drivers/lxc and the agent's remote driver.
package drivertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// Harness opens the servers the suite runs on.
type Harness struct {
	// Open returns a driver for a fresh server: no containers, and the
	// base image (image.BuildBase) in its store under the name Image. It
	// registers its own cleanup with t.Cleanup.
	Open func(t *testing.T) driver.Driver
	// Image names the base image in every fresh server's store.
	Image string
	// Bridge names a bridge that exists on the server, and Subnet a range
	// on it from which the suite gives containers static addresses.
	Bridge string
	Subnet netip.Prefix
	// MountSource is a directory of the server the suite may bind-mount
	// and write files in.
	MountSource string
	// ReportsUsage says the driver measures real memory use.
	ReportsUsage bool
}

// RunConformanceTests runs the suite as subtests of t.
func RunConformanceTests(t *testing.T, h Harness) {
	tests := []struct {
		name string
		run  func(*testing.T, *suite)
	}{
		{"CreateGetList", testCreateGetList},
		{"CreateRejects", testCreateRejects},
		{"Lifecycle", testLifecycle},
		{"Exec", testExec},
		{"ExecCancel", testExecCancel},
		{"Mounts", testMounts},
		{"NetworkAddress", testNetworkAddress},
		{"SnapshotRestoreClone", testSnapshotRestoreClone},
		{"ExportImport", testExportImport},
		{"Autostart", testAutostart},
		{"Images", testImages},
		{"HostInfo", testHostInfo},
		{"Concurrent", testConcurrent},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := h.Open(t)
			tt.run(t, &suite{h: h, d: d, srv: container.NewServer(d, nil)})
		})
	}
}

type suite struct {
	h   Harness
	d   driver.Driver
	srv *container.Server
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// create makes a container from the base image; a nil mutate takes the defaults.
func (s *suite) create(t *testing.T, name string, mutate func(*container.Spec)) *container.Info {
	t.Helper()
	spec := &container.Spec{Name: name, Image: s.h.Image, Labels: map[string]string{"app": name}}
	if mutate != nil {
		mutate(spec)
	}
	info, err := s.srv.Create(ctx(t), spec)
	if err != nil {
		t.Fatalf("Create(%s): %v", name, err)
	}
	t.Cleanup(func() {
		c := context.Background()
		s.srv.Stop(c, name, 5*time.Second)
		s.srv.Delete(c, name)
	})
	return info
}

func (s *suite) start(t *testing.T, name string) {
	t.Helper()
	if err := s.srv.Start(ctx(t), name); err != nil {
		t.Fatalf("Start(%s): %v", name, err)
	}
}

func (s *suite) stop(t *testing.T, name string) {
	t.Helper()
	if err := s.srv.Stop(ctx(t), name, 10*time.Second); err != nil {
		t.Fatalf("Stop(%s): %v", name, err)
	}
}

func (s *suite) state(t *testing.T, name string) container.State {
	t.Helper()
	info, err := s.srv.Get(ctx(t), name)
	if err != nil {
		t.Fatalf("Get(%s): %v", name, err)
	}
	return info.State
}

// run execs args with stdin and returns stdout, stderr and the exit code.
func (s *suite) run(t *testing.T, name, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code, err := s.srv.Exec(ctx(t), name, &container.Process{Args: args, Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatalf("Exec(%s, %q): %v", name, args, err)
	}
	return out.String(), errOut.String(), code
}

func (s *suite) names(t *testing.T) []string {
	t.Helper()
	infos, err := s.srv.List(ctx(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Spec.Name)
	}
	return names
}

func wantCode(t *testing.T, what string, err error, code errcode.Code) {
	t.Helper()
	if !errors.Is(err, code) {
		t.Fatalf("%s: got error %v (code %v), want code %v", what, err, errcode.Of(err), code)
	}
}

func testCreateGetList(t *testing.T, s *suite) {
	before := time.Now().Add(-time.Minute)
	info := s.create(t, "web", func(sp *container.Spec) {
		sp.Limits = container.Limits{MemoryBytes: 64 << 20, MilliCPU: 500, Pids: 100}
		sp.Labels = map[string]string{"tier": "front", "muster.dev/owner": "team-a"}
		sp.Autostart = true
	})
	if info.State != container.Stopped || info.PID != 0 {
		t.Fatalf("new container: state %s pid %d, want stopped and 0", info.State, info.PID)
	}
	if info.Created.Before(before) {
		t.Fatalf("Created = %v, want about now", info.Created)
	}
	s.create(t, "api", nil)
	got, err := s.srv.Get(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	sp := got.Spec
	if sp.Name != "web" || sp.Image != s.h.Image || sp.Limits.MemoryBytes != 64<<20 || sp.Limits.MilliCPU != 500 ||
		sp.Limits.Pids != 100 || sp.Labels["tier"] != "front" || sp.Labels["muster.dev/owner"] != "team-a" || !sp.Autostart {
		t.Fatalf("Get returned spec %+v, not what was created", sp)
	}
	if names := s.names(t); !slices.Equal(names, []string{"api", "web"}) {
		t.Fatalf("List = %v, want [api web]", names)
	}
}

func testCreateRejects(t *testing.T, s *suite) {
	c := ctx(t)
	s.create(t, "taken", nil)
	_, err := s.srv.Create(c, &container.Spec{Name: "taken", Image: s.h.Image})
	wantCode(t, "duplicate name", err, errcode.AlreadyExists)
	_, err = s.srv.Create(c, &container.Spec{Name: "ghost", Image: "no-such-image"})
	wantCode(t, "unknown image", err, errcode.NotFound)
	_, err = s.srv.Create(c, &container.Spec{Name: "nobridge", Image: s.h.Image,
		Networks: []container.Network{{Bridge: "mstnobr0"}}})
	wantCode(t, "unknown bridge", err, errcode.NotFound)
	for _, bad := range []*container.Spec{
		{Name: "Bad_Name", Image: s.h.Image},
		{Name: "../escape", Image: s.h.Image},
		{Name: "x\nlxc.init.cmd=/bin/evil", Image: s.h.Image},
		{Name: strings.Repeat("a", 64), Image: s.h.Image},
		{Name: "ok", Image: "../../etc/passwd"},
		{Name: "ok", Image: s.h.Image, Limits: container.Limits{MemoryBytes: -1}},
		{Name: "ok", Image: s.h.Image, Mounts: []container.Mount{{Source: "relative", Target: "/mnt"}}},
		{Name: "ok", Image: s.h.Image, Mounts: []container.Mount{{Source: "/tmp", Target: "/mnt/../../etc"}}},
		{Name: "ok", Image: s.h.Image, Mounts: []container.Mount{{Source: "/tmp\nlxc.x=y", Target: "/mnt"}}},
		{Name: "ok", Image: s.h.Image, Networks: []container.Network{{Bridge: "br0\nlxc.x"}}},
		{Name: "ok", Image: s.h.Image, Networks: []container.Network{{Bridge: "waytoolongbridgename"}}},
		{Name: "ok", Image: s.h.Image, Networks: []container.Network{{Bridge: "br0", MTU: 10}}},
		{Name: "ok", Image: s.h.Image, Labels: map[string]string{"a b": "c"}},
		{Name: "ok", Image: s.h.Image, Labels: map[string]string{"k": "v\n"}},
		{Name: "ok", Image: s.h.Image, Labels: map[string]string{strings.Repeat("k", 64): "v"}},
		{Name: "ok", Image: s.h.Image, Labels: manyLabels(driver.MaxLabels+1, "v")},
		{Name: "ok", Image: s.h.Image, Labels: manyLabels(driver.MaxLabels, strings.Repeat("v", 63))}, // 16 KiB of prefixed keys and values
	} {
		_, err := s.srv.Create(c, bad)
		wantCode(t, "invalid spec "+strings.ReplaceAll(bad.Name, "\n", `\n`), err, errcode.InvalidArgument)
	}
	if names := s.names(t); !slices.Equal(names, []string{"taken"}) {
		t.Fatalf("after rejected creates List = %v, want only [taken]", names)
	}
	wantCode(t, "start unknown", s.srv.Start(c, "ghost"), errcode.NotFound)
	wantCode(t, "delete unknown", s.srv.Delete(c, "ghost"), errcode.NotFound)
	_, err = s.srv.Get(c, "ghost")
	wantCode(t, "get unknown", err, errcode.NotFound)
	wantCode(t, "start invalid name", s.srv.Start(c, "a/b"), errcode.InvalidArgument)
}

func testLifecycle(t *testing.T, s *suite) {
	c := ctx(t)
	s.create(t, "life", nil)
	_, err := s.srv.Exec(c, "life", &container.Process{Args: []string{"true"}})
	wantCode(t, "exec in stopped container", err, errcode.FailedPrecondition)
	wantCode(t, "freeze stopped", s.srv.Freeze(c, "life"), errcode.FailedPrecondition)
	s.start(t, "life")
	info, err := s.srv.Get(c, "life")
	if err != nil || info.State != container.Running || info.PID <= 0 {
		t.Fatalf("after Start: %+v, %v; want running with a PID", info, err)
	}
	wantCode(t, "start running", s.srv.Start(c, "life"), errcode.FailedPrecondition)
	wantCode(t, "delete running", s.srv.Delete(c, "life"), errcode.FailedPrecondition)
	wantCode(t, "unfreeze running", s.srv.Unfreeze(c, "life"), errcode.FailedPrecondition)
	if err := s.srv.Freeze(c, "life"); err != nil {
		t.Fatal(err)
	}
	if st := s.state(t, "life"); st != container.Frozen {
		t.Fatalf("after Freeze state = %s", st)
	}
	_, err = s.srv.Exec(c, "life", &container.Process{Args: []string{"true"}})
	wantCode(t, "exec in frozen container", err, errcode.FailedPrecondition)
	if err := s.srv.Unfreeze(c, "life"); err != nil {
		t.Fatal(err)
	}
	if _, _, code := s.run(t, "life", "", "true"); code != 0 {
		t.Fatalf("true exited %d after unfreeze", code)
	}
	if err := s.srv.Restart(c, "life", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := s.state(t, "life"); st != container.Running {
		t.Fatalf("after Restart state = %s", st)
	}
	// A frozen container stops too.
	if err := s.srv.Freeze(c, "life"); err != nil {
		t.Fatal(err)
	}
	s.stop(t, "life")
	info, err = s.srv.Get(c, "life")
	if err != nil || info.State != container.Stopped || info.PID != 0 {
		t.Fatalf("after Stop: %+v, %v", info, err)
	}
	s.stop(t, "life") // stopping a stopped container is a no-op
	if err := s.srv.Delete(c, "life"); err != nil {
		t.Fatal(err)
	}
	_, err = s.srv.Get(c, "life")
	wantCode(t, "get deleted", err, errcode.NotFound)
}

func testExec(t *testing.T, s *suite) {
	s.create(t, "ex", nil)
	s.start(t, "ex")
	if out, _, code := s.run(t, "ex", "hello over stdin\n", "cat"); code != 0 || out != "hello over stdin\n" {
		t.Fatalf("cat: %q exit %d", out, code)
	}
	if out, _, _ := s.run(t, "ex", "", "cat", "/etc/hostname"); out != "ex\n" {
		t.Fatalf("/etc/hostname = %q, want the container's name", out)
	}
	out, errOut, code := s.run(t, "ex", "", "cat", "/no/such/file")
	if code != 1 || out != "" || !strings.Contains(errOut, "/no/such/file") {
		t.Fatalf("cat missing file: out %q err %q exit %d; want exit 1 and a message on stderr", out, errOut, code)
	}
	if _, _, code := s.run(t, "ex", "", "false"); code != 1 {
		t.Fatalf("false exited %d", code)
	}
	if _, _, code := s.run(t, "ex", "", "/no/such/program"); code != 127 {
		t.Fatalf("missing program exited %d, want 127", code)
	}
	var envOut bytes.Buffer
	code, err := s.srv.Exec(ctx(t), "ex", &container.Process{Args: []string{"env"}, Env: []string{"MUSTER_TEST=42"}, Stdout: &envOut})
	if err != nil || code != 0 || !strings.Contains(envOut.String(), "MUSTER_TEST=42\n") {
		t.Fatalf("env: %q exit %d err %v", envOut.String(), code, err)
	}
	var pwdOut bytes.Buffer
	if _, err := s.srv.Exec(ctx(t), "ex", &container.Process{Args: []string{"pwd"}, Dir: "/tmp", Stdout: &pwdOut}); err != nil || pwdOut.String() != "/tmp\n" {
		t.Fatalf("pwd in /tmp: %q %v", pwdOut.String(), err)
	}
	big := make([]byte, 4<<20)
	rand.Read(big)
	var bigOut bytes.Buffer
	if _, err := s.srv.Exec(ctx(t), "ex", &container.Process{Args: []string{"cat"}, Stdin: bytes.NewReader(big), Stdout: &bigOut}); err != nil || !bytes.Equal(bigOut.Bytes(), big) {
		t.Fatalf("4 MiB through cat: got %d bytes (equal %v), err %v", bigOut.Len(), bytes.Equal(bigOut.Bytes(), big), err)
	}
	_, err = s.srv.Exec(ctx(t), "ex", &container.Process{})
	wantCode(t, "exec without args", err, errcode.InvalidArgument)
}

func testExecCancel(t *testing.T, s *suite) {
	s.create(t, "sleeper", nil)
	s.start(t, "sleeper")
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := s.srv.Exec(c, "sleeper", &container.Process{Args: []string{"sleep", "30"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled exec returned %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Fatalf("cancelled exec took %v", d)
	}
	if _, _, code := s.run(t, "sleeper", "", "true"); code != 0 {
		t.Fatal("container unusable after a cancelled exec")
	}
}

func testMounts(t *testing.T, s *suite) {
	rw := filepath.Join(s.h.MountSource, "rw")
	ro := filepath.Join(s.h.MountSource, "ro")
	for _, dir := range []string{rw, ro} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(ro, "hello"), []byte("from the server\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.create(t, "mnt", func(sp *container.Spec) {
		sp.Mounts = []container.Mount{{Source: rw, Target: "/srv/rw"}, {Source: ro, Target: "/srv/ro", ReadOnly: true}}
	})
	s.start(t, "mnt")
	if out, _, code := s.run(t, "mnt", "", "cat", "/srv/ro/hello"); code != 0 || out != "from the server\n" {
		t.Fatalf("reading a bind mount: %q exit %d", out, code)
	}
	if _, _, code := s.run(t, "mnt", "data\n", "tee", "/srv/rw/written"); code != 0 {
		t.Fatalf("writing a read-write mount exited %d", code)
	}
	if got, err := os.ReadFile(filepath.Join(rw, "written")); err != nil || string(got) != "data\n" {
		t.Fatalf("file written in the container reads %q, %v on the server", got, err)
	}
	if _, _, code := s.run(t, "mnt", "x\n", "tee", "/srv/ro/evil"); code == 0 {
		t.Fatal("writing a read-only mount succeeded")
	}
	if _, err := os.Stat(filepath.Join(ro, "evil")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a read-only mount was written: %v", err)
	}
}

func testNetworkAddress(t *testing.T, s *suite) {
	addr := netip.PrefixFrom(s.h.Subnet.Addr().Next().Next(), s.h.Subnet.Bits())
	s.create(t, "net", func(sp *container.Spec) {
		sp.Networks = []container.Network{{Bridge: s.h.Bridge, Address: addr}}
	})
	s.start(t, "net")
	info, err := s.srv.Get(ctx(t), "net")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.Addresses, addr.Addr()) {
		t.Fatalf("running container's addresses %v lack %v", info.Addresses, addr.Addr())
	}
	if s.h.ReportsUsage && (info.Usage.MemoryBytes <= 0 || info.Usage.Pids < 1) {
		t.Fatalf("usage of a running container: %+v", info.Usage)
	}
}

func testSnapshotRestoreClone(t *testing.T, s *suite) {
	c := ctx(t)
	s.create(t, "snap", nil)
	s.start(t, "snap")
	s.run(t, "snap", "version one\n", "tee", "/root/state")
	wantCode(t, "snapshot running", s.srv.Snapshot(c, "snap", "s1"), errcode.FailedPrecondition)
	s.stop(t, "snap")
	if err := s.srv.Snapshot(c, "snap", "s1"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "duplicate snapshot", s.srv.Snapshot(c, "snap", "s1"), errcode.AlreadyExists)
	wantCode(t, "invalid snapshot name", s.srv.Snapshot(c, "snap", "../s"), errcode.InvalidArgument)
	snaps, err := s.srv.Snapshots(c, "snap")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("Snapshots = %v, %v", snaps, err)
	}
	s.start(t, "snap")
	s.run(t, "snap", "version two\n", "tee", "/root/state")
	s.stop(t, "snap")
	if err := s.srv.Restore(c, "snap", "s1"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "restore unknown snapshot", s.srv.Restore(c, "snap", "nope"), errcode.NotFound)
	if _, err := s.srv.Clone(c, "snap", "copy"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.srv.Stop(context.Background(), "copy", time.Second)
		s.srv.Delete(context.Background(), "copy")
	})
	_, err = s.srv.Clone(c, "snap", "copy")
	wantCode(t, "clone onto existing", err, errcode.AlreadyExists)
	for _, name := range []string{"snap", "copy"} {
		s.start(t, name)
		if out, _, _ := s.run(t, name, "", "cat", "/root/state"); out != "version one\n" {
			t.Fatalf("%s: /root/state = %q, want the snapshot's content", name, out)
		}
	}
	if out, _, _ := s.run(t, "copy", "", "cat", "/etc/hostname"); out != "copy\n" {
		t.Fatalf("clone's hostname file = %q", out)
	}
}

func testExportImport(t *testing.T, s *suite) {
	c := ctx(t)
	s.create(t, "mover", func(sp *container.Spec) { sp.Limits.Pids = 64 })
	s.start(t, "mover")
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	s.run(t, "mover", string(payload), "tee", "/root/payload")
	var buf bytes.Buffer
	wantCode(t, "export running", s.srv.Export(c, "mover", &buf), errcode.FailedPrecondition)
	s.stop(t, "mover")
	buf.Reset()
	if err := s.srv.Export(c, "mover", &buf); err != nil {
		t.Fatal(err)
	}
	archive := buf.Bytes()
	_, err := s.srv.Import(c, bytes.NewReader(archive), "")
	wantCode(t, "import over existing", err, errcode.AlreadyExists)
	_, err = s.srv.Import(c, bytes.NewReader(archive[:len(archive)/2]), "half")
	if err == nil {
		t.Fatal("importing a truncated archive succeeded")
	}
	_, err = s.srv.Import(c, bytes.NewReader([]byte("not an archive at all")), "junk")
	wantCode(t, "import garbage", err, errcode.InvalidArgument)
	if names := s.names(t); !slices.Equal(names, []string{"mover"}) {
		t.Fatalf("failed imports left containers behind: %v", names)
	}
	info, err := s.srv.Import(c, bytes.NewReader(archive), "moved")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.srv.Stop(context.Background(), "moved", time.Second)
		s.srv.Delete(context.Background(), "moved")
	})
	if info.Spec.Name != "moved" || info.Spec.Limits.Pids != 64 || info.State != container.Stopped {
		t.Fatalf("imported container: %+v", info)
	}
	s.start(t, "moved")
	out, _, _ := s.run(t, "moved", "", "cat", "/root/payload")
	if !bytes.Equal([]byte(out), payload) {
		t.Fatal("imported container's file differs from the exported one")
	}
	if out, _, _ := s.run(t, "moved", "", "cat", "/etc/hostname"); out != "moved\n" {
		t.Fatalf("renamed import's hostname file = %q", out)
	}
}

func testAutostart(t *testing.T, s *suite) {
	s.create(t, "boot", func(sp *container.Spec) { sp.Autostart = true })
	s.create(t, "manual", nil)
	started, err := s.srv.StartAutostart(ctx(t))
	if err != nil || !slices.Equal(started, []string{"boot"}) {
		t.Fatalf("StartAutostart = %v, %v; want [boot]", started, err)
	}
	if s.state(t, "boot") != container.Running || s.state(t, "manual") != container.Stopped {
		t.Fatal("autostart started the wrong containers")
	}
	if again, err := s.srv.StartAutostart(ctx(t)); err != nil || len(again) != 0 {
		t.Fatalf("second StartAutostart = %v, %v; want nothing started", again, err)
	}
}

func testImages(t *testing.T, s *suite) {
	c := ctx(t)
	base, err := s.srv.Image(c, s.h.Image)
	if err != nil {
		t.Fatal(err)
	}
	if byDigest, err := s.srv.Image(c, base.Digest); err != nil || byDigest.Name != base.Name {
		t.Fatalf("Image(digest) = %v, %v", byDigest, err)
	}
	m, rc, err := s.srv.OpenImage(c, s.h.Image)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || int64(len(blob)) != m.Size {
		t.Fatalf("blob: %d bytes, manifest says %d, err %v", len(blob), m.Size, err)
	}
	copyM := *m
	copyM.Name = "copy"
	if _, err := s.srv.PutImage(c, &copyM, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.srv.PutImage(c, &copyM, bytes.NewReader(blob)); err != nil {
		t.Fatalf("putting an equal image again: %v", err)
	}
	bad := copyM
	bad.Name = "bad"
	_, err = s.srv.PutImage(c, &bad, bytes.NewReader(blob[:len(blob)-1]))
	wantCode(t, "blob not matching its digest", err, errcode.InvalidArgument)
	bad.Name = "../bad"
	_, err = s.srv.PutImage(c, &bad, bytes.NewReader(blob))
	wantCode(t, "invalid image name", err, errcode.InvalidArgument)
	list, err := s.srv.Images(c)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, im := range list {
		names = append(names, im.Name)
	}
	if !slices.Contains(names, "copy") || !slices.Contains(names, s.h.Image) || slices.Contains(names, "bad") {
		t.Fatalf("Images = %v", names)
	}
	s.create(t, "fromcopy", func(sp *container.Spec) { sp.Image = "copy" })
	if err := s.srv.DeleteImage(c, "copy"); err != nil {
		t.Fatal(err)
	}
	_, err = s.srv.Image(c, "copy")
	wantCode(t, "deleted image", err, errcode.NotFound)
	if _, err := s.srv.Image(c, s.h.Image); err != nil {
		t.Fatalf("deleting a copy removed the base image too: %v", err)
	}
	wantCode(t, "delete unknown image", s.srv.DeleteImage(c, "copy"), errcode.NotFound)
}

func testHostInfo(t *testing.T, s *suite) {
	s.create(t, "one", nil)
	s.create(t, "two", nil)
	s.start(t, "two")
	h, err := s.srv.HostInfo(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if h.CPUs <= 0 || h.MemoryBytes <= 0 || h.MemoryFree <= 0 || h.MemoryFree > h.MemoryBytes || h.Driver == "" {
		t.Fatalf("HostInfo = %+v", h)
	}
	if h.Containers != 2 || h.Running != 1 {
		t.Fatalf("HostInfo counts %d containers, %d running; want 2 and 1", h.Containers, h.Running)
	}
}

func testConcurrent(t *testing.T, s *suite) {
	names := []string{"par-a", "par-b", "par-c", "par-d"}
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for _, n := range names {
		s.create(t, n, nil)
		wg.Go(func() {
			c := ctx(t)
			if err := s.srv.Start(c, n); err != nil {
				errs <- err
				return
			}
			var out bytes.Buffer
			if _, err := s.srv.Exec(c, n, &container.Process{Args: []string{"cat", "/etc/hostname"}, Stdout: &out}); err != nil || out.String() != n+"\n" {
				errs <- errors.Join(err, errors.New(n+": hostname "+out.String()))
				return
			}
			errs <- s.srv.Stop(c, n, 10*time.Second)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if st := s.state(t, n); st != container.Stopped {
			t.Fatalf("%s is %s", n, st)
		}
	}
}

// manyLabels returns n labels whose keys carry a 200-byte prefix and whose
// values are v.
func manyLabels(n int, v string) map[string]string {
	prefix := strings.Repeat(strings.Repeat("p", 49)+".", 4)[:199] + "/"
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("%slabel-%d", prefix, i)] = v
	}
	return m
}

// testClose closes a driver with a container twice, then uses it: every
// method, of the optional interfaces the driver implements too, fails with
// errcode.FailedPrecondition. The container is left stopped, since nothing
// could stop it through the closed driver.
func testClose(t *testing.T, s *suite) {
	c := ctx(t)
	s.create(t, "kept", nil)
	m, rc, err := s.srv.OpenImage(c, s.h.Image)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.srv.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	closed := func(what string, err error) {
		t.Helper()
		wantCode(t, what+" after Close", err, errcode.FailedPrecondition)
	}
	_, err = s.srv.Create(c, &container.Spec{Name: "new", Image: s.h.Image})
	closed("Create", err)
	closed("Start", s.srv.Start(c, "kept"))
	closed("Stop", s.srv.Stop(c, "kept", time.Second))
	closed("Freeze", s.srv.Freeze(c, "kept"))
	closed("Unfreeze", s.srv.Unfreeze(c, "kept"))
	_, err = s.srv.Get(c, "kept")
	closed("Get", err)
	_, err = s.srv.List(c)
	closed("List", err)
	_, err = s.srv.Exec(c, "kept", &container.Process{Args: []string{"true"}})
	closed("Exec", err)
	closed("Delete", s.srv.Delete(c, "kept"))
	if _, ok := s.d.(driver.Images); ok {
		copyM := *m
		copyM.Name = "after-close"
		_, err = s.srv.PutImage(c, &copyM, bytes.NewReader(blob))
		closed("PutImage", err)
		_, err = s.srv.Image(c, s.h.Image)
		closed("Image", err)
		_, err = s.srv.Images(c)
		closed("Images", err)
		_, rc, err = s.srv.OpenImage(c, s.h.Image)
		if err == nil {
			rc.Close()
		}
		closed("OpenImage", err)
		closed("DeleteImage", s.srv.DeleteImage(c, s.h.Image))
	}
	if _, ok := s.d.(driver.Snapshotter); ok {
		closed("Snapshot", s.srv.Snapshot(c, "kept", "snap"))
		_, err = s.srv.Snapshots(c, "kept")
		closed("Snapshots", err)
		closed("Restore", s.srv.Restore(c, "kept", "snap"))
		_, err = s.srv.Clone(c, "kept", "copy")
		closed("Clone", err)
	}
	if _, ok := s.d.(driver.Transferer); ok {
		closed("Export", s.srv.Export(c, "kept", io.Discard))
		_, err = s.srv.Import(c, bytes.NewReader(nil), "imported")
		closed("Import", err)
	}
	if _, ok := s.d.(driver.Host); ok {
		_, err = s.srv.HostInfo(c)
		closed("HostInfo", err)
	}
	if _, ok := s.d.(driver.Autostarter); ok {
		_, err = s.srv.StartAutostart(c)
		closed("StartAutostart", err)
	}
}
