package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/errcode"
)

// joinServer serves a's handler over TLS with a certificate from ca and
// counts the requests it gets.
type joinServer struct {
	url      string
	requests atomic.Int32
}

func serveJoin(t *testing.T, ca *pki.CA, a *pki.Authority) *joinServer {
	t.Helper()
	creds, err := ca.Issue("join", loopback, time.Hour, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	js := &joinServer{}
	h := a.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		js.requests.Add(1)
		h.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{creds.Cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	js.url = srv.URL + "/join"
	return js
}

func TestJoin(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	var logs logBuffer
	a := pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Logger: logs.logger()})
	js := serveJoin(t, cl.ca, a)

	token, err := a.NewToken(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(token, "muster1.") || !strings.HasSuffix(token, "."+cl.ca.Fingerprint()) {
		t.Fatalf("token %q does not pin the pki.CA %s", token, cl.ca.Fingerprint())
	}
	ip := netip.MustParseAddr("127.0.0.1")
	creds, err := pki.Join(ctx, js.url, token, "agent7", []netip.Addr{ip})
	if err != nil {
		t.Fatal(err)
	}
	if creds.CAFingerprint != cl.ca.Fingerprint() {
		t.Fatalf("joined credentials trust pki.CA %s, want %s", creds.CAFingerprint, cl.ca.Fingerprint())
	}
	leaf := creds.Cert.Leaf
	if leaf.Subject.CommonName != "agent7" || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(ip.AsSlice()) {
		t.Fatalf("issued certificate: name %q, IPs %v", leaf.Subject.CommonName, leaf.IPAddresses)
	}
	// The joined agent serves, and calls other agents, with its credentials.
	joined := &cluster{ca: cl.ca, agent: creds, client: creds, serverLog: &logBuffer{}}
	c := joined.dial(t, joined.serve(t, memServer(t)))
	if _, err := c.List(ctx); err != nil {
		t.Fatalf("a joined agent as client of a joined agent: %v", err)
	}
	if n := strings.Count(logs.String(), "certificate issued"); n != 1 {
		t.Fatalf("%d certificates issued, want 1", n)
	}

	// Refusals: each is PermissionDenied and issues nothing.
	other := newCluster(t, nil)
	otherJS := serveJoin(t, other.ca, pki.NewAuthority(other.ca, nil))
	var later atomic.Int64 // how far the expiring authority's clock is ahead
	expiring := pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Logger: logs.logger(), Now: func() time.Time { return time.Now().Add(time.Duration(later.Load())) }})
	expiredJS := serveJoin(t, cl.ca, expiring)
	expired, err := expiring.NewToken(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	later.Store(int64(time.Hour + time.Second))
	fresh, err := a.NewToken(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.Split(fresh, ".")[1]
	for _, tt := range []struct {
		name, url, token string
		reachesServer    bool
	}{
		{"wrong token", js.url, "muster1." + strings.Repeat("A", 43) + "." + cl.ca.Fingerprint(), true},
		{"reused token", js.url, token, true},
		{"expired token", expiredJS.url, expired, true},
		{"pin of another pki.CA", js.url, "muster1." + secret + "." + other.ca.Fingerprint(), false},
		{"server of another pki.CA", otherJS.url, fresh, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := js.requests.Load() + otherJS.requests.Load() + expiredJS.requests.Load()
			creds, err := pki.Join(ctx, tt.url, tt.token, "agent8", nil)
			if !errors.Is(err, errcode.PermissionDenied) || creds != nil {
				t.Fatalf("Join: got credentials %v, error %v; want PermissionDenied", creds != nil, err)
			}
			sent := js.requests.Load() + otherJS.requests.Load() + expiredJS.requests.Load() - before
			if tt.reachesServer != (sent == 1) {
				t.Fatalf("the join request reached a server %d times, want %v", sent, tt.reachesServer)
			}
		})
	}
	if n := strings.Count(logs.String(), "certificate issued"); n != 1 {
		t.Fatalf("%d certificates issued after the refusals, want 1", n)
	}
	// The token sent to nobody still works.
	if _, err := pki.Join(ctx, js.url, fresh, "agent9", nil); err != nil {
		t.Fatalf("a token the refusals did not use: %v", err)
	}

	if _, err := pki.Join(ctx, js.url, "muster1.short."+cl.ca.Fingerprint(), "agent8", nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("malformed token: got %v, want InvalidArgument", err)
	}
	if _, err := pki.Join(ctx, js.url, fresh, "Not_A_Label", nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("bad name: got %v, want InvalidArgument", err)
	}
}

