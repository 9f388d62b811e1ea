package drivertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/storage/driver"
)

// RunConformanceTests runs the storage conformance suite against the
// driver h opens. Subtests needing a feature the driver lacks check that
// it refuses it with errcode.Unimplemented instead.
func RunConformanceTests(t *testing.T, h Harness) {
	if h.Members < 1 || h.Servers == nil {
		t.Fatal("drivertest: the harness needs Servers and Members")
	}
	tests := []struct {
		name, pool string
		run        func(*testing.T, *suite)
	}{
		{"BadInput", "bad", testBadInput},
		{"Unsupported", "unsup", testUnsupported},
		{"SharedVolume", "shared", testSharedVolume},
		{"Access", "access", testAccess},
		{"Refusals", "refusals", testRefusals},
		{"Restart", "restart", testRestart},
		{"Leave", "leave", testLeave},
		{"Close", "closing", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newSuite(t, h, tt.pool)) })
	}
}

// suite is one subtest's servers, the pool's members then one client,
// and their drivers of the subtest's pool.
type suite struct {
	h       Harness
	name    string // the pool's
	servers []Server
	drivers []driver.Driver
	caps    driver.Capabilities
}

func newSuite(t *testing.T, h Harness, pool string) *suite {
	s := &suite{h: h, name: pool, servers: h.Servers(t, h.Members+1)}
	if len(s.servers) != h.Members+1 {
		t.Fatalf("drivertest: asked for %d servers, got %d", h.Members+1, len(s.servers))
	}
	for _, srv := range s.servers {
		s.drivers = append(s.drivers, srv.Open(t, pool))
	}
	s.caps = s.drivers[0].Capabilities()
	return s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// client is the index of the suite's server that is no member.
func (s *suite) client() int { return len(s.servers) - 1 }

// pool is the suite's pool over its members.
func (s *suite) pool() driver.Pool {
	p := driver.Pool{Name: s.name, Layout: s.h.Layout}
	for _, srv := range s.servers[:s.h.Members] {
		p.Members = append(p.Members, driver.Member{Server: srv.Name, Addr: srv.Addr})
	}
	return p
}

// configs returns every server's config: the same pool and volumes, and
// mounts[i] for server i.
func (s *suite) configs(p driver.Pool, volumes []driver.Volume, mounts map[int][]driver.Mount) []*driver.Config {
	var out []*driver.Config
	for i, srv := range s.servers {
		out = append(out, &driver.Config{Pool: p, Self: srv.Name, Volumes: volumes, Mounts: mounts[i]})
	}
	return out
}

// applyAll applies cfgs in the order a cluster must: the members other
// than the coordinator, then the coordinator, then the client.
func (s *suite) applyAll(t *testing.T, cfgs []*driver.Config) {
	t.Helper()
	order := append(append(slices.Collect(rangeInts(1, s.h.Members)), 0), s.client())
	for _, i := range order {
		if err := s.drivers[i].Apply(ctx(t), cfgs[i]); err != nil {
			t.Fatalf("Apply on %s: %v", s.servers[i].Name, err)
		}
	}
}

func rangeInts(from, to int) func(func(int) bool) {
	return func(yield func(int) bool) {
		for i := from; i < to; i++ {
			if !yield(i) {
				return
			}
		}
	}
}

// mounts mounts volume on the first member and the client (read-only on
// the client if ro), when the driver can mount.
func (s *suite) mounts(volume string, ro bool) map[int][]driver.Mount {
	if !s.caps.Mount {
		return nil
	}
	return map[int][]driver.Mount{0: {{Volume: volume}}, s.client(): {{Volume: volume, ReadOnly: ro}}}
}

func (s *suite) status(t *testing.T, i int) *driver.Status {
	t.Helper()
	st, err := s.drivers[i].Status(ctx(t))
	if err != nil {
		t.Fatalf("Status on %s: %v", s.servers[i].Name, err)
	}
	return st
}

func (s *suite) volumeStatus(t *testing.T, name string) driver.VolumeStatus {
	t.Helper()
	for _, v := range s.status(t, 0).Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("the coordinator's Status lists no volume %q", name)
	return driver.VolumeStatus{}
}

// files returns server i's access to volume.
func (s *suite) files(t *testing.T, i int, volume string) Files {
	t.Helper()
	vs := s.volumeStatus(t, volume)
	if s.h.Files != nil {
		return s.h.Files(t, s.drivers[i], s.servers[i], vs)
	}
	for _, m := range s.status(t, i).Mounts {
		if m.Volume == volume {
			return osFiles(m.Path)
		}
	}
	t.Fatalf("server %s has no mount of %q", s.servers[i].Name, volume)
	return nil
}

type osFiles string

func (dir osFiles) WriteFile(name string, data []byte) error {
	return os.WriteFile(filepath.Join(string(dir), name), data, 0o644)
}

func (dir osFiles) ReadFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(string(dir), name))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func wantCode(t *testing.T, what string, err error, code errcode.Code) {
	t.Helper()
	if errcode.Of(err) != code {
		t.Fatalf("%s: got %v (%v), want %v", what, err, errcode.Of(err), code)
	}
}

