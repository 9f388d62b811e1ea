// Package drivertest is the conformance suite every floating-IP driver
// passes. A driver's tests call RunConformanceTests with a Harness that
// opens the speakers of two servers on one link; the suite checks the
// SPI's contract: validation and error codes, the election of the higher
// priority, failover when the master's speaker dies, preempt and
// nopreempt, idempotent Apply, orphan removal, Watch, and Close. The same
// test names run on every driver: memha and drivers/keepalived.
package drivertest

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/ha/driver"
)

// Harness opens the speakers the suite runs on.
type Harness struct {
	// Pair returns the speakers of two servers on one link, nothing
	// applied yet, and each one's configuration of one group (same name,
	// VRID and floating addresses, each the other's peer), a's priority
	// above b's and preempting. Pair registers its own cleanup.
	Pair func(t *testing.T) (a, b driver.Driver, ca, cb *driver.Config)
	// Kill makes d's speaker die abruptly, as a SIGKILL would.
	Kill func(t *testing.T, d driver.Driver)
	// AddOrphan puts addr on interface ifname of d's server, as a dead
	// speaker would leave it.
	AddOrphan func(t *testing.T, d driver.Driver, ifname string, addr netip.Prefix)
	// Timeout bounds each wait for an election; 0 means 10s.
	Timeout time.Duration
}

// Reloader is implemented by drivers that count how often they started or
// reloaded their speaker; the suite uses it to check that applying an
// equal config changes nothing.
type Reloader interface {
	Reloads() int
}

// Outside is an address the suite assumes lies outside every network of
// the harness's interfaces (TEST-NET-3).
var Outside = netip.MustParseAddr("203.0.113.77")

// RunConformanceTests runs the suite.
func RunConformanceTests(t *testing.T, h Harness) {
	if h.Timeout == 0 {
		h.Timeout = 10 * time.Second
	}
	t.Run("InvalidConfig", func(t *testing.T) { testInvalid(t, h) })
	t.Run("Election", func(t *testing.T) { testElection(t, h) })
	t.Run("ApplyEqualIsNoop", func(t *testing.T) { testIdempotent(t, h) })
	t.Run("FailoverAndPreempt", func(t *testing.T) { testFailover(t, h, false) })
	t.Run("FailoverAndNoPreempt", func(t *testing.T) { testFailover(t, h, true) })
	t.Run("OrphanRemoved", func(t *testing.T) { testOrphan(t, h) })
	t.Run("Close", func(t *testing.T) { testClose(t, h) })
}

