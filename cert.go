package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// parseBundle returns the certificates of a PEM bundle in file order. The first is the leaf.
// Private keys and other blocks are passed over and never kept.
func parseBundle(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d in bundle: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errNotCertificate
	}
	return certs, nil
}

// responderURLs are the OCSP responders of the certificate, in its order; none when it names
// none.
func responderURLs(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.OCSPServer {
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// oidTLSFeature is the TLS feature extension (RFC 7633); status_request is feature 5.
var oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}

// mustStaple reports whether the certificate demands a staple (RFC 7633 TLS feature
// status_request): clients that enforce it refuse the certificate without one.
func mustStaple(c *x509.Certificate) bool {
	for _, e := range c.Extensions {
		if !e.Id.Equal(oidTLSFeature) {
			continue
		}
		var features []int
		if _, err := asn1.Unmarshal(e.Value, &features); err == nil && slices.Contains(features, 5) {
			return true
		}
	}
	return false
}

// certInfo is what stapler reads of a certificate file.
type certInfo struct {
	Hash       string              // of the CERTIFICATE blocks
	Bundle     []*x509.Certificate // in file order; the first is the leaf
	Subject    string
	Serial     string // hex
	IssuerName string
	NotBefore  time.Time
	NotAfter   time.Time
	Responders []string
	MustStaple bool
}

// certBlocks returns the DER of the CERTIFICATE blocks of a PEM file, and the hash of them all:
// what identifies the certificates, whatever else (a key) the file holds.
func certBlocks(data []byte) (blocks [][]byte, hash string) {
	h := sha256.New()
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			blocks = append(blocks, block.Bytes)
			h.Write(block.Bytes)
		}
	}
	return blocks, hex.EncodeToString(h.Sum(nil))
}

// readCert parses the certificate blocks of a file. Every block must parse: HAProxy refuses a
// bundle with one that does not, so stapler must not take the next one for the leaf. The leaf
// must come first.
func readCert(blocks [][]byte, hash string) (*certInfo, error) {
	if len(blocks) == 0 {
		return nil, errNotCertificate
	}
	var bundle []*x509.Certificate
	for i, b := range blocks {
		c, err := parseChainCert(i, b)
		if err != nil {
			return nil, fmt.Errorf("certificate %d of the file does not parse, and HAProxy refuses such a file: %w", i+1, err)
		}
		bundle = append(bundle, c)
	}
	if err := leafFirst(bundle); err != nil {
		return nil, err
	}
	leaf := bundle[0]
	return &certInfo{
		Hash: hash, Bundle: bundle, Subject: subjectName(leaf), Serial: fmt.Sprintf("%x", leaf.SerialNumber),
		IssuerName: leaf.Issuer.String(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
		Responders: responderURLs(leaf), MustStaple: mustStaple(leaf),
	}, nil
}

// chainCerts holds the chain certificates parsed by this process (one run, for the command),
// by DER: thousands of bundles carry the same few issuers, and parsing them is a tenth of a
// full refresh's CPU. x509.Certificate values are not changed once parsed, so they are shared.
var chainCerts struct {
	sync.Mutex
	m map[string]*x509.Certificate
}

// maxChainCerts bounds chainCerts; a full one starts again, so that a process that sees many
// chains (the tests, the demo) keeps caching the ones it sees now.
const maxChainCerts = 256

// parseChainCert parses certificate i of a bundle: the leaf (0) every time, a chain
// certificate once while it is cached.
func parseChainCert(i int, der []byte) (*x509.Certificate, error) {
	if i == 0 {
		return x509.ParseCertificate(der)
	}
	chainCerts.Lock()
	c := chainCerts.m[string(der)]
	chainCerts.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	chainCerts.Lock()
	if chainCerts.m == nil {
		chainCerts.m = map[string]*x509.Certificate{}
	}
	if len(chainCerts.m) >= maxChainCerts {
		clear(chainCerts.m)
	}
	chainCerts.m[string(der)] = c
	chainCerts.Unlock()
	return c, nil
}

// leafFirst rejects a bundle whose first certificate is a CA that issued a later one: HAProxy
// serves the first certificate of a bundle (and refuses one whose key does not match it), so
// stapler must not take a misordered chain's CA for the leaf.
func leafFirst(bundle []*x509.Certificate) error {
	if !bundle[0].IsCA {
		return nil
	}
	for _, c := range bundle[1:] {
		if !c.IsCA && signed(c, bundle[0]) {
			return errors.New("the first certificate is a CA certificate, and a later one is the certificate it issued: HAProxy serves the first certificate of a bundle, so put the leaf first")
		}
	}
	return nil
}

// subjectName names a certificate for people: its first DNS name, else its common name.
func subjectName(c *x509.Certificate) string {
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.CommonName
}
