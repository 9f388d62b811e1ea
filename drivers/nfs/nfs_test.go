package nfs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/nfs"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/drivertest"
	"github.com/musterkit/muster/testhost"
)

func requireNFS(t testing.TB) {
	t.Helper()
	roottest.Require(t, roottest.BinaryFrom("ganesha.nfsd", "nfs-ganesha"), roottest.BinaryFrom("nfs-cp", "libnfs-utils"),
		roottest.BinaryFrom("nfs-cat", "libnfs-utils"), roottest.BinaryFrom("rpcbind", "rpcbind"),
		roottest.BinaryFrom("nsenter", "util-linux"), roottest.BinaryFrom("unshare", "util-linux"))
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// open opens a driver for host h in dir, closed at the test's end.
func open(t testing.TB, h *testhost.Host, dir string) *nfs.Driver {
	t.Helper()
	d, err := nfs.Open(ctx(t), dir, &nfs.Options{NetNS: filepath.Join("/run/netns", h.Netns)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// client reads and writes a volume's files from a simulated server with
// libnfs (nfs-cp, nfs-cat), at the volume's Source: it reads over NFSv4
// and writes over NFSv3 (libnfs 4.0 fails NFSv4 writes over 4 KiB).
type client struct {
	t      testing.TB
	h      *testhost.Host
	source string
}

func (c client) url(name string) string {
	base, query, _ := strings.Cut(c.source, "?")
	return base + "/" + name + "?" + query
}

func (c client) url3(name string) string {
	return strings.Replace(c.url(name), "version=4", "version=3", 1)
}

func (c client) WriteFile(name string, data []byte) error {
	local := filepath.Join(c.t.TempDir(), "upload")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		return err
	}
	return c.run("nfs-cp", local, c.url3(name))
}

func (c client) ReadFile(name string) ([]byte, error) {
	cmd := c.h.Command(ctx(c.t), "nfs-cat", c.url(name))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nfs-cat %s: %v: %s", c.url(name), err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.Bytes(), nil
}

func (c client) run(name string, args ...string) error {
	if out, err := c.h.Command(ctx(c.t), name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func single(h *testhost.Host, pool string) driver.Pool {
	return driver.Pool{Name: pool, Members: []driver.Member{{Server: h.Name, Addr: h.Addr}}, Layout: driver.Layout{Kind: driver.Single}}
}

func source(t testing.TB, d *nfs.Driver, volume string) string {
	t.Helper()
	st, err := d.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Volumes {
		if v.Name == volume {
			return v.Source
		}
	}
	t.Fatalf("Status lists no volume %q: %+v", volume, st)
	return ""
}

// TestServeAcrossServers: a volume ganesha serves on one simulated server
// is written and read back, byte for byte, by libnfs on another.
func TestServeAcrossServers(t *testing.T) {
	requireNFS(t)
	c := testhost.New(t, 2)
	srv, cli := c.Hosts[0], c.Hosts[1]
	dir := filepath.Join(t.TempDir(), "srv")
	d := open(t, srv, dir)
	cfg := &driver.Config{Pool: single(srv, "pool"), Self: srv.Name, Volumes: []driver.Volume{{Name: "data"}}}
	if err := d.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	st, err := d.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("nfs://%s/pool/data?version=4&nfsport=2049", srv.Addr)
	if !st.Members[0].Up || len(st.Volumes) != 1 || st.Volumes[0].Health != driver.Healthy || st.Volumes[0].Source != want {
		t.Fatalf("Status = %+v; want the member up and data healthy at %s", st, want)
	}
	data := make([]byte, 8<<20)
	rand.Read(data)
	f := client{t, cli, want}
	if err := f.WriteFile("blob", data); err != nil {
		t.Fatal(err)
	}
	got, err := f.ReadFile("blob")
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("read back %d bytes of another sha256 than the %d written", len(got), len(data))
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, nfs.ExportsDir, "data", "blob"))
	if err != nil || sha256.Sum256(onDisk) != sha256.Sum256(data) {
		t.Fatalf("the export's directory holds %d bytes, %v", len(onDisk), err)
	}
	// Applying the same config again reloads nothing.
	n := d.Reloads()
	if err := d.Apply(ctx(t), cfg); err != nil || d.Reloads() != n {
		t.Fatalf("a second Apply: %v, %d reloads (was %d)", err, d.Reloads(), n)
	}
}

// TestAccess: a read-only rule refuses the client's writes, a rule that
// does not match the client refuses it everything, and changing the rules
// by a reload changes that without disturbing the other exports.
func TestAccess(t *testing.T) {
	requireNFS(t)
	c := testhost.New(t, 2)
	srv, cli := c.Hosts[0], c.Hosts[1]
	d := open(t, srv, filepath.Join(t.TempDir(), "srv"))
	only := netip.PrefixFrom(cli.Addr, 32)
	other := netip.MustParsePrefix("192.0.2.0/24")
	vols := []driver.Volume{
		{Name: "ro", Exports: []driver.Export{{Clients: []netip.Prefix{only}, Access: driver.ReadOnly}, {Clients: []netip.Prefix{c.Subnet}, Access: driver.ReadWrite}}},
		{Name: "closed", Exports: []driver.Export{{Clients: []netip.Prefix{other}, Access: driver.ReadWrite}}},
		{Name: "open"},
	}
	cfg := &driver.Config{Pool: single(srv, "acc"), Self: srv.Name, Volumes: vols}
	if err := d.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	seed := []byte("seed\n")
	for _, v := range []string{"ro", "closed"} {
		os.WriteFile(filepath.Join(d.Dir(), nfs.ExportsDir, v, "seed"), seed, 0o644)
	}
	ro, closed, opened := client{t, cli, source(t, d, "ro")}, client{t, cli, source(t, d, "closed")}, client{t, cli, source(t, d, "open")}
	if got, err := ro.ReadFile("seed"); err != nil || !bytes.Equal(got, seed) {
		t.Fatalf("read of a read-only export: %q, %v", got, err)
	}
	if err := ro.WriteFile("w", []byte("x")); err == nil {
		t.Fatal("a write to an export read-only for the client succeeded")
	}
	if _, err := closed.ReadFile("seed"); err == nil {
		t.Fatal("a read from an export whose rules do not match the client succeeded")
	}
	if err := closed.WriteFile("w", []byte("x")); err == nil {
		t.Fatal("a write to an export whose rules do not match the client succeeded")
	}
	if err := opened.WriteFile("w", []byte("x")); err != nil {
		t.Fatalf("a write to an export without rules: %v", err)
	}
	for _, v := range []string{"ro", "closed"} {
		if _, err := os.Stat(filepath.Join(d.Dir(), nfs.ExportsDir, v, "w")); err == nil {
			t.Fatalf("the refused write to %s made a file", v)
		}
	}

	// Open the closed export to the client: a reload, and the others
	// serve on.
	cfg = cfg.Clone()
	cfg.Volumes[1].Exports = []driver.Export{{Clients: []netip.Prefix{other, only}, Access: driver.ReadWrite}}
	n := d.Reloads()
	if err := d.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	if d.Reloads() != n+1 {
		t.Fatalf("%d reloads for a rule change, want 1", d.Reloads()-n)
	}
	if err := closed.WriteFile("w", []byte("x")); err != nil {
		t.Fatalf("a write after the rules let the client in: %v", err)
	}
	if got, err := opened.ReadFile("w"); err != nil || string(got) != "x" {
		t.Fatalf("the untouched export after a reload: %q, %v", got, err)
	}
}

// TestFailedApplyKeepsServing: an Apply that ganesha's check refuses (a
// volume whose directory is a file) leaves the config in force serving,
// the file and the record as they were, and the new volume's nothing.
func TestFailedApplyKeepsServing(t *testing.T) {
	requireNFS(t)
	c := testhost.New(t, 2)
	srv, cli := c.Hosts[0], c.Hosts[1]
	d := open(t, srv, filepath.Join(t.TempDir(), "srv"))
	cfg := &driver.Config{Pool: single(srv, "keep"), Self: srv.Name, Volumes: []driver.Volume{{Name: "data"}}}
	if err := d.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	f := client{t, cli, source(t, d, "data")}
	if err := f.WriteFile("kept", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(filepath.Join(d.Dir(), nfs.ConfigFile))
	rec, _ := os.ReadFile(filepath.Join(d.Dir(), nfs.RecordFile))
	os.WriteFile(filepath.Join(d.Dir(), nfs.ExportsDir, "file"), nil, 0o600)
	n := d.Reloads()
	bad := cfg.Clone()
	bad.Volumes = append(bad.Volumes, driver.Volume{Name: "file"}, driver.Volume{Name: "fresh"})
	err := d.Apply(ctx(t), bad)
	if !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Apply of a volume ganesha cannot export: %v; want InvalidArgument from the check", err)
	}
	t.Logf("refused: %v", err)
	if got, _ := d.Config(ctx(t)); len(got.Volumes) != 1 {
		t.Fatalf("Config after a failed Apply: %+v", got)
	}
	if now, _ := os.ReadFile(filepath.Join(d.Dir(), nfs.ConfigFile)); !bytes.Equal(now, conf) {
		t.Fatal("a failed Apply changed ganesha.conf")
	}
	if now, _ := os.ReadFile(filepath.Join(d.Dir(), nfs.RecordFile)); !bytes.Equal(now, rec) {
		t.Fatal("a failed Apply changed the record")
	}
	if _, err := os.Stat(filepath.Join(d.Dir(), nfs.ExportsDir, "fresh")); err == nil {
		t.Fatal("a failed Apply left the new volume's directory")
	}
	if d.Reloads() != n {
		t.Fatal("a failed Apply reloaded ganesha")
	}
	if got, err := f.ReadFile("kept"); err != nil || string(got) != "kept" {
		t.Fatalf("after a failed Apply: %q, %v", got, err)
	}
	// Mounts need the kernel client, which this kernel may lack.
	m := cfg.Clone()
	m.Mounts = []driver.Mount{{Volume: "data"}}
	if err := d.Apply(ctx(t), m); !d.Capabilities().Mount && !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("Apply with a mount and no kernel NFS client: %v; want Unimplemented", err)
	}
}

// TestRestart: Close stops ganesha and keeps the data; a driver opened on
// the same directory and given the same config serves it again, under the
// same export ids.
func TestRestart(t *testing.T) {
	requireNFS(t)
	c := testhost.New(t, 2)
	srv, cli := c.Hosts[0], c.Hosts[1]
	dir := filepath.Join(t.TempDir(), "srv")
	d := open(t, srv, dir)
	cfg := &driver.Config{Pool: single(srv, "rs"), Self: srv.Name, Volumes: []driver.Volume{{Name: "a"}, {Name: "b"}}}
	if err := d.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	f := client{t, cli, source(t, d, "b")}
	if err := f.WriteFile("kept", data); err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(filepath.Join(dir, nfs.ConfigFile))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFile("kept"); err == nil {
		t.Fatal("the volume serves after Close")
	}
	if _, err := d.Status(ctx(t)); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Status after Close: %v", err)
	}
	d = open(t, srv, dir)
	if err := d.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	got, err := f.ReadFile("kept")
	if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("after a restart: %d bytes, %v", len(got), err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, nfs.ConfigFile)); !bytes.Equal(now, conf) {
		t.Fatalf("the restart rendered another ganesha.conf:\n%s", now)
	}
	// The record still refuses dropping a volume.
	drop := cfg.Clone()
	drop.Volumes = drop.Volumes[:1]
	if err := d.Apply(ctx(t), drop); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Apply without a volume in force after a restart: %v", err)
	}
}

