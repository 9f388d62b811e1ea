package pki

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/musterkit/muster/errcode"
)

// Files of a CA's record, in its directory.
const (
	issuedFile = "issued.json" // the certificates issued and revoked, and the last CRL number
	caCRLFile  = "ca.crl"      // the last CRL signed, PEM
	recordLock = "issued.lock"
)

// caRecord is what a CA remembers of the certificates it issued: enough to
// revoke them by name and to sign its revocation list.
type caRecord struct {
	// CRLNumber is the number of the last CRL signed; the next is one more.
	CRLNumber int64        `json:"crlNumber"`
	Certs     []issuedCert `json:"certs"`
	crl       []byte       // DER of the last CRL signed, or nil
}

type issuedCert struct {
	Serial   string    `json:"serial"` // lower-case hex
	Name     string    `json:"name"`   // "" for a serial revoked that the record did not hold
	NotAfter time.Time `json:"notAfter"`
	Revoked  time.Time `json:"revoked,omitzero"`
}

// IssuedCertificate is a certificate the CA issued and has not seen expire.
type IssuedCertificate struct {
	Serial   *big.Int
	Name     string
	NotAfter time.Time
	// Revoked is when it was revoked; zero if it was not.
	Revoked time.Time
}

// Issued returns the unexpired certificates the CA issued (since its
// record began), oldest first, with their revocation times.
func (ca *CA) Issued() ([]IssuedCertificate, error) {
	var out []IssuedCertificate
	err := ca.update(false, func(r *caRecord) (bool, error) {
		for _, c := range r.Certs {
			s, _ := new(big.Int).SetString(c.Serial, 16)
			out = append(out, IssuedCertificate{Serial: s, Name: c.Name, NotAfter: c.NotAfter, Revoked: c.Revoked})
		}
		return false, nil
	})
	return out, err
}

// Revoke revokes the certificates with the given serial numbers and
// returns the CRL that lists them, signed by the CA with a CRL number one
// more than the last. A serial the CA has no record of is revoked too
// (until the CA expires). Revoking what is already revoked changes
// nothing and returns the CRL in force.
//
// Revocation takes effect where the CRL goes: agents that get it (PUT
// /v1/pki/crl through Client.PutCRL, or fetched from the join server by
// Keyring.KeepRenewed) and clients whose Keyring holds it refuse those
// certificates from then on.
func (ca *CA) Revoke(serials ...*big.Int) (*CRL, error) {
	if len(serials) == 0 {
		return nil, errcode.New(errcode.InvalidArgument, "revoke: no serial number given")
	}
	return ca.revoke(func(r *caRecord, now time.Time) (bool, error) {
		changed := false
		for _, s := range serials {
			if s == nil || s.Sign() <= 0 {
				return false, errcode.New(errcode.InvalidArgument, "revoke: serial numbers are positive")
			}
			hex := s.Text(16)
			i := slices.IndexFunc(r.Certs, func(c issuedCert) bool { return c.Serial == hex })
			if i < 0 {
				r.Certs = append(r.Certs, issuedCert{Serial: hex, NotAfter: ca.cert.NotAfter})
				i = len(r.Certs) - 1
			}
			if r.Certs[i].Revoked.IsZero() {
				r.Certs[i].Revoked, changed = now, true
			}
		}
		return changed, nil
	})
}

// RevokeName revokes every unexpired certificate the CA issued to name (a
// server or client) and returns the CRL, as Revoke does. A name the CA
// issued no unexpired certificate to is errcode.NotFound. Certificates
// issued to the name afterwards (a server joining again) are not revoked.
func (ca *CA) RevokeName(name string) (*CRL, error) {
	return ca.revoke(func(r *caRecord, now time.Time) (bool, error) {
		found, changed := false, false
		for i, c := range r.Certs {
			if c.Name != name {
				continue
			}
			found = true
			if c.Revoked.IsZero() {
				r.Certs[i].Revoked, changed = now, true
			}
		}
		if !found {
			return false, errcode.New(errcode.NotFound, "revoke: the CA issued no unexpired certificate to %q", name)
		}
		return changed, nil
	})
}

