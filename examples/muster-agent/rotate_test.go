package main

import (
	"context"
	"crypto/tls"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
)

// TestServeRenewsAndRevokes runs serve with certificates of 3 s that it
// renews at half their lifetime at a join-server, while a client calls it
// on new connections: the agent's certificate changes on disk and on the
// wire with no failed call, past the first one's expiry. Then ca revoke
// --name: the agent fetches the CRL and refuses the revoked client, and
// still does after a restart.
func TestServeRenewsAndRevokes(t *testing.T) {
	ctx := context.Background()
	caDir, stateDir := t.TempDir(), t.TempDir()
	if _, err := run(ctx, "ca", "init", "--dir", caDir); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.Issue("admin", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := ca.Issue("intruder", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	joinUp := func(addr string) bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 500 * time.Millisecond}, "tcp", addr, &tls.Config{RootCAs: admin.CAPool})
		if err == nil {
			conn.Close()
		}
		return err == nil
	}
	_, joinAddr := serve(t, nil, joinUp, "join-server", "--dir", caDir, "--cert-ttl", "3s")
	// The agent's first certificate, made as a join would, lives 3 s too.
	node, err := ca.Issue("node1", []netip.Addr{netip.MustParseAddr("127.0.0.1")}, 3*time.Second, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Save(filepath.Join(stateDir, "pki")); err != nil {
		t.Fatal(err)
	}
	agentUp := func(addr string) bool {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		c, err := agent.Dial(ctx, addr, admin, nil)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	args := []string{"serve", "--dir", stateDir, "--driver", "memory", "--renew-at", "0.5", "--crl-interval", "200ms"}
	first, addr := serve(t, nil, agentUp, append(args, "--join", "https://"+joinAddr)...)

	// Calls on new connections, each a handshake with the certificate the
	// agent holds then.
	seen := map[string]bool{}
	calls, failed := 0, 0
	for end := node.Cert.Leaf.NotAfter.Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		calls++
		c, err := agent.Dial(ctx, addr, admin, nil)
		if err == nil {
			_, err = c.HostInfo(ctx)
			c.Close()
		}
		if err != nil {
			failed++
			t.Errorf("call %d: %v", calls, err)
			continue
		}
		seen[serialAt(t, addr, admin).Text(16)] = true
	}
	t.Logf("%d calls, %d failed; the agent presented %d certificates", calls, failed, len(seen))
	if len(seen) < 3 {
		t.Errorf("the agent presented %d certificates in %d calls over 5 s, want at least 3: it did not renew", len(seen), calls)
	}
	saved, err := pki.LoadCredentials(filepath.Join(stateDir, "pki"))
	if err != nil {
		t.Fatalf("the saved credentials, after the first expired: %v", err)
	}
	if saved.Cert.Leaf.SerialNumber.Cmp(node.Cert.Leaf.SerialNumber) == 0 || saved.Cert.Leaf.Subject.CommonName != "node1" {
		t.Fatalf("the saved certificate: %q serial %x, the first %x", saved.Cert.Leaf.Subject.CommonName, saved.Cert.Leaf.SerialNumber, node.Cert.Leaf.SerialNumber)
	}

	// Revocation through the CLI reaches the agent through the join server.
	c := dial(t, addr, intruder)
	if _, err := c.HostInfo(ctx); err != nil {
		t.Fatal(err)
	}
	out, err := run(ctx, "ca", "revoke", "--dir", caDir, "--name", "intruder")
	if err != nil || !strings.Contains(out, "revokes 1 certificates") {
		t.Fatalf("ca revoke: %q, %v", out, err)
	}
	if out, err := run(ctx, "ca", "certs", "--dir", caDir); err != nil || !strings.Contains(out, "intruder") {
		t.Fatalf("ca certs: %q, %v", out, err)
	}
	refused := func() bool {
		c, err := agent.Dial(ctx, addr, intruder, nil)
		if err == nil {
			c.Close()
		}
		return err != nil
	}
	for deadline := time.Now().Add(10 * time.Second); !refused(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the agent still accepts the revoked client 10 s after ca revoke")
		}
	}
	if _, err := c.HostInfo(ctx); err == nil {
		t.Error("the revoked client's connection made before still carries calls")
	}
	if _, err := os.Stat(filepath.Join(stateDir, "pki", "crl.pem")); err != nil {
		t.Fatalf("the agent kept no CRL: %v", err)
	}

	// A restart keeps the CRL and the join server (no --join this time).
	first.stop(t)
	_, addr = serve(t, nil, agentUp, args...)
	if !refused() {
		t.Error("the restarted agent accepts the revoked client")
	}
	before := serialAt(t, addr, admin)
	for deadline := time.Now().Add(10 * time.Second); serialAt(t, addr, admin).Cmp(before) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the restarted agent does not renew its certificate")
		}
	}
}

// serialAt returns the serial of the certificate the agent at addr
// presents to a new connection.
func serialAt(t *testing.T, addr string, client *pki.Credentials) *big.Int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: client.CAPool, ServerName: "127.0.0.1", NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{client.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// serve refuses expired credentials at start, saying when they expired and
// what to do.
func TestServeRefusesExpiredCredentials(t *testing.T) {
	ca, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := ca.IssueBetween("node1", nil, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour), pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	if err := expired.Save(filepath.Join(stateDir, "pki")); err != nil {
		t.Fatal(err)
	}
	out, err := run(context.Background(), "serve", "--dir", stateDir, "--driver", "memory", "--listen", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "expired on "+expired.Cert.Leaf.NotAfter.UTC().Format(time.RFC3339)) ||
		!strings.Contains(err.Error(), "join the cluster again") {
		t.Fatalf("serve with expired credentials: %v\n%s", err, out)
	}
}
