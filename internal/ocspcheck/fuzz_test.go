package ocspcheck

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"golang.org/x/crypto/ocsp"

	"stapler/internal/pki"
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// fuzzPKI is a fixed CA, leaf and OCSP request for FuzzCheck. The CA key is derived
// from a constant, so that a response signed in one process (the fuzzing coordinator, a file
// in testdata) verifies in every other (the fuzzing workers).
type fuzzPKI struct {
	now        time.Time
	ca         *pki.CA
	leaf       *x509.Certificate
	req        []byte
	certID     []byte // the request's CertID, DER, built here independently of stapler
	responder  *pki.Responder
	delegates  map[uint8]*pki.CA // by signer: responder certificate and key
	strangerCA *pki.CA
}

func newFuzzPKI() *fuzzPKI {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	seed := sha256.Sum256([]byte("stapler fuzz CA"))
	key := must(ecdsa.ParseRawPrivateKey(elliptic.P256(), seed[:]))
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Fuzz OCSP CA", Organization: []string{"stapler tests"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	ca := &pki.CA{Cert: must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)))), Key: key}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x5eed5eed),
		Subject:      pkix.Name{CommonName: "fuzz.test"},
		DNSNames:     []string{"fuzz.test"},
		NotBefore:    now.Add(-24 * time.Hour),
		NotAfter:     now.Add(90 * 24 * time.Hour),
		OCSPServer:   []string{"http://ocsp.test"},
	}
	leaf := must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, leafTmpl, ca.Cert, pki.NewKey().Public(), key))))

	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	must(asn1.Unmarshal(ca.Cert.RawSubjectPublicKeyInfo, &spki))
	nameHash, keyHash := sha1.Sum(ca.Cert.RawSubject), sha1.Sum(spki.PublicKey.RightAlign())
	id := must(asn1.Marshal(certID{
		HashAlgorithm:  pkix.AlgorithmIdentifier{Algorithm: oidSHA1, Parameters: asn1.NullRawValue},
		IssuerNameHash: nameHash[:],
		IssuerKeyHash:  keyHash[:],
		SerialNumber:   leaf.SerialNumber,
	}))

	stranger := pki.NewCA("Fuzz Stranger CA", now)
	req, _, err := Request(leaf, ca.Cert)
	if err != nil {
		panic(err)
	}
	p := &fuzzPKI{now: now, ca: ca, leaf: leaf, req: req, certID: id,
		responder: &pki.Responder{CA: ca, Stranger: stranger}, strangerCA: stranger, delegates: map[uint8]*pki.CA{}}
	for signer, d := range map[uint8]struct {
		ca            *pki.CA
		eku           bool
		from, through time.Time
	}{
		signerDelegate:        {ca, true, now.Add(-time.Hour), now.Add(30 * 24 * time.Hour)},
		signerDelegateNoEKU:   {ca, false, now.Add(-time.Hour), now.Add(30 * 24 * time.Hour)},
		signerDelegateExpired: {ca, true, now.Add(-30 * 24 * time.Hour), now.Add(-time.Hour)},
		signerStrangeDelegate: {stranger, true, now.Add(-time.Hour), now.Add(30 * 24 * time.Hour)},
	} {
		c, k := d.ca.Delegate(d.eku, d.from, d.through)
		p.delegates[signer] = &pki.CA{Cert: c, Key: k}
	}
	return p
}

// How FuzzCheck treats its input: as a whole response, or as tbsResponseData that
// the harness signs, so that fuzzing reaches the checks after the signature.
const (
	signerNone            uint8 = iota // the input is the response
	signerCA                           // signed by the issuer, no certificate
	signerCAWithCert                   // signed by the issuer, which is embedded
	signerDelegate                     // by a delegated responder with id-kp-OCSPSigning
	signerDelegateNoEKU                // by one without id-kp-OCSPSigning
	signerDelegateExpired              // by one that has expired
	signerStranger                     // by another CA's key, no certificate
	signerStrangeDelegate              // by a responder another CA issued, embedded
	signers
)

var oidOCSPBasic = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
var oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}