// CRL returns the CA's revocation list in force, signing the first (number
// 1, empty) if there is none yet.
func (ca *CA) CRL() (*CRL, error) {
	return ca.revoke(func(*caRecord, time.Time) (bool, error) { return false, nil })
}

// revoke applies change to the record and, if it changed it or no CRL was
// signed yet, signs a new CRL; it returns the CRL in force.
func (ca *CA) revoke(change func(r *caRecord, now time.Time) (bool, error)) (*CRL, error) {
	var der []byte
	err := ca.update(true, func(r *caRecord) (bool, error) {
		now := time.Now()
		changed, err := change(r, now)
		if err != nil {
			return false, err
		}
		if !changed && r.crl != nil {
			der = r.crl
			return false, nil
		}
		tmpl := &x509.RevocationList{
			Number:     big.NewInt(r.CRLNumber + 1),
			ThisUpdate: now,
			// Agents keep a CRL until a newer one replaces it; the next
			// update is when the CA itself expires.
			NextUpdate: ca.cert.NotAfter,
		}
		if !tmpl.NextUpdate.After(now) {
			return false, errcode.New(errcode.FailedPrecondition, "revoke: the CA expired on %s", ca.cert.NotAfter)
		}
		for _, c := range r.Certs {
			if !c.Revoked.IsZero() {
				s, _ := new(big.Int).SetString(c.Serial, 16)
				tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: c.Revoked})
			}
		}
		if der, err = x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key); err != nil {
			return false, errcode.New(errcode.Internal, "revoke: signing the CRL: %w", err)
		}
		r.CRLNumber++
		r.crl = der
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return ParseCRL(der, ca.cert)
}

// isRevoked reports whether the record lists cert's serial as revoked.
func (ca *CA) isRevoked(cert *x509.Certificate) (bool, error) {
	revoked := false
	err := ca.update(false, func(r *caRecord) (bool, error) {
		hex := cert.SerialNumber.Text(16)
		revoked = slices.ContainsFunc(r.Certs, func(c issuedCert) bool { return c.Serial == hex && !c.Revoked.IsZero() })
		return false, nil
	})
	return revoked, err
}

// recordIssued adds a certificate the CA signed to its record.
func (ca *CA) recordIssued(cert *x509.Certificate) error {
	return ca.update(false, func(r *caRecord) (bool, error) {
		r.Certs = append(r.Certs, issuedCert{Serial: cert.SerialNumber.Text(16), Name: cert.Subject.CommonName, NotAfter: cert.NotAfter})
		return true, nil
	})
}

// moveRecord writes the record to dir, and keeps it there from then on.
func (ca *CA) moveRecord(dir string) error {
	var rec caRecord
	if err := ca.update(true, func(r *caRecord) (bool, error) { rec = *r; return false, nil }); err != nil {
		return err
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.dir = dir
	unlock, err := lockRecord(dir)
	if err != nil {
		return err
	}
	defer unlock()
	return writeRecord(dir, &rec)
}

// update runs f on the record, expired certificates removed, and keeps
// what f leaves if it reports a change. In a directory, a file lock
// serializes it with other processes; withCRL reads the last CRL too.
func (ca *CA) update(withCRL bool, f func(*caRecord) (bool, error)) error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := time.Now()
	expired := func(c issuedCert) bool { return now.After(c.NotAfter) }
	if ca.dir == "" {
		ca.mem.Certs = slices.DeleteFunc(ca.mem.Certs, expired)
		_, err := f(&ca.mem)
		return err
	}
	unlock, err := lockRecord(ca.dir)
	if err != nil {
		return err
	}
	defer unlock()
	var r caRecord
	data, err := os.ReadFile(filepath.Join(ca.dir, issuedFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &r); err != nil {
			return errcode.New(errcode.Internal, "%s: %w", filepath.Join(ca.dir, issuedFile), err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if withCRL {
		if r.crl, err = readPEM(filepath.Join(ca.dir, caCRLFile), "X509 CRL"); err != nil && errcode.Of(err) != errcode.NotFound {
			return err
		}
	}
	r.Certs = slices.DeleteFunc(r.Certs, expired)
	changed, err := f(&r)
	if err != nil || !changed {
		return err
	}
	return writeRecord(ca.dir, &r)
}

// writeRecord writes r to dir: the record first, so that a crash between
// the two files burns a CRL number rather than signing two CRLs with one.
func writeRecord(dir string, r *caRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, issuedFile), data, 0o600); err != nil {
		return err
	}
	if r.crl == nil {
		return nil
	}
	return writeFileAtomic(filepath.Join(dir, caCRLFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: r.crl}), 0o644)
}

