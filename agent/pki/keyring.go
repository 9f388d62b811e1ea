package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/errcode"
)

// crlFile is where a Keyring with a directory keeps its CRL, beside the
// credentials.
const crlFile = "crl.pem"

// A Source is what a TLS endpoint of the cluster authenticates with, read
// at every handshake: its current credentials and the revocation list in
// force. *Credentials is a Source that never changes and revokes nothing;
// a *Keyring changes as certificates are rotated and CRLs arrive.
type Source interface {
	// Current returns the credentials to present now; never nil.
	Current() *Credentials
	// CRL returns the revocation list in force, or nil.
	CRL() *CRL
}

// Keyring holds an agent's or a client's credentials and the cluster's
// revocation list, and changes both atomically while they are in use:
// every TLS configuration made from it (ServerConfig, ClientConfig,
// agent.NewServer, agent.Dial) presents the current certificate and
// refuses peers the current CRL revokes, at the next handshake, without
// restarting a listener. A Keyring opened on a directory saves every
// change there, so it holds across restarts. It is safe for concurrent
// use.
type Keyring struct {
	dir   string
	creds atomic.Pointer[Credentials]
	crl   atomic.Pointer[CRL]

	mu         sync.Mutex    // serializes changes, so that the directory and memory agree
	crlChanged chan struct{} // closed when the CRL changes, then replaced
}

// NewKeyring returns a Keyring holding creds, in memory only.
func NewKeyring(creds *Credentials) (*Keyring, error) {
	if creds == nil || creds.Cert.Leaf == nil || creds.CA() == nil {
		return nil, errcode.New(errcode.InvalidArgument, "keyring: credentials need a parsed certificate and a chain ending with their CA")
	}
	k := &Keyring{crlChanged: make(chan struct{})}
	k.creds.Store(creds)
	return k, nil
}

// OpenKeyring reads the credentials in dir (LoadCredentials, which refuses
// expired ones) and the CRL kept there, if any, and returns a Keyring that
// saves its changes to dir.
func OpenKeyring(dir string) (*Keyring, error) {
	creds, err := LoadCredentials(dir)
	if err != nil {
		return nil, err
	}
	k, err := NewKeyring(creds)
	if err != nil {
		return nil, err
	}
	k.dir = dir
	data, err := os.ReadFile(filepath.Join(dir, crlFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		crl, err := ParseCRL(data, creds.CA())
		if err != nil {
			return nil, errcode.New(errcode.Of(err), "%s: %w", filepath.Join(dir, crlFile), err)
		}
		k.crl.Store(crl)
	}
	return k, nil
}

// Current implements Source.
func (k *Keyring) Current() *Credentials { return k.creds.Load() }

// CRL implements Source.
func (k *Keyring) CRL() *CRL { return k.crl.Load() }

// Rotate replaces the credentials with creds, which must be for the same
// name and CA, valid now and not revoked (errcode.InvalidArgument
// otherwise): new handshakes present them at once, and connections made
// with the old ones go on. With a directory, creds are saved there first.
func (k *Keyring) Rotate(creds *Credentials) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := k.creds.Load()
	if creds == nil || creds.Cert.Leaf == nil || creds.CA() == nil {
		return errcode.New(errcode.InvalidArgument, "rotate: credentials need a parsed certificate and a chain ending with their CA")
	}
	leaf, name := creds.Cert.Leaf, cur.Cert.Leaf.Subject.CommonName
	switch now := time.Now(); {
	case creds.CAFingerprint != cur.CAFingerprint:
		return errcode.New(errcode.InvalidArgument, "rotate: the new certificate is from CA %s, not %s", creds.CAFingerprint, cur.CAFingerprint)
	case leaf.Subject.CommonName != name:
		return errcode.New(errcode.InvalidArgument, "rotate: the new certificate is for %q, not %q", leaf.Subject.CommonName, name)
	case now.After(leaf.NotAfter) || now.Before(leaf.NotBefore):
		return errcode.New(errcode.InvalidArgument, "rotate: the new certificate is valid from %s to %s, not now", leaf.NotBefore, leaf.NotAfter)
	case k.crl.Load().Revoked(leaf):
		return errcode.New(errcode.InvalidArgument, "rotate: the new certificate (serial %x) is revoked", leaf.SerialNumber)
	}
	if k.dir != "" {
		if err := creds.Save(k.dir); err != nil {
			return err
		}
	}
	k.creds.Store(creds)
	return nil
}

// SetCRL puts a CRL (DER or PEM) in force if the cluster's CA signed it
// (errcode.PermissionDenied otherwise) and it is not older than the one in
// force: a lower CRL number is errcode.FailedPrecondition, and so is the
// same number with other contents; the same CRL again changes nothing.
// From then on handshakes with the certificates it revokes fail. With a
// directory, the CRL is saved there first. It returns the CRL in force.
func (k *Keyring) SetCRL(data []byte) (*CRL, error) {
	crl, err := ParseCRL(data, k.creds.Load().CA())
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur := k.crl.Load(); cur != nil {
		switch c := crl.list.Number.Cmp(cur.list.Number); {
		case c < 0:
			return nil, errcode.New(errcode.FailedPrecondition, "CRL number %v is older than the one in force, %v", crl.list.Number, cur.list.Number)
		case c == 0 && string(crl.DER()) == string(cur.DER()):
			return cur, nil
		case c == 0:
			return nil, errcode.New(errcode.FailedPrecondition, "CRL number %v is in force already, with other contents", crl.list.Number)
		}
	}
	if k.dir != "" {
		if err := writeFileAtomic(filepath.Join(k.dir, crlFile), crl.PEM(), 0o644); err != nil {
			return nil, err
		}
	}
	k.crl.Store(crl)
	close(k.crlChanged)
	k.crlChanged = make(chan struct{})
	return crl, nil
}

// CRLChanged returns a channel that is closed when the CRL in force
// changes next: a server waits on it to close the connections of the
// peers a new CRL revokes.
func (k *Keyring) CRLChanged() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.crlChanged
}

// CheckPeer returns errcode.PermissionDenied if src's CRL revokes cert.
func CheckPeer(src Source, cert *x509.Certificate) error {
	if src.CRL().Revoked(cert) {
		return errcode.New(errcode.PermissionDenied, "the certificate of %q (serial %x) is revoked", cert.Subject.CommonName, cert.SerialNumber)
	}
	return nil
}

// ServerConfig returns the TLS 1.3 configuration of a server of the
// cluster: it presents src's current certificate, requires a client
// certificate of src's CA with client usage, and refuses one that src's
// CRL revokes. Both are read at every handshake, so a rotated certificate
// or a new CRL applies to the next connection. The CA is src's when the
// configuration is made: rotation keeps it.
func ServerConfig(src Source) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &src.Current().Cert, nil },
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        src.Current().CAPool,
		VerifyConnection: func(cs tls.ConnectionState) error { return checkConnection(src, cs) },
	}
}

// ClientConfig returns the TLS 1.3 configuration of a client of a cluster
// server: it requires the server's certificate to chain to src's CA, name
// serverName and not be revoked by src's CRL, and presents src's current
// certificate, read at every handshake, whatever the server asks (so that
// the server decides whether it is acceptable).
func ClientConfig(src Source, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    src.Current().CAPool,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &src.Current().Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error { return checkConnection(src, cs) },
	}
}

// checkConnection refuses a peer whose certificate src's CRL revokes.
func checkConnection(src Source, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil // a client without a certificate: ClientAuth decides
	}
	return CheckPeer(src, cs.PeerCertificates[0])
}