// TestConformance runs the storage suite with a pool on one simulated
// server and a client on another that reads and writes through libnfs.
func TestConformance(t *testing.T) {
	requireNFS(t)
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Layout:  driver.Layout{Kind: driver.Single},
		Members: 1,
		Servers: func(t *testing.T, n int) []drivertest.Server {
			c := testhost.New(t, n)
			base := t.TempDir()
			var out []drivertest.Server
			for _, h := range c.Hosts {
				hosts[h.Addr] = h
				t.Cleanup(func() { delete(hosts, h.Addr) })
				out = append(out, drivertest.Server{Name: h.Name, Addr: h.Addr, Open: func(t *testing.T, pool string) driver.Driver {
					return open(t, h, filepath.Join(base, h.Name, pool))
				}})
			}
			return out
		},
		Files: func(t *testing.T, _ driver.Driver, srv drivertest.Server, vs driver.VolumeStatus) drivertest.Files {
			h, err := hostOf(srv)
			if err != nil {
				t.Fatal(err)
			}
			return client{t, h, vs.Source}
		},
	})
}

// hosts maps the conformance servers' addresses to their simulated
// servers.
var hosts = map[netip.Addr]*testhost.Host{}

func hostOf(srv drivertest.Server) (*testhost.Host, error) {
	if h, ok := hosts[srv.Addr]; ok {
		return h, nil
	}
	return nil, fmt.Errorf("no simulated server %s (%s)", srv.Name, srv.Addr)
}

