package driver_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha/driver"
)

func good() *driver.Config {
	return &driver.Config{Name: "web", VirtualRouterID: 51, Interface: "eth0",
		Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.200")}, Source: netip.MustParseAddr("198.18.0.1"),
		Peers: []netip.Addr{netip.MustParseAddr("198.18.0.2")}, Priority: 100}
}

func TestValidate(t *testing.T) {
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*driver.Config){
		"vrid0": func(c *driver.Config) { c.VirtualRouterID = 0 }, "vrid256": func(c *driver.Config) { c.VirtualRouterID = 256 },
		"prio0": func(c *driver.Config) { c.Priority = 0 }, "prio255": func(c *driver.Config) { c.Priority = 255 },
		"name digit":   func(c *driver.Config) { c.Name = "1web" },
		"name long":    func(c *driver.Config) { c.Name = "a234567890123456789012345678901234" },
		"name newline": func(c *driver.Config) { c.Name = "w\n" },
		"if long":      func(c *driver.Config) { c.Interface = "eth0123456789012" },
		"if slash":     func(c *driver.Config) { c.Interface = "a/b" },
		"if dotdot":    func(c *driver.Config) { c.Interface = ".." },
		"vip v6":       func(c *driver.Config) { c.Addresses = []netip.Addr{netip.MustParseAddr("2001:db8::1")} },
		"vip mcast":    func(c *driver.Config) { c.Addresses = []netip.Addr{netip.MustParseAddr("224.0.0.18")} },
		"vip twice":    func(c *driver.Config) { c.Addresses = append(c.Addresses, c.Addresses[0]) },
		"vip=source":   func(c *driver.Config) { c.Addresses = []netip.Addr{c.Source} },
		"peer=vip":     func(c *driver.Config) { c.Peers = []netip.Addr{c.Addresses[0]} },
		"no source":    func(c *driver.Config) { c.Source = netip.Addr{} },
		"advert 0.5cs": func(c *driver.Config) { c.AdvertInterval = 5 * time.Millisecond },
		"advert 41s":   func(c *driver.Config) { c.AdvertInterval = 41 * time.Second },
		"delay neg":    func(c *driver.Config) { c.PreemptDelay = -time.Second },
		"delay long":   func(c *driver.Config) { c.PreemptDelay = 1001 * time.Second },
		"proc long":    func(c *driver.Config) { c.Track.Process = "a234567890123456" },
		"proc brace":   func(c *driver.Config) { c.Track.Process = "a}" },
	} {
		c := good()
		mut(c)
		if err := c.Validate(); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	var nilCfg *driver.Config
	if err := nilCfg.Validate(); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("nil: %v", err)
	}
}

func TestPlacement(t *testing.T) {
	c := good()
	got, err := driver.Placement(c, []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")})
	if err != nil || got[c.Addresses[0]] != netip.MustParsePrefix("198.18.0.200/24") {
		t.Fatalf("Placement = %v, %v", got, err)
	}
	// Held already: the VIP's own entry is not a network.
	if _, err := driver.Placement(c, []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.200/32")}); err != nil {
		t.Fatal(err)
	}
	for name, addrs := range map[string][]netip.Prefix{
		"outside":     {netip.MustParsePrefix("198.18.0.1/25"), netip.MustParsePrefix("10.0.0.1/8")},
		"no source":   {netip.MustParsePrefix("198.18.0.3/24")},
		"only itself": {netip.MustParsePrefix("198.18.0.200/24")},
	} {
		if _, err := driver.Placement(c, addrs); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: Placement = %v", name, err)
		}
	}
	bc := good()
	bc.Addresses = []netip.Addr{netip.MustParseAddr("198.18.0.255")}
	if _, err := driver.Placement(bc, []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("broadcast: %v", err)
	}
}

func TestEqualAndCapabilities(t *testing.T) {
	a, b := good(), good()
	b.Peers = []netip.Addr{netip.MustParseAddr("198.18.0.2")}
	b.AdvertInterval = time.Second
	if !driver.Equal(a, b) {
		t.Fatal("defaults differ")
	}
	b.Priority = 101
	if driver.Equal(a, b) {
		t.Fatal("priorities equal")
	}
	a.AdvertInterval = 100 * time.Millisecond
	if err := driver.CheckCapabilities(a, driver.Capabilities{}); !errors.Is(err, errcode.Unimplemented) {
		t.Fatal(err)
	}
}
