package main

// Fuzz targets for the parsers of input stapler does not control: certificate bundles, OCSP
// responses, the state file, HAProxy's runtime API answers, haproxy.cfg and socket addresses.
// `go test` runs each target's seeds (f.Add and testdata/fuzz/<Name>) as a test; explore with
//
//	go test -run '^$' -fuzz '^FuzzParseBundle$' -fuzztime 30s -fuzzminimizetime 3s .
//
// A short run without -fuzzminimizetime spends most of its time minimizing each new input
// (up to 60 s apiece) rather than fuzzing. Every iteration stays in memory or a temporary
// directory: no network, no sleeping.

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
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"golang.org/x/crypto/ocsp"

	"stapler/internal/pki"
)

// quietLogs discards slog output while a fuzz target runs: damaged inputs are logged on
// purpose, millions of times.
func quietLogs(f *testing.F) {
	old := slog.Default()
	slog.SetDefault(slog.New(slog.DiscardHandler))
	f.Cleanup(func() { slog.SetDefault(old) })
}

// FuzzParseBundle: parseBundle never panics, and returns exactly the CERTIFICATE blocks of
// the PEM in file order, the first being the leaf, or an error, never a partial list.
func FuzzParseBundle(f *testing.F) {
	now := time.Now()
	ca := pki.NewCA("Fuzz Bundle CA", now)
	inter := ca.Subordinate("Fuzz Bundle Intermediate", now)
	leaf, key := inter.Issue(pki.Leaf{Name: "fuzz.test", OCSP: []string{"http://ocsp.test"}, AIA: []string{"http://ca.test/i.der"}}, now)
	bundle := append(pki.CertPEM(leaf, inter.Cert, ca.Cert), pki.KeyPEM(key)...)
	f.Add(bundle)                                                    // HAProxy's order: leaf, chain, key
	f.Add(append(pki.KeyPEM(key), pki.CertPEM(leaf, inter.Cert)...)) // key first
	f.Add(pki.CertPEM(ca.Cert, inter.Cert, leaf))                    // chain in the wrong order
	f.Add(pki.KeyPEM(key))                                           // key only
	f.Add([]byte{})
	f.Add(leaf.Raw) // DER instead of PEM
	f.Add(bytes.ReplaceAll(bundle, []byte("\n"), []byte("\r\n")))
	f.Add(bundle[:len(bundle)/2]) // truncated
	f.Add(append([]byte("subject=CN = fuzz.test\nissuer=CN = Fuzz Bundle Intermediate\n"), bundle...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}))
	f.Add(append(pki.CertPEM(leaf), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw[:len(leaf.Raw)-1]})...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "TRUSTED CERTIFICATE", Bytes: leaf.Raw}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: leaf.Raw}))
	f.Add(append(pki.CertPEM(leaf), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{0x30, 0}})...))

	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseBundle(data)

		// The CERTIFICATE blocks, as encoding/pem finds them.
		var blocks [][]byte
		for rest := data; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				blocks = append(blocks, b.Bytes)
			}
		}
		var parseErr error
		for _, b := range blocks {
			if _, err := x509.ParseCertificate(b); err != nil {
				parseErr = err
				break
			}
		}
		switch {
		case err != nil && certs != nil:
			t.Fatalf("returned %d certificates and an error: %v", len(certs), err)
		case err == nil && len(certs) == 0:
			t.Fatal("returned no certificate and no error")
		case len(blocks) == 0:
			if !errors.Is(err, errNotCertificate) {
				t.Fatalf("no CERTIFICATE block: err %v, want errNotCertificate", err)
			}
		case parseErr != nil:
			if err == nil {
				t.Fatalf("accepted a bundle with an unparsable certificate (%v)", parseErr)
			}
		case err != nil:
			t.Fatalf("rejected a bundle whose %d certificates all parse: %v", len(blocks), err)
		case len(certs) != len(blocks):
			t.Fatalf("returned %d certificates for %d CERTIFICATE blocks", len(certs), len(blocks))
		default:
			for i, c := range certs {
				if !bytes.Equal(c.Raw, blocks[i]) {
					t.Fatalf("certificate %d is not CERTIFICATE block %d of the file", i+1, i+1)
				}
			}
		}
	})
}

