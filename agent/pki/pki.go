package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// KeyAlgorithm is the signature algorithm of a CA and of the keys it issues.
type KeyAlgorithm string

// Key algorithms.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	Ed25519   KeyAlgorithm = "ed25519"
)

// Usage says what a certificate may authenticate.
type Usage int

// Certificate usages. Agents get UsageAgent: they serve their driver and
// call other agents.
const (
	UsageClient Usage = 1 << iota
	UsageServer
	UsageAgent = UsageClient | UsageServer
)

// Files in a PKI directory. A CA directory holds caCertFile and caKeyFile;
// a credentials directory holds caCertFile, certFile and keyFile. One
// directory may hold both.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	certFile   = "agent.crt"
	keyFile    = "agent.key"
)

// clockSkew is how far before now certificates become valid, so that a
// server whose clock is a little behind accepts them.
const clockSkew = 5 * time.Minute

// backdate is how far before now a certificate living ttl becomes valid:
// clockSkew, or a tenth of a short ttl, so that a certificate is renewed
// at the fraction of its lifetime its owner chose (see RenewOptions.At)
// rather than at once.
func backdate(ttl time.Duration) time.Duration { return min(clockSkew, ttl/10) }

// CAOptions configure NewCA. The zero value is usable.
type CAOptions struct {
	// Algorithm of the CA key and of the keys Issue generates; default ECDSAP256.
	Algorithm KeyAlgorithm
	// Validity of the CA certificate; default 10 years.
	Validity time.Duration
}

// CA is a cluster certificate authority: a self-signed certificate and its
// key, and the record of the certificates it issued and revoked (see
// Revoke). A CA read by LoadCA or written by Save keeps that record in its
// directory, shared by every process that uses the directory; a new CA
// keeps it in memory until it is saved.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer

	mu  sync.Mutex // guards the fields below and serializes the record's updates in this process
	dir string     // where the record lives, or "" for memory
	mem caRecord   // the record, when dir is ""
}