func testBadInput(t *testing.T, s *suite) {
	d := s.drivers[0]
	good := func() *driver.Config {
		return &driver.Config{Pool: s.pool(), Self: s.servers[0].Name, Volumes: []driver.Volume{{Name: "v"}}}
	}
	members := func(n int) []driver.Member {
		var ms []driver.Member
		for i := range n {
			ms = append(ms, driver.Member{Server: "s" + string(rune('a'+i)), Addr: netip.AddrFrom4([4]byte{198, 18, 9, byte(i + 1)})})
		}
		return ms
	}
	cases := map[string]func(*driver.Config){
		"nil pool name":       func(c *driver.Config) { c.Pool.Name = "" },
		"pool name injection": func(c *driver.Config) { c.Pool.Name = "p\n}" },
		"pool name path":      func(c *driver.Config) { c.Pool.Name = "../etc" },
		"volume name path":    func(c *driver.Config) { c.Volumes[0].Name = "../../x" },
		"volume name quote":   func(c *driver.Config) { c.Volumes[0].Name = `v";rm -rf /` },
		"volume name option":  func(c *driver.Config) { c.Volumes[0].Name = "-o" },
		"duplicate volume":    func(c *driver.Config) { c.Volumes = append(c.Volumes, driver.Volume{Name: "v"}) },
		"no members":          func(c *driver.Config) { c.Pool.Members = nil },
		"duplicate member":    func(c *driver.Config) { c.Pool.Members = append(c.Pool.Members, c.Pool.Members[0]) },
		"member name":         func(c *driver.Config) { c.Pool.Members[0].Server = "a b" },
		"member address":      func(c *driver.Config) { c.Pool.Members[0].Addr = netip.Addr{} },
		"self":                func(c *driver.Config) { c.Self = "x\x00" },
		"copies above servers": func(c *driver.Config) {
			c.Pool.Layout = driver.Layout{Kind: driver.Replicate, Copies: len(c.Pool.Members) + 1}
		},
		"unknown layout": func(c *driver.Config) { c.Pool.Layout = driver.Layout{Kind: "raid0"} },
		"arbiter without three": func(c *driver.Config) {
			c.Pool.Members = members(2)
			c.Pool.Layout = driver.Layout{Kind: driver.Replicate, Copies: 2, Arbiter: true}
		},
		"negative quota":         func(c *driver.Config) { c.Volumes[0].QuotaBytes = -1 },
		"export without clients": func(c *driver.Config) { c.Volumes[0].Exports = []driver.Export{{Access: driver.ReadOnly}} },
		"export access": func(c *driver.Config) {
			c.Volumes[0].Exports = []driver.Export{{Clients: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, Access: "rw;"}}
		},
		"export host bits": func(c *driver.Config) {
			c.Volumes[0].Exports = []driver.Export{{Clients: []netip.Prefix{netip.MustParsePrefix("198.18.1.2/15")}, Access: driver.ReadWrite}}
		},
		"mount of no volume": func(c *driver.Config) { c.Mounts = []driver.Mount{{Volume: "w"}} },
		"mount name":         func(c *driver.Config) { c.Mounts = []driver.Mount{{Volume: "../v"}} },
		"too many members":   func(c *driver.Config) { c.Pool.Members = members(driver.MaxMembers + 1) },
	}
	for name, mutate := range cases {
		cfg := good()
		mutate(cfg)
		wantCode(t, name, d.Apply(ctx(t), cfg), errcode.InvalidArgument)
	}
	wantCode(t, "nil config", d.Apply(ctx(t), nil), errcode.InvalidArgument)
	// Nothing was joined or created.
	_, err := d.Status(ctx(t))
	wantCode(t, "Status after refused configs", err, errcode.FailedPrecondition)
	if cfg, err := d.Config(ctx(t)); err != nil || cfg != nil {
		t.Fatalf("Config after refused configs = %+v, %v; want nil", cfg, err)
	}
}

