package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/errcode"
)

// Paths the join server (Authority.Serve) answers beside joins.
const (
	// RenewPath takes POST renewals, authenticated by the current certificate.
	RenewPath = "/v1/renew"
	// CRLPath answers GET with the CA's revocation list in force (DER).
	CRLPath = "/v1/crl"
)

// renewRequest asks for a new certificate for the name and addresses of
// the one the client authenticated with.
type renewRequest struct {
	CSR []byte `json:"csr"` // DER
}

// renewReply is the certificate issued, and the CRL in force.
type renewReply struct {
	Certificate []byte `json:"certificate"` // DER
	CA          []byte `json:"ca"`          // DER
	CRL         []byte `json:"crl"`         // DER
}

// withRenewal serves renewals at RenewPath and the CRL at CRLPath, and
// joins (next) at every other path.
func (a *Authority) withRenewal(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(RenewPath, a.RenewHandler())
	mux.Handle(CRLPath, a.CRLHandler())
	mux.Handle("/", next)
	return mux
}

// renewalTLS makes cfg, the join server's, ask clients for a certificate
// of the authority's CA, which renewals authenticate with; joining
// servers present none.
func renewalTLS(cfg *tls.Config, creds *Credentials) *tls.Config {
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	cfg.ClientCAs = creds.CAPool
	return cfg
}

// RenewHandler answers POST renewals: a client that authenticated with a
// certificate of the Authority's CA (over TLS that asks for one, as Serve
// does), not revoked, gets a new certificate for the same name, addresses
// and usage, for a new key, valid for AuthorityOptions.CertTTL, and the
// CA's CRL in force. A request for any other name or address, or for the
// same key, is errcode.InvalidArgument; a client without a valid
// certificate, or with a revoked one, errcode.PermissionDenied.
func (a *Authority) RenewHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			wire.WriteError(w, errcode.New(errcode.InvalidArgument, "renew with POST, not %s", r.Method))
			return
		}
		var req renewRequest
		if err := wire.DecodeBody(r, &req); err != nil {
			wire.WriteError(w, err)
			return
		}
		old, leaf, crl, err := a.renew(r, &req)
		if err != nil {
			a.log.Warn("renewal refused", "remote", r.RemoteAddr, "err", err)
			wire.WriteError(w, err)
			return
		}
		a.log.Info("certificate renewed", "remote", r.RemoteAddr, "name", leaf.Subject.CommonName,
			"ips", leaf.IPAddresses, "old_serial", fmt.Sprintf("%x", old.SerialNumber), "serial", fmt.Sprintf("%x", leaf.SerialNumber), "expires", leaf.NotAfter)
		wire.WriteJSON(w, http.StatusOK, renewReply{Certificate: leaf.Raw, CA: a.ca.cert.Raw, CRL: crl.DER()})
	})
}

// CRLHandler answers GET requests with the CA's CRL in force, DER-encoded
// (application/pkix-crl). A CRL is signed and public: it needs no client
// certificate.
func (a *Authority) CRLHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			wire.WriteError(w, errcode.New(errcode.InvalidArgument, "get the CRL with GET, not %s", r.Method))
			return
		}
		crl, err := a.ca.CRL()
		if err != nil {
			wire.WriteError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(crl.DER())
	})
}

// renew checks a renewal and signs it; it returns the certificate the
// client authenticated with, the new one and the CRL in force.
func (a *Authority) renew(r *http.Request, req *renewRequest) (old, leaf *x509.Certificate, crl *CRL, err error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return nil, nil, nil, errcode.New(errcode.PermissionDenied, "renew: authenticate with the current certificate, from the cluster's CA")
	}
	chain := r.TLS.VerifiedChains[0]
	old = chain[0]
	if fingerprint(chain[len(chain)-1].Raw) != a.ca.Fingerprint() {
		return nil, nil, nil, errcode.New(errcode.PermissionDenied, "renew: the certificate is not from the authority's CA")
	}
	if revoked, err := a.ca.isRevoked(old); err != nil || revoked {
		if err == nil {
			err = errcode.New(errcode.PermissionDenied, "renew: the certificate of %q (serial %x) is revoked", old.Subject.CommonName, old.SerialNumber)
		}
		return nil, nil, nil, err
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, nil, nil, errcode.New(errcode.InvalidArgument, "renew: certificate request: %w", err)
	}
	name, ips := old.Subject.CommonName, addrs(old.IPAddresses)
	if csr.Subject.CommonName != name || len(csr.DNSNames) > 1 || len(csr.DNSNames) == 1 && csr.DNSNames[0] != name ||
		len(csr.EmailAddresses)+len(csr.URIs) > 0 || !slices.Equal(sorted(addrs(csr.IPAddresses)), sorted(ips)) {
		return nil, nil, nil, errcode.New(errcode.InvalidArgument, "renew: the request must be for %q and %v, as the current certificate is", name, ips)
	}
	if samePublicKey(csr.PublicKey, old.PublicKey) {
		return nil, nil, nil, errcode.New(errcode.InvalidArgument, "renew: the request must be for a new key")
	}
	var usage Usage
	for _, u := range old.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageClientAuth:
			usage |= UsageClient
		case x509.ExtKeyUsageServerAuth:
			usage |= UsageServer
		}
	}
	if crl, err = a.ca.CRL(); err != nil {
		return nil, nil, nil, err
	}
	now, ttl := a.opts.Now(), a.opts.CertTTL
	leaf, err = a.ca.sign(csr.PublicKey, name, ips, now.Add(-backdate(ttl)), now.Add(ttl), usage)
	return old, leaf, crl, err
}

