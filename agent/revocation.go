package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/errcode"
)

// maxCRL bounds a CRL sent to PUT /v1/pki/crl: about 100,000 revoked
// certificates.
const maxCRL = 4 << 20

// peerConns are the TLS connections of a Server or a Client, by which a
// new CRL reaches the connections made before it: the first call after
// the CRL in force changes closes those whose peer it revokes.
type peerConns struct {
	src   pki.Source
	swept atomic.Pointer[pki.CRL] // the CRL of the last sweep

	mu    sync.Mutex
	conns map[*tls.Conn]*x509.Certificate // the peer's certificate
}

func newPeerConns(src pki.Source) *peerConns {
	return &peerConns{src: src, conns: map[*tls.Conn]*x509.Certificate{}}
}

// add records c, whose handshake is complete, unless the CRL in force
// revokes its peer (errcode.PermissionDenied).
func (p *peerConns) add(c *tls.Conn) error {
	cs := c.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := pki.CheckPeer(p.src, cs.PeerCertificates[0]); err != nil {
		return err
	}
	p.conns[c] = cs.PeerCertificates[0]
	return nil
}

func (p *peerConns) remove(c *tls.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// sweep closes the connections whose peer the CRL in force revokes, if
// the CRL changed since the last sweep. It closes the sockets under TLS,
// so that no write waits for a peer that does not read.
func (p *peerConns) sweep() {
	if crl := p.src.CRL(); crl == nil || p.swept.Load() == crl {
		return
	}
	p.mu.Lock()
	crl := p.src.CRL()
	var revoked []*tls.Conn
	for c, peer := range p.conns {
		if crl.Revoked(peer) {
			revoked = append(revoked, c)
			delete(p.conns, c)
		}
	}
	p.swept.Store(crl)
	p.mu.Unlock()
	for _, c := range revoked {
		c.NetConn().Close() // a Client's runs remove, which locks p.mu
	}
}

// track is a Server's http.Server.ConnState: it records connections once
// they carry calls (their handshake is then complete) until they close.
func (p *peerConns) track(c net.Conn, state http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	switch state {
	case http.StateActive:
		p.mu.Lock()
		_, known := p.conns[tc]
		p.mu.Unlock()
		if !known {
			p.add(tc) // a revoked peer's calls are refused by Server.unrevoked
		}
	case http.StateClosed, http.StateHijacked:
		p.remove(tc)
	}
}

// dial is a Client's http.Transport.DialTLSContext: it connects, completes
// the handshake with config within 10 s, and records the connection until
// it closes.
func (p *peerConns) dial(ctx context.Context, d *net.Dialer, network, addr string, config *tls.Config) (net.Conn, error) {
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tracked := &trackedConn{Conn: raw}
	tc := tls.Client(tracked, config)
	tracked.onClose = func() { p.remove(tc) }
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, err
	}
	if err := p.add(tc); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

// trackedConn runs onClose when it is first closed.
type trackedConn struct {
	net.Conn
	once    sync.Once
	onClose func()
}

func (c *trackedConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}

// crlWatcher is a pki.Source that says when its CRL changes: a
// *pki.Keyring.
type crlWatcher interface {
	CRLChanged() <-chan struct{}
}

// sweepOnChange closes the connections of the clients that a new CRL
// revokes as soon as it is in force, calls in flight included, until ctx
// is done. A Source that does not say when its CRL changes is swept at
// every call only (see unrevoked).
func (p *peerConns) sweepOnChange(ctx context.Context) {
	w, ok := p.src.(crlWatcher)
	if !ok {
		return
	}
	for {
		changed := w.CRLChanged()
		p.sweep()
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// unrevoked refuses, with errcode.PermissionDenied, the calls of a client
// whose certificate the CRL in force revokes, and closes the connections
// of such clients when the CRL changes: a client connected before its
// certificate was revoked gets no further call through.
func (s *Server) unrevoked(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.peers.sweep()
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			if err := pki.CheckPeer(s.creds, r.TLS.PeerCertificates[0]); err != nil {
				s.log.Warn("agent: call refused: the client's certificate is revoked", "method", r.Method, "path", r.URL.Path,
					"peer", r.TLS.PeerCertificates[0].Subject.CommonName, "serial", fmt.Sprintf("%x", r.TLS.PeerCertificates[0].SerialNumber), "remote", r.RemoteAddr)
				wire.WriteError(w, err)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// crlSetter is a pki.Source that takes new CRLs: a *pki.Keyring.
type crlSetter interface {
	SetCRL(data []byte) (*pki.CRL, error)
}

// pkiService serves the agent's revocation list under /v1/pki: PUT
// /v1/pki/crl puts a CRL (DER or PEM) in force if the cluster's CA signed
// it and it is not older than the one in force (pki.Keyring.SetCRL); GET
// returns the one in force. Any client of the cluster may send one: the
// CA's signature, not the sender, makes it authoritative.
type pkiService struct{ src pki.Source }

func (pkiService) Name() string { return "pki" }

// Capabilities: the service has no kinds.
func (pkiService) Capabilities(context.Context) (map[string]any, error) { return nil, nil }

// crlReply describes the CRL in force.
type crlReply struct {
	Number  string `json:"number"` // decimal
	Revoked int    `json:"revoked"`
}

func (p pkiService) Routes(route func(string, http.HandlerFunc)) {
	route("PUT /v1/pki/crl", reply(func(r *http.Request) (*crlReply, error) {
		setter, ok := p.src.(crlSetter)
		if !ok {
			return nil, errcode.New(errcode.FailedPrecondition, "this agent keeps no revocation list: serve it with a pki.Keyring")
		}
		data, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxCRL))
		if err != nil {
			return nil, errcode.New(errcode.InvalidArgument, "CRL body (at most %d bytes): %w", maxCRL, err)
		}
		crl, err := setter.SetCRL(data)
		if err != nil {
			return nil, err
		}
		return &crlReply{Number: crl.Number().String(), Revoked: crl.Len()}, nil
	}))
	route("GET /v1/pki/crl", func(w http.ResponseWriter, r *http.Request) {
		crl := p.src.CRL()
		if crl == nil {
			wire.WriteError(w, errcode.New(errcode.NotFound, "this agent holds no CRL"))
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(crl.DER())
	})
}

// PutCRL sends crl to the agent, which puts it in force (see
// pki.Keyring.SetCRL): from then on it refuses the certificates crl
// revokes, as a client and as a server, and it keeps crl across restarts
// if its Keyring has a directory. An older CRL than the agent's is
// errcode.FailedPrecondition, one that the cluster's CA did not sign
// errcode.PermissionDenied, an agent without a Keyring
// errcode.FailedPrecondition.
func (c *Client) PutCRL(ctx context.Context, crl *pki.CRL) error {
	_, err := decode[crlReply](c.roundTrip(ctx, http.MethodPut, apiPath("pki", "crl"), nil, bytes.NewReader(crl.DER())))
	return err
}

// CRL returns the CRL the agent holds, checked against the cluster's CA;
// an agent without one is errcode.NotFound.
func (c *Client) CRL(ctx context.Context) (*pki.CRL, error) {
	resp, err := c.roundTrip(ctx, http.MethodGet, apiPath("pki", "crl"), nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCRL))
	if err != nil {
		return nil, err
	}
	return pki.ParseCRL(data, c.src.Current().CA())
}