func testUnsupported(t *testing.T, s *suite) {
	d := s.drivers[0]
	base := func() *driver.Config {
		return &driver.Config{Pool: s.pool(), Self: s.servers[0].Name, Volumes: []driver.Volume{{Name: "v"}}}
	}
	exports := []driver.Export{{Clients: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, Access: driver.ReadOnly}}
	cases := []struct {
		has    bool
		what   string
		mutate func(*driver.Config)
	}{
		{s.caps.Quota, "quota", func(c *driver.Config) { c.Volumes[0].QuotaBytes = 1 << 20 }},
		{s.caps.Exports, "exports", func(c *driver.Config) { c.Volumes[0].Exports = exports }},
		{s.caps.VolumeCopies, "volume copies", func(c *driver.Config) { c.Volumes[0].Copies = 1 }},
		{s.caps.Mount, "mount", func(c *driver.Config) { c.Mounts = []driver.Mount{{Volume: "v"}} }},
	}
	tried := 0
	for _, c := range cases {
		if c.has {
			continue
		}
		cfg := base()
		c.mutate(cfg)
		wantCode(t, c.what+" (not in Capabilities)", d.Apply(ctx(t), cfg), errcode.Unimplemented)
		tried++
	}
	for _, k := range []driver.LayoutKind{driver.Single, driver.Distribute, driver.Replicate, driver.Disperse} {
		if slices.Contains(s.caps.Layouts, k) {
			continue
		}
		cfg := base()
		cfg.Pool.Members = cfg.Pool.Members[:1]
		cfg.Pool.Layout = driver.Layout{Kind: k}
		switch k {
		case driver.Replicate, driver.Disperse:
			continue // they need more members than a check of the kind takes
		}
		wantCode(t, string(k)+" layout (not in Capabilities)", d.Apply(ctx(t), cfg), errcode.Unimplemented)
		tried++
	}
	if !slices.Contains(s.caps.Layouts, s.h.Layout.Kind) {
		t.Fatalf("the harness's layout %s is not in Capabilities().Layouts %v", s.h.Layout.Kind, s.caps.Layouts)
	}
	_, err := d.Status(ctx(t))
	wantCode(t, "Status after refused configs", err, errcode.FailedPrecondition)
	t.Logf("%d features refused as not in Capabilities %+v", tried, s.caps)
}