func addrs(ips []net.IP) []netip.Addr {
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		a, _ := netip.AddrFromSlice(ip)
		out = append(out, a.Unmap())
	}
	return out
}

func sorted(a []netip.Addr) []netip.Addr { slices.SortFunc(a, netip.Addr.Compare); return a }

// Renew gets a new certificate for current's name, addresses and usage,
// for a new key, from the join server at joinURL (the URL servers join
// with; the renewal goes to its RenewPath), authenticating with current,
// which must therefore be valid and not revoked (errcode.PermissionDenied
// otherwise). Like Join, it talks only to a server whose certificate
// chains to current's CA. Most callers want Keyring.Renew, which also puts
// the new credentials in use.
func Renew(ctx context.Context, joinURL string, current *Credentials) (*Credentials, error) {
	creds, _, err := renew(ctx, joinURL, current)
	return creds, err
}

// renew is Renew, returning the CRL in force too.
func renew(ctx context.Context, joinURL string, cur *Credentials) (*Credentials, []byte, error) {
	leaf := cur.Cert.Leaf
	signer, ok := cur.Cert.PrivateKey.(crypto.Signer)
	if leaf == nil || !ok {
		return nil, nil, errcode.New(errcode.InvalidArgument, "renew: the credentials need a parsed certificate and a private key")
	}
	key, err := newKey(keyAlgorithm(signer))
	if err != nil {
		return nil, nil, err
	}
	name := leaf.Subject.CommonName
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}, IPAddresses: leaf.IPAddresses}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, errcode.New(errcode.InvalidArgument, "renew: certificate request: %w", err)
	}
	body, err := json.Marshal(renewRequest{CSR: csr})
	if err != nil {
		return nil, nil, err
	}
	u, err := authorityURL(joinURL, RenewPath)
	if err != nil {
		return nil, nil, err
	}
	data, err := callAuthority(ctx, u, cur.CAFingerprint, &cur.Cert, body)
	if err != nil {
		return nil, nil, err
	}
	var reply renewReply
	if err := json.Unmarshal(data, &reply); err != nil {
		return nil, nil, errcode.New(errcode.Unavailable, "renew: reading the reply: %w", err)
	}
	issued, ca, err := checkIssued(&joinReply{Certificate: reply.Certificate, CA: reply.CA}, cur.CAFingerprint, name, key.Public())
	if err != nil {
		return nil, nil, err
	}
	if !slices.Equal(sorted(addrs(issued.IPAddresses)), sorted(addrs(leaf.IPAddresses))) {
		return nil, nil, errcode.New(errcode.Internal, "renew: the new certificate names %v, not %v", issued.IPAddresses, leaf.IPAddresses)
	}
	return newCredentials(issued, ca, key), reply.CRL, nil
}

// authorityURL is path at the join server of joinURL.
func authorityURL(joinURL, path string) (string, error) {
	u, err := url.Parse(joinURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", errcode.New(errcode.InvalidArgument, "join URL %q is not https://host:port", joinURL)
	}
	return (&url.URL{Scheme: "https", Host: u.Host, Path: path}).String(), nil
}

