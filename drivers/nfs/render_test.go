package nfs_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/musterkit/muster/drivers/nfs"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/golden"
	lbtest "github.com/musterkit/muster/lb/drivertest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/storage/driver"
)

// goldenDir is the instance directory golden files are rendered for.
const goldenDir = "/run/muster-golden"

func rule(access driver.Access, prefixes ...string) driver.Export {
	e := driver.Export{Access: access}
	for _, p := range prefixes {
		e.Clients = append(e.Clients, netip.MustParsePrefix(p))
	}
	return e
}

func goldenInputs() map[string]nfs.Input {
	return map[string]nfs.Input{
		"empty": {Pool: "p", Dir: goldenDir, Port: 2049},
		"open":  {Pool: "shared", Dir: goldenDir, Port: 2049, Exports: []nfs.Export{{Volume: "data", ID: 1}}},
		"rules": {Pool: "access", Dir: goldenDir, Port: 12049, Exports: []nfs.Export{
			{Volume: "ro", ID: 3, Rules: []driver.Export{
				rule(driver.ReadOnly, "198.18.0.2/32"),
				rule(driver.ReadWrite, "198.18.0.0/15", "10.0.0.0/8", "2001:db8::/32", "2001:db8::1/128"),
			}},
			{Volume: "open", ID: 1},
			{Volume: "none", ID: 2, Rules: []driver.Export{rule(driver.ReadWrite, "192.0.2.0/24")}},
			{Volume: "all", ID: 4, Rules: []driver.Export{rule(driver.ReadOnly, "0.0.0.0/0", "::/0")}},
		}},
	}
}

func TestRenderGolden(t *testing.T) {
	for name, in := range goldenInputs() {
		t.Run(name, func(t *testing.T) {
			conf, err := nfs.Render(in)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, filepath.Join("testdata", name+".conf"), conf)
			checkGrammar(t, string(conf), in.Dir)
		})
	}
}

// TestGoldenConfigsValid runs the driver's check, the parse-only start of
// ganesha, over every golden config with its export directories in place,
// and over broken copies of one, which it must refuse.
func TestGoldenConfigsValid(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("ganesha.nfsd", "nfs-ganesha"), roottest.BinaryFrom("unshare", "util-linux"))
	dir := filepath.Join(t.TempDir(), "inst")
	d, err := nfs.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for name, in := range goldenInputs() {
		t.Run(name, func(t *testing.T) {
			for _, e := range in.Exports {
				os.MkdirAll(filepath.Join(dir, nfs.ExportsDir, e.Volume), 0o755)
			}
			text, _ := os.ReadFile(filepath.Join("testdata", name+".conf"))
			conf := []byte(strings.ReplaceAll(string(text), goldenDir, dir))
			if err := d.Check(t.Context(), conf); err != nil {
				t.Fatalf("the check refuses the golden config: %v", err)
			}
		})
	}
	text, _ := os.ReadFile(filepath.Join("testdata", "rules.conf"))
	good := strings.ReplaceAll(string(text), goldenDir, dir)
	for what, bad := range map[string]string{
		"syntax":          strings.Replace(good, "Export_Id = 2;", "Export_Id = 2", 1),
		"unknown key":     strings.Replace(good, "Graceless = true;", "Graceless = true; Gracefull = 1;", 1),
		"missing path":    strings.Replace(good, "/exports/none", "/exports/absent", 1),
		"duplicate id":    strings.Replace(good, "Export_Id = 2;", "Export_Id = 1;", 1),
		"bad client list": strings.Replace(good, "192.0.2.0/24", "192.0.2.0/99", 1),
	} {
		if err := d.Check(t.Context(), []byte(bad)); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("the check of a config with a %s: %v; want InvalidArgument", what, err)
		}
	}
}

