package consultest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/musterkit/muster/internal/freeport"
)

// takeFirst returns a Picker whose first pick loses port which of it
// (0 HTTP, 1 Serf LAN, 2 Serf WAN, 3 server RPC) to network, as to a test
// running in parallel between the pick and the start, and the picks made.
func takeFirst(t *testing.T, network string, which int) (*freeport.Picker, *[][]int) {
	picks := &[][]int{}
	return &freeport.Picker{AfterPick: func(ports []int) {
		if len(*picks) == 0 {
			freeport.Hold(t, network, "127.0.0.1", ports[which])
		}
		*picks = append(*picks, ports)
	}}, picks
}

// TestStartDevRetriesTakenPort takes a port of the first start, TCP (the
// HTTP API) or UDP (Serf, which the pick did not check before): the agent
// exits naming it, and the second start, on other ports, serves.
func TestStartDevRetriesTakenPort(t *testing.T) {
	Require(t)
	for _, tc := range []struct {
		name, network string
		which         int
	}{{"HTTP over TCP", "tcp", 0}, {"Serf LAN over UDP", "udp", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			p, picks := takeFirst(t, tc.network, tc.which)
			addr, err := startDev(t, "127.0.0.1", p)
			if err != nil {
				t.Fatal(err)
			}
			if len(*picks) != 2 {
				t.Fatalf("%d starts, want 2", len(*picks))
			}
			if want := net.JoinHostPort("127.0.0.1", fmt.Sprint((*picks)[1][0])); addr != want {
				t.Fatalf("StartDev = %s, want the second pick's %s", addr, want)
			}
		})
	}
}

// fakeConsul puts a consul program on PATH that prints what line says
// (with $HTTP replaced by its -http-port) and exits 1.
func fakeConsul(t *testing.T, line string) {
	dir := t.TempDir()
	script := "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -http-port ] && HTTP=$2; shift; done\n" +
		"echo \"" + line + "\" >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "consul"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// TestStartDevRetriesOnlyCollisions: an agent whose port stays taken is
// started Tries times; one that fails otherwise, or names an address that
// is not its own, once.
func TestStartDevRetriesOnlyCollisions(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		starts     int
		inUse      bool
	}{
		{"always taken", "==> Error starting agent: listen tcp 127.0.0.1:$HTTP: bind: address already in use", freeport.Tries, true},
		{"another failure", "==> Error starting agent: listen tcp 127.0.0.1:$HTTP: bind: cannot assign requested address", 1, false},
		{"another address", "==> Error starting agent: listen tcp 127.0.0.1:1: bind: address already in use", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeConsul(t, tc.line)
			starts := 0
			_, err := startDev(t, "127.0.0.1", &freeport.Picker{AfterPick: func([]int) { starts++ }})
			// Other failures carry the agent's log.
			if err == nil || starts != tc.starts || errors.Is(err, freeport.ErrInUse) != tc.inUse || (!tc.inUse && !strings.Contains(err.Error(), "Error starting agent")) {
				t.Fatalf("%d starts, %v; want %d, in use %v", starts, err, tc.starts, tc.inUse)
			}
		})
	}
}
