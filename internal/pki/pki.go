// Package pki is a small PKI for stapler's demo and tests: CAs, leaf certificates as HAProxy
// bundles, delegated OCSP responder certificates, OCSP responses, and an OCSP responder on
// 127.0.0.1 that can answer in every way a real one does, well or badly. Keys are ECDSA P-256.
// Its functions panic only when crypto/rand fails.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

var serialCounter atomic.Int64

// NextSerial is a serial number no other certificate of this process has.
func NextSerial() *big.Int { return big.NewInt(1000 + serialCounter.Add(1)) }

// NewKey is a new ECDSA P-256 key.
func NewKey() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) }

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed root CA valid from a day before now for ten years.
func NewCA(name string, now time.Time) *CA {
	key := NewKey()
	tmpl := &x509.Certificate{
		SerialNumber:          NextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"stapler"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))
	return &CA{Cert: must(x509.ParseCertificate(der)), Key: key}
}

// Subordinate issues an intermediate CA under ca.
func (ca *CA) Subordinate(name string, now time.Time) *CA {
	key := NewKey()
	tmpl := &x509.Certificate{
		SerialNumber:          NextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"stapler"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key))
	return &CA{Cert: must(x509.ParseCertificate(der)), Key: key}
}

// Leaf describes a leaf to issue; zero times mean valid from a day before now for 90 days.
type Leaf struct {
	Name       string   // DNS name and common name
	OCSP       []string // OCSP responder URLs
	AIA        []string // caIssuers URLs
	NotBefore  time.Time
	NotAfter   time.Time
	MustStaple bool // the TLS feature extension with status_request (RFC 7633)
}

// oidTLSFeature is the TLS feature extension (RFC 7633); status_request is feature 5.
var oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}

// Issue issues a leaf certificate and its key.
func (ca *CA) Issue(spec Leaf, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	if spec.NotBefore.IsZero() {
		spec.NotBefore = now.Add(-24 * time.Hour)
	}
	if spec.NotAfter.IsZero() {
		spec.NotAfter = now.Add(90 * 24 * time.Hour)
	}
	key := NewKey()
	tmpl := &x509.Certificate{
		SerialNumber:          NextSerial(),
		Subject:               pkix.Name{CommonName: spec.Name},
		DNSNames:              []string{spec.Name},
		NotBefore:             spec.NotBefore,
		NotAfter:              spec.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		OCSPServer:            spec.OCSP,
		IssuingCertificateURL: spec.AIA,
	}
	if spec.MustStaple {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidTLSFeature, Value: must(asn1.Marshal([]int{5}))}}
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key))
	return must(x509.ParseCertificate(der)), key
}

// Delegate issues a delegated OCSP responder certificate; eku false leaves out
// id-kp-OCSPSigning.
func (ca *CA) Delegate(eku bool, notBefore, notAfter time.Time) (*x509.Certificate, crypto.Signer) {
	key := NewKey()
	tmpl := &x509.Certificate{
		SerialNumber: NextSerial(),
		Subject:      pkix.Name{CommonName: ca.Cert.Subject.CommonName + " OCSP responder"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if eku {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key))
	return must(x509.ParseCertificate(der)), key
}

// Respond signs an OCSP response about serial, by the CA itself unless signer is given (a
// delegated responder, whose certificate the response then carries).
func (ca *CA) Respond(serial *big.Int, status int, this, next time.Time, signer *x509.Certificate, key crypto.Signer) []byte {
	if signer == nil {
		signer, key = ca.Cert, ca.Key
	}
	tmpl := ocsp.Response{Status: status, SerialNumber: serial, ThisUpdate: this, NextUpdate: next}
	if status == ocsp.Revoked {
		tmpl.RevokedAt = this.Add(-time.Hour)
		tmpl.RevocationReason = ocsp.KeyCompromise
	}
	if signer != ca.Cert {
		tmpl.Certificate = signer
	}
	return must(ocsp.CreateResponse(ca.Cert, signer, tmpl, key))
}

// CertPEM is the certificates in PEM.
func CertPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM is the key in PKCS #8 PEM.
func KeyPEM(key *ecdsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))})
}

// Bundle is an HAProxy PEM bundle: the leaf, its chain, then its key.
func Bundle(leaf *x509.Certificate, key *ecdsa.PrivateKey, chain ...*x509.Certificate) []byte {
	return append(CertPEM(append([]*x509.Certificate{leaf}, chain...)...), KeyPEM(key)...)
}

// WriteBundle writes an HAProxy PEM bundle to path, mode 0600.
func WriteBundle(path string, leaf *x509.Certificate, key *ecdsa.PrivateKey, chain ...*x509.Certificate) error {
	return os.WriteFile(path, Bundle(leaf, key, chain...), 0o600)
}