// TestKernelMount mounts a volume with the kernel NFSv4 client where the
// kernel has one.
func TestKernelMount(t *testing.T) {
	requireNFS(t)
	roottest.Require(t, roottest.Kernel(roottest.NFS))
	c := testhost.New(t, 2)
	srv, cli := c.Hosts[0], c.Hosts[1]
	ds := open(t, srv, filepath.Join(t.TempDir(), "srv"))
	dc := open(t, cli, filepath.Join(t.TempDir(), "cli"))
	pool, vols := single(srv, "km"), []driver.Volume{{Name: "data"}}
	if err := ds.Apply(ctx(t), &driver.Config{Pool: pool, Self: srv.Name, Volumes: vols}); err != nil {
		t.Fatal(err)
	}
	cfg := &driver.Config{Pool: pool, Self: cli.Name, Volumes: vols, Mounts: []driver.Mount{{Volume: "data"}}}
	if err := dc.Apply(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
	st, err := dc.Status(ctx(t))
	if err != nil || len(st.Mounts) != 1 || !st.Mounts[0].Healthy {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	if err := os.WriteFile(filepath.Join(st.Mounts[0].Path, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(ds.Dir(), nfs.ExportsDir, "data", "f")); err != nil || string(got) != "x" {
		t.Fatalf("the server holds %q, %v", got, err)
	}
	if err := dc.Leave(ctx(t), nil); err != nil {
		t.Fatal(err)
	}
}
