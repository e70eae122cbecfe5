package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Test PKI, minted in the test: a CA, leaves, delegated responders and OCSP responses.
// The helpers panic on error; they are only used with inputs that cannot fail.

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

var serialCounter atomic.Int64

func nextSerial() *big.Int { return big.NewInt(1000 + serialCounter.Add(1)) }

type testCA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

func newKey() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) }

func newTestCA(name string, now time.Time) *testCA {
	key := newKey()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"stapler tests"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))
	return &testCA{Cert: must(x509.ParseCertificate(der)), Key: key}
}

// subordinate issues an intermediate CA under ca.
func (ca *testCA) subordinate(name string, now time.Time) *testCA {
	key := newKey()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"stapler tests"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key))
	return &testCA{Cert: must(x509.ParseCertificate(der)), Key: key}
}

// leafSpec describes a leaf to issue; zero times mean valid from a day ago for 90 days.
type leafSpec struct {
	Name      string
	OCSP      []string
	AIA       []string
	NotBefore time.Time
	NotAfter  time.Time
}

func (ca *testCA) issue(spec leafSpec, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	if spec.NotBefore.IsZero() {
		spec.NotBefore = now.Add(-24 * time.Hour)
	}
	if spec.NotAfter.IsZero() {
		spec.NotAfter = now.Add(90 * 24 * time.Hour)
	}
	key := newKey()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
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
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key))
	return must(x509.ParseCertificate(der)), key
}

// delegate issues a responder certificate; eku false leaves out id-kp-OCSPSigning.
func (ca *testCA) delegate(eku bool, notBefore, notAfter time.Time) (*x509.Certificate, crypto.Signer) {
	key := newKey()
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
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

// respond signs an OCSP response about serial, by the CA itself unless signer is given.
func (ca *testCA) respond(serial *big.Int, status int, this, next time.Time, signer *x509.Certificate, key crypto.Signer) []byte {
	if signer == nil {
		signer, key = ca.Cert, ca.Key
	}
	tmpl := ocsp.Response{
		Status:       status,
		SerialNumber: serial,
		ThisUpdate:   this,
		NextUpdate:   next,
	}
	if status == ocsp.Revoked {
		tmpl.RevokedAt = this.Add(-time.Hour)
		tmpl.RevocationReason = ocsp.KeyCompromise
	}
	if signer != ca.Cert {
		tmpl.Certificate = signer
	}
	return must(ocsp.CreateResponse(ca.Cert, signer, tmpl, key))
}

func certPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func keyPEM(key *ecdsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))})
}

// writeBundle writes an HAProxy PEM bundle: leaf, chain, then the key.
func writeBundle(path string, leaf *x509.Certificate, key *ecdsa.PrivateKey, chain ...*x509.Certificate) {
	data := append(certPEM(append([]*x509.Certificate{leaf}, chain...)...), keyPEM(key)...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		panic(err)
	}
}
