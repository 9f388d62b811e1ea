package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// serialOf returns the serial of the certificate the server at addr
// presents to a new connection.
func serialOf(t *testing.T, addr string, client *pki.Credentials) *big.Int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: client.CAPool, ServerName: "127.0.0.1", NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{client.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestRotationUnderLoad rotates the agent's and the client's certificates
// several times through the join server (Keyring.KeepRenewed, renewing at
// half their 4 s lifetime) while clients call the agent in a loop, on
// connections kept open and on new ones: no call fails, and calls go on
// after the first certificates expired, the agent's listener never
// restarting.
func TestRotationUnderLoad(t *testing.T) {
	ctx := context.Background()
	ca, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 4 * time.Second
	var authLog logBuffer
	joinURL := "https://" + serveAuthority(t, ca, &pki.AuthorityOptions{CertTTL: ttl, Logger: authLog.logger()}).addr
	agentDir := t.TempDir()
	agentKeys := issueKeyring(t, ca, "agent0", pki.UsageAgent, ttl, agentDir)
	clientKeys := issueKeyring(t, ca, "cli", pki.UsageClient, ttl, "")
	firstAgent, firstClient := agentKeys.Current().Cert.Leaf, clientKeys.Current().Cert.Leaf
	d := memServer(t)
	if _, err := d.Create(ctx, &driver.Spec{Name: "web", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	addr := serveSource(t, agentKeys, d, &logBuffer{})
	kept := dialSource(t, addr, clientKeys)

	rctx, stopRenewing := context.WithCancel(ctx)
	var renewers sync.WaitGroup
	var renewLog logBuffer
	for _, k := range []*pki.Keyring{agentKeys, clientKeys} {
		renewers.Go(func() {
			if err := k.KeepRenewed(rctx, joinURL, &pki.RenewOptions{At: 0.5, CRLInterval: -1, Logger: renewLog.logger()}); err != nil {
				t.Error(err)
			}
		})
	}

	var calls, failures, afterExpiry, freshAfterExpiry atomic.Int64
	var firstErr atomic.Pointer[error]
	expired := firstAgent.NotAfter
	if firstClient.NotAfter.After(expired) {
		expired = firstClient.NotAfter
	}
	count := func(fresh bool, err error) {
		calls.Add(1)
		if err != nil {
			failures.Add(1)
			firstErr.CompareAndSwap(nil, &err)
		}
		if time.Now().After(expired) {
			afterExpiry.Add(1)
			if fresh {
				freshAfterExpiry.Add(1)
			}
		}
	}
	end := time.Now().Add(2*ttl + ttl/4)
	var load sync.WaitGroup
	for range 3 { // calls on the connection the client keeps
		load.Go(func() {
			for time.Now().Before(end) {
				_, err := kept.Get(ctx, "web")
				count(false, err)
			}
		})
	}
	load.Go(func() { // a new client, and so a new handshake, for each call
		for time.Now().Before(end) {
			c, err := Dial(ctx, addr, clientKeys, nil)
			if err == nil {
				_, err = c.List(ctx)
				c.Close()
			}
			count(true, err)
		}
	})
	load.Wait()
	stopRenewing()
	renewers.Wait()

	n, failed := calls.Load(), failures.Load()
	t.Logf("%d calls (%d after the first certificates expired, %d of them on new connections), %d failed; %d renewals",
		n, afterExpiry.Load(), freshAfterExpiry.Load(), failed, strings.Count(authLog.String(), "certificate renewed"))
	if failed != 0 {
		t.Fatalf("%d of %d calls failed during the rotations; the first: %v", failed, n, *firstErr.Load())
	}
	if n < 100 || freshAfterExpiry.Load() < 5 {
		t.Fatalf("%d calls, %d on new connections after the first certificates expired: too few to tell", n, freshAfterExpiry.Load())
	}
	agentNow, clientNow := agentKeys.Current().Cert.Leaf, clientKeys.Current().Cert.Leaf
	for _, rotated := range []struct {
		name         string
		first, later *x509.Certificate
	}{{"agent0", firstAgent, agentNow}, {"cli", firstClient, clientNow}} {
		if renewals := strings.Count(renewLog.String(), `msg="certificate renewed" name=`+rotated.name+" "); renewals < 3 {
			t.Errorf("%s renewed %d times, want at least 3", rotated.name, renewals)
		}
		if rotated.later.SerialNumber.Cmp(rotated.first.SerialNumber) == 0 || rotated.later.Subject.CommonName != rotated.name ||
			rotated.later.PublicKey.(*ecdsa.PublicKey).Equal(rotated.first.PublicKey) {
			t.Errorf("%s's certificate: serial %x (first %x), name %q", rotated.name, rotated.later.SerialNumber, rotated.first.SerialNumber, rotated.later.Subject.CommonName)
		}
	}
	if !agentNow.IPAddresses[0].Equal(firstAgent.IPAddresses[0]) || len(agentNow.IPAddresses) != 1 {
		t.Errorf("the renewed agent certificate names %v, the first %v", agentNow.IPAddresses, firstAgent.IPAddresses)
	}
	if got := serialOf(t, addr, clientKeys.Current()); got.Cmp(agentNow.SerialNumber) != 0 {
		t.Errorf("the agent presents serial %x, its keyring holds %x", got, agentNow.SerialNumber)
	}
	saved, err := pki.LoadCredentials(agentDir)
	if err != nil || saved.Cert.Leaf.SerialNumber.Cmp(agentNow.SerialNumber) != 0 {
		t.Errorf("the agent's directory holds %v, %v; want serial %x", saved, err, agentNow.SerialNumber)
	}
}

// Renewal keeps the name, addresses and usage, needs the current
// certificate, valid and not revoked, and refuses any other name.
func TestRenewal(t *testing.T) {
	ctx := context.Background()
	ca, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	joinURL := "https://" + serveAuthority(t, ca, nil).addr
	agent, err := ca.Issue("agent0", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue("cli", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pki.Credentials{agent, client} {
		renewed, err := pki.Renew(ctx, joinURL+"/any/path", c)
		if err != nil {
			t.Fatal(err)
		}
		old, got := c.Cert.Leaf, renewed.Cert.Leaf
		if got.Subject.CommonName != old.Subject.CommonName || fmt.Sprint(got.IPAddresses) != fmt.Sprint(old.IPAddresses) ||
			fmt.Sprint(got.ExtKeyUsage) != fmt.Sprint(old.ExtKeyUsage) || got.SerialNumber.Cmp(old.SerialNumber) == 0 ||
			got.PublicKey.(*ecdsa.PublicKey).Equal(old.PublicKey) || renewed.CAFingerprint != c.CAFingerprint {
			t.Fatalf("renewed %q: name %q, IPs %v, usage %v, same key %v", old.Subject.CommonName, got.Subject.CommonName,
				got.IPAddresses, got.ExtKeyUsage, got.PublicKey.(*ecdsa.PublicKey).Equal(old.PublicKey))
		}
		if !got.NotAfter.After(old.NotAfter) {
			t.Fatalf("renewed %q expires %v, not after %v", old.Subject.CommonName, got.NotAfter, old.NotAfter)
		}
	}

	// Refusals.
	expired, err := ca.IssueBetween("late", nil, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour), pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Renew(ctx, joinURL, expired); err == nil {
		t.Error("an expired certificate was renewed")
	}
	revoked, err := ca.Issue("stolen", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.RevokeName("stolen"); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Renew(ctx, joinURL, revoked); !errors.Is(err, errcode.PermissionDenied) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a revoked certificate: got %v, want PermissionDenied", err)
	}
	other, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue("agent0", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Renew(ctx, joinURL, foreign); !errors.Is(err, errcode.PermissionDenied) {
		t.Errorf("a certificate of another CA: got %v, want PermissionDenied (the join server is not in its CA)", err)
	}
	// A request for another name, or other addresses, with a valid certificate.
	for _, tt := range []struct {
		name string
		tmpl x509.CertificateRequest
	}{
		{"another name", x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent1"}, DNSNames: []string{"agent1"}, IPAddresses: agent.Cert.Leaf.IPAddresses}},
		{"another DNS name", x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent0"}, DNSNames: []string{"agent1"}, IPAddresses: agent.Cert.Leaf.IPAddresses}},
		{"another address", x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent0"}, IPAddresses: []net.IP{net.ParseIP("8.8.8.8")}}},
		{"no address", x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent0"}}},
	} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &tt.tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string][]byte{"csr": csr})
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: agent.CAPool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{agent.Cert}}}}
		resp, err := hc.Post(joinURL+pki.RenewPath, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("renewal for %s: status %s, want 400", tt.name, resp.Status)
		}
	}
	// Without a certificate.
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: agent.CAPool, ServerName: "127.0.0.1"}}}).
		Post(joinURL+pki.RenewPath, "application/json", strings.NewReader(`{"csr":""}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("renewal without a certificate: status %s, want 403", resp.Status)
	}

	// A Keyring rotates only to the same name and CA.
	k, err := pki.NewKeyring(agent)
	if err != nil {
		t.Fatal(err)
	}
	for what, creds := range map[string]*pki.Credentials{"another name": client, "another CA": foreign, "an expired certificate": expired} {
		if err := k.Rotate(creds); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("rotating to %s: got %v, want InvalidArgument", what, err)
		}
	}
	crl, err := k.FetchCRL(ctx, joinURL)
	if err != nil || !crl.Revoked(revoked.Cert.Leaf) {
		t.Fatalf("the join server's CRL: %v, %v; want one revoking %q", crl, err, "stolen")
	}
}

// Credentials are checked for expiry when they are loaded: an expired or
// not yet valid certificate is FailedPrecondition, naming its dates and
// what to do.
func TestLoadCredentialsChecksValidity(t *testing.T) {
	ca, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tt := range []struct {
		name                string
		notBefore, notAfter time.Time
		want                []string
	}{
		{"expired", now.Add(-48 * time.Hour), now.Add(-24 * time.Hour), []string{"expired on " + now.Add(-24*time.Hour).UTC().Format(time.RFC3339), "renew", "join the cluster again"}},
		{"not yet valid", now.Add(24 * time.Hour), now.Add(48 * time.Hour), []string{"not valid before " + now.Add(24*time.Hour).UTC().Format(time.RFC3339), "clock"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := ca.IssueBetween("agent0", loopback, tt.notBefore, tt.notAfter, pki.UsageAgent)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := creds.Save(dir); err != nil {
				t.Fatal(err)
			}
			_, err = pki.LoadCredentials(dir)
			if !errors.Is(err, errcode.FailedPrecondition) {
				t.Fatalf("LoadCredentials: got %v, want FailedPrecondition", err)
			}
			for _, w := range append(tt.want, filepath.Join(dir, "agent.crt"), `"agent0"`) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
			if _, err := pki.OpenKeyring(dir); !errors.Is(err, errcode.FailedPrecondition) {
				t.Errorf("OpenKeyring: got %v, want FailedPrecondition", err)
			}
		})
	}
}

// A Save cut between replacing the key and the certificate is completed
// by the next load: the pair always matches.
func TestSaveCutBetweenKeyAndCertificate(t *testing.T) {
	cl := newCluster(t, nil)
	oldCreds := cl.agent
	newCreds, err := cl.ca.Issue("agent0", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	dir, staged := t.TempDir(), t.TempDir()
	if err := oldCreds.Save(dir); err != nil {
		t.Fatal(err)
	}
	if err := newCreds.Save(staged); err != nil {
		t.Fatal(err)
	}
	// The state a crash leaves after the key's rename: the new key, the
	// old certificate, and the new one staged beside it.
	for from, to := range map[string]string{keyFile: keyFile, certFile: certFile + ".new"} {
		data, err := os.ReadFile(filepath.Join(staged, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	loaded, err := pki.LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Cert.Leaf.SerialNumber.Cmp(newCreds.Cert.Leaf.SerialNumber) != 0 {
		t.Fatalf("loaded serial %x, want the new %x", loaded.Cert.Leaf.SerialNumber, newCreds.Cert.Leaf.SerialNumber)
	}
	if _, err := os.Stat(filepath.Join(dir, certFile+".new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the staged certificate is still there: %v", err)
	}
}
