package pki

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// tokenPrefix starts every join token; the number is the token format's version.
const tokenPrefix = "muster1"

// maxTokenIPs bounds the IP addresses a join token binds.
const maxTokenIPs = 32

// AuthorityOptions configure an Authority. The zero value is usable.
type AuthorityOptions struct {
	// Dir, if set, keeps the outstanding tokens (hashes of their secrets,
	// expiry times and what each admits) in Dir/tokens.json and the
	// servers admitted in Dir/servers.json, so that the processes that
	// make tokens and the one that serves joins share them. Otherwise
	// they live in memory.
	Dir string
	// CertTTL is the lifetime of the certificates joins issue; default 1 year.
	CertTTL time.Duration
	// Logger records each token made and certificate issued, and refused
	// joins (rate-limited, see JoinLimits.WarnInterval); nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Limits bound what one client of the join service can hold open or
	// try; zero fields mean their defaults.
	Limits JoinLimits
}

// Authority admits servers to the cluster: it makes one-time join tokens,
// each bound to the name and IP addresses of one server, and, through its
// Handler, issues a certificate for exactly those to whoever presents one.
// It keeps a record of the servers it admitted and refuses a second
// server of a name, unless the operator asked for a re-join.
type Authority struct {
	ca   *CA
	opts AuthorityOptions
	log  *slog.Logger

	throttle *throttle
	refusals *refusalLog

	mu    sync.Mutex
	state *joinState // when Dir is empty
}

// NewAuthority returns an Authority that issues certificates from ca.
// opts may be nil.
func NewAuthority(ca *CA, opts *AuthorityOptions) *Authority {
	a := &Authority{ca: ca, log: slog.New(slog.DiscardHandler), state: newJoinState()}
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
	a.opts.Limits = a.opts.Limits.withDefaults()
	a.throttle = newThrottle(a.opts.Limits.FailureBurst, a.opts.Limits.FailureRefill)
	a.refusals = newRefusalLog(a.log, a.opts.Limits.WarnInterval, a.opts.Now)
	return a
}

// TokenOptions say what a join token admits besides its server's name.
type TokenOptions struct {
	// IPs are the addresses the server's certificate names: a join with
	// the token must ask for exactly these. None means a certificate that
	// names no address (its server is reached by name). Unspecified,
	// broadcast and multicast addresses are refused.
	IPs []netip.Addr
	// Rejoin makes the token for a server that has already joined, to
	// give it a new certificate (a lost key or state directory, a new
	// address). Without it a token for a name already admitted is refused,
	// so that a new server cannot take an existing one's identity.
	Rejoin bool
}