// fuzzPKI is a fixed CA, leaf and OCSP request for FuzzValidateResponse. The CA key is derived
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
	p := &fuzzPKI{now: now, ca: ca, leaf: leaf, req: must(newRequest(leaf, ca.Cert)), certID: id,
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

// How FuzzValidateResponse treats its input: as a whole response, or as tbsResponseData that
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

// FuzzValidateResponse: validateResponse never panics, and what it accepts HAProxy takes and
// serves: status good or revoked, the CertID of the request byte for byte, signed by the
// issuer or a delegated responder it issued, nextUpdate at least minValidity away, thisUpdate
// not in the future beyond clockSkew.
func FuzzValidateResponse(f *testing.F) {
	p := newFuzzPKI()
	if got := must(requestCertID(p.req)); !bytes.Equal(got, p.certID) {
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
		{p.now.Add(clockSkew), p.now.Add(time.Hour)},
		{p.now.Add(clockSkew + time.Second), p.now.Add(time.Hour)},
		{p.now.Add(-time.Hour), p.now.Add(minValidity)},
		{p.now.Add(-time.Hour), p.now.Add(minValidity - time.Second)},
	} {
		f.Add(p.ca.Respond(p.leaf.SerialNumber, ocsp.Good, tt.this, tt.next, nil, nil), signerNone)
	}
	f.Add(append(p.responder.Answer("good", p.leaf.SerialNumber, p.now), 0), signerNone) // trailing data

	// The harness itself: a good tbsResponseData passes when signed by whoever may sign it.
	good := must(parseBasicOCSP(p.responder.Answer("good", p.leaf.SerialNumber, p.now))).TBS.Raw
	for s := signerCA; s < signers; s++ {
		_, err := validateResponse(p.sign(good, s), p.req, p.leaf, p.ca.Cert, p.now)
		if may := s == signerCA || s == signerCAWithCert || s == signerDelegate; may != (err == nil) {
			f.Fatalf("signer %d: validateResponse says %v", s, err)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte, signer uint8) {
		der := p.sign(data, signer%signers)
		resp, err := validateResponse(der, p.req, p.leaf, p.ca.Cert, p.now)
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
			t.Fatalf("accepted status %s", statusName(resp.Status))
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
		if resp.NextUpdate.IsZero() || resp.NextUpdate.Before(p.now.Add(minValidity)) {
			t.Fatalf("accepted nextUpdate %v, less than %v after %v", resp.NextUpdate, minValidity, p.now)
		}
		if resp.ThisUpdate.After(p.now.Add(clockSkew)) {
			t.Fatalf("accepted thisUpdate %v, more than %v after %v", resp.ThisUpdate, clockSkew, p.now)
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

// FuzzLoadState: loadState never panics on any state file. It either refuses a newer file,
// naming it and leaving it alone, or returns a usable state; a file it cannot use is kept,
// byte for byte, as <path>.corrupt. What it returns saves, and reads back the same.
func FuzzLoadState(f *testing.F) {
	quietLogs(f)
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st := newState()
	st.Certificates["/etc/haproxy/certs/site.pem"] = &CertState{Hash: "ab", Subject: "site.test", Serial: "1f",
		Issuer: "CN=CA", NotBefore: now, NotAfter: now.Add(time.Hour), Responder: "http://ocsp.test", Status: "good",
		CertID: "3049", ThisUpdate: now, NextUpdate: now.Add(time.Hour), NextDue: now, Failures: 2,
		FailingSince: now, LastError: "boom", LastUpdate: now, PendingPush: []string{"/run/haproxy/admin.sock"}}
	st.Sockets = map[string]string{"/run/haproxy/admin.sock": "4242@2026-11-01T12:00:00Z"}
	saved := append(must(json.MarshalIndent(st, "", "  ")), '\n')
	f.Add(saved)
	f.Add(saved[:len(saved)/2]) // truncated by a crash
	f.Add([]byte{})
	f.Add([]byte("\x00\x01garbage"))
	f.Add([]byte(`{"version": 0}`))
	f.Add([]byte(`{"version": 2, "certificates": {}}`))
	f.Add([]byte(`{"version": 2, "certificates": 5}`))
	f.Add([]byte(`{"version": "1"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version": 1, "certificates": {"/a.pem": null}}`))
	f.Add([]byte(`{"version": 1, "certificates": {"/a.pem": {"this_update": "2026-11-01T12:00:00+23:59"}}}`))

	path := filepath.Join(f.TempDir(), "state.json") // rewritten by each iteration
	aside := path + ".corrupt"
	f.Fuzz(func(t *testing.T, data []byte) {
		os.Remove(aside)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := loadState(path, true)
		onDisk, rerr := os.ReadFile(path)
		kept, aerr := os.ReadFile(aside)
		if err != nil {
			if st != nil {
				t.Fatalf("returned a state and an error: %v", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			if rerr != nil || !bytes.Equal(onDisk, data) || aerr == nil {
				t.Fatalf("refused the file (%v) but did not leave it alone", err)
			}
			return
		}
		if st == nil || st.Certificates == nil || st.Version != stateVersion {
			t.Fatalf("unusable state %+v", st)
		}
		switch {
		case aerr == nil:
			if !bytes.Equal(kept, data) {
				t.Fatalf("%s holds %q, not the original %q", aside, kept, data)
			}
			if rerr == nil {
				t.Fatal("moved the file aside, and it is still there")
			}
			if len(st.Certificates) != 0 || len(st.Sockets) != 0 {
				t.Fatalf("moved the file aside, yet returned its content %+v", st)
			}
		case rerr != nil || !bytes.Equal(onDisk, data):
			t.Fatalf("changed the state file without keeping it aside (%v)", rerr)
		case !json.Valid(data):
			t.Fatal("took a file that is not JSON and did not move it aside")
		}

		if len(st.Certificates) == 0 && len(st.Sockets) == 0 {
			return // saving an empty state needs no fuzzing, and each save costs two fsyncs
		}
		if err := st.save(path); err != nil {
			t.Fatalf("state it loaded cannot be saved: %v", err)
		}
		back, err := loadState(path, true)
		if err != nil {
			t.Fatalf("reading back what was saved: %v", err)
		}
		if _, err := os.Stat(aside); err == nil && aerr != nil {
			t.Fatal("what was saved was moved aside when read back")
		}
		if got, want := must(json.Marshal(back)), must(json.Marshal(st)); !bytes.Equal(got, want) {
			t.Fatalf("read back %s\nsaved %s", got, want)
		}
	})
}
