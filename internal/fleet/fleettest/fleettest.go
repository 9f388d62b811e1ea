// Package fleettest starts fleets of simulated servers for the
// privileged end-to-end tests: a test package's TestMain calls Main, which
// builds the agent once, and its tests call Start.
package fleettest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/roottest"
)

var agentBinary string

// Main builds the agent for the privileged tests, runs the tests and
// removes the build; a TestMain returns os.Exit(Main(m)).
func Main(m *testing.M) int {
	if os.Getenv(roottest.EnvVar) == "1" {
		dir, err := os.MkdirTemp("", "e2e-agent-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if agentBinary, err = fleet.BuildAgent(context.Background(), dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

// Agent is the muster-agent program Main built.
func Agent() string { return agentBinary }

// Start starts n servers with opts (the agent Main built, its logs in the
// test's log) and the base image on each, and closes them when the test
// ends. The LXC driver (the default) needs root, LXC and busybox.
func Start(t *testing.T, n int, opts fleet.Options) *fleet.Fleet {
	t.Helper()
	needs := []roottest.Need{roottest.Binary("ip")}
	if opts.Driver == "" || opts.Driver == "lxc" {
		needs = append(needs, roottest.Binary("lxc-start"), roottest.Binary("busybox"))
	}
	roottest.Require(t, needs...)
	opts.AgentBinary, opts.AgentLog = agentBinary, Log(t)
	ctx := context.Background()
	f, err := fleet.Start(ctx, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("closing the fleet: %v", err)
		}
	})
	m, blob := drivertest.BaseImage(t)
	for _, s := range f.Servers {
		if _, err := s.Client.PutImage(ctx, m, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// Log sends what is written to it (the agents' logs) to t's log, shown on
// failure.
func Log(t *testing.T) testLog { return testLog{t} }

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
