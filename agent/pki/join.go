package pki

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// tokenPrefix starts every join token; the number is the token format's version.
const tokenPrefix = "muster1"

// Files of an Authority's directory.
const (
	tokensFile = "tokens.json"
	tokensLock = "tokens.lock"
)

// AuthorityOptions configure an Authority. The zero value is usable.
type AuthorityOptions struct {
	// Dir, if set, keeps the outstanding tokens (hashes of their secrets
	// and expiry times) in Dir/tokens.json, so that the processes that
	// make tokens and the one that serves joins share them. Otherwise
	// they live in memory.
	Dir string
	// CertTTL is the lifetime of the certificates joins issue; default 1 year.
	CertTTL time.Duration
	// Logger records each token made and certificate issued; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Authority admits servers to the cluster: it makes one-time join tokens
// and, through its Handler, issues a certificate to whoever presents one.
type Authority struct {
	ca   *CA
	opts AuthorityOptions
	log  *slog.Logger

	mu     sync.Mutex
	tokens map[string]time.Time // when Dir is empty: expiry by hex SHA-256 of the secret
}

// NewAuthority returns an Authority that issues certificates from ca.
// opts may be nil.
func NewAuthority(ca *CA, opts *AuthorityOptions) *Authority {
	a := &Authority{ca: ca, log: slog.New(slog.DiscardHandler), tokens: map[string]time.Time{}}
	if opts != nil {
		a.opts = *opts
	}
	if a.opts.CertTTL <= 0 {
		a.opts.CertTTL = 365 * 24 * time.Hour
	}
	if a.opts.Logger != nil {
		a.log = a.opts.Logger
	}
	if a.opts.Now == nil {
		a.opts.Now = time.Now
	}
	return a
}

// NewToken returns a join token valid once, for ttl:
// "muster1.<secret>.<CA fingerprint>". Only a hash of the secret is kept.
func (a *Authority) NewToken(ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", errcode.New(errcode.InvalidArgument, "new token: ttl must be positive")
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	expiry := a.opts.Now().Add(ttl)
	err := a.updateTokens(func(tokens map[string]time.Time) error {
		tokens[tokenHash(secret)] = expiry
		return nil
	})
	if err != nil {
		return "", err
	}
	a.log.Info("join token made", "expires", expiry)
	return strings.Join([]string{tokenPrefix, base64.RawURLEncoding.EncodeToString(secret), a.ca.Fingerprint()}, "."), nil
}

// redeem consumes token. Unknown, expired, reused and malformed tokens,
// and tokens pinning another CA, are errcode.PermissionDenied.
func (a *Authority) redeem(token string) error {
	secret, pin, err := parseToken(token)
	if err != nil {
		return errcode.Wrap(errcode.PermissionDenied, err)
	}
	if subtle.ConstantTimeCompare([]byte(pin), []byte(a.ca.Fingerprint())) != 1 {
		return errcode.New(errcode.PermissionDenied, "the join token pins another CA")
	}
	return a.updateTokens(func(tokens map[string]time.Time) error {
		h := tokenHash(secret)
		if _, ok := tokens[h]; !ok {
			return errcode.New(errcode.PermissionDenied, "the join token is unknown, expired or used")
		}
		delete(tokens, h)
		return nil
	})
}

// updateTokens runs f on the outstanding tokens, expired ones removed, and
// keeps what f leaves if it succeeds. With a Dir, a file lock serializes
// it with other processes.
func (a *Authority) updateTokens(f func(map[string]time.Time) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.opts.Now()
	if a.opts.Dir == "" {
		maps.DeleteFunc(a.tokens, func(_ string, exp time.Time) bool { return !now.Before(exp) })
		return f(a.tokens)
	}
	lock, err := os.OpenFile(filepath.Join(a.opts.Dir, tokensLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close() // releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	tokens := map[string]time.Time{}
	data, err := os.ReadFile(filepath.Join(a.opts.Dir, tokensFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &tokens); err != nil {
			return errcode.New(errcode.Internal, "%s: %w", tokensFile, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	maps.DeleteFunc(tokens, func(_ string, exp time.Time) bool { return !now.Before(exp) })
	if err := f(tokens); err != nil {
		return err
	}
	data, err = json.Marshal(tokens)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(a.opts.Dir, tokensFile), data, 0o600)
}

func tokenHash(secret []byte) string {
	sum := sha256.Sum256(secret)
	return hex.EncodeToString(sum[:])
}

// parseToken splits a token into its secret and CA fingerprint.
func parseToken(token string) (secret []byte, pin string, err error) {
	parts := strings.Split(token, ".")
	if len(parts) == 3 && parts[0] == tokenPrefix {
		secret, err = base64.RawURLEncoding.DecodeString(parts[1])
		pin = parts[2]
		if err == nil && len(secret) == 32 && len(pin) == 64 && pin == strings.ToLower(pin) {
			if _, err := hex.DecodeString(pin); err == nil {
				return secret, pin, nil
			}
		}
	}
	return nil, "", errcode.New(errcode.InvalidArgument, "malformed join token: want %s.<secret>.<CA fingerprint>", tokenPrefix)
}

// joinRequest asks for a certificate.
type joinRequest struct {
	Token string `json:"token"`
	CSR   []byte `json:"csr"` // DER
}

// joinReply is the certificate issued.
type joinReply struct {
	Certificate []byte `json:"certificate"` // DER
	CA          []byte `json:"ca"`          // DER
}

// Handler answers POST requests (at whatever path it is mounted) of
// joining servers. Serve it over TLS with a certificate from the
// Authority's CA: joining servers check that it chains to the CA their
// token pins. It needs no client certificate.
func (a *Authority) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			wire.WriteError(w, errcode.New(errcode.InvalidArgument, "join with POST, not %s", r.Method))
			return
		}
		var req joinRequest
		if err := wire.DecodeBody(r, &req); err != nil {
			wire.WriteError(w, err)
			return
		}
		leaf, err := a.join(&req)
		if err != nil {
			a.log.Warn("join refused", "remote", r.RemoteAddr, "err", err)
			wire.WriteError(w, err)
			return
		}
		a.log.Info("join: certificate issued", "remote", r.RemoteAddr, "name", leaf.Subject.CommonName,
			"ips", leaf.IPAddresses, "serial", leaf.SerialNumber, "expires", leaf.NotAfter)
		wire.WriteJSON(w, http.StatusOK, joinReply{Certificate: leaf.Raw, CA: a.ca.cert.Raw})
	})
}

// join checks the request's CSR, redeems its token and signs the CSR.
func (a *Authority) join(req *joinRequest) (*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "join: certificate request: %w", err)
	}
	name := csr.Subject.CommonName
	if err := names.Label(name); err != nil {
		return nil, err
	}
	if len(csr.DNSNames) > 1 || len(csr.DNSNames) == 1 && csr.DNSNames[0] != name ||
		len(csr.EmailAddresses)+len(csr.URIs) > 0 {
		return nil, errcode.New(errcode.InvalidArgument, "join: the request may name only %q and IP addresses", name)
	}
	var ips []netip.Addr
	for _, ip := range csr.IPAddresses {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return nil, errcode.New(errcode.InvalidArgument, "join: bad IP address %v", ip)
		}
		ips = append(ips, addr.Unmap())
	}
	if err := a.redeem(req.Token); err != nil {
		return nil, err
	}
	now := a.opts.Now()
	return a.ca.sign(csr.PublicKey, name, ips, now.Add(-clockSkew), now.Add(a.opts.CertTTL), UsageAgent)
}

