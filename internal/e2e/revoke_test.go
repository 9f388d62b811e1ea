package e2e

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/internal/fleet/fleettest"
	"github.com/musterkit/muster/roottest"
)

// TestRevokedAgentRefusedByFleet revokes s2 in a fleet of three real
// muster-agent processes (memory driver) in simulated servers: the
// orchestrator refuses it, s0 and s1 refuse to pull from it and refuse its
// certificate as a client, and s0 still does after a restart.
func TestRevokedAgentRefusedByFleet(t *testing.T) {
	roottest.Require(t, roottest.Binary("ip"))
	ctx := context.Background()
	f, err := fleet.Start(ctx, 3, fleet.Options{AgentBinary: fleettest.Agent(), Driver: "memory", Networks: []string{"memory"}, AgentLog: fleettest.Log(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("closing the fleet: %v", err)
		}
	})
	s0, s1, s2 := f.Servers[0], f.Servers[1], f.Servers[2]
	m, blob := drivertest.BaseImage(t)
	if _, err := s2.Client.PutImage(ctx, m, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Client.Create(ctx, &driver.Spec{Name: "box", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s0.Client.Pull(ctx, s2.Addr, "box", "", nil); err != nil {
		t.Fatalf("s0 pulls from s2 before the revocation: %v", err)
	}
	s2creds, err := pki.LoadCredentials(filepath.Join(s2.Dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}

	crl, err := f.Revoke(ctx, "s2")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CRL #%v revokes %d certificates", crl.Number(), crl.Len())
	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errcode.PermissionDenied) || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("%s: got %v, want PermissionDenied naming the revocation", what, err)
		}
	}
	// A call on a pooled connection that s2 cut as it took the CRL may
	// fail as a closed connection; the next one is refused.
	if _, err = s2.Client.List(ctx); !errors.Is(err, errcode.PermissionDenied) {
		t.Logf("the first call after the revocation: %v", err)
		_, err = s2.Client.List(ctx)
	}
	denied("the orchestrator's client of s2", err)
	_, err = agent.Dial(ctx, s2.Addr, f.Credentials(), nil)
	denied("the orchestrator dials s2", err)
	_, err = s0.Client.Pull(ctx, s2.Addr, "box", "again", nil)
	denied("s0 pulls from s2", err)
	_, err = s1.Client.Pull(ctx, s2.Addr, "box", "", nil)
	denied("s1 pulls from s2", err)
	for _, s := range []*fleet.Server{s0, s1} {
		if c, err := agent.Dial(ctx, s.Addr, s2creds, nil); err == nil {
			c.Close()
			t.Errorf("%s accepts s2's certificate from a client", s.Name)
		}
	}
	if _, err := s1.Client.Pull(ctx, s0.Addr, "box", "", nil); err != nil {
		t.Errorf("s1 pulls from s0 after the revocation: %v", err)
	}

	// The agent keeps the CRL in its directory across a restart.
	if err := s0.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := agent.Dial(ctx, s0.Addr, s2creds, nil); err == nil {
		c.Close()
		t.Error("s0 restarted accepts s2's certificate")
	}
	if held, err := s0.Client.CRL(ctx); err != nil || held.Number().Cmp(crl.Number()) != 0 {
		t.Errorf("s0 restarted holds CRL %v, %v; want #%v", held, err, crl.Number())
	}
}