// NewCA creates a self-signed CA whose subject is name. opts may be nil.
func NewCA(name string, opts *CAOptions) (*CA, error) {
	var o CAOptions
	if opts != nil {
		o = *opts
	}
	if o.Algorithm == "" {
		o.Algorithm = ECDSAP256
	}
	if o.Validity == 0 {
		o.Validity = 10 * 365 * 24 * time.Hour
	}
	if name == "" || o.Validity < 0 {
		return nil, errcode.New(errcode.InvalidArgument, "new CA: a name and a positive validity are required")
	}
	key, err := newKey(o.Algorithm)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(o.Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, errcode.New(errcode.Internal, "new CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, errcode.New(errcode.Internal, "new CA: %w", err)
	}
	return &CA{cert: cert, key: key}, nil
}

// LoadCA reads a CA that Save wrote to dir.
func LoadCA(dir string) (*CA, error) {
	cert, err := readCert(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	key, err := readKey(filepath.Join(dir, caKeyFile), cert)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || cert.CheckSignatureFrom(cert) != nil {
		return nil, errcode.New(errcode.InvalidArgument, "%s: not a self-signed CA certificate", filepath.Join(dir, caCertFile))
	}
	return &CA{cert: cert, key: key, dir: dir}, nil
}

// Save writes the CA to dir, creating it: the certificate to ca.crt and the
// key to ca.key, readable by its owner only, and its record of issued and
// revoked certificates (issued.json, and the last CRL in ca.crl). Each file
// is replaced atomically. From then on the CA keeps its record in dir.
func (ca *CA) Save(dir string) error {
	key, err := keyPEM(caKeyFile, ca.key)
	if err != nil {
		return err
	}
	if err := saveFiles(dir, certPEM(caCertFile, ca.cert), key); err != nil {
		return err
	}
	return ca.moveRecord(dir)
}

// Fingerprint returns the hex SHA-256 of the CA certificate's DER encoding,
// which join tokens pin.
func (ca *CA) Fingerprint() string { return fingerprint(ca.cert.Raw) }

// Issue generates a key and a certificate for name (a DNS label, put in the
// subject and as a DNS name) and ips, valid for ttl (at most until the CA
// expires) with the given usage.
func (ca *CA) Issue(name string, ips []netip.Addr, ttl time.Duration, usage Usage) (*Credentials, error) {
	if ttl <= 0 {
		return nil, errcode.New(errcode.InvalidArgument, "certificate for %q: ttl must be positive", name)
	}
	now := time.Now()
	return ca.IssueBetween(name, ips, now.Add(-backdate(ttl)), now.Add(ttl), usage)
}

// IssueBetween is Issue with the certificate valid from notBefore to
// notAfter (at most until the CA expires): for certificates made ahead of
// a rotation, or already expired ones in tests.
func (ca *CA) IssueBetween(name string, ips []netip.Addr, notBefore, notAfter time.Time, usage Usage) (*Credentials, error) {
	key, err := newKey(keyAlgorithm(ca.key))
	if err != nil {
		return nil, err
	}
	leaf, err := ca.sign(key.Public(), name, ips, notBefore, notAfter, usage)
	if err != nil {
		return nil, err
	}
	return newCredentials(leaf, ca.cert, key), nil
}

// sign certifies pub for name and ips between notBefore and notAfter.
func (ca *CA) sign(pub crypto.PublicKey, name string, ips []netip.Addr, notBefore, notAfter time.Time, usage Usage) (*x509.Certificate, error) {
	if err := names.Label(name); err != nil {
		return nil, fmt.Errorf("certificate name: %w", err)
	}
	if !notAfter.After(notBefore) || usage&UsageAgent == 0 || usage&^UsageAgent != 0 {
		return nil, errcode.New(errcode.InvalidArgument, "certificate for %q: need a positive lifetime and a client or server usage", name)
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		DNSNames:  []string{name},
		NotBefore: notBefore,
		NotAfter:  notAfter,
		KeyUsage:  x509.KeyUsageDigitalSignature,
	}
	for _, ip := range ips {
		if !ip.IsValid() || ip.Zone() != "" {
			return nil, errcode.New(errcode.InvalidArgument, "certificate for %q: invalid IP address %q", name, ip)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	if usage&UsageClient != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if usage&UsageServer != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	var err error
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "certificate for %q: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	// A certificate the record does not hold could not be revoked by name.
	if err := ca.recordIssued(cert); err != nil {
		return nil, err
	}
	return cert, nil
}

// Credentials are what an agent authenticates with: its certificate and
// key, and the cluster CA it trusts.
type Credentials struct {
	// Cert is the agent's certificate chain (its certificate, then the CA
	// certificate) and private key.
	Cert tls.Certificate
	// CAPool holds the cluster CA certificate only.
	CAPool *x509.CertPool
	// CAFingerprint is the CA's Fingerprint.
	CAFingerprint string
}

func newCredentials(leaf, ca *x509.Certificate, key crypto.Signer) *Credentials {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Credentials{
		Cert:          tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Raw}, PrivateKey: key, Leaf: leaf},
		CAPool:        pool,
		CAFingerprint: fingerprint(ca.Raw),
	}
}

// Current returns c: fixed credentials are a Source that never changes.
func (c *Credentials) Current() *Credentials { return c }

// CRL returns nil: fixed credentials hold no revocation list.
func (c *Credentials) CRL() *CRL { return nil }

// CA returns the CA certificate that ends c's chain, or nil if the chain
// does not end with the CA whose fingerprint c names.
func (c *Credentials) CA() *x509.Certificate {
	certs := c.Cert.Certificate
	if len(certs) < 2 || fingerprint(certs[len(certs)-1]) != c.CAFingerprint {
		return nil
	}
	ca, err := x509.ParseCertificate(certs[len(certs)-1])
	if err != nil {
		return nil
	}
	return ca
}

// pendingSuffix names the new certificate that Credentials.Save stages
// beside the old one while it replaces the key.
const pendingSuffix = ".new"

// LoadCredentials reads credentials that Save wrote to dir. It checks that
// the key matches the certificate, that the CA signed it, and that both
// certificates are valid now: an expired or not yet valid one is
// errcode.FailedPrecondition, naming the dates and what to do. A Save
// that a crash interrupted between replacing the key and the certificate
// is completed.
func LoadCredentials(dir string) (*Credentials, error) {
	ca, err := readCert(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	leaf, err := readCert(filepath.Join(dir, certFile))
	if err != nil {
		return nil, err
	}
	key, err := readKey(filepath.Join(dir, keyFile), leaf)
	if err != nil {
		next, nerr := readCert(filepath.Join(dir, certFile+pendingSuffix))
		if nerr != nil {
			return nil, err
		}
		nkey, nerr := readKey(filepath.Join(dir, keyFile), next)
		if nerr != nil {
			return nil, err
		}
		if err := os.Rename(filepath.Join(dir, certFile+pendingSuffix), filepath.Join(dir, certFile)); err != nil {
			return nil, err
		}
		leaf, key = next, nkey
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "%s: not signed by %s: %w", filepath.Join(dir, certFile), filepath.Join(dir, caCertFile), err)
	}
	now := time.Now()
	if err := checkValid(filepath.Join(dir, caCertFile), ca, now,
		"the cluster needs a new CA, and every server must join it again"); err != nil {
		return nil, err
	}
	if err := checkValid(filepath.Join(dir, certFile), leaf, now,
		fmt.Sprintf("renew certificates before they expire (Keyring.KeepRenewed; muster-agent serve does it), "+
			"or join the cluster again with a new token, after removing %s and %s", certFile, keyFile)); err != nil {
		return nil, err
	}
	return newCredentials(leaf, ca, key), nil
}

// checkValid returns errcode.FailedPrecondition if cert, read from path,
// is not valid at now, with the dates and, for an expired one, fix.
func checkValid(path string, cert *x509.Certificate, now time.Time, fix string) error {
	const layout = time.RFC3339
	switch {
	case now.After(cert.NotAfter):
		return errcode.New(errcode.FailedPrecondition, "%s: the certificate of %q expired on %s (it was valid from %s; now is %s): %s",
			path, cert.Subject.CommonName, cert.NotAfter.UTC().Format(layout), cert.NotBefore.UTC().Format(layout), now.UTC().Format(layout), fix)
	case now.Before(cert.NotBefore):
		return errcode.New(errcode.FailedPrecondition, "%s: the certificate of %q is not valid before %s (until %s; now is %s): "+
			"this machine's clock is behind, or the certificate was made for later; set the clock right (NTP)",
			path, cert.Subject.CommonName, cert.NotBefore.UTC().Format(layout), cert.NotAfter.UTC().Format(layout), now.UTC().Format(layout))
	}
	return nil
}

// Save writes the credentials to dir, creating it: ca.crt, agent.crt and
// agent.key, the key readable by its owner only. Each file is replaced
// atomically, and the pair as a whole too: the new certificate is staged
// as agent.crt.new, the key replaced, then the certificate; LoadCredentials
// completes a Save that a crash cut between the two.
func (c *Credentials) Save(dir string) error {
	certs := c.Cert.Certificate
	key, ok := c.Cert.PrivateKey.(crypto.Signer)
	if len(certs) < 2 || !ok || fingerprint(certs[len(certs)-1]) != c.CAFingerprint {
		return errcode.New(errcode.InvalidArgument, "save credentials: the chain must end with the CA certificate %s", c.CAFingerprint)
	}
	ca, err := x509.ParseCertificate(certs[len(certs)-1])
	if err != nil {
		return errcode.New(errcode.InvalidArgument, "save credentials: %w", err)
	}
	leaf, err := x509.ParseCertificate(certs[0])
	if err != nil {
		return errcode.New(errcode.InvalidArgument, "save credentials: %w", err)
	}
	k, err := keyPEM(keyFile, key)
	if err != nil {
		return err
	}
	next := certPEM(certFile+pendingSuffix, leaf)
	if err := saveFiles(dir, certPEM(caCertFile, ca), next, k); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, next.name), filepath.Join(dir, certFile)); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// pemFile is one file of a PKI directory.
type pemFile struct {
	name  string
	block *pem.Block
	mode  os.FileMode
}

func certPEM(name string, cert *x509.Certificate) pemFile {
	return pemFile{name, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}, 0o644}
}