// Tokens kept in a directory are shared by the processes that use it: one
// makes a token, another redeems it, once.
func TestAuthorityDirSharesTokens(t *testing.T) {
	cl := newCluster(t, nil)
	dir := t.TempDir()
	token, err := pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Dir: dir}).NewToken(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	js := serveJoin(t, cl.ca, pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Dir: dir}))
	if _, err := pki.Join(context.Background(), js.url, token, "agent1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Join(context.Background(), js.url, token, "agent2", nil); !errors.Is(err, errcode.PermissionDenied) {
		t.Fatalf("reused token: got %v, want PermissionDenied", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "tokens.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), strings.Split(token, ".")[1]) {
		t.Fatal("the tokens file holds a token's secret")
	}
	if st, err := os.Stat(filepath.Join(dir, "tokens.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("tokens file mode %v, %v; want 0600", st.Mode(), err)
	}
}

func TestSaveLoad(t *testing.T) {
	for _, alg := range []pki.KeyAlgorithm{pki.ECDSAP256, pki.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			cl := newCluster(t, &pki.CAOptions{Algorithm: alg})
			dir := t.TempDir()
			if err := cl.ca.Save(dir); err != nil {
				t.Fatal(err)
			}
			if err := cl.agent.Save(dir); err != nil {
				t.Fatal(err)
			}
			for name, mode := range map[string]os.FileMode{caKeyFile: 0o600, keyFile: 0o600, caCertFile: 0o644, certFile: 0o644} {
				if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != mode {
					t.Fatalf("%s: mode %v, %v; want %v", name, st.Mode(), err, mode)
				}
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				t.Fatal(err)
			}
			if ca.Fingerprint() != cl.ca.Fingerprint() {
				t.Fatal("loaded pki.CA has another fingerprint")
			}
			agent, err := pki.LoadCredentials(dir)
			if err != nil {
				t.Fatal(err)
			}
			// The loaded CA issues certificates the loaded agent accepts.
			client, err := ca.Issue("cli2", nil, time.Hour, pki.UsageClient)
			if err != nil {
				t.Fatal(err)
			}
			loaded := &cluster{ca: ca, agent: agent, client: client, serverLog: &logBuffer{}}
			if _, err := loaded.dial(t, loaded.serve(t, memServer(t))).List(context.Background()); err != nil {
				t.Fatal(err)
			}

			other := newCluster(t, &pki.CAOptions{Algorithm: alg})
			otherDir := t.TempDir()
			if err := other.agent.Save(otherDir); err != nil {
				t.Fatal(err)
			}
			os.Rename(filepath.Join(otherDir, keyFile), filepath.Join(dir, keyFile))
			if _, err := pki.LoadCredentials(dir); !errors.Is(err, errcode.InvalidArgument) {
				t.Fatalf("credentials with another's key: got %v, want InvalidArgument", err)
			}
		})
	}
	if _, err := pki.LoadCA(t.TempDir()); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("LoadCA of an empty directory: got %v, want NotFound", err)
	}
}

// The files pki.CA.Save and pki.Credentials.Save write: their layout is a
// format other tools and later versions read.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	certFile   = "agent.crt"
	keyFile    = "agent.key"
)
