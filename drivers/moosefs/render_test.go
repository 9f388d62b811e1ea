package moosefs_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/musterkit/muster/drivers/moosefs"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/golden"
	lbtest "github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/storage/driver"
)

// goldenDir is the instance directory golden files are rendered for.
const goldenDir = "/run/muster-golden"

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func goldenConfig() *driver.Config {
	return &driver.Config{
		Pool: driver.Pool{Name: "tank", Layout: driver.Layout{Kind: driver.Replicate, Copies: 2}, Members: []driver.Member{
			{Server: "h0", Addr: netip.MustParseAddr("198.18.0.1")},
			{Server: "h1", Addr: netip.MustParseAddr("198.18.0.2")},
			{Server: "h2", Addr: netip.MustParseAddr("198.18.0.3")},
		}},
		Self: "h0",
		Volumes: []driver.Volume{
			{Name: "open"},
			{Name: "quota", QuotaBytes: 1 << 30, Copies: 3},
			// The client .9 reads only; the rest of the /24 writes; a
			// later rule for .9 and an IPv6 rule change nothing.
			{Name: "ruled", Exports: []driver.Export{
				{Clients: []netip.Prefix{pfx("198.18.0.9/32")}, Access: driver.ReadOnly},
				{Clients: []netip.Prefix{pfx("198.18.0.0/24"), pfx("2001:db8::/32")}, Access: driver.ReadWrite},
				{Clients: []netip.Prefix{pfx("198.18.0.9/32"), pfx("10.0.0.0/8")}, Access: driver.ReadOnly},
			}},
		},
		Mounts: []driver.Mount{{Volume: "open"}},
	}
}

func goldenInputs() map[string]moosefs.Input {
	coord := goldenConfig()
	member := goldenConfig()
	member.Self = "h1"
	client := goldenConfig()
	client.Self = "c1"
	return map[string]moosefs.Input{
		"coordinator": {Config: coord, Dir: goldenDir},
		"member":      {Config: member, Dir: goldenDir, Ports: moosefs.Ports{ChunkServer: 19420, Data: 19422}, LeaveSpace: 1 << 30},
		"client":      {Config: client, Dir: goldenDir},
	}
}

func TestRenderGolden(t *testing.T) {
	for name, in := range goldenInputs() {
		t.Run(name, func(t *testing.T) {
			r, err := moosefs.Render(in)
			if err != nil {
				t.Fatal(err)
			}
			for file, text := range map[string][]byte{
				moosefs.MasterConfig: r.Master, moosefs.ExportsConfig: r.Exports, moosefs.TopologyConfig: r.Topology,
				moosefs.ChunkServerConfig: r.ChunkServer, moosefs.HDDConfig: r.HDD,
			} {
				path := filepath.Join("testdata", name+"."+file)
				if text == nil {
					if _, err := os.Stat(path); err == nil {
						t.Fatalf("%s renders no %s, but %s exists", name, file, path)
					}
					continue
				}
				golden.Check(t, path, text)
				checkGrammar(t, file, string(text), in.Dir)
			}
		})
	}
}

