package driver_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/drivertest"
)

func TestGoldenConfigsValid(t *testing.T) {
	for name, cfg := range drivertest.GoldenConfigs() {
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !driver.Equal(cfg, cfg.Normalized()) {
			t.Errorf("%s: not Equal to its normalized form", name)
		}
	}
}

func TestBadConfigs(t *testing.T) {
	for _, bad := range drivertest.BadConfigs() {
		cfg := drivertest.GoldenConfigs()["tcp"]
		bad.Mutate(cfg)
		if err := cfg.Validate(); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: Validate = %v, want InvalidArgument", bad.Name, err)
		}
	}
}

func TestValidators(t *testing.T) {
	for _, tc := range []struct {
		what string
		err  error
		ok   bool
	}{
		{"host", driver.ValidHost("", "a.example.test", false), true},
		{"wildcard host", driver.ValidHost("", "*.example.test", true), true},
		{"wildcard not allowed", driver.ValidHost("", "*.example.test", false), false},
		{"host with underscore", driver.ValidHost("", "a_b.test", false), false},
		{"host with trailing dot", driver.ValidHost("", "a.test.", false), false},
		{"host label with leading hyphen", driver.ValidHost("", "-a.test", false), false},
		{"overlong host", driver.ValidHost("", strings.Repeat("a.", 130)+"a", false), false},
		{"IPv6 address", driver.ValidAddress("", "2001:db8::1"), true},
		{"zoned address", driver.ValidAddress("", "fe80::1%eth0"), false},
		{"unspecified address", driver.ValidAddress("", "0.0.0.0"), false},
		{"bad dotted quad", driver.ValidAddress("", "1.2.3"), false},
		{"path root", driver.ValidPath("", "/"), true},
		{"path", driver.ValidPath("", "/api/v1.2"), true},
		{"path trailing slash", driver.ValidPath("", "/api/"), false},
		{"path double slash", driver.ValidPath("", "/a//b"), false},
		{"path percent", driver.ValidPath("", "/a%20b"), false},
		{"path backslash", driver.ValidPath("", `/a\b`), false},
		{"header", driver.ValidHeader("", driver.Header{Name: "X-A", Value: "max-age=60,private"}), true},
		{"header value with backslash", driver.ValidHeader("", driver.Header{Name: "X-A", Value: `a\`}), false},
		{"header value with tab", driver.ValidHeader("", driver.Header{Name: "X-A", Value: "a\tb"}), false},
		{"header value with brace", driver.ValidHeader("", driver.Header{Name: "X-A", Value: "{"}), false},
		{"header value with hash", driver.ValidHeader("", driver.Header{Name: "X-A", Value: "#"}), false},
		{"header value non-ASCII", driver.ValidHeader("", driver.Header{Name: "X-A", Value: "é"}), false},
		{"empty header value", driver.ValidHeader("", driver.Header{Name: "X-A"}), false},
		{"name", driver.ValidName("", "web-1"), true},
		{"name with dot", driver.ValidName("", "web.1"), false},
	} {
		if (tc.err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.what, tc.err, tc.ok)
		}
		if tc.err != nil && !errors.Is(tc.err, errcode.InvalidArgument) {
			t.Errorf("%s: %v is not InvalidArgument", tc.what, tc.err)
		}
	}
}

// TestValidatorsQuoteWholeCharacters checks that an error quotes the
// offending character, not the first byte of its UTF-8 encoding (which
// printed 'Ð' for any Cyrillic letter).
func TestValidatorsQuoteWholeCharacters(t *testing.T) {
	for _, tc := range []struct {
		what string
		err  error
		want string
	}{
		{"host", driver.ValidHost("host", "пример.test", false), `'п'`},
		{"wildcard host", driver.ValidHost("host", "*.bücher.test", true), `'ü'`},
		{"path", driver.ValidPath("path", "/café"), `'é'`},
		{"header name", driver.ValidHeader("header", driver.Header{Name: "X-Ünicode", Value: "v"}), `'Ü'`},
		{"header value", driver.ValidHeader("header", driver.Header{Name: "X-A", Value: "naïve"}), `'ï'`},
		{"bidi override", driver.ValidHost("host", "a\u202eb.test", false), `'\u202e'`},
	} {
		if !errors.Is(tc.err, errcode.InvalidArgument) {
			t.Errorf("%s: err = %v, want InvalidArgument", tc.what, tc.err)
			continue
		}
		if msg := tc.err.Error(); !strings.Contains(msg, "contains "+tc.want) {
			t.Errorf("%s: %q does not say it contains %s", tc.what, msg, tc.want)
		}
	}
}

func TestValidateRules(t *testing.T) {
	base := func() *driver.Config { return drivertest.GoldenConfigs()["ingress"] }
	for _, tc := range []struct {
		name   string
		mutate func(*driver.Config)
	}{
		{"pool used by TCP and HTTP", func(c *driver.Config) {
			c.Frontends = append(c.Frontends, driver.Frontend{Name: "raw", Protocol: driver.TCP, Address: "198.18.0.254", Port: 81, DefaultPool: "web"})
		}},
		{"overlapping binds", func(c *driver.Config) {
			c.Frontends = append(c.Frontends, driver.Frontend{Name: "all", Protocol: driver.HTTP, Address: "0.0.0.0", Port: 80, DefaultPool: "web"})
		}},
		{"timeout over interval", func(c *driver.Config) { c.Pools[1].HealthCheck.Timeout = 2 * time.Second }},
		{"rise 101", func(c *driver.Config) { c.Pools[1].HealthCheck.Rise = 101 }},
		{"TCP check with a path", func(c *driver.Config) {
			c.Pools[1].HealthCheck = &driver.HealthCheck{Type: driver.TCPCheck, Path: "/x"}
		}},
		{"redirect port without host", func(c *driver.Config) {
			c.Frontends[0].Routes[2].Redirect = &driver.Redirect{Scheme: "https", Port: 8443}
		}},
		{"redirect that changes nothing", func(c *driver.Config) {
			c.Frontends[0].Routes[2].Redirect = &driver.Redirect{StatusCode: 301}
		}},
		{"duplicate route", func(c *driver.Config) {
			c.Frontends[0].Routes = append(c.Frontends[0].Routes, c.Frontends[0].Routes[0])
		}},
		{"duplicate server", func(c *driver.Config) {
			c.Pools[0].Servers = append(c.Pools[0].Servers, c.Pools[0].Servers[0])
		}},
	} {
		c := base()
		tc.mutate(c)
		if err := c.Validate(); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: Validate = %v, want InvalidArgument", tc.name, err)
		}
	}
}

func TestNormalizedAndEqual(t *testing.T) {
	a := &driver.Config{Pools: []driver.Pool{{Name: "p", Servers: []driver.Server{{Name: "s", Address: "A.Example.Test", Port: 80}},
		HealthCheck: &driver.HealthCheck{Type: driver.HTTPCheck}}}}
	n := a.Normalized()
	s := n.Pools[0].Servers[0]
	hc := n.Pools[0].HealthCheck
	if n.Pools[0].Algorithm != driver.RoundRobin || s.Weight != 1 || s.State != driver.Ready || s.Address != "a.example.test" ||
		hc.Interval != 2*time.Second || hc.Timeout != 2*time.Second || hc.Rise != 2 || hc.Fall != 3 || hc.Path != "/" {
		t.Fatalf("Normalized = %+v %+v", n.Pools[0], *hc)
	}
	if !driver.Equal(a, n) {
		t.Fatal("a config is not Equal to its normalized form")
	}
	b := a.Normalized()
	b.Pools[0].Servers[0].Weight = 2
	if driver.Equal(a, b) {
		t.Fatal("configs with different weights are Equal")
	}
	if a.Pools[0].Servers[0].Weight != 0 {
		t.Fatal("Normalized changed its receiver")
	}
}

func TestServerOperationsOnConfig(t *testing.T) {
	c := drivertest.GoldenConfigs()["ingress"]
	if _, err := c.AddServer("web", driver.Server{Name: "web-1", Address: "198.18.0.9", Port: 1}); !errors.Is(err, errcode.AlreadyExists) {
		t.Errorf("adding a taken name: %v", err)
	}
	if _, err := c.RemoveServer("nope", "web-1"); !errors.Is(err, errcode.NotFound) {
		t.Errorf("removing from an unknown pool: %v", err)
	}
	n, err := c.SetState("web", "web-1", driver.Drain)
	if err != nil || n.Pool("web").Server("web-1").State != driver.Drain || c.Pool("web").Server("web-1").State != "" {
		t.Errorf("SetState: %v; new %v old %v", err, n.Pool("web").Server("web-1").State, c.Pool("web").Server("web-1").State)
	}
}

func TestCertificateNames(t *testing.T) {
	ca := drivertest.NewCA(t)
	c := ca.Issue(t, "x", "x.example.test", "y.example.test")
	names, err := c.Names()
	if err != nil || strings.Join(names, ",") != "x.example.test,y.example.test" {
		t.Fatalf("Names = %v, %v", names, err)
	}
	c.ServerNames = []string{"z.example.test"}
	if names, _ := c.Names(); len(names) != 1 || names[0] != "z.example.test" {
		t.Fatalf("Names with ServerNames = %v", names)
	}
}

func FuzzValidate(f *testing.F) {
	f.Add("web", "a.example.test", "/api", "X-Id", "v1", "198.18.0.1", uint8(3))
	f.Add("web", "a\n", "/a;", "X:", "a b", "1.2.3.4 backup", uint8(1))
	f.Fuzz(func(t *testing.T, name, host, path, hn, hv, addr string, n uint8) {
		cfg := drivertest.FuzzConfig(name, host, path, hn, hv, addr, n)
		if cfg.Validate() != nil {
			return
		}
		// Whatever passes has only safe characters in the text fields
		// it uses (routes and their headers only on HTTP, odd n).
		used := []string{name, path, addr}
		if n%2 == 1 {
			used = append(used, host, hn, hv)
		}
		for _, s := range used {
			if strings.ContainsAny(s, " \t\r\n\"'`\\{};#$%") {
				t.Fatalf("Validate accepted %q", s)
			}
		}
		if !driver.Equal(cfg, cfg.Normalized()) {
			t.Fatal("not Equal to its normalized form")
		}
	})
}
