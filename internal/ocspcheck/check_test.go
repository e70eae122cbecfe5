package ocspcheck

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/pki"
)

func TestValidateResponse(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Validation CA", now)
	other := pki.NewCA("Other CA", now)
	leaf, _ := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{"http://ocsp.test"}}, now)
	_, certID, err := Request(leaf, ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	r := &pki.Responder{CA: ca, Stranger: other}
	this, next := now.Add(-time.Hour), now.Add(24*time.Hour)

	tests := []struct {
		name   string
		der    []byte
		issuer *x509.Certificate
		status int
		err    string // empty: valid
	}{
		{"good", r.Answer("good", leaf.SerialNumber, now), ca.Cert, ocsp.Good, ""},
		{"revoked is valid", r.Answer("revoked", leaf.SerialNumber, now), ca.Cert, ocsp.Revoked, ""},
		{"delegated responder", r.Answer("delegated", leaf.SerialNumber, now), ca.Cert, ocsp.Good, ""},
		{"unknown", r.Answer("unknown", leaf.SerialNumber, now), ca.Cert, 0, "status is unknown"},
		{"tryLater", r.Answer("tryLater", leaf.SerialNumber, now), ca.Cert, 0, `responder answered "tryLater"`},
		{"malformedRequest", ocsp.MalformedRequestErrorResponse, ca.Cert, 0, `responder answered "malformedRequest"`},
		{"internalError", r.Answer("internalError", leaf.SerialNumber, now), ca.Cert, 0, `responder answered "internalError"`},
		{"unauthorized", r.Answer("unauthorized", leaf.SerialNumber, now), ca.Cert, 0, `responder answered "unauthorized"`},
		{"empty body", r.Answer("empty", leaf.SerialNumber, now), ca.Cert, 0, "invalid OCSP response"},
		{"HTML page", r.Answer("html", leaf.SerialNumber, now), ca.Cert, 0, "invalid OCSP response"},
		{"two single responses", r.Answer("twoSingles", leaf.SerialNumber, now), ca.Cert, 0, "bad number of responses"},
		{"delegate not yet valid", r.Answer("delegatedNotYetValid", leaf.SerialNumber, now), ca.Cert, 0, "valid only from"},
		{"garbage", []byte("garbage"), ca.Cert, 0, "invalid OCSP response"},
		{"trailing data", append(r.Answer("good", leaf.SerialNumber, now), 0), ca.Cert, 0, "invalid OCSP response"},
		{"wrong serial", r.Answer("wrongSerial", leaf.SerialNumber, now), ca.Cert, 0, "response is for serial"},
		{"signed by a stranger", r.Answer("stranger", leaf.SerialNumber, now), ca.Cert, 0, "bad OCSP signature"},
		{"another issuer", other.Respond(leaf.SerialNumber, ocsp.Good, this, next, nil, nil), other.Cert, 0, "names another issuer"},
		{"SHA-256 CertID", r.Answer("sha256", leaf.SerialNumber, now), ca.Cert, 0, "the response's CertID uses SHA-256; HAProxy matches only SHA-1"},
		{"delegate without OCSPSigning", r.Answer("delegatedNoEKU", leaf.SerialNumber, now), ca.Cert, 0, "lacks id-kp-OCSPSigning"},
		{"delegate expired", r.Answer("delegatedExpired", leaf.SerialNumber, now), ca.Cert, 0, "valid only from"},
		{"expired", r.Answer("expired", leaf.SerialNumber, now), ca.Cert, 0, "too soon to staple"},
		{"inside HAProxy's margin", ca.Respond(leaf.SerialNumber, ocsp.Good, this, now.Add(HAProxyMargin-time.Second), nil, nil), ca.Cert, 0, "too soon to staple"},
		{"just enough left", ca.Respond(leaf.SerialNumber, ocsp.Good, this, now.Add(HAProxyMargin+time.Minute), nil, nil), ca.Cert, ocsp.Good, ""},
		{"no nextUpdate", r.Answer("noNextUpdate", leaf.SerialNumber, now), ca.Cert, 0, "no nextUpdate"},
		{"thisUpdate in the future", r.Answer("future", leaf.SerialNumber, now), ca.Cert, 0, "lies in the future"},
		{"thisUpdate within skew", ca.Respond(leaf.SerialNumber, ocsp.Good, now.Add(ClockSkew-time.Minute), next, nil, nil), ca.Cert, ocsp.Good, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := (&Checker{}).Check(tt.der, certID, tt.issuer, now)
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("got error %v, want valid", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("got error %v, want one containing %q", err, tt.err)
			case tt.err == "" && resp.Status != tt.status:
				t.Fatalf("status %d, want %d", resp.Status, tt.status)
			}
		})
	}
}