// WaitState waits until d is in state st, holding every floating address
// of cfg if st is Master and none otherwise.
func WaitState(t testing.TB, d driver.Driver, cfg *driver.Config, st driver.State, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var s *driver.Status
	var err error
	for {
		s, err = d.Status(context.Background())
		if err == nil && s.State == st {
			want := []netip.Addr(nil)
			if st == driver.Master {
				want = cfg.Normalized().Addresses
			}
			if slices.Equal(s.Addresses, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s not reached within %v: %+v, %v", st, within, s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testInvalid(t *testing.T, h Harness) {
	a, _, ca, _ := h.Pair(t)
	for name, mut := range map[string]func(*driver.Config){
		"VRID0":            func(c *driver.Config) { c.VirtualRouterID = 0 },
		"VRID256":          func(c *driver.Config) { c.VirtualRouterID = 256 },
		"Priority0":        func(c *driver.Config) { c.Priority = 0 },
		"Priority255":      func(c *driver.Config) { c.Priority = 255 },
		"AddressOutside":   func(c *driver.Config) { c.Addresses = []netip.Addr{Outside} },
		"NoAddress":        func(c *driver.Config) { c.Addresses = nil },
		"NoPeer":           func(c *driver.Config) { c.Peers = nil },
		"UnknownInterface": func(c *driver.Config) { c.Interface = "nosuchif0" },
		"InterfaceNewline": func(c *driver.Config) { c.Interface = "eth0\nx" },
		"NameBrace":        func(c *driver.Config) { c.Name = "g}" },
		"NameQuote":        func(c *driver.Config) { c.Name = `g"` },
		"NameHash":         func(c *driver.Config) { c.Name = "g#" },
		"NameSpace":        func(c *driver.Config) { c.Name = "g x" },
		"ProcessNewline":   func(c *driver.Config) { c.Track.Process = "x\n}" },
		"AdvertOffGrid":    func(c *driver.Config) { c.AdvertInterval = 105 * time.Millisecond },
		"PreemptDelayFrac": func(c *driver.Config) { c.PreemptDelay = 1500 * time.Millisecond },
		"SourceIsPeer":     func(c *driver.Config) { c.Peers = []netip.Addr{c.Source} },
	} {
		t.Run(name, func(t *testing.T) {
			c := *ca
			mut(&c)
			if err := a.Apply(t.Context(), &c); !errors.Is(err, errcode.InvalidArgument) {
				t.Fatalf("Apply = %v, want InvalidArgument", err)
			}
			st, err := a.Status(t.Context())
			if err != nil || st.State != driver.Stopped || len(st.Addresses) != 0 {
				t.Fatalf("after a rejected Apply: %+v, %v; want stopped, no addresses", st, err)
			}
		})
	}
	if err := a.Apply(t.Context(), nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Apply(nil) = %v, want InvalidArgument", err)
	}
}

func testElection(t *testing.T, h Harness) {
	a, b, ca, cb := h.Pair(t)
	ev, err := a.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(t.Context(), ca); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(t.Context(), cb); err != nil {
		t.Fatal(err)
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
	WaitState(t, b, cb, driver.Backup, h.Timeout)
	timeout := time.After(h.Timeout)
	for {
		select {
		case e := <-ev:
			if e.Kind == driver.StateChanged && e.State == driver.Master {
				if e.Group != ca.Name {
					t.Errorf("event group %q, want %q", e.Group, ca.Name)
				}
				return
			}
		case <-timeout:
			t.Fatal("Watch did not report the master state")
		}
	}
}

func testIdempotent(t *testing.T, h Harness) {
	a, b, ca, cb := h.Pair(t)
	for _, x := range []struct {
		d driver.Driver
		c *driver.Config
	}{{a, ca}, {b, cb}} {
		if err := x.d.Apply(t.Context(), x.c); err != nil {
			t.Fatal(err)
		}
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
	r, ok := a.(Reloader)
	before := 0
	if ok {
		before = r.Reloads()
	}
	same := *ca
	same.Peers = slices.Clone(ca.Peers)
	slices.Reverse(same.Peers)
	if err := a.Apply(t.Context(), &same); err != nil {
		t.Fatal(err)
	}
	if ok && r.Reloads() != before {
		t.Fatalf("an equal Apply reloaded (%d -> %d)", before, r.Reloads())
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
}

func testFailover(t *testing.T, h Harness, noPreempt bool) {
	a, b, ca, cb := h.Pair(t)
	ca.NoPreempt, cb.NoPreempt = noPreempt, noPreempt
	if err := a.Apply(t.Context(), ca); err != nil {
		t.Fatal(err)
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
	if err := b.Apply(t.Context(), cb); err != nil {
		t.Fatal(err)
	}
	WaitState(t, b, cb, driver.Backup, h.Timeout)
	h.Kill(t, a)
	WaitState(t, b, cb, driver.Master, h.Timeout)
	WaitState(t, a, ca, driver.Stopped, h.Timeout) // and the dead speaker's addresses are gone
	// Apply starts a dead speaker again.
	if err := a.Apply(t.Context(), ca); err != nil {
		t.Fatal(err)
	}
	if noPreempt {
		WaitState(t, a, ca, driver.Backup, h.Timeout)
		time.Sleep(500 * time.Millisecond)
		WaitState(t, a, ca, driver.Backup, h.Timeout)
		WaitState(t, b, cb, driver.Master, h.Timeout)
	} else {
		WaitState(t, a, ca, driver.Master, h.Timeout)
		WaitState(t, b, cb, driver.Backup, h.Timeout)
	}
}

func testOrphan(t *testing.T, h Harness) {
	a, b, ca, cb := h.Pair(t)
	if err := a.Apply(t.Context(), ca); err != nil {
		t.Fatal(err)
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
	// b's server holds the floating address though no speaker runs there.
	h.AddOrphan(t, b, cb.Interface, netip.PrefixFrom(cb.Addresses[0], 32))
	if err := b.Apply(t.Context(), cb); err != nil {
		t.Fatal(err)
	}
	WaitState(t, b, cb, driver.Backup, h.Timeout)
	// Close removes one too: an address left on the interface while the
	// backup ran.
	h.AddOrphan(t, b, cb.Interface, netip.PrefixFrom(cb.Addresses[0], 32))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := b.Status(t.Context())
	if err != nil || st.State != driver.Stopped || len(st.Addresses) != 0 {
		t.Fatalf("after Close: %+v, %v; want stopped, no addresses", st, err)
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
}

func testClose(t *testing.T, h Harness) {
	a, b, ca, cb := h.Pair(t)
	if err := a.Apply(t.Context(), ca); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(t.Context(), cb); err != nil {
		t.Fatal(err)
	}
	WaitState(t, a, ca, driver.Master, h.Timeout)
	ev, err := a.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	WaitState(t, b, cb, driver.Master, h.Timeout)
	st, err := a.Status(t.Context())
	if err != nil || st.State != driver.Stopped || len(st.Addresses) != 0 {
		t.Fatalf("after Close: %+v, %v; want stopped, no addresses", st, err)
	}
	for range ev { // closed by Close
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	if err := a.Apply(t.Context(), ca); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Apply after Close: got error %v (code %v), want code %v", err, errcode.Of(err), errcode.FailedPrecondition)
	}
	if _, err := a.Watch(t.Context()); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Watch after Close: got error %v (code %v), want code %v", err, errcode.Of(err), errcode.FailedPrecondition)
	}
	if st, err := a.Status(t.Context()); err != nil || st.State != driver.Stopped || len(st.Addresses) != 0 {
		t.Fatalf("Status after Close and Apply: %+v, %v; want stopped, no addresses", st, err)
	}
}
