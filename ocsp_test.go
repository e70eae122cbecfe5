package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	req := must(newRequest(leaf, ca.Cert))
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
		{"garbage", []byte("garbage"), ca.Cert, 0, "invalid OCSP response"},
		{"trailing data", append(r.Answer("good", leaf.SerialNumber, now), 0), ca.Cert, 0, "invalid OCSP response"},
		{"wrong serial", r.Answer("wrongSerial", leaf.SerialNumber, now), ca.Cert, 0, "response is for serial"},
		{"signed by a stranger", r.Answer("stranger", leaf.SerialNumber, now), ca.Cert, 0, "bad OCSP signature"},
		{"another issuer", other.Respond(leaf.SerialNumber, ocsp.Good, this, next, nil, nil), other.Cert, 0, "names another issuer"},
		{"SHA-256 CertID", r.Answer("sha256", leaf.SerialNumber, now), ca.Cert, 0, "not SHA-1"},
		{"delegate without OCSPSigning", r.Answer("delegatedNoEKU", leaf.SerialNumber, now), ca.Cert, 0, "lacks id-kp-OCSPSigning"},
		{"delegate expired", r.Answer("delegatedExpired", leaf.SerialNumber, now), ca.Cert, 0, "valid only from"},
		{"expired", r.Answer("expired", leaf.SerialNumber, now), ca.Cert, 0, "too soon to staple"},
		{"inside HAProxy's margin", ca.Respond(leaf.SerialNumber, ocsp.Good, this, now.Add(haproxyMargin+time.Minute), nil, nil), ca.Cert, 0, "too soon to staple"},
		{"just enough left", ca.Respond(leaf.SerialNumber, ocsp.Good, this, now.Add(minValidity+time.Minute), nil, nil), ca.Cert, ocsp.Good, ""},
		{"no nextUpdate", r.Answer("noNextUpdate", leaf.SerialNumber, now), ca.Cert, 0, "no nextUpdate"},
		{"thisUpdate in the future", r.Answer("future", leaf.SerialNumber, now), ca.Cert, 0, "lies in the future"},
		{"thisUpdate within skew", ca.Respond(leaf.SerialNumber, ocsp.Good, now.Add(clockSkew-time.Minute), next, nil, nil), ca.Cert, ocsp.Good, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := validateResponse(tt.der, req, leaf, tt.issuer, now)
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
	req := must(newRequest(leaf, inter.Cert))
	tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: leaf.SerialNumber, ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour)}

	tmpl.Certificate = inter.Cert
	der := must(ocsp.CreateResponse(inter.Cert, inter.Cert, tmpl, inter.Key))
	if _, err := validateResponse(der, req, leaf, inter.Cert, now); err != nil {
		t.Errorf("response signed by the intermediate, embedding it: %v", err)
	}

	// Signed with the issuer's key, carrying another certificate for that key (a renewed or
	// cross-signed issuer): the issuer signed it.
	other := *inter.Cert
	other.Raw = must(x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: pki.NextSerial(), Subject: inter.Cert.Subject,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true}, root.Cert, inter.Key.Public(), root.Key))
	tmpl.Certificate = must(x509.ParseCertificate(other.Raw))
	der = must(ocsp.CreateResponse(inter.Cert, tmpl.Certificate, tmpl, inter.Key))
	if _, err := validateResponse(der, req, leaf, inter.Cert, now); err != nil {
		t.Errorf("response signed by the issuer's key, carrying another certificate for it: %v", err)
	}

	// The root's own certificate embedded and signing: not the issuer, not a delegate of it.
	tmpl.Certificate = root.Cert
	der = must(ocsp.CreateResponse(inter.Cert, root.Cert, tmpl, root.Key))
	if _, err := validateResponse(der, req, leaf, inter.Cert, now); err == nil || !strings.Contains(err.Error(), "was not issued by") {
		t.Errorf("response signed by the root: got %v, want a signature error", err)
	}
}

func TestCertIDMismatchNullParameters(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("CertID CA", now)
	leaf, _ := ca.Issue(pki.Leaf{Name: "site.test"}, now)
	want := must(requestCertID(must(newRequest(leaf, ca.Cert))))
	// The same CertID without the NULL parameters of the SHA-1 AlgorithmIdentifier.
	stripped := bytes.Replace(want, []byte{0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00}, []byte{0x30, 0x07, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a}, 1)
	stripped[1] -= 2
	if bytes.Equal(stripped, want) {
		t.Fatal("test did not strip the parameters")
	}
	err := certIDMismatch(stripped, want)
	if err == nil || !strings.Contains(err.Error(), "lacks the SHA-1 NULL parameters") {
		t.Fatalf("got %v", err)
	}
}

func TestFetchMethod(t *testing.T) {
	var method, body, contentType string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method, contentType = r.Method, r.Header.Get("Content-Type")
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		switch r.URL.Query().Get("x") {
		case "404":
			http.NotFound(w, r)
		case "big":
			w.Write(bytes.Repeat([]byte("x"), 5000))
		default:
			w.Write([]byte("answer"))
		}
	}))
	defer srv.Close()
	f := &fetcher{Client: srv.Client(), MaxBytes: 4096, Override: map[string]string{"http://ocsp.example.com": srv.URL}}
	tests := []struct {
		name, responder string
		req             []byte
		method, err     string
	}{
		{"short request by GET", srv.URL, bytes.Repeat([]byte{1}, 100), "GET", ""},
		{"long request by POST", srv.URL, bytes.Repeat([]byte{1}, 300), "POST", ""},
		{"override", "http://ocsp.example.com", bytes.Repeat([]byte{1}, 100), "GET", ""},
		{"HTTP status", srv.URL + "/?x=404", bytes.Repeat([]byte{1}, 300), "POST", "answered HTTP 404"},
		{"size cap", srv.URL + "/?x=big", bytes.Repeat([]byte{1}, 300), "POST", "more than 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := f.fetch(context.Background(), tt.responder, tt.req)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error containing %q", err, tt.err)
				}
				return
			}
			if err != nil || string(got) != "answer" {
				t.Fatalf("got %q, %v", got, err)
			}
			if method != tt.method {
				t.Errorf("method %s, want %s", method, tt.method)
			}
			if method == "POST" && (body != string(tt.req) || contentType != "application/ocsp-request") {
				t.Errorf("POST body %d bytes, content type %q", len(body), contentType)
			}
		})
	}
}

// TestFetchPerResponderLimit: however many jobs run, at most PerResponder requests are in
// flight to one responder host.
func TestFetchPerResponderLimit(t *testing.T) {
	var mu sync.Mutex
	inFlight, most := 0, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a responder's latency, so that requests overlap
		mu.Lock()
		inFlight--
		mu.Unlock()
		w.Write([]byte("answer"))
	}))
	defer srv.Close()
	f := &fetcher{Client: srv.Client(), MaxBytes: 4096, PerResponder: 3}
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			if _, err := f.fetch(context.Background(), srv.URL, []byte{1}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most != 3 {
		t.Errorf("%d requests in flight at most, want 3", most)
	}
}