func TestRenderRejects(t *testing.T) {
	good := goldenInputs()["rules"]
	cases := map[string]func(*nfs.Input){
		"pool injection":    func(in *nfs.Input) { in.Pool = "p;\n}" },
		"pool quote":        func(in *nfs.Input) { in.Pool = `p"` },
		"pool path":         func(in *nfs.Input) { in.Pool = "../p" },
		"volume injection":  func(in *nfs.Input) { in.Exports[0].Volume = "v\";\nEXPORT {" },
		"volume path":       func(in *nfs.Input) { in.Exports[0].Volume = "../../etc" },
		"volume twice":      func(in *nfs.Input) { in.Exports[1].Volume = in.Exports[0].Volume },
		"id zero":           func(in *nfs.Input) { in.Exports[0].ID = 0 },
		"id twice":          func(in *nfs.Input) { in.Exports[1].ID = in.Exports[0].ID },
		"port zero":         func(in *nfs.Input) { in.Port = 0 },
		"rule no clients":   func(in *nfs.Input) { in.Exports[0].Rules[0].Clients = nil },
		"rule host bits":    func(in *nfs.Input) { in.Exports[0].Rules[0] = rule(driver.ReadOnly, "198.18.1.2/15") },
		"rule access":       func(in *nfs.Input) { in.Exports[0].Rules[0].Access = "RW;\n}" },
		"rule zero prefix":  func(in *nfs.Input) { in.Exports[0].Rules[0].Clients = []netip.Prefix{{}} },
		"too many rules":    func(in *nfs.Input) { in.Exports[0].Rules = make([]driver.Export, driver.MaxExports+1) },
		"dir relative":      func(in *nfs.Input) { in.Dir = "inst" },
		"dir quote":         func(in *nfs.Input) { in.Dir = `/a"b` },
		"dir statement end": func(in *nfs.Input) { in.Dir = "/a;b" },
		"dir block":         func(in *nfs.Input) { in.Dir = "/a}{" },
		"dir newline":       func(in *nfs.Input) { in.Dir = "/a\nEXPORT {" },
	}
	for name, mutate := range cases {
		in := good
		in.Exports = cloneExports(good.Exports)
		mutate(&in)
		out, err := nfs.Render(in)
		if !errors.Is(err, errcode.InvalidArgument) || out != nil {
			t.Errorf("%s: Render = %q, %v; want InvalidArgument and no output", name, out, err)
		}
	}
}

func cloneExports(es []nfs.Export) []nfs.Export {
	out := make([]nfs.Export, len(es))
	for i, e := range es {
		out[i] = e
		out[i].Rules = append([]driver.Export(nil), e.Rules...)
	}
	return out
}

// TestBadDirs: Render and Open refuse every directory that could end a
// string or a statement in ganesha.conf or split a command line, and
// Open creates nothing.
func TestBadDirs(t *testing.T) {
	base := t.TempDir()
	dirs := append(lbtest.HostileDirs(base),
		base+"/a\"b", base+"/a;b", base+"/a b", base+"/a#b", base+"/a{b", base+"/a}b",
		base+"/x\";\nEXPORT {", base+"/a'b", base+"/a\\b", base+"/a`b")
	in := goldenInputs()["open"]
	lbtest.RunBadDirTests(t, base, dirs,
		func(dir string) error {
			in.Dir = dir
			out, err := nfs.Render(in)
			if out != nil {
				return errors.New("output")
			}
			return err
		},
		func(ctx context.Context, dir string) (io.Closer, error) {
			d, err := nfs.Open(ctx, dir, nil)
			if d == nil {
				return nil, err
			}
			return d, err
		})
}

// grammar is every line Render may produce. A line that matches none would
// be an injection.
var grammar = []*regexp.Regexp{
	regexp.MustCompile(`^# Rendered by muster \(drivers/nfs\) for pool [a-z0-9-]+; do not edit\.$`),
	regexp.MustCompile(`^(NFS_CORE_PARAM|NFSv4|EXPORT|    FSAL|    CLIENT) \{$`),
	regexp.MustCompile(`^( {4}| {0})\}$`),
	regexp.MustCompile(`^    (Protocols = 3, 4|mount_path_pseudo = true|NFS_Port = [0-9]+|Enable_(NLM|RQUOTA|UDP) = false|Graceless = true|Only_Numeric_Owners = true|RecoveryBackend = fs|Export_Id = [0-9]+|Transports = TCP|SecType = sys|Squash = No_Root_Squash|Access_Type = None);$`),
	regexp.MustCompile(`^    (RecoveryRoot|Path|Pseudo) = "[A-Za-z0-9/._+-]+";$`),
	regexp.MustCompile(`^        Name = VFS;$`),
	regexp.MustCompile(`^        Clients = (\*|[0-9a-f.:/]+(, [0-9a-f.:/]+)*);$`),
	regexp.MustCompile(`^        Access_Type = R[WO];$`),
}