// callAuthority sends body (a POST) or nothing (a GET) to u, a join
// server's URL, presenting cert if it is not nil, and returns the reply's
// body. The server must present, in its chain, the CA whose fingerprint is
// pin, and chain to it (errcode.PermissionDenied otherwise): the pinned CA
// replaces the system roots, so a request goes nowhere else.
func callAuthority(ctx context.Context, u, pin string, cert *tls.Certificate, body []byte) ([]byte, error) {
	var pinErr atomic.Pointer[error]
	config := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // VerifyPeerCertificate checks the chain against the pinned CA instead
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			err := verifyPinned(raw, pin)
			if err != nil {
				pinErr.Store(&err)
			}
			return err
		},
	}
	if cert != nil {
		config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	tr := &http.Transport{TLSClientConfig: config, TLSHandshakeTimeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	method, rd := http.MethodGet, io.Reader(nil)
	if body != nil {
		method, rd = http.MethodPost, bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "URL %q: %w", u, err)
	}
	if req.URL.Scheme != "https" {
		return nil, errcode.New(errcode.InvalidArgument, "URL %q is not https", u)
	}
	resp, err := tr.RoundTrip(req)
	if p := pinErr.Load(); p != nil {
		return nil, *p
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, errcode.New(errcode.Unavailable, "%s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, wire.ResponseError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxJSONBody))
	if err != nil {
		return nil, errcode.New(errcode.Unavailable, "%s: reading the reply: %w", u, err)
	}
	return data, nil
}

// Renew renews the credentials at the join server of joinURL (see Renew)
// and rotates the new ones in (Rotate), then puts in force the CRL that
// came with them if it is newer than k's.
func (k *Keyring) Renew(ctx context.Context, joinURL string) error {
	creds, crl, err := renew(ctx, joinURL, k.Current())
	if err != nil {
		return err
	}
	if err := k.Rotate(creds); err != nil {
		return err
	}
	if len(crl) == 0 {
		return nil
	}
	if _, err := k.SetCRL(crl); err != nil && errcode.Of(err) != errcode.FailedPrecondition {
		return err
	}
	return nil
}

// FetchCRL gets the CA's CRL in force from the join server of joinURL
// (CRLPath) and puts it in force (SetCRL); it returns the CRL k holds
// then.
func (k *Keyring) FetchCRL(ctx context.Context, joinURL string) (*CRL, error) {
	u, err := authorityURL(joinURL, CRLPath)
	if err != nil {
		return nil, err
	}
	data, err := callAuthority(ctx, u, k.Current().CAFingerprint, &k.Current().Cert, nil)
	if err != nil {
		return nil, err
	}
	return k.SetCRL(data)
}

// RenewOptions configure Keyring.KeepRenewed. The zero value is usable.
type RenewOptions struct {
	// At is the fraction of a certificate's lifetime after which it is
	// renewed, in (0, 1); default 2/3. What is left is the time to retry
	// while the join server is away.
	At float64
	// CRLInterval is how often the CRL is fetched from the join server;
	// default 1 minute; negative means never.
	CRLInterval time.Duration
	// Logger records renewals and failures; nil discards.
	Logger *slog.Logger
}

// KeepRenewed renews k's certificate at the join server of joinURL each
// time the fraction opts.At of its lifetime has passed, and fetches the
// CA's CRL every opts.CRLInterval, until ctx is done; it then returns nil.
// A failed renewal is retried after 1 s, then twice as long each time up
// to a minute. opts may be nil.
func (k *Keyring) KeepRenewed(ctx context.Context, joinURL string, opts *RenewOptions) error {
	var o RenewOptions
	if opts != nil {
		o = *opts
	}
	if o.At == 0 {
		o.At = 2.0 / 3
	}
	if o.At <= 0 || o.At >= 1 {
		return errcode.New(errcode.InvalidArgument, "keep renewed: the renewal fraction %v is not in (0, 1)", o.At)
	}
	if o.CRLInterval == 0 {
		o.CRLInterval = time.Minute
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var retryAt time.Time
	var backoff time.Duration
	nextCRL := time.Now()
	for {
		leaf := k.Current().Cert.Leaf
		due := leaf.NotBefore.Add(time.Duration(float64(leaf.NotAfter.Sub(leaf.NotBefore)) * o.At))
		if retryAt.After(due) {
			due = retryAt
		}
		wake := due
		if o.CRLInterval > 0 && nextCRL.Before(wake) {
			wake = nextCRL
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		now := time.Now()
		if o.CRLInterval > 0 && !now.Before(nextCRL) {
			before := k.CRL()
			if crl, err := k.FetchCRL(ctx, joinURL); err != nil {
				log.Warn("fetching the CRL", "join", joinURL, "err", err)
			} else if crl != before {
				log.Info("CRL in force", "number", crl.Number(), "revoked", crl.Len())
			}
			nextCRL = now.Add(o.CRLInterval)
		}
		if now.Before(due) {
			continue
		}
		if err := k.Renew(ctx, joinURL); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, time.Second), time.Minute)
			retryAt = now.Add(backoff)
			log.Warn("renewing the certificate failed; retrying", "in", backoff, "expires", leaf.NotAfter, "err", err)
			continue
		}
		backoff, retryAt = 0, time.Time{}
		cur := k.Current().Cert.Leaf
		log.Info("certificate renewed", "name", cur.Subject.CommonName, "serial", fmt.Sprintf("%x", cur.SerialNumber), "expires", cur.NotAfter)
	}
}