// sign wraps tbs (a tbsResponseData) in a successful OCSP response signed as signer says.
func (p *fuzzPKI) sign(tbs []byte, signer uint8) []byte {
	var key crypto.Signer
	var certs []*x509.Certificate
	switch signer {
	case signerNone:
		return tbs
	case signerCA:
		key = p.ca.Key
	case signerCAWithCert:
		key, certs = p.ca.Key, []*x509.Certificate{p.ca.Cert}
	case signerStranger:
		key = p.strangerCA.Key
	default:
		d := p.delegates[signer]
		key, certs = d.Key, []*x509.Certificate{d.Cert}
	}
	digest := sha256.Sum256(tbs)
	sig := must(key.Sign(rand.Reader, digest[:], crypto.SHA256))
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Enum(int64(ocsp.Success))
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidOCSPBasic)
				b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddBytes(tbs)
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(oidECDSAWithSHA256)
						})
						b.AddASN1BitString(sig)
						if len(certs) > 0 {
							b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
								b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
									for _, c := range certs {
										b.AddBytes(c.Raw)
									}
								})
							})
						}
					})
				})
			})
		})
	})
	return b.BytesOrPanic()
}

// basicOCSP is a BasicOCSPResponse (RFC 6960 section 4.2.1) read with encoding/asn1, as
// x/crypto/ocsp reads it, keeping the raw CertID of each SingleResponse.
type basicOCSP struct {
	TBS struct {
		Raw         asn1.RawContent
		Version     int `asn1:"optional,explicit,tag:0,default:0"`
		ResponderID asn1.RawValue
		ProducedAt  time.Time `asn1:"generalized"`
		Responses   []asn1.RawValue
		Extensions  []pkix.Extension `asn1:"optional,explicit,tag:1"`
	}
	Algorithm    pkix.AlgorithmIdentifier
	Signature    asn1.BitString
	Certificates []asn1.RawValue `asn1:"optional,explicit,tag:0"`
}

// parseBasicOCSP returns the BasicOCSPResponse in an OCSP response.
func parseBasicOCSP(der []byte) (*basicOCSP, error) {
	var resp struct {
		Status asn1.Enumerated
		Bytes  struct {
			Type     asn1.ObjectIdentifier
			Response []byte
		} `asn1:"explicit,tag:0"`
	}
	if _, err := asn1.Unmarshal(der, &resp); err != nil {
		return nil, err
	}
	var basic basicOCSP
	if _, err := asn1.Unmarshal(resp.Bytes.Response, &basic); err != nil {
		return nil, err
	}
	return &basic, nil
}

// FuzzCheck: Check never panics, and what it accepts HAProxy takes and
// serves: status good or revoked, the CertID of the request byte for byte, signed by the
// issuer or a delegated responder it issued, nextUpdate at least HAProxyMargin away, thisUpdate
// not in the future beyond ClockSkew.
func FuzzCheck(f *testing.F) {
	p := newFuzzPKI()
	if got := must(RequestCertID(p.req)); !bytes.Equal(got, p.certID) {
		f.Fatalf("the request's CertID %x differs from the one built for the checks, %x", got, p.certID)
	}
	for _, mode := range []string{"good", "revoked", "unknown", "tryLater", "internalError", "unauthorized",
		"garbage", "empty", "wrongSerial", "stranger", "expired", "noNextUpdate", "tooShort", "future",
		"older", "sha256", "delegated", "delegatedNoEKU", "delegatedExpired"} {
		der := p.responder.Answer(mode, p.leaf.SerialNumber, p.now)
		f.Add(der, signerNone)
		if basic, err := parseBasicOCSP(der); err == nil {
			// Its tbsResponseData, signed by each signer in turn.
			for s := signerCA; s < signers; s++ {
				f.Add([]byte(basic.TBS.Raw), s)
			}
		}
	}
	// Near the edges of the time checks.
	for _, tt := range []struct{ this, next time.Time }{
		{p.now.Add(ClockSkew), p.now.Add(time.Hour)},
		{p.now.Add(ClockSkew + time.Second), p.now.Add(time.Hour)},
		{p.now.Add(-time.Hour), p.now.Add(HAProxyMargin)},
		{p.now.Add(-time.Hour), p.now.Add(HAProxyMargin - time.Second)},
	} {
		f.Add(p.ca.Respond(p.leaf.SerialNumber, ocsp.Good, tt.this, tt.next, nil, nil), signerNone)
	}
	f.Add(append(p.responder.Answer("good", p.leaf.SerialNumber, p.now), 0), signerNone) // trailing data

	// The harness itself: a good tbsResponseData passes when signed by whoever may sign it.
	good := must(parseBasicOCSP(p.responder.Answer("good", p.leaf.SerialNumber, p.now))).TBS.Raw
	for s := signerCA; s < signers; s++ {
		_, err := (&Checker{}).Check(p.sign(good, s), p.certID, p.ca.Cert, p.now)
		if may := s == signerCA || s == signerCAWithCert || s == signerDelegate; may != (err == nil) {
			f.Fatalf("signer %d: Check says %v", s, err)
		}
	}

	checker := &Checker{} // shared by every input, as by every response of a run
	f.Fuzz(func(t *testing.T, data []byte, signer uint8) {
		der := p.sign(data, signer%signers)
		resp, err := checker.Check(der, p.certID, p.ca.Cert, p.now)
		if err != nil {
			if resp != nil {
				t.Fatalf("returned a response and an error: %v", err)
			}
			return
		}
		if resp == nil {
			t.Fatal("returned no response and no error")
		}
		if resp.Status != ocsp.Good && resp.Status != ocsp.Revoked {
			t.Fatalf("accepted status %s", StatusName(resp.Status))
		}
		basic, err := parseBasicOCSP(der)
		if err != nil || len(basic.TBS.Responses) == 0 {
			t.Fatalf("accepted a response encoding/asn1 cannot read: %v", err)
		}
		var id asn1.RawValue
		if _, err := asn1.Unmarshal(basic.TBS.Responses[0].Bytes, &id); err != nil || !bytes.Equal(id.FullBytes, p.certID) {
			t.Fatalf("accepted CertID %x, HAProxy looks for %x (%v)", id.FullBytes, p.certID, err)
		}
		if resp.SerialNumber == nil || resp.SerialNumber.Cmp(p.leaf.SerialNumber) != 0 {
			t.Fatalf("accepted a response for serial %v", resp.SerialNumber)
		}
		if resp.NextUpdate.IsZero() || !resp.NextUpdate.After(p.now.Add(HAProxyMargin)) {
			t.Fatalf("accepted nextUpdate %v, less than %v after %v", resp.NextUpdate, HAProxyMargin, p.now)
		}
		if resp.ThisUpdate.After(p.now.Add(ClockSkew)) {
			t.Fatalf("accepted thisUpdate %v, more than %v after %v", resp.ThisUpdate, ClockSkew, p.now)
		}
		switch c := resp.Certificate; {
		case resp.CheckSignatureFrom(p.ca.Cert) == nil:
		case c == nil:
			t.Fatal("accepted a response the issuer did not sign, with no responder certificate")
		case c.CheckSignatureFrom(p.ca.Cert) != nil:
			t.Fatalf("accepted a response signed by %q, which the issuer did not issue", c.Subject)
		case !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning):
			t.Fatalf("accepted a response signed by %q, which lacks id-kp-OCSPSigning", c.Subject)
		case p.now.Before(c.NotBefore) || p.now.After(c.NotAfter):
			t.Fatalf("accepted a response signed by %q outside its validity", c.Subject)
		case resp.CheckSignatureFrom(c) != nil:
			t.Fatalf("accepted a response %q did not sign", c.Subject)
		}
	})
}