func keyPEM(name string, key crypto.Signer) (pemFile, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return pemFile{}, errcode.New(errcode.InvalidArgument, "%s: %w", name, err)
	}
	return pemFile{name, &pem.Block{Type: "PRIVATE KEY", Bytes: der}, 0o600}, nil
}

// saveFiles creates dir and replaces each file in it atomically.
func saveFiles(dir string, files ...pemFile) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), pem.EncodeToMemory(f.block), f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic replaces path with data: it writes a temporary file in
// the same directory, syncs it and renames it over path.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errcode.Wrap(errcode.NotFound, err)
		}
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != typ {
		return nil, errcode.New(errcode.InvalidArgument, "%s: no PEM %s block", path, typ)
	}
	return b.Bytes, nil
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "%s: %w", path, err)
	}
	return cert, nil
}

// readKey reads a PKCS #8 key and checks that it is cert's.
func readKey(path string, cert *x509.Certificate) (crypto.Signer, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "%s: %w", path, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok || !samePublicKey(key.Public(), cert.PublicKey) {
		return nil, errcode.New(errcode.InvalidArgument, "%s: the key does not match the certificate", path)
	}
	return key, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func newKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, key, err := ed25519.GenerateKey(rand.Reader)
		return key, err
	}
	return nil, errcode.New(errcode.InvalidArgument, "unknown key algorithm %q", alg)
}

func keyAlgorithm(key crypto.Signer) KeyAlgorithm {
	if _, ok := key.(ed25519.PrivateKey); ok {
		return Ed25519
	}
	return ECDSAP256
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