func testSharedVolume(t *testing.T, s *suite) {
	p := s.pool()
	vols := []driver.Volume{{Name: "data"}}
	cfgs := s.configs(p, vols, s.mounts("data", false))
	s.applyAll(t, cfgs)

	st := s.status(t, 0)
	if st.Pool != s.name || len(st.Members) != s.h.Members {
		t.Fatalf("Status = %+v; want pool shared with %d members", st, s.h.Members)
	}
	for _, m := range st.Members {
		if !m.Up {
			t.Errorf("member %s is not up: %+v", m.Server, st.Members)
		}
	}
	vs := s.volumeStatus(t, "data")
	if vs.Health != driver.Healthy || vs.Source == "" {
		t.Errorf("volume status %+v; want healthy with a source", vs)
	}
	if s.caps.Mount {
		for _, i := range []int{0, s.client()} {
			ms := s.status(t, i).Mounts
			if len(ms) != 1 || ms[0].Volume != "data" || !ms[0].Healthy || ms[0].Path == "" {
				t.Errorf("mounts on %s = %+v; want data, healthy, with a path", s.servers[i].Name, ms)
			}
		}
	}

	// Written on one server, read on another, byte for byte.
	want := randomBytes(1 << 20)
	if err := s.files(t, 0, "data").WriteFile("blob", want); err != nil {
		t.Fatalf("write on %s: %v", s.servers[0].Name, err)
	}
	got, err := s.files(t, s.client(), "data").ReadFile("blob")
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read on %s: %d bytes, %v; want the %d written on %s", s.servers[s.client()].Name, len(got), err, len(want), s.servers[0].Name)
	}

	// Applying the same configs again changes nothing.
	s.applyAll(t, cfgs)
	for i, d := range s.drivers {
		cfg, err := d.Config(ctx(t))
		if err != nil || cfg == nil || cfg.Pool.Name != s.name || len(cfg.Volumes) != 1 || len(cfg.Mounts) != len(cfgs[i].Mounts) {
			t.Fatalf("Config on %s = %+v, %v; want the one applied", s.servers[i].Name, cfg, err)
		}
	}
	if got, err := s.files(t, s.client(), "data").ReadFile("blob"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after a second apply: %v", err)
	}
	// Volumes are made on the coordinator only.
	wantCode(t, "RemoveVolume on a member that does not coordinate", s.drivers[s.client()].RemoveVolume(ctx(t), "data", nil), errcode.FailedPrecondition)
}

func testAccess(t *testing.T, s *suite) {
	client := s.servers[s.client()]
	vols := []driver.Volume{{Name: "ro"}, {Name: "open"}}
	if s.caps.Exports {
		// The client may read "ro" only; everyone else may write it.
		only := netip.PrefixFrom(client.Addr, client.Addr.BitLen())
		vols[0].Exports = []driver.Export{
			{Clients: []netip.Prefix{only}, Access: driver.ReadOnly},
			{Clients: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, Access: driver.ReadWrite},
		}
	}
	if s.caps.Quota {
		vols = append(vols, driver.Volume{Name: "small", QuotaBytes: 1 << 20})
	}
	var mounts map[int][]driver.Mount
	if s.caps.Mount {
		mounts = map[int][]driver.Mount{0: nil, s.client(): {{Volume: "open", ReadOnly: true}}}
		for _, v := range vols {
			mounts[0] = append(mounts[0], driver.Mount{Volume: v.Name})
		}
		if s.caps.Exports {
			mounts[s.client()] = append(mounts[s.client()], driver.Mount{Volume: "ro"})
		}
	}
	s.applyAll(t, s.configs(s.pool(), vols, mounts))

	seed := []byte("seeded by the first member\n")
	for _, v := range []string{"open", "ro"} {
		if v == "ro" && !s.caps.Exports {
			continue
		}
		if err := s.files(t, 0, v).WriteFile("seed", seed); err != nil {
			t.Fatalf("write to %s on the first member: %v", v, err)
		}
	}
	refused := func(what string, f Files) {
		t.Helper()
		if err := f.WriteFile("refused", []byte("x")); err == nil {
			t.Errorf("%s: a write succeeded", what)
		}
		if got, err := f.ReadFile("seed"); err != nil || !bytes.Equal(got, seed) {
			t.Errorf("%s: read %q, %v; want the seed", what, got, err)
		}
		if _, err := s.files(t, 0, "open").ReadFile("refused"); err == nil {
			t.Errorf("%s: the refused file exists", what)
		}
	}
	if s.caps.Mount {
		refused("a read-only mount", s.files(t, s.client(), "open"))
	}
	if s.caps.Exports {
		refused("an export read-only for the client", s.files(t, s.client(), "ro"))
	}
	if s.caps.Quota {
		// What fits first: a refused write may leave part of its file
		// behind, counted against the quota, as real file systems do.
		f := s.files(t, 0, "small")
		if err := f.WriteFile("fits", randomBytes(64<<10)); err != nil {
			t.Errorf("writing 64 KiB to a volume of quota 1 MiB: %v", err)
		}
		if err := f.WriteFile("big", randomBytes(4<<20)); err == nil {
			t.Errorf("writing 4 MiB to a volume of quota 1 MiB succeeded")
		}
	}
}