// Join admits this server to a cluster: it generates a key, sends a
// certificate request for name and ips with token to the Authority's
// handler at joinURL, and returns the credentials issued. It talks only to
// a server whose certificate chains to the CA the token pins, so the
// token goes nowhere else; the private key never leaves this process.
// A refused token, or a server outside the pinned CA, is
// errcode.PermissionDenied.
func Join(ctx context.Context, joinURL, token, name string, ips []netip.Addr) (*Credentials, error) {
	_, pin, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	if err := names.Label(name); err != nil {
		return nil, err
	}
	key, err := newKey(ECDSAP256)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}}
	for _, ip := range ips {
		if !ip.IsValid() || ip.Zone() != "" {
			return nil, errcode.New(errcode.InvalidArgument, "join: invalid IP address %q", ip)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "join: certificate request: %w", err)
	}
	body, err := json.Marshal(joinRequest{Token: token, CSR: csr})
	if err != nil {
		return nil, err
	}

	// The pinned CA replaces the system roots: the server must present it
	// in its chain, and its certificate must chain to it.
	var pinErr atomic.Pointer[error]
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error {
		err := verifyPinned(raw, pin)
		if err != nil {
			pinErr.Store(&err)
		}
		return err
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion:            tls.VersionTLS13,
			InsecureSkipVerify:    true, // verify checks the chain against the pinned CA instead
			VerifyPeerCertificate: verify,
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, joinURL, bytes.NewReader(body))
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "join URL %q: %w", joinURL, err)
	}
	if req.URL.Scheme != "https" {
		return nil, errcode.New(errcode.InvalidArgument, "join URL %q is not https", joinURL)
	}
	resp, err := tr.RoundTrip(req)
	if p := pinErr.Load(); p != nil {
		return nil, *p
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, errcode.New(errcode.Unavailable, "join %s: %w", joinURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, wire.ResponseError(resp)
	}
	var reply joinReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, wire.MaxJSONBody)).Decode(&reply); err != nil {
		return nil, errcode.New(errcode.Unavailable, "join %s: reading the reply: %w", joinURL, err)
	}
	leaf, ca, err := checkIssued(&reply, pin, name, key.Public())
	if err != nil {
		return nil, err
	}
	return newCredentials(leaf, ca, key), nil
}

