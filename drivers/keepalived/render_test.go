package keepalived_test

import (
	"errors"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/drivers/keepalived"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/internal/golden"
)

// goldenDir is the instance directory golden files are rendered for.
const goldenDir = "/run/muster-golden"

func goldenInputs() map[string]keepalived.Input {
	base := driver.Config{Name: "web", VirtualRouterID: 51, Interface: "eth0",
		Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.200")}, Source: netip.MustParseAddr("198.18.0.1"),
		Peers: []netip.Addr{netip.MustParseAddr("198.18.0.2")}, Priority: 150}
	pre := map[netip.Addr]netip.Prefix{
		netip.MustParseAddr("198.18.0.200"): netip.MustParsePrefix("198.18.0.200/24"),
		netip.MustParseAddr("198.18.0.201"): netip.MustParsePrefix("198.18.0.201/24"),
	}
	fast := base
	fast.AdvertInterval = 100 * time.Millisecond
	fast.PreemptDelay = 5 * time.Second
	nopre := base
	nopre.NoPreempt = true
	nopre.AdvertInterval = 1250 * time.Millisecond
	nopre.Addresses = []netip.Addr{netip.MustParseAddr("198.18.0.201"), netip.MustParseAddr("198.18.0.200")}
	nopre.Peers = []netip.Addr{netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("198.18.0.2")}
	tracked := fast
	tracked.Track = driver.Track{Process: "haproxy", TCPPort: 8080}
	return map[string]keepalived.Input{
		"default":   {Config: &base, Prefixes: pre, Dir: goldenDir},
		"fast":      {Config: &fast, Prefixes: pre, Dir: goldenDir},
		"nopreempt": {Config: &nopre, Prefixes: pre, Dir: goldenDir},
		"tracked":   {Config: &tracked, Prefixes: pre, Dir: goldenDir},
		"events":    {Config: &tracked, Prefixes: pre, Dir: goldenDir, ProcessEvents: true},
	}
}

func TestRenderGolden(t *testing.T) {
	for name, in := range goldenInputs() {
		t.Run(name, func(t *testing.T) {
			text, err := keepalived.Render(in)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, filepath.Join("testdata", name+".conf"), []byte(text))
			checkGrammar(t, text)
		})
	}
}

// TestGoldenConfigsValid runs keepalived -t over every golden config.
func TestGoldenConfigsValid(t *testing.T) {
	requireRoot(t)
	for name := range goldenInputs() {
		t.Run(name, func(t *testing.T) {
			out, err := exec.Command("keepalived", "-t", "-l", "-G", "-f", filepath.Join("testdata", name+".conf")).CombinedOutput()
			if err != nil {
				t.Fatalf("keepalived -t: %v\n%s", err, out)
			}
		})
	}
}

func TestRenderRejects(t *testing.T) {
	in := goldenInputs()["tracked"]
	bad := *in.Config
	bad.Interface = "eth0\n}"
	if _, err := keepalived.Render(keepalived.Input{Config: &bad, Dir: goldenDir}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Render = %v", err)
	}
	for _, dir := range []string{"relative", "/a b", "/a\"b", "/a{", "/a#", "/a/../b", "/a\n"} {
		if _, err := keepalived.Render(keepalived.Input{Config: in.Config, Dir: dir}); !errors.Is(err, errcode.InvalidArgument) {
			t.Fatalf("Render with dir %q = %v", dir, err)
		}
	}
}

// checkGrammar asserts the structure an injection would break: braces
// balance, every brace ends its line, no comment but the header, no
// quote except the one script line.
func checkGrammar(t *testing.T, text string) {
	t.Helper()
	depth := 0
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, line := range lines {
		l := strings.TrimSpace(line)
		if i > 0 && strings.ContainsAny(l, "#!") {
			t.Fatalf("line %d has a comment: %q", i+1, line)
		}
		if strings.Contains(l, `"`) && !(strings.HasPrefix(l, `script "`) && strings.Count(l, `"`) == 2 && strings.HasSuffix(l, `"`)) {
			t.Fatalf("line %d has a stray quote: %q", i+1, line)
		}
		for j, c := range l {
			switch c {
			case '{':
				if j != len(l)-1 {
					t.Fatalf("line %d: brace inside a line: %q", i+1, line)
				}
				depth++
			case '}':
				if l != "}" {
					t.Fatalf("line %d: brace inside a line: %q", i+1, line)
				}
				depth--
			}
		}
		if depth < 0 || depth > 2 {
			t.Fatalf("line %d: nesting %d", i+1, depth)
		}
	}
	if depth != 0 {
		t.Fatalf("unbalanced braces (%d)", depth)
	}
	if n := strings.Count(text, "vrrp_instance "); n != 1 {
		t.Fatalf("%d vrrp_instance blocks", n)
	}
}

// FuzzRender: no input that passes validation can add a line, a brace, a
// quote or a comment.
func FuzzRender(f *testing.F) {
	f.Add("web", "eth0", "haproxy", 51, 150, uint16(8080), int64(100), "/run/x", false)
	f.Add("web", "eth0", "haproxy", 51, 150, uint16(8080), int64(100), "/run/x", true)
	f.Add("w\n}", "eth0 #", "a\"b", 1, 1, uint16(0), int64(1000), "/tmp/a b", false)
	f.Fuzz(func(t *testing.T, name, iface, proc string, vrid, prio int, port uint16, advertMs int64, dir string, events bool) {
		cfg := &driver.Config{Name: name, VirtualRouterID: vrid, Interface: iface,
			Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.200")}, Source: netip.MustParseAddr("198.18.0.1"),
			Peers: []netip.Addr{netip.MustParseAddr("198.18.0.2")}, Priority: prio,
			AdvertInterval: time.Duration(advertMs) * time.Millisecond, Track: driver.Track{Process: proc, TCPPort: port}}
		text, err := keepalived.Render(keepalived.Input{Config: cfg, Dir: dir, ProcessEvents: events})
		if err != nil {
			if !errors.Is(err, errcode.InvalidArgument) || text != "" {
				t.Fatalf("Render = %q, %v", text, err)
			}
			return
		}
		checkGrammar(t, text)
		// The same structure with plain values has as many lines.
		ref := *cfg
		ref.Name, ref.Interface = "g", "eth0"
		if ref.Track.Process != "" {
			ref.Track.Process = "p"
		}
		refText, err := keepalived.Render(keepalived.Input{Config: &ref, Dir: "/run/x", ProcessEvents: events})
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Count(refText, "\n")
		if got := strings.Count(text, "\n"); got != want {
			t.Fatalf("%d lines, want %d:\n%s", got, want, text)
		}
	})
}