func testRefusals(t *testing.T, s *suite) {
	p := s.pool()
	vols := []driver.Volume{{Name: "keep"}, {Name: "gone"}}
	mounts := s.mounts("keep", false)
	cfgs := s.configs(p, vols, mounts)
	s.applyAll(t, cfgs)
	want := randomBytes(64 << 10)
	if err := s.files(t, 0, "keep").WriteFile("data", want); err != nil {
		t.Fatal(err)
	}
	co := s.drivers[0]

	// Apply never destroys: no dropped volume, layout change or member
	// removal.
	dropped := *cfgs[0]
	dropped.Volumes = vols[:1]
	wantCode(t, "Apply without a volume in force", co.Apply(ctx(t), &dropped), errcode.FailedPrecondition)
	relaid := *cfgs[0]
	relaid.Pool.Layout = driver.Layout{Kind: driver.Distribute}
	if s.h.Layout.Kind == driver.Distribute {
		relaid.Pool.Layout = driver.Layout{Kind: driver.Single}
		relaid.Pool.Members = relaid.Pool.Members[:1]
	}
	if relaid.Pool.Validate() == nil {
		wantCode(t, "Apply with another layout", co.Apply(ctx(t), &relaid), errcode.FailedPrecondition)
	}
	if s.h.Members > 1 {
		shrunk := *cfgs[0]
		shrunk.Pool.Members = shrunk.Pool.Members[:1]
		shrunk.Pool.Layout = driver.Layout{Kind: driver.Distribute}
		wantCode(t, "Apply without a member", co.Apply(ctx(t), &shrunk), errcode.FailedPrecondition)
	}
	other := *cfgs[0]
	other.Pool.Name = "another"
	wantCode(t, "Apply of another pool on the same driver", co.Apply(ctx(t), &other), errcode.FailedPrecondition)

	// Removal refuses to destroy data that is mounted or holds files.
	if s.caps.Mount {
		wantCode(t, "RemoveVolume of a mounted volume", co.RemoveVolume(ctx(t), "keep", nil), errcode.FailedPrecondition)
		// Unmount everywhere: it still holds a file.
		s.applyAll(t, s.configs(p, vols, nil))
		wantCode(t, "RemoveVolume of a volume that holds files", co.RemoveVolume(ctx(t), "keep", nil), errcode.FailedPrecondition)
		s.applyAll(t, cfgs)
	} else {
		wantCode(t, "RemoveVolume of a volume that holds files", co.RemoveVolume(ctx(t), "keep", nil), errcode.FailedPrecondition)
	}
	if got, err := s.files(t, s.client(), "keep").ReadFile("data"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the refusals the data reads %d bytes, %v", len(got), err)
	}
	wantCode(t, "RemoveVolume of no volume", co.RemoveVolume(ctx(t), "nothing", nil), errcode.NotFound)
	wantCode(t, "RemoveVolume with a bad name", co.RemoveVolume(ctx(t), "../keep", nil), errcode.InvalidArgument)

	// An empty, unmounted volume goes; a full one goes by force.
	if err := co.RemoveVolume(ctx(t), "gone", nil); err != nil {
		t.Fatalf("RemoveVolume of an empty volume: %v", err)
	}
	s.applyAll(t, s.configs(p, vols[:1], nil))
	if err := co.RemoveVolume(ctx(t), "keep", &driver.RemoveOptions{Force: true}); err != nil {
		t.Fatalf("RemoveVolume with force: %v", err)
	}
	if vs := s.status(t, 0).Volumes; len(vs) != 0 {
		t.Fatalf("volumes after removal: %+v", vs)
	}
	wantCode(t, "RemoveVolume of a removed volume", co.RemoveVolume(ctx(t), "keep", nil), errcode.NotFound)
}