func TestRenderRejects(t *testing.T) {
	in := goldenInputs()["coordinator"]
	bad := *in.Config
	bad.Volumes = append([]driver.Volume{{Name: "v\n* / rw,admin"}}, bad.Volumes...)
	if _, err := moosefs.Render(moosefs.Input{Config: &bad, Dir: goldenDir}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Render with an injected volume = %v", err)
	}
	v6 := *in.Config
	v6.Pool.Members = append([]driver.Member{{Server: "six", Addr: netip.MustParseAddr("2001:db8::1")}}, v6.Pool.Members[1:]...)
	if _, err := moosefs.Render(moosefs.Input{Config: &v6, Dir: goldenDir}); !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("Render with an IPv6 member = %v", err)
	}
	if _, err := moosefs.Render(moosefs.Input{Config: in.Config, Dir: goldenDir, LeaveSpace: -1}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Render with a negative leave space = %v", err)
	}
	base := t.TempDir()
	lbtest.RunBadDirTests(t, base, lbtest.HostileDirs(base),
		func(dir string) error {
			r, err := moosefs.Render(moosefs.Input{Config: in.Config, Dir: dir})
			if r != nil {
				return errors.New("output with an error")
			}
			return err
		},
		func(ctx context.Context, dir string) (io.Closer, error) {
			d, err := moosefs.Open(ctx, dir, nil)
			if d == nil {
				return nil, err
			}
			return d, err
		})
	dirs := []string{base + "/a b", base + "/a\nDATA_PATH = /", base + "/a=b", base + "/a#b", base + "/a/../b", "relative"}
	for _, dir := range dirs {
		if r, err := moosefs.Render(moosefs.Input{Config: in.Config, Dir: dir}); !errors.Is(err, errcode.InvalidArgument) || r != nil {
			t.Errorf("Render with dir %q = %v", dir, err)
		}
		if d, err := moosefs.Open(t.Context(), dir, nil); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Open(%q) = %v", dir, err)
			if d != nil {
				d.Close()
			}
		}
	}
	if _, err := moosefs.Open(t.Context(), t.TempDir(), &moosefs.Options{NetNS: "/run/netns/x y"}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("Open with a hostile namespace path = %v", err)
	}
}