// TestValidateResponseIntermediate: an intermediate CA that signs its responses itself and
// embeds its own certificate, as `openssl ocsp -rsigner <intermediate>` does, is accepted; an
// embedded certificate from elsewhere is not.
func TestValidateResponseIntermediate(t *testing.T) {
	now := time.Now()
	root := pki.NewCA("Root CA", now)
	inter := root.Subordinate("Intermediate CA", now)
	leaf, _ := inter.Issue(pki.Leaf{Name: "site.test"}, now)
	_, certID, err := Request(leaf, inter.Cert)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: leaf.SerialNumber, ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour)}

	tmpl.Certificate = inter.Cert
	der := must(ocsp.CreateResponse(inter.Cert, inter.Cert, tmpl, inter.Key))
	if _, err := (&Checker{}).Check(der, certID, inter.Cert, now); err != nil {
		t.Errorf("response signed by the intermediate, embedding it: %v", err)
	}

	// Signed with the issuer's key, carrying another certificate for that key (a renewed or
	// cross-signed issuer): the issuer signed it.
	other := *inter.Cert
	other.Raw = must(x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: pki.NextSerial(), Subject: inter.Cert.Subject,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true}, root.Cert, inter.Key.Public(), root.Key))
	tmpl.Certificate = must(x509.ParseCertificate(other.Raw))
	der = must(ocsp.CreateResponse(inter.Cert, tmpl.Certificate, tmpl, inter.Key))
	if _, err := (&Checker{}).Check(der, certID, inter.Cert, now); err != nil {
		t.Errorf("response signed by the issuer's key, carrying another certificate for it: %v", err)
	}

	// The root's own certificate embedded and signing: not the issuer, not a delegate of it.
	tmpl.Certificate = root.Cert
	der = must(ocsp.CreateResponse(inter.Cert, root.Cert, tmpl, root.Key))
	if _, err := (&Checker{}).Check(der, certID, inter.Cert, now); err == nil || !strings.Contains(err.Error(), "was not issued by") {
		t.Errorf("response signed by the root: got %v, want a signature error", err)
	}
}

func TestCertIDMismatchNullParameters(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("CertID CA", now)
	leaf, _ := ca.Issue(pki.Leaf{Name: "site.test"}, now)
	_, want, err := Request(leaf, ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	// The same CertID without the NULL parameters of the SHA-1 AlgorithmIdentifier.
	stripped := bytes.Replace(want, []byte{0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00}, []byte{0x30, 0x07, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a}, 1)
	stripped[1] -= 2
	if bytes.Equal(stripped, want) {
		t.Fatal("test did not strip the parameters")
	}
	err = certIDMismatch(stripped, want)
	if err == nil || !strings.Contains(err.Error(), "lacks the SHA-1 NULL parameters") {
		t.Fatalf("got %v", err)
	}
}

// TestCheckerSignerOnce: a delegated responder certificate is verified against its issuer once
// per Checker, then trusted for every response it signs; one the issuer did not issue is
// refused every time.
func TestCheckerSignerOnce(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Checker CA", now)
	c := &Checker{}
	signer, key := ca.Delegate(true, now.Add(-time.Hour), now.Add(2*time.Hour))
	for i := range 3 {
		leaf, _ := ca.Issue(pki.Leaf{Name: "site.test"}, now)
		_, certID, err := Request(leaf, ca.Cert)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Check(ca.Respond(leaf.SerialNumber, ocsp.Good, now.Add(-time.Hour), now.Add(10*time.Hour), signer, key), certID, ca.Cert, now)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		// The staple is worth no more than its signer: its expiry is the signer's end.
		if !resp.SignerNotAfter.Equal(signer.NotAfter) || !resp.Expiry().Equal(signer.NotAfter) {
			t.Errorf("signer not after %v, expiry %v; want %v", resp.SignerNotAfter, resp.Expiry(), signer.NotAfter)
		}
	}
	if len(c.signers) != 1 {
		t.Errorf("%d signer verdicts kept, want 1", len(c.signers))
	}
	other := pki.NewCA("Other CA", now)
	stranger, skey := other.Delegate(true, now.Add(-time.Hour), now.Add(2*time.Hour))
	leaf, _ := ca.Issue(pki.Leaf{Name: "site.test"}, now)
	_, certID, _ := Request(leaf, ca.Cert)
	for range 2 {
		der := other.Respond(leaf.SerialNumber, ocsp.Good, now.Add(-time.Hour), now.Add(10*time.Hour), stranger, skey)
		if _, err := c.Check(der, certID, ca.Cert, now); err == nil || !strings.Contains(err.Error(), "was not issued by") {
			t.Errorf("a responder another CA issued: %v", err)
		}
	}
}

// TestRequestFor: the request made from a CertID alone is Request's, byte for byte, and
// SplitCertID finds the serial and an issuer part that is the same for every certificate of
// one issuer and differs between issuers.
func TestRequestFor(t *testing.T) {
	now := time.Now()
	var parts [][]byte
	for _, name := range []string{"CA one", "CA two"} {
		ca := pki.NewCA(name, now)
		var part []byte
		for range 3 {
			leaf, _ := ca.Issue(pki.Leaf{Name: "site.test"}, now)
			req, certID, err := Request(leaf, ca.Cert)
			if err != nil {
				t.Fatal(err)
			}
			got, err := RequestFor(certID)
			if err != nil || !bytes.Equal(got, req) {
				t.Fatalf("RequestFor: %x, %v; Request made %x", got, err, req)
			}
			issuer, serial, err := SplitCertID(certID)
			if err != nil || serial.Cmp(leaf.SerialNumber) != 0 {
				t.Fatalf("SplitCertID: serial %v, %v; want %v", serial, err, leaf.SerialNumber)
			}
			if part != nil && !bytes.Equal(issuer, part) {
				t.Fatalf("two certificates of %s: issuer parts %x and %x", name, part, issuer)
			}
			part = issuer
		}
		parts = append(parts, part)
	}
	if bytes.Equal(parts[0], parts[1]) {
		t.Fatal("two issuers share an issuer part")
	}
	for _, bad := range [][]byte{nil, {0x30, 0x00}, append(bytes.Repeat([]byte{0}, 3), 1)} {
		if _, err := RequestFor(bad); err == nil {
			t.Errorf("RequestFor(%x) took it", bad)
		}
	}
}