var pathLine = regexp.MustCompile(`^    (?:RecoveryRoot|Path) = "([^"]*)";$`)

// checkGrammar asserts that every line of conf is one Render may write,
// that blocks balance, and that every path lies inside dir.
func checkGrammar(t *testing.T, conf, dir string) {
	t.Helper()
	depth := 0
	for i, line := range strings.Split(strings.TrimSuffix(conf, "\n"), "\n") {
		ok := false
		for _, re := range grammar {
			ok = ok || re.MatchString(line)
		}
		if !ok {
			t.Fatalf("line %d is not in the grammar: %q", i+1, line)
		}
		depth += strings.Count(line, "{") - strings.Count(line, "}")
		if depth < 0 || depth > 2 {
			t.Fatalf("line %d: nesting %d", i+1, depth)
		}
		if m := pathLine.FindStringSubmatch(line); m != nil {
			if rel, err := filepath.Rel(dir, m[1]); err != nil || strings.HasPrefix(rel, "..") || filepath.Clean(m[1]) != m[1] {
				t.Fatalf("line %d: path %q is not inside %q", i+1, m[1], dir)
			}
		}
	}
	if depth != 0 {
		t.Fatalf("unbalanced braces (%d)", depth)
	}
}

// FuzzRender: no input Render accepts adds a line, a block or a directive
// (the same structure rendered with plain values has as many lines and
// blocks), or puts a path outside the instance directory.
func FuzzRender(f *testing.F) {
	f.Add("pool", "/run/x", "vol", uint16(1), uint16(2049), "198.18.0.0/15", "rw", "2001:db8::/32", "ro")
	f.Add("p\n}", "/tmp/a b", "v\";", uint16(0), uint16(0), "198.18.1.2/15", "rw;", "*", "RO")
	f.Add("p", "/run/x/../../etc", "v", uint16(7), uint16(1), "0.0.0.0/0", "ro", "::/0", "rw")
	f.Fuzz(func(t *testing.T, pool, dir, volume string, id, port uint16, p1, a1, p2, a2 string) {
		var rules []driver.Export
		for _, r := range [][2]string{{p1, a1}, {p2, a2}} {
			if r[0] == "" {
				continue
			}
			p, _ := netip.ParsePrefix(r[0])
			rules = append(rules, driver.Export{Clients: []netip.Prefix{p}, Access: driver.Access(r[1])})
		}
		in := nfs.Input{Pool: pool, Dir: dir, Port: port, Exports: []nfs.Export{{Volume: volume, ID: id, Rules: rules}, {Volume: "other", ID: id + 1}}}
		conf, err := nfs.Render(in)
		if err != nil {
			if !errors.Is(err, errcode.InvalidArgument) || conf != nil {
				t.Fatalf("Render = %q, %v; want InvalidArgument and no output", conf, err)
			}
			return
		}
		checkGrammar(t, string(conf), dir)
		ref := nfs.Input{Pool: "p", Dir: "/run/x", Port: 1, Exports: []nfs.Export{{Volume: "v", ID: 1, Rules: cloneExports(in.Exports)[0].Rules}, {Volume: "o", ID: 2}}}
		for i := range ref.Exports[0].Rules {
			ref.Exports[0].Rules[i].Clients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}
		want, err := nfs.Render(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got, w := strings.Count(string(conf), "\n"), strings.Count(string(want), "\n"); got != w {
			t.Fatalf("%d lines, want %d:\n%s", got, w, conf)
		}
		if got, w := strings.Count(string(conf), "{"), strings.Count(string(want), "{"); got != w {
			t.Fatalf("%d blocks, want %d:\n%s", got, w, conf)
		}
	})
}