func testRestart(t *testing.T, s *suite) {
	p := s.pool()
	cfgs := s.configs(p, []driver.Volume{{Name: "data"}}, s.mounts("data", false))
	s.applyAll(t, cfgs)
	want := randomBytes(256 << 10)
	if err := s.files(t, 0, "data").WriteFile("kept", want); err != nil {
		t.Fatal(err)
	}
	for i, d := range s.drivers {
		if err := d.Close(); err != nil {
			t.Fatalf("Close on %s: %v", s.servers[i].Name, err)
		}
		s.drivers[i] = s.servers[i].Open(t, s.name)
	}
	s.applyAll(t, cfgs)
	for _, i := range []int{0, s.client()} {
		if got, err := s.files(t, i, "data").ReadFile("kept"); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after a restart %s reads %d bytes, %v", s.servers[i].Name, len(got), err)
		}
	}
	// The restarted daemons find each other again within seconds (chunk
	// servers report their chunks, bricks reconnect).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		vs := s.volumeStatus(t, "data")
		if vs.Health == driver.Healthy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after a restart the volume is %s", vs.Health)
		}
	}
}

func testLeave(t *testing.T, s *suite) {
	p := s.pool()
	s.applyAll(t, s.configs(p, []driver.Volume{{Name: "data"}}, s.mounts("data", false)))
	if err := s.files(t, 0, "data").WriteFile("f", []byte("x")); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, m := range s.status(t, s.client()).Mounts {
		paths = append(paths, m.Path)
	}
	if err := s.drivers[s.client()].Leave(ctx(t), nil); err != nil {
		t.Fatalf("Leave on the client: %v", err)
	}
	for _, path := range paths {
		if strings.HasPrefix(path, "/") {
			if _, err := os.ReadFile(filepath.Join(path, "f")); err == nil {
				t.Errorf("the client's mount %s still serves after Leave", path)
			}
		}
	}
	co := s.drivers[0]
	wantCode(t, "Leave on the coordinator of a pool with volumes", co.Leave(ctx(t), nil), errcode.FailedPrecondition)
	if _, err := co.Status(ctx(t)); err != nil {
		t.Fatalf("the refused Leave left the pool: %v", err)
	}
	if err := co.Leave(ctx(t), &driver.RemoveOptions{Force: true}); err != nil {
		t.Fatalf("Leave with force: %v", err)
	}
	for i := 1; i < s.h.Members; i++ {
		if err := s.drivers[i].Leave(ctx(t), &driver.RemoveOptions{Force: true}); err != nil {
			t.Fatalf("Leave on member %s: %v", s.servers[i].Name, err)
		}
	}
	for i, d := range s.drivers {
		_, err := d.Status(ctx(t))
		wantCode(t, "Status on "+s.servers[i].Name+" after Leave", err, errcode.FailedPrecondition)
		if err := d.Leave(ctx(t), nil); err != nil {
			t.Fatalf("leaving again on %s: %v", s.servers[i].Name, err)
		}
	}
	// The same servers can form the pool again.
	s.applyAll(t, s.configs(p, []driver.Volume{{Name: "data"}}, nil))
}

func testClose(t *testing.T, s *suite) {
	d := s.drivers[0]
	cfg := s.configs(s.pool(), nil, nil)
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	wantCode(t, "Apply after Close", d.Apply(ctx(t), cfg[0]), errcode.FailedPrecondition)
	_, err := d.Config(ctx(t))
	wantCode(t, "Config after Close", err, errcode.FailedPrecondition)
	_, err = d.Status(ctx(t))
	wantCode(t, "Status after Close", err, errcode.FailedPrecondition)
	wantCode(t, "RemoveVolume after Close", d.RemoveVolume(ctx(t), "v", nil), errcode.FailedPrecondition)
	wantCode(t, "Leave after Close", d.Leave(ctx(t), nil), errcode.FailedPrecondition)
	_ = d.Capabilities()
}
