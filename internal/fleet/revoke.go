package fleet

import (
	"context"
	"fmt"

	"github.com/musterkit/muster/agent/pki"
)

// Credentials returns what the orchestrator's clients of the agents
// authenticate with: its certificate, and the CRL Revoke put in force.
func (f *Fleet) Credentials() pki.Source { return f.keys }

// Revoke revokes every certificate the fleet's CA issued to server name:
// the CA signs a new CRL, the orchestrator's clients take it (they refuse
// that agent from their next call on), and it is pushed to every other
// agent, which refuses that agent from then on, as a client and as a
// server, and keeps the CRL across restarts. (The agents would also fetch
// it from the join server within their --crl-interval.) The revoked
// server's agent keeps running; Close leaves its containers to the removal
// of its directory.
func (f *Fleet) Revoke(ctx context.Context, name string) (*pki.CRL, error) {
	crl, err := f.ca.RevokeName(name)
	if err != nil {
		return nil, err
	}
	f.revoked[name] = true
	if _, err := f.keys.SetCRL(crl.DER()); err != nil {
		return nil, err
	}
	for _, s := range f.Servers {
		if f.revoked[s.Name] {
			continue
		}
		if err := s.Client.PutCRL(ctx, crl); err != nil {
			return nil, fmt.Errorf("agent %s: %w", s.Name, err)
		}
	}
	return crl, nil
}