// NewToken returns a join token valid once, for ttl, for the server name
// (a DNS label): "muster1.<secret>.<CA fingerprint>". Only a hash of the
// secret is kept, with the name and what opts say. opts may be nil.
//
// A name already admitted is errcode.AlreadyExists unless opts.Rejoin is
// set; a re-join of a name never admitted is errcode.NotFound; a bad
// name, ttl or address is errcode.InvalidArgument.
func (a *Authority) NewToken(name string, ttl time.Duration, opts *TokenOptions) (string, error) {
	var o TokenOptions
	if opts != nil {
		o = *opts
	}
	if err := names.Label(name); err != nil {
		return "", fmt.Errorf("new token: server name: %w", err)
	}
	if ttl <= 0 {
		return "", errcode.New(errcode.InvalidArgument, "new token for %q: ttl must be positive", name)
	}
	ips, err := sanAddrs(o.IPs)
	if err != nil {
		return "", fmt.Errorf("new token for %q: %w", name, err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	expiry := a.opts.Now().Add(ttl)
	err = a.update(func(st *joinState) error {
		srv, joined := st.servers[name]
		switch {
		case joined && !o.Rejoin:
			return errcode.New(errcode.AlreadyExists,
				"new token: server %q has already joined this cluster (certificate serial %s, issued %s); "+
					"to give it a new certificate, make a re-join token (TokenOptions.Rejoin, muster-agent token --rejoin)",
				name, srv.Serial, srv.Issued.Format(time.RFC3339))
		case !joined && o.Rejoin:
			return errcode.New(errcode.NotFound,
				"new token: server %q has not joined this cluster, so it cannot re-join; make a token without --rejoin", name)
		}
		st.tokens[tokenHash(secret)] = tokenRecord{Expires: expiry, Name: name, IPs: ips, Rejoin: o.Rejoin}
		return nil
	})
	if err != nil {
		return "", err
	}
	a.log.Info("join token made", "name", name, "ips", ips, "rejoin", o.Rejoin, "expires", expiry)
	return strings.Join([]string{tokenPrefix, base64.RawURLEncoding.EncodeToString(secret), a.ca.Fingerprint()}, "."), nil
}

// sanAddr checks that ip may be named in a certificate: a valid address
// without a zone that names one host, so not unspecified (0.0.0.0, ::),
// the limited broadcast address or a multicast group. An IPv4-mapped IPv6
// address is taken as its IPv4 address.
func sanAddr(ip netip.Addr) (netip.Addr, error) {
	ip = ip.Unmap()
	var why string
	switch {
	case !ip.IsValid():
		return ip, errcode.New(errcode.InvalidArgument, "invalid IP address %q", ip)
	case ip.Zone() != "":
		why = "has a zone"
	case ip.IsUnspecified():
		why = "is unspecified: it names no server"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "is the broadcast address"
	case ip.IsMulticast():
		why = "is a multicast group"
	default:
		return ip, nil
	}
	return ip, errcode.New(errcode.InvalidArgument,
		"IP address %s %s; a certificate names the addresses its server is reached at", ip, why)
}

// sanAddrs checks ips with sanAddr and returns them sorted, without
// duplicates.
func sanAddrs(ips []netip.Addr) ([]netip.Addr, error) {
	if len(ips) > maxTokenIPs {
		return nil, errcode.New(errcode.InvalidArgument, "%d IP addresses; at most %d", len(ips), maxTokenIPs)
	}
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		a, err := sanAddr(ip)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
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
// token pins. It needs no client certificate. Serve mounts it with the
// connection limits; mounted elsewhere, it still bounds the request body,
// throttles failed joins per source and rate-limits their WARN lines.
//
// A refused join is errcode.PermissionDenied (a token unknown, spent,
// expired or made for another name or other addresses; a name already
// admitted; a source throttled after too many failures) or
// errcode.InvalidArgument (a malformed request). Its connection is closed
// after the reply.
func (a *Authority) Handler() http.Handler {
	lim := a.opts.Limits
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src := sourceOf(r.RemoteAddr)
		if wait := a.throttle.wait(src, a.opts.Now()); wait > 0 {
			wait = wait.Round(time.Second) + time.Second
			err := errcode.New(errcode.PermissionDenied, "too many failed joins from %s; try again in %v", src, wait)
			w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
			a.refuse(w, r, true, err)
			return
		}
		leaf, err := a.serveJoin(r, lim.MaxBody)
		if err != nil {
			a.throttle.fail(src, a.opts.Now())
			a.refuse(w, r, false, err)
			return
		}
		a.log.Info("join: certificate issued", "remote", r.RemoteAddr, "name", leaf.Subject.CommonName,
			"ips", leaf.IPAddresses, "serial", leaf.SerialNumber, "expires", leaf.NotAfter)
		wire.WriteJSON(w, http.StatusOK, joinReply{Certificate: leaf.Raw, CA: a.ca.cert.Raw})
	})
}

// serveJoin reads a join request of at most maxBody bytes and answers it.
func (a *Authority) serveJoin(r *http.Request, maxBody int64) (*x509.Certificate, error) {
	if r.Method != http.MethodPost {
		return nil, errcode.New(errcode.InvalidArgument, "join with POST, not %s", r.Method)
	}
	tooLarge := errcode.New(errcode.InvalidArgument, "%w", &bodyTooLargeError{maxBody})
	if r.ContentLength > maxBody {
		return nil, tooLarge
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "reading the join request: %w", err)
	}
	if int64(len(body)) > maxBody {
		return nil, tooLarge
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req joinRequest
	if err := wire.DecodeBody(r, &req); err != nil {
		return nil, err
	}
	return a.join(&req)
}

// bodyTooLargeError is a join request over JoinLimits.MaxBody.
type bodyTooLargeError struct{ max int64 }

func (e *bodyTooLargeError) Error() string {
	return fmt.Sprintf("join request body over %d bytes; a join sends about 1 KiB", e.max)
}

// refuse answers a refused join and closes its connection after the
// reply, so that each further try costs a new TLS handshake.
func (a *Authority) refuse(w http.ResponseWriter, r *http.Request, throttled bool, err error) {
	a.refusals.refused(r.RemoteAddr, throttled, err)
	w.Header().Set("Connection", "close")
	if _, ok := errors.AsType[*bodyTooLargeError](err); ok {
		wire.WriteJSON(w, http.StatusRequestEntityTooLarge, wire.StatusOf(err))
		return
	}
	wire.WriteError(w, err)
}

// join checks the request's CSR against its token, and if the token
// admits it, spends the token, records the server and signs the CSR.
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
		return nil, fmt.Errorf("join: server name: %w", err)
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
		ips = append(ips, addr)
	}
	if ips, err = sanAddrs(ips); err != nil {
		return nil, fmt.Errorf("join as %q: %w", name, err)
	}
	secret, pin, err := parseToken(req.Token)
	if err != nil {
		return nil, errcode.Wrap(errcode.PermissionDenied, err)
	}
	if subtle.ConstantTimeCompare([]byte(pin), []byte(a.ca.Fingerprint())) != 1 {
		return nil, errcode.New(errcode.PermissionDenied, "the join token pins another CA")
	}
	var leaf *x509.Certificate
	err = a.update(func(st *joinState) error {
		h := tokenHash(secret)
		tok, ok := st.tokens[h]
		if !ok {
			return errcode.New(errcode.PermissionDenied, "the join token is unknown, expired or used")
		}
		if err := tok.admits(name, ips); err != nil {
			return err
		}
		if srv, joined := st.servers[name]; joined && !tok.Rejoin {
			return errcode.New(errcode.PermissionDenied,
				"join: server %q has already joined this cluster (certificate serial %s, issued %s); "+
					"another server may not take its name: a new certificate for it needs a re-join token (muster-agent token --rejoin)",
				name, srv.Serial, srv.Issued.Format(time.RFC3339))
		}
		now := a.opts.Now()
		var err error
		leaf, err = a.ca.sign(csr.PublicKey, name, ips, now.Add(-clockSkew), now.Add(a.opts.CertTTL), UsageAgent)
		if err != nil {
			return err
		}
		delete(st.tokens, h)
		st.servers[name] = serverRecord{IPs: ips, Serial: leaf.SerialNumber.Text(16), Issued: now, Expires: leaf.NotAfter}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return leaf, nil
}

// admits checks that the token was made for name and exactly ips (sorted,
// without duplicates).
func (t tokenRecord) admits(name string, ips []netip.Addr) error {
	if name != t.Name {
		return errcode.New(errcode.PermissionDenied,
			"the join token was made for server %q, not %q: join as %q, or make a token for %q", t.Name, name, t.Name, name)
	}
	if !slices.Equal(ips, t.IPs) {
		return errcode.New(errcode.PermissionDenied,
			"the join token for %q was made for IP addresses %v, and the request asks for %v: join with exactly %v, or make a token for these",
			name, t.IPs, ips, t.IPs)
	}
	return nil
}

// Join admits this server to a cluster: it generates a key, sends a
// certificate request for name and ips with token to the Authority's
// handler at joinURL, and returns the credentials issued. name and ips
// must be those the token was made for (Authority.NewToken), in any
// order. It talks only to a server whose certificate chains to the CA the
// token pins, so the token goes nowhere else; the private key never leaves
// this process. A refused join (a token unknown, spent, expired or made
// for another name or other addresses; a name already in the cluster), or
// a server outside the pinned CA, is errcode.PermissionDenied; a malformed
// token, name or address is errcode.InvalidArgument.
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
	if ips, err = sanAddrs(ips); err != nil {
		return nil, fmt.Errorf("join as %q: %w", name, err)
	}
	for _, ip := range ips {
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
	data, err := callAuthority(ctx, joinURL, pin, nil, body)
	if err != nil {
		return nil, err
	}
	var reply joinReply
	if err := json.Unmarshal(data, &reply); err != nil {
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
