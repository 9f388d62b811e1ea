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
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
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

	ip := netip.MustParseAddr("127.0.0.1")
	token, err := a.NewToken("agent7", time.Hour, &pki.TokenOptions{IPs: []netip.Addr{ip}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(token, "muster1.") || !strings.HasSuffix(token, "."+cl.ca.Fingerprint()) {
		t.Fatalf("token %q does not pin the CA %s", token, cl.ca.Fingerprint())
	}
	creds, err := pki.Join(ctx, js.url, token, "agent7", []netip.Addr{ip})
	if err != nil {
		t.Fatal(err)
	}
	if creds.CAFingerprint != cl.ca.Fingerprint() {
		t.Fatalf("joined credentials trust CA %s, want %s", creds.CAFingerprint, cl.ca.Fingerprint())
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
	expired, err := expiring.NewToken("agent8", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	later.Store(int64(time.Hour + time.Second))
	fresh, err := a.NewToken("agent8", time.Hour, nil)
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
		{"pin of another CA", js.url, "muster1." + secret + "." + other.ca.Fingerprint(), false},
		{"server of another CA", otherJS.url, fresh, false},
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
	if _, err := pki.Join(ctx, js.url, fresh, "agent8", nil); err != nil {
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
	token, err := pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Dir: dir}).NewToken("agent1", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	js := serveJoin(t, cl.ca, pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Dir: dir}))
	if _, err := pki.Join(context.Background(), js.url, token, "agent1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Join(context.Background(), js.url, token, "agent1", nil); !errors.Is(err, errcode.PermissionDenied) {
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
				t.Fatal("loaded CA has another fingerprint")
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

// joinRig is an Authority served by Serve on loopback, and what its tests
// need to talk to it as any client would, from any loopback address.
type joinRig struct {
	a    *pki.Authority
	dir  string // the Authority's Dir
	url  string
	addr string // host:port
	pool *x509.CertPool
	logs *logBuffer
}

// serveAuthority runs a.Serve on a loopback port until the test ends.
func serveAuthority(t *testing.T, ca *pki.CA, opts *pki.AuthorityOptions) *joinRig {
	t.Helper()
	r := &joinRig{logs: &logBuffer{}}
	o := pki.AuthorityOptions{}
	if opts != nil {
		o = *opts
	}
	r.dir = o.Dir
	if o.Logger == nil {
		o.Logger = r.logs.logger()
	}
	r.a = pki.NewAuthority(ca, &o)
	creds, err := ca.Issue("join", loopback, time.Hour, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.a.Serve(ctx, l, creds) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	r.pool = creds.CAPool
	r.addr = l.Addr().String()
	r.url = "https://" + r.addr + "/join"
	return r
}

// tlsConfig is what a client of the join server needs: the CA's pool.
func (r *joinRig) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: r.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
}

// client returns an HTTP client of the join server that connects from the
// loopback address src, one connection per request.
func (r *joinRig) client(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{
		DialContext:       d.DialContext,
		TLSClientConfig:   r.tlsConfig(),
		DisableKeepAlives: true,
	}}
}

// post sends a join request made by hand, as a client other than
// pki.Join could, and returns the certificate issued or the error the
// server replied.
func (r *joinRig) post(t *testing.T, c *http.Client, token string, csr []byte) (*x509.Certificate, *http.Response, error) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"token": token, "csr": csr})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Post(r.url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp, wire.ResponseError(resp)
	}
	var reply struct{ Certificate []byte }
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(reply.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	return leaf, resp, nil
}