// TestExportRanges: rules match first, so a client of a read-only rule
// never gets read-write from a later, wider rule.
func TestExportRanges(t *testing.T) {
	r, err := moosefs.Render(goldenInputs()["coordinator"])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"10.0.0.0-10.255.255.255 /ruled ro,maproot=0:0",
		"198.18.0.0-198.18.0.8 /ruled rw,maproot=0:0",
		"198.18.0.9-198.18.0.9 /ruled ro,maproot=0:0",
		"198.18.0.10-198.18.0.255 /ruled rw,maproot=0:0",
	}
	var got []string
	for _, l := range strings.Split(string(r.Exports), "\n") {
		if strings.Contains(l, "/ruled") {
			got = append(got, l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("export lines of ruled:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// checkGrammar asserts the structure an injection would break: a header
// comment, then in configs only KEY = VALUE lines of known keys with one
// token of a value, in exports only three-field lines of our shape, and
// every path inside dir.
func checkGrammar(t *testing.T, file, text, dir string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "# Rendered by muster") {
		t.Fatalf("%s: header %q", file, lines[0])
	}
	keys := map[string]bool{"WORKING_USER": true, "WORKING_GROUP": true, "DATA_PATH": true, "EXPORTS_FILENAME": true,
		"TOPOLOGY_FILENAME": true, "MATOML_LISTEN_HOST": true, "MATOML_LISTEN_PORT": true, "MATOCS_LISTEN_HOST": true,
		"MATOCS_LISTEN_PORT": true, "MATOCL_LISTEN_HOST": true, "MATOCL_LISTEN_PORT": true, "REPLICATIONS_DELAY_INIT": true,
		"HDD_CONF_FILENAME": true, "HDD_LEAVE_SPACE_DEFAULT": true, "BIND_HOST": true, "MASTER_HOST": true,
		"MASTER_PORT": true, "MASTER_RECONNECTION_DELAY": true, "CSSERV_LISTEN_HOST": true, "CSSERV_LISTEN_PORT": true}
	inside := func(p string) {
		if !strings.HasPrefix(p, dir+"/") || filepath.Clean(p) != p {
			t.Fatalf("%s: path %q is not inside %s", file, p, dir)
		}
	}
	for i, l := range lines[1:] {
		if strings.ContainsAny(l, "#\r\x00") {
			t.Fatalf("%s line %d: %q", file, i+2, l)
		}
		f := strings.Fields(l)
		switch file {
		case moosefs.MasterConfig, moosefs.ChunkServerConfig:
			if len(f) != 3 || f[1] != "=" || !keys[f[0]] {
				t.Fatalf("%s line %d is no KEY = VALUE of a known key: %q", file, i+2, l)
			}
			if strings.HasSuffix(f[0], "PATH") || strings.HasSuffix(f[0], "FILENAME") {
				inside(f[2])
			}
		case moosefs.ExportsConfig:
			if len(f) != 3 || !strings.HasPrefix(f[1], "/") || strings.Count(f[1], "/") != 1 {
				t.Fatalf("%s line %d is not CLIENTS /VOLUME OPTIONS: %q", file, i+2, l)
			}
			opts := map[string]bool{"rw,maproot=0:0": true, "ro,maproot=0:0": true}
			if i == 0 {
				if l != "127.0.0.1 / rw,admin,maproot=0:0" {
					t.Fatalf("%s: the admin line is %q", file, l)
				}
			} else if !opts[f[2]] || f[1] == "/" {
				t.Fatalf("%s line %d: %q", file, i+2, l)
			}
		case moosefs.HDDConfig:
			if len(f) != 1 {
				t.Fatalf("%s line %d: %q", file, i+2, l)
			}
			inside(f[0])
		case moosefs.TopologyConfig:
			t.Fatalf("%s has lines: %q", file, l)
		}
	}
}

// FuzzRender: no input that passes validation adds a line or a key, or
// puts a path outside the instance directory.
func FuzzRender(f *testing.F) {
	f.Add("tank", "h0", "v", "198.18.0.1", "198.18.0.0/24", "ro", int64(1<<20), 2, "/run/x", uint16(9421))
	f.Add("t\n", "h0", "v\nx", "::1", "1.2.3.4/32", "rw", int64(-1), 0, "/a b", uint16(0))
	f.Add("tank", "h0", "-o", "0.0.0.0", "0.0.0.0/0", "rw;", int64(0), 9, "/run/x/../y", uint16(1))
	f.Fuzz(func(t *testing.T, pool, self, vol, addr, prefix, access string, quota int64, copies int, dir string, port uint16) {
		a, _ := netip.ParseAddr(addr)
		p, _ := netip.ParsePrefix(prefix)
		cfg := &driver.Config{
			Pool: driver.Pool{Name: pool, Layout: driver.Layout{Kind: driver.Distribute}, Members: []driver.Member{
				{Server: self, Addr: a}, {Server: "h1", Addr: netip.MustParseAddr("198.18.0.2")}}},
			Self:    self,
			Volumes: []driver.Volume{{Name: vol, QuotaBytes: quota, Copies: copies, Exports: []driver.Export{{Clients: []netip.Prefix{p}, Access: driver.Access(access)}}}},
		}
		r, err := moosefs.Render(moosefs.Input{Config: cfg, Dir: dir, Ports: moosefs.Ports{Client: port}})
		if err != nil {
			if r != nil || !errors.Is(err, errcode.InvalidArgument) && !errors.Is(err, errcode.Unimplemented) {
				t.Fatalf("Render = %v, %v", r, err)
			}
			return
		}
		for file, text := range map[string][]byte{moosefs.MasterConfig: r.Master, moosefs.ExportsConfig: r.Exports,
			moosefs.ChunkServerConfig: r.ChunkServer, moosefs.HDDConfig: r.HDD, moosefs.TopologyConfig: r.Topology} {
			if text == nil {
				t.Fatalf("the coordinator renders no %s", file)
			}
			checkGrammar(t, file, string(text), dir)
		}
		// The same structure with plain names has as many lines.
		ref := cfg.Clone()
		ref.Pool.Name, ref.Self, ref.Pool.Members[0].Server, ref.Volumes[0].Name = "p", "s", "s", "v"
		refR, err := moosefs.Render(moosefs.Input{Config: ref, Dir: "/run/x"})
		if err != nil {
			t.Fatal(err)
		}
		for _, pair := range [][2][]byte{{r.Master, refR.Master}, {r.Exports, refR.Exports}, {r.ChunkServer, refR.ChunkServer}} {
			if strings.Count(string(pair[0]), "\n") != strings.Count(string(pair[1]), "\n") {
				t.Fatalf("%d lines, want %d:\n%s", strings.Count(string(pair[0]), "\n"), strings.Count(string(pair[1]), "\n"), pair[0])
			}
		}
	})
}
