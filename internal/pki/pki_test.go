package pki

import (
	"bytes"
	"crypto/x509"
	"io"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// TestTwoSingles: the hand-built response is what its users claim, a well-formed response
// signed by the CA whose first SingleResponse is the one asked for, and a second one.
func TestTwoSingles(t *testing.T) {
	now := time.Now()
	ca := NewCA("Two Singles CA", now)
	leaf, _ := ca.Issue(Leaf{Name: "two.test"}, now)
	der := ca.TwoSingles(leaf.SerialNumber, now)
	resp, err := ocsp.ParseResponseForCert(der, leaf, ca.Cert)
	if err != nil {
		t.Fatalf("the response does not parse: %v", err)
	}
	if resp.Status != ocsp.Good || resp.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("status %d, serial %x", resp.Status, resp.SerialNumber)
	}
	if _, err := ocsp.ParseResponse(der, ca.Cert); err == nil || !strings.Contains(err.Error(), "bad number of responses") {
		t.Errorf("ParseResponse without a certificate: %v, want bad number of responses", err)
	}
	// Its CertID is the one x/crypto/ocsp asks with.
	reqDER, err := ocsp.CreateRequest(leaf, ca.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	req, err := ocsp.ParseRequest(reqDER)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(der, req.IssuerNameHash) || !bytes.Contains(der, req.IssuerKeyHash) {
		t.Error("the response does not carry the request's issuer hashes")
	}
}

// TestAnswerModes: every mode of the responder answers, and the good ones verify.
func TestAnswerModes(t *testing.T) {
	now := time.Now()
	ca := NewCA("Modes CA", now)
	r := &Responder{CA: ca, Stranger: NewCA("Stranger CA", now)}
	leaf, _ := ca.Issue(Leaf{Name: "modes.test"}, now)
	for _, mode := range []string{"good", "revoked", "unknown", "delegated", "older", "farFuture", "huge", "twoSingles"} {
		der := r.Answer(mode, leaf.SerialNumber, now)
		if _, err := ocsp.ParseResponseForCert(der, leaf, ca.Cert); err != nil {
			t.Errorf("%s: %v", mode, err)
		}
	}
	for _, mode := range []string{"delegatedExpired", "delegatedNotYetValid"} {
		resp, err := ocsp.ParseResponseForCert(r.Answer(mode, leaf.SerialNumber, now), leaf, ca.Cert)
		if err != nil || resp.Certificate == nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if err := resp.Certificate.CheckSignatureFrom(ca.Cert); err != nil {
			t.Errorf("%s: the delegate is not the CA's: %v", mode, err)
		}
		if valid := !now.Before(resp.Certificate.NotBefore) && !now.After(resp.Certificate.NotAfter); valid {
			t.Errorf("%s: the delegate is valid now (%v to %v)", mode, resp.Certificate.NotBefore, resp.Certificate.NotAfter)
		}
	}
}

// TestPresigned: mode "presigned" serves the answers Presign signed, the same bytes every
// time, and HTTP 500 about a serial it did not presign.
func TestPresigned(t *testing.T) {
	now := time.Now()
	ca := NewCA("Presigned CA", now)
	r := StartResponder(ca)
	defer r.Close()
	signed, _ := ca.Issue(Leaf{Name: "signed.test"}, now)
	other, _ := ca.Issue(Leaf{Name: "other.test"}, now)
	r.Presign([]*big.Int{signed.SerialNumber}, now)
	r.SetMode("presigned")
	ask := func(leaf *x509.Certificate) (int, []byte) {
		req := must(ocsp.CreateRequest(leaf, ca.Cert, nil))
		resp := must(http.Post(r.URL(), "application/ocsp-request", bytes.NewReader(req)))
		defer resp.Body.Close()
		return resp.StatusCode, must(io.ReadAll(resp.Body))
	}
	code, first := ask(signed)
	if code != http.StatusOK {
		t.Fatalf("presigned serial: HTTP %d", code)
	}
	resp, err := ocsp.ParseResponseForCert(first, signed, ca.Cert)
	if err != nil || resp.Certificate == nil || resp.Status != ocsp.Good {
		t.Fatalf("presigned answer: %v, %+v", err, resp)
	}
	if _, again := ask(signed); !bytes.Equal(again, first) {
		t.Error("the second answer differs from the first: signed again")
	}
	if code, _ := ask(other); code != http.StatusInternalServerError {
		t.Errorf("a serial not presigned: HTTP %d, want 500", code)
	}
}