// csrFor returns a certificate request for name and ips, as any client
// could make it.
func csrFor(t *testing.T, name string, ips ...string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// A new server cannot take an existing server's identity: a fresh token
// is bound to its own name and addresses, a name already admitted needs a
// re-join token, and the certificate names exactly what the token says.
func TestJoinImpersonationRefused(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{Dir: t.TempDir(), Limits: pki.JoinLimits{FailureBurst: 100}})
	node1IPs := addrs("127.0.0.1")
	token, err := rig.a.NewToken("node1", time.Hour, &pki.TokenOptions{IPs: node1IPs})
	if err != nil {
		t.Fatal(err)
	}
	node1, err := pki.Join(ctx, rig.url, token, "node1", node1IPs)
	if err != nil {
		t.Fatal(err)
	}
	issued := func() int { return strings.Count(rig.logs.String(), "certificate issued") }

	// The attacker holds a valid token of its own, for node2 at 127.0.0.2,
	// and asks for node1's name and address with it.
	own, err := rig.a.NewToken("node2", time.Hour, &pki.TokenOptions{IPs: addrs("127.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		ips  []netip.Addr
		want string
	}{
		{"node1", node1IPs, `made for server "node2", not "node1"`},
		{"node1", addrs("127.0.0.2"), `made for server "node2", not "node1"`},
		{"node2", node1IPs, "made for IP addresses [127.0.0.2], and the request asks for [127.0.0.1]"},
		{"node2", addrs("127.0.0.2", "127.0.0.1"), "made for IP addresses [127.0.0.2]"},
		{"node2", nil, "made for IP addresses [127.0.0.2], and the request asks for []"},
	} {
		creds, err := pki.Join(ctx, rig.url, own, tt.name, tt.ips)
		if !errors.Is(err, errcode.PermissionDenied) || creds != nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("join as %s %v with node2's token: got credentials %v, error %v; want PermissionDenied naming %q", tt.name, tt.ips, creds != nil, err, tt.want)
		}
	}
	if n := issued(); n != 1 {
		t.Fatalf("%d certificates issued, want only node1's", n)
	}
	// Refusals do not spend the token: node2 joins as itself.
	if _, err := pki.Join(ctx, rig.url, own, "node2", addrs("127.0.0.2")); err != nil {
		t.Fatalf("node2 with its own token after the refusals: %v", err)
	}

	// No token is made for a name already admitted, unless for a re-join.
	if _, err := rig.a.NewToken("node1", time.Hour, &pki.TokenOptions{IPs: node1IPs}); !errors.Is(err, errcode.AlreadyExists) || !strings.Contains(err.Error(), "--rejoin") {
		t.Fatalf("a token for node1, which joined: got %v, want AlreadyExists naming --rejoin", err)
	}
	// Another process sharing the directory refuses it too (servers.json).
	other := pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Dir: rig.dir})
	if _, err := other.NewToken("node1", time.Hour, nil); !errors.Is(err, errcode.AlreadyExists) {
		t.Fatalf("a token for node1 by another process: got %v, want AlreadyExists", err)
	}
	// Two tokens made for one name before it joined: the second is refused.
	first, err := rig.a.NewToken("node3", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := other.NewToken("node3", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Join(ctx, rig.url, first, "node3", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Join(ctx, rig.url, second, "node3", nil); !errors.Is(err, errcode.PermissionDenied) || !strings.Contains(err.Error(), "already joined") {
		t.Fatalf("a second server named node3: got %v, want PermissionDenied (already joined)", err)
	}
	if n := issued(); n != 3 {
		t.Fatalf("%d certificates issued, want 3 (node1, node2, node3)", n)
	}

	// node1 still serves as the only node1.
	joined := &cluster{ca: cl.ca, agent: node1, client: cl.client, serverLog: &logBuffer{}}
	if _, err := joined.dial(t, joined.serve(t, memServer(t))).List(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"servers.json", "tokens.json"} {
		if st, err := os.Stat(filepath.Join(rig.dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v; want 0600", f, st.Mode(), err)
		}
	}
	data, err := os.ReadFile(filepath.Join(rig.dir, "servers.json"))
	if err != nil || !strings.Contains(string(data), `"node1"`) || !strings.Contains(string(data), node1.Cert.Leaf.SerialNumber.Text(16)) {
		t.Fatalf("servers.json does not record node1 and its serial: %s (%v)", data, err)
	}
}

// The join server issues IP SANs only for addresses the token binds, and
// never for unspecified, broadcast or multicast addresses, whatever a
// client puts in its request.
func TestJoinRefusesIPSANs(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{Limits: pki.JoinLimits{FailureBurst: 100}})
	token, err := rig.a.NewToken("node1", time.Hour, &pki.TokenOptions{IPs: addrs("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	c := rig.client("127.0.0.1")
	for _, tt := range []struct {
		ips  []string
		code errcode.Code
		want string
	}{
		{[]string{"127.0.0.1", "0.0.0.0"}, errcode.InvalidArgument, "0.0.0.0 is unspecified"},
		{[]string{"0.0.0.0"}, errcode.InvalidArgument, "0.0.0.0 is unspecified"},
		{[]string{"::"}, errcode.InvalidArgument, ":: is unspecified"},
		{[]string{"127.0.0.1", "255.255.255.255"}, errcode.InvalidArgument, "255.255.255.255 is the broadcast address"},
		{[]string{"127.0.0.1", "224.0.0.18"}, errcode.InvalidArgument, "224.0.0.18 is a multicast group"},
		{[]string{"ff02::1"}, errcode.InvalidArgument, "ff02::1 is a multicast group"},
		{[]string{"127.0.0.1", "8.8.8.8"}, errcode.PermissionDenied, "made for IP addresses [127.0.0.1], and the request asks for [8.8.8.8 127.0.0.1]"},
		{[]string{"8.8.8.8"}, errcode.PermissionDenied, "made for IP addresses [127.0.0.1]"},
	} {
		leaf, _, err := rig.post(t, c, token, csrFor(t, "node1", tt.ips...))
		if leaf != nil || !errors.Is(err, tt.code) || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("IP SANs %v: issued %v, error %v; want %v naming %q", tt.ips, leaf != nil, err, tt.code, tt.want)
		}
	}
	// pki.Join refuses them before sending anything, and NewToken never binds them.
	for _, ip := range []string{"0.0.0.0", "255.255.255.255", "239.1.1.1", "::"} {
		if _, err := pki.Join(ctx, rig.url, token, "node1", addrs(ip)); !errors.Is(err, errcode.InvalidArgument) {
			t.Fatalf("Join with %s: got %v, want InvalidArgument", ip, err)
		}
		if _, err := rig.a.NewToken("node9", time.Hour, &pki.TokenOptions{IPs: addrs("127.0.0.9", ip)}); !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), ip) {
			t.Fatalf("NewToken with %s: got %v, want InvalidArgument naming it", ip, err)
		}
	}
	if n := strings.Count(rig.logs.String(), "certificate issued"); n != 0 {
		t.Fatalf("%d certificates issued for refused addresses", n)
	}
	// The token was spent by none of these: the request it was made for
	// gets a certificate naming exactly its address (an IPv4-mapped form
	// counts as the IPv4 address).
	leaf, _, err := rig.post(t, c, token, csrFor(t, "node1", "::ffff:127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || leaf.Subject.CommonName != "node1" {
		t.Fatalf("issued certificate: %s %v", leaf.Subject.CommonName, leaf.IPAddresses)
	}
}

// A re-join the operator asked for gives the server a new certificate,
// for the name it had and the addresses the re-join token binds.
func TestJoinRejoin(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{Dir: t.TempDir()})
	if _, err := rig.a.NewToken("node1", time.Hour, &pki.TokenOptions{Rejoin: true}); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("a re-join token for a server that never joined: got %v, want NotFound", err)
	}
	token, err := rig.a.NewToken("node1", time.Hour, &pki.TokenOptions{IPs: addrs("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	before, err := pki.Join(ctx, rig.url, token, "node1", addrs("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	// The server lost its state and moved: the operator asks for a re-join
	// (from another process sharing the directory, as muster-agent token).
	rejoin, err := pki.NewAuthority(cl.ca, &pki.AuthorityOptions{Dir: rig.dir}).NewToken("node1", time.Hour,
		&pki.TokenOptions{IPs: addrs("127.0.0.1", "::1"), Rejoin: true})
	if err != nil {
		t.Fatal(err)
	}
	// Bound like any token: not for another name, nor other addresses.
	if _, err := pki.Join(ctx, rig.url, rejoin, "node2", addrs("127.0.0.1", "::1")); !errors.Is(err, errcode.PermissionDenied) {
		t.Fatalf("a re-join token of node1 used for node2: got %v, want PermissionDenied", err)
	}
	if _, err := pki.Join(ctx, rig.url, rejoin, "node1", addrs("127.0.0.1")); !errors.Is(err, errcode.PermissionDenied) {
		t.Fatalf("a re-join token used for fewer addresses: got %v, want PermissionDenied", err)
	}
	after, err := pki.Join(ctx, rig.url, rejoin, "node1", addrs("::1", "127.0.0.1"))
	if err != nil {
		t.Fatalf("the re-join the operator asked for: %v", err)
	}
	leaf := after.Cert.Leaf
	if leaf.Subject.CommonName != "node1" || len(leaf.IPAddresses) != 2 || leaf.SerialNumber.Cmp(before.Cert.Leaf.SerialNumber) == 0 {
		t.Fatalf("re-joined certificate: %s %v serial %v (before: %v)", leaf.Subject.CommonName, leaf.IPAddresses, leaf.SerialNumber, before.Cert.Leaf.SerialNumber)
	}
	joined := &cluster{ca: cl.ca, agent: after, client: cl.client, serverLog: &logBuffer{}}
	if _, err := joined.dial(t, joined.serve(t, memServer(t))).List(ctx); err != nil {
		t.Fatalf("the re-joined agent: %v", err)
	}
	// The re-join token is spent like any other.
	if _, err := pki.Join(ctx, rig.url, rejoin, "node1", addrs("::1", "127.0.0.1")); !errors.Is(err, errcode.PermissionDenied) {
		t.Fatalf("a spent re-join token: got %v, want PermissionDenied", err)
	}
	data, err := os.ReadFile(filepath.Join(rig.dir, "servers.json"))
	if err != nil || !strings.Contains(string(data), leaf.SerialNumber.Text(16)) {
		t.Fatalf("servers.json does not record the new certificate: %s (%v)", data, err)
	}
}