// lockRecord takes the lock of the record in dir.
func lockRecord(dir string) (unlock func(), err error) {
	lock, err := os.OpenFile(filepath.Join(dir, recordLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	return func() { lock.Close() }, nil // closing releases the lock
}

// CRL is a certificate revocation list (X.509, RFC 5280) signed by a
// cluster CA: the serial numbers of the certificates it revoked, and a CRL
// number that grows with every list the CA signs. A nil *CRL revokes
// nothing.
type CRL struct {
	list    *x509.RevocationList
	revoked map[string]bool // by lower-case hex serial
}

// ParseCRL parses a CRL (DER or PEM) and checks that ca signed it.
// A malformed CRL is errcode.InvalidArgument; one that ca did not sign
// errcode.PermissionDenied.
func ParseCRL(data []byte, ca *x509.Certificate) (*CRL, error) {
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			return nil, errcode.New(errcode.InvalidArgument, "CRL: a PEM %s block, not X509 CRL", b.Type)
		}
		data = b.Bytes
	}
	list, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "CRL: %w", err)
	}
	if ca == nil {
		return nil, errcode.New(errcode.InvalidArgument, "CRL: no CA certificate to check it against")
	}
	if !bytes.Equal(list.RawIssuer, ca.RawSubject) {
		return nil, errcode.New(errcode.PermissionDenied, "CRL: issued by %q, not by the cluster CA %q", list.Issuer, ca.Subject)
	}
	if err := list.CheckSignatureFrom(ca); err != nil {
		return nil, errcode.New(errcode.PermissionDenied, "CRL: not signed by the cluster CA: %w", err)
	}
	if list.Number == nil || list.Number.Sign() <= 0 {
		return nil, errcode.New(errcode.InvalidArgument, "CRL: no positive CRL number")
	}
	c := &CRL{list: list, revoked: map[string]bool{}}
	for _, e := range list.RevokedCertificateEntries {
		c.revoked[e.SerialNumber.Text(16)] = true
	}
	return c, nil
}

// Number is the CRL number: a later CRL of the same CA has a larger one.
func (c *CRL) Number() *big.Int { return new(big.Int).Set(c.list.Number) }

// ThisUpdate is when the CA signed the CRL.
func (c *CRL) ThisUpdate() time.Time { return c.list.ThisUpdate }

// Len is the number of certificates the CRL revokes.
func (c *CRL) Len() int {
	if c == nil {
		return 0
	}
	return len(c.revoked)
}

// DER is the CRL as signed.
func (c *CRL) DER() []byte { return c.list.Raw }

// PEM is the CRL in a PEM "X509 CRL" block.
func (c *CRL) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: c.list.Raw})
}

// Revoked reports whether the CRL revokes cert. Every certificate a
// cluster's peers accept comes from its one CA, so the serial number
// identifies it.
func (c *CRL) Revoked(cert *x509.Certificate) bool {
	return c != nil && cert != nil && c.revoked[cert.SerialNumber.Text(16)]
}