// FuzzResponseTimes: ResponseTimes never panics, reads the CertID ResponseCertID reads, and
// where x/crypto/ocsp also parses the response, reads the same three times. For the
// responses of every mode of the test responder, both parse.
func FuzzResponseTimes(f *testing.F) {
	p := newFuzzPKI()
	wellFormed := map[string]bool{}
	for _, mode := range []string{"good", "revoked", "expired", "noNextUpdate", "tooShort", "future",
		"older", "sha256", "delegated", "delegatedNoEKU", "delegatedExpired", "wrongSerial", "stranger"} {
		der := p.responder.Answer(mode, p.leaf.SerialNumber, p.now)
		wellFormed[string(der)] = true
		f.Add(der, signerNone)
		if basic, err := parseBasicOCSP(der); err == nil {
			for s := signerCA; s < signers; s++ {
				f.Add([]byte(basic.TBS.Raw), s)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, signer uint8) {
		der := p.sign(data, signer%signers)
		got, err := ResponseTimes(der)
		if id, idErr := ResponseCertID(der); err == nil && idErr != nil {
			t.Fatalf("ResponseTimes read the times of a response whose CertID ResponseCertID cannot find: %v", idErr)
		} else if err == nil && len(id) == 0 {
			t.Fatal("empty CertID")
		}
		resp, perr := ocsp.ParseResponse(der, nil)
		if wellFormed[string(der)] && (err != nil || perr != nil) {
			t.Fatalf("a well-formed response: ResponseTimes: %v; ocsp.ParseResponse: %v", err, perr)
		}
		if err != nil || perr != nil {
			return
		}
		want := Times{ProducedAt: resp.ProducedAt, ThisUpdate: resp.ThisUpdate, NextUpdate: resp.NextUpdate}
		if !got.ProducedAt.Equal(want.ProducedAt) || !got.ThisUpdate.Equal(want.ThisUpdate) || !got.NextUpdate.Equal(want.NextUpdate) {
			t.Fatalf("ResponseTimes read %+v, x/crypto/ocsp %+v", got, want)
		}
	})
}
