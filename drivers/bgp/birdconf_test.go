package bgp

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/musterkit/muster/internal/golden"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/roottest"
)

// BIRD 2 is the independent peer of the interop test. Its configuration
// follows the project's rule for rendered configs: a typed model, a pure
// render function that validates every name and address, golden files
// (go test -update rewrites them), and the real binary's parse check
// (bird -p) before BIRD starts with it.

// birdConfig is a BIRD 2 configuration: one router announcing static
// ranges to eBGP neighbours and exporting what it learns to its kernel.
type birdConfig struct {
	RouterID netip.Addr
	// KernelExport exports learnt routes to the kernel's main table.
	KernelExport bool
	// Static are the ranges BIRD announces, each a device route.
	Static []birdStatic
	// Neighbors are the BGP sessions.
	Neighbors []birdNeighbor
}

type birdStatic struct {
	Prefix    netip.Prefix
	Interface string
}

type birdNeighbor struct {
	// Name is the protocol's name in BIRD: a letter, then letters,
	// digits and underscores.
	Name     string
	Local    netip.Addr
	LocalASN uint32
	Address  netip.Addr
	ASN      uint32
	Port     uint16 // 0: 179
	HoldTime time.Duration
	Password string // TCP MD5; printable ASCII without quotes or backslashes
}

var birdName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)

func (c *birdConfig) validate() error {
	if !c.RouterID.Is4() {
		return fmt.Errorf("router ID %s is not IPv4", c.RouterID)
	}
	for _, s := range c.Static {
		if !s.Prefix.IsValid() || !s.Prefix.Addr().Is4() || s.Prefix != s.Prefix.Masked() {
			return fmt.Errorf("static prefix %s is not a masked IPv4 prefix", s.Prefix)
		}
		if err := names.Interface(s.Interface); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	for _, n := range c.Neighbors {
		if !birdName.MatchString(n.Name) || names[n.Name] {
			return fmt.Errorf("neighbour name %q is not a unique BIRD symbol", n.Name)
		}
		names[n.Name] = true
		for _, a := range []netip.Addr{n.Local, n.Address} {
			if !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
				return fmt.Errorf("neighbour %s: address %s is not unicast IPv4", n.Name, a)
			}
		}
		if n.ASN == 0 || n.LocalASN == 0 {
			return fmt.Errorf("neighbour %s: ASNs must be set", n.Name)
		}
		if n.HoldTime != 0 && (n.HoldTime < 3*time.Second || n.HoldTime > 65535*time.Second || n.HoldTime%time.Second != 0) {
			return fmt.Errorf("neighbour %s: hold time %v is not whole seconds from 3s", n.Name, n.HoldTime)
		}
		if len(n.Password) > 80 || strings.ContainsFunc(n.Password, func(r rune) bool { return r < 0x20 || r > 0x7e || r == '"' || r == '\'' || r == '\\' }) {
			return fmt.Errorf("neighbour %s: the password holds characters that are not allowed", n.Name)
		}
	}
	return nil
}

var birdTemplate = template.Must(template.New("bird.conf").Funcs(template.FuncMap{
	"seconds":   func(d time.Duration) int64 { return int64(d / time.Second) },
	"keepalive": func(d time.Duration) int64 { return max(int64(d/time.Second)/3, 1) },
}).Parse(`# Rendered by muster's bgp driver tests. Do not edit.
router id {{.RouterID}};
log stderr all;

protocol device {
	scan time 10;
}

protocol kernel {
	ipv4 {
		import none;
		export {{if .KernelExport}}where source = RTS_BGP{{else}}none{{end}};
	};
}

protocol static announced {
	ipv4;
{{- range .Static}}
	route {{.Prefix}} via "{{.Interface}}";
{{- end}}
}
{{range .Neighbors}}
protocol bgp {{.Name}} {
	local {{.Local}} as {{.LocalASN}};
	neighbor {{.Address}}{{if .Port}} port {{.Port}}{{end}} as {{.ASN}};
{{- if .HoldTime}}
	hold time {{seconds .HoldTime}};
	keepalive time {{keepalive .HoldTime}};
{{- end}}
	connect retry time 2;
	error wait time 1, 5;
{{- if .Password}}
	password "{{.Password}}";
{{- end}}
	ipv4 {
		import all;
		export where proto = "announced";
	};
}
{{end -}}
`))

// renderBird returns c as a BIRD 2 configuration file, or the first
// problem with c.
func renderBird(c *birdConfig) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := birdTemplate.Execute(&b, c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// exampleBird is the configuration of the golden file.
func exampleBird() *birdConfig {
	return &birdConfig{
		RouterID:     netip.MustParseAddr("198.18.0.2"),
		KernelExport: true,
		Static:       []birdStatic{{Prefix: netip.MustParsePrefix("198.19.99.0/24"), Interface: "mbird0"}},
		Neighbors: []birdNeighbor{{
			Name: "muster_h0", Local: netip.MustParseAddr("198.18.0.2"), LocalASN: 64600,
			Address: netip.MustParseAddr("198.18.0.1"), ASN: 64512, Port: 1179,
			HoldTime: 3 * time.Second, Password: "s3cret-md5",
		}},
	}
}

func TestRenderBirdGolden(t *testing.T) {
	got, err := renderBird(exampleBird())
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, filepath.Join("testdata", "bird.conf"), got)
}

// TestBirdAcceptsGolden has the real binary parse the golden config.
func TestBirdAcceptsGolden(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("bird", "bird2"))
	if err := birdParse(filepath.Join("testdata", "bird.conf")); err != nil {
		t.Fatal(err)
	}
}

func TestRenderBirdRejects(t *testing.T) {
	for name, mutate := range map[string]func(*birdConfig){
		"IPv6 router ID":        func(c *birdConfig) { c.RouterID = netip.MustParseAddr("2001:db8::1") },
		"unmasked prefix":       func(c *birdConfig) { c.Static[0].Prefix = netip.MustParsePrefix("198.19.99.1/24") },
		"interface with quote":  func(c *birdConfig) { c.Static[0].Interface = `br"0` },
		"name with space":       func(c *birdConfig) { c.Neighbors[0].Name = "a b" },
		"name with brace":       func(c *birdConfig) { c.Neighbors[0].Name = "x}" },
		"duplicate name":        func(c *birdConfig) { c.Neighbors = append(c.Neighbors, c.Neighbors[0]) },
		"no neighbour address":  func(c *birdConfig) { c.Neighbors[0].Address = netip.Addr{} },
		"no ASN":                func(c *birdConfig) { c.Neighbors[0].ASN = 0 },
		"password with quote":   func(c *birdConfig) { c.Neighbors[0].Password = `a";` },
		"password with newline": func(c *birdConfig) { c.Neighbors[0].Password = "a\nb" },
		"hold time 1s":          func(c *birdConfig) { c.Neighbors[0].HoldTime = time.Second },
	} {
		c := exampleBird()
		mutate(c)
		if _, err := renderBird(c); err == nil {
			t.Errorf("%s: rendered without error", name)
		}
	}
}

// birdParse checks a configuration file with bird -p.
func birdParse(path string) error {
	out, err := exec.Command("bird", "-p", "-c", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bird -p -c %s: %v: %s", path, err, out)
	}
	return nil
}