// verifyPinned checks that the chain a join server presents holds the CA
// whose fingerprint is pin, and that its certificate chains to that CA.
func verifyPinned(raw [][]byte, pin string) error {
	ca, err := pinnedCA(raw, pin)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return errcode.New(errcode.PermissionDenied, "join server certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return errcode.New(errcode.PermissionDenied, "join server certificate does not chain to the pinned CA: %w", err)
	}
	return nil
}

// checkIssued checks that the join reply certifies our key for name and
// comes from the pinned CA.
func checkIssued(reply *joinReply, pin, name string, pub any) (leaf, ca *x509.Certificate, err error) {
	if fingerprint(reply.CA) != pin {
		return nil, nil, errcode.New(errcode.PermissionDenied, "join: the reply's CA is not the pinned one")
	}
	if ca, err = x509.ParseCertificate(reply.CA); err == nil {
		leaf, err = x509.ParseCertificate(reply.Certificate)
	}
	if err == nil {
		err = leaf.CheckSignatureFrom(ca)
	}
	if err != nil {
		return nil, nil, errcode.New(errcode.Internal, "join: issued certificate: %w", err)
	}
	if leaf.Subject.CommonName != name || !samePublicKey(pub, leaf.PublicKey) {
		return nil, nil, errcode.New(errcode.Internal, "join: the issued certificate is not for %q and this key", name)
	}
	return leaf, ca, nil
}

// pinnedCA returns the certificate in chain whose fingerprint is pin, if it
// is a self-signed CA.
func pinnedCA(chain [][]byte, pin string) (*x509.Certificate, error) {
	for _, der := range chain {
		if fingerprint(der) != pin {
			continue
		}
		ca, err := x509.ParseCertificate(der)
		if err != nil || !ca.IsCA || !bytes.Equal(ca.RawIssuer, ca.RawSubject) || ca.CheckSignatureFrom(ca) != nil {
			break
		}
		return ca, nil
	}
	return nil, errcode.New(errcode.PermissionDenied, "the server's certificate chain holds no CA with the pinned fingerprint %s", pin)
}
