package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"golang.org/x/crypto/ocsp"
)

const (
	// haproxyMargin: HAProxy stops stapling a response 300 s before its nextUpdate.
	haproxyMargin = 300 * time.Second
	// minValidity is how much validity a new response must have left to be worth stapling:
	// HAProxy's margin plus time for HAProxy to serve it.
	minValidity = haproxyMargin + 5*time.Minute
	// clockSkew is how far in the future a thisUpdate may lie, as OpenSSL's
	// OCSP_check_validity allows when HAProxy loads a response.
	clockSkew = 5 * time.Minute
	// maxGETLength: RFC 5019 section 5 sends requests whose encoding is at most 255 bytes by GET.
	maxGETLength = 255
)

// newRequest returns the DER OCSP request for leaf: a SHA-1 CertID, because HAProxy 2.6 matches
// nothing else, with explicit NULL parameters, and no nonce, so that the response can be stapled.
func newRequest(leaf, issuer *x509.Certificate) ([]byte, error) {
	return ocsp.CreateRequest(leaf, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1})
}

// fetcher asks OCSP responders for responses.
type fetcher struct {
	Client       *http.Client
	MaxBytes     int64
	Override     map[string]string // responder URL in the certificate: URL to use instead
	PerResponder int               // requests in flight to one responder host at most

	mu    sync.Mutex
	slots map[string]chan struct{} // by responder host
}

// fetch sends req to the responder and returns the body of its answer, unvalidated.
func (f *fetcher) fetch(ctx context.Context, responder string, req []byte) ([]byte, error) {
	if o, ok := f.Override[responder]; ok {
		responder = o
	}
	release, err := f.acquire(ctx, responder)
	if err != nil {
		return nil, err
	}
	defer release()
	var hreq *http.Request
	enc := url.QueryEscape(base64.StdEncoding.EncodeToString(req))
	if len(enc) <= maxGETLength {
		hreq, err = http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(responder, "/")+"/"+enc, nil)
	} else {
		hreq, err = http.NewRequestWithContext(ctx, http.MethodPost, responder, bytes.NewReader(req))
		if hreq != nil {
			hreq.Header.Set("Content-Type", "application/ocsp-request")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("responder URL %q: %w", responder, err)
	}
	hreq.Header.Set("Accept", "application/ocsp-response")
	body, err := httpBody(f.Client, hreq, f.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("asking responder %s: %w", responder, err)
	}
	return body, nil
}

// acquire waits for one of the PerResponder slots of the responder's host.
func (f *fetcher) acquire(ctx context.Context, responder string) (release func(), err error) {
	if f.PerResponder <= 0 {
		return func() {}, nil
	}
	host := responder
	if u, err := url.Parse(responder); err == nil {
		host = u.Host
	}
	f.mu.Lock()
	if f.slots == nil {
		f.slots = map[string]chan struct{}{}
	}
	slot, ok := f.slots[host]
	if !ok {
		slot = make(chan struct{}, f.PerResponder)
		f.slots[host] = slot
	}
	f.mu.Unlock()
	select {
	case slot <- struct{}{}:
		return func() { <-slot }, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// httpBody sends req and returns the body of a 200 answer, refusing one over maxBytes.
func httpBody(client *http.Client, req *http.Request, maxBytes int64) ([]byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL, which for a GET request is long
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // lets the connection be reused
		return nil, fmt.Errorf("answered HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("answered more than %d bytes", maxBytes)
	}
	return body, nil
}

// validateResponse checks der as strictly as HAProxy 2.6 will when it is pushed, and verifies
// the signature, which HAProxy never does. req is the request it answers: its CertID is the
// one HAProxy will compare byte for byte. A revoked status is valid: the caller decides.
func validateResponse(der, req []byte, leaf, issuer *x509.Certificate, now time.Time) (*ocsp.Response, error) {
	// Without an issuer, ParseResponse checks only that an embedded certificate's key signed
	// the response; who may sign is decided below, because ParseResponse(der, issuer) wrongly
	// insists that the issuer signed any embedded certificate, even the issuer's own.
	resp, err := ocsp.ParseResponse(der, nil)
	if err != nil {
		var rerr ocsp.ResponseError
		if errors.As(err, &rerr) {
			return nil, fmt.Errorf("responder answered %q", responseStatusName(rerr.Status))
		}
		return nil, fmt.Errorf("invalid OCSP response: %w", err)
	}
	// Signed by the issuer itself, whatever certificate the response carries (some embed the
	// issuer's own, or another certificate for the same key), or else by a delegated responder
	// (RFC 6960 section 4.2.2.2): issued by the issuer, marked for OCSP signing and valid now.
	// ParseResponse checked that the embedded certificate's key signed the response.
	if c := resp.Certificate; resp.CheckSignatureFrom(issuer) != nil {
		switch {
		case c == nil || c.Equal(issuer):
			return nil, fmt.Errorf("bad OCSP signature: not signed by the issuer %q", issuer.Subject)
		case issuer.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) != nil:
			return nil, fmt.Errorf("bad OCSP signature: responder certificate %q was not issued by %q", c.Subject, issuer.Subject)
		case !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning):
			return nil, fmt.Errorf("response signed by %q, which lacks id-kp-OCSPSigning", c.Subject)
		case now.Before(c.NotBefore) || now.After(c.NotAfter):
			return nil, fmt.Errorf("response signed by %q, valid only from %s to %s", c.Subject, c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
		}
	}
	got, err := responseCertID(der)
	if err != nil {
		return nil, fmt.Errorf("invalid OCSP response: %w", err)
	}
	want, err := requestCertID(req)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(got, want) {
		return nil, certIDMismatch(got, want)
	}
	switch {
	case resp.Status == ocsp.Unknown:
		return nil, errors.New("responder says the certificate's status is unknown")
	case resp.ThisUpdate.After(now.Add(clockSkew)):
		return nil, fmt.Errorf("response thisUpdate %s lies in the future", resp.ThisUpdate.Format(time.RFC3339))
	case resp.NextUpdate.IsZero():
		return nil, errors.New("response has no nextUpdate; HAProxy refuses such responses")
	case resp.NextUpdate.Before(now.Add(minValidity)):
		return nil, fmt.Errorf("response expires at %s, too soon to staple (HAProxy stops %v before nextUpdate)", resp.NextUpdate.Format(time.RFC3339), haproxyMargin)
	}
	return resp, nil
}

func responseStatusName(s ocsp.ResponseStatus) string {
	switch s {
	case ocsp.Malformed:
		return "malformedRequest"
	case ocsp.InternalError:
		return "internalError"
	case ocsp.TryLater:
		return "tryLater"
	case ocsp.SignatureRequired:
		return "sigRequired"
	case ocsp.Unauthorized:
		return "unauthorized"
	}
	return fmt.Sprintf("status %d", int(s))
}

// certID mirrors RFC 6960's CertID for error messages.
type certID struct {
	HashAlgorithm  pkix.AlgorithmIdentifier
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	SerialNumber   *big.Int
}

var oidSHA1 = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}

// certIDMismatch says how the response's CertID differs from the one HAProxy will look for.
func certIDMismatch(gotDER, wantDER []byte) error {
	var got, want certID
	if _, err := asn1.Unmarshal(gotDER, &got); err != nil {
		return fmt.Errorf("response CertID is malformed: %w", err)
	}
	if _, err := asn1.Unmarshal(wantDER, &want); err != nil {
		return fmt.Errorf("request CertID is malformed: %w", err)
	}
	switch {
	case !got.HashAlgorithm.Algorithm.Equal(oidSHA1):
		return fmt.Errorf("response CertID is hashed with %v, not SHA-1: HAProxy 2.6 matches SHA-1 CertIDs only", got.HashAlgorithm.Algorithm)
	case got.SerialNumber.Cmp(want.SerialNumber) != 0:
		return fmt.Errorf("response is for serial %x, not this certificate's %x", got.SerialNumber, want.SerialNumber)
	case !bytes.Equal(got.IssuerNameHash, want.IssuerNameHash) || !bytes.Equal(got.IssuerKeyHash, want.IssuerKeyHash):
		return errors.New("response CertID names another issuer")
	case !bytes.Equal(got.HashAlgorithm.Parameters.FullBytes, []byte{5, 0}):
		return errors.New("response CertID lacks the SHA-1 NULL parameters: HAProxy takes it from a file at start-up but rejects it on its runtime API")
	}
	return errors.New("response CertID is encoded differently from the request's; HAProxy compares them byte for byte")
}

// responseCertID returns the DER CertID of the first SingleResponse of an OCSP response.
func responseCertID(der []byte) ([]byte, error) {
	s := cryptobyte.String(der)
	var resp, rb, basicOctets, basic, tbs, responderID, responses, single, id cryptobyte.String
	var tag cbasn1.Tag
	ok := s.ReadASN1(&resp, cbasn1.SEQUENCE) &&
		resp.SkipASN1(cbasn1.ENUM) &&
		resp.ReadASN1(&rb, cbasn1.Tag(0).Constructed().ContextSpecific()) &&
		rb.ReadASN1(&rb, cbasn1.SEQUENCE) &&
		rb.SkipASN1(cbasn1.OBJECT_IDENTIFIER) &&
		rb.ReadASN1(&basicOctets, cbasn1.OCTET_STRING) &&
		basicOctets.ReadASN1(&basic, cbasn1.SEQUENCE) &&
		basic.ReadASN1(&tbs, cbasn1.SEQUENCE) &&
		tbs.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) &&
		tbs.ReadAnyASN1(&responderID, &tag) &&
		tbs.SkipASN1(cbasn1.GeneralizedTime) &&
		tbs.ReadASN1(&responses, cbasn1.SEQUENCE) &&
		responses.ReadASN1(&single, cbasn1.SEQUENCE) &&
		single.ReadASN1Element(&id, cbasn1.SEQUENCE)
	if !ok {
		return nil, errors.New("cannot find the CertID of the response")
	}
	return id, nil
}

// requestCertID returns the DER CertID of the single request of an OCSP request.
func requestCertID(der []byte) ([]byte, error) {
	s := cryptobyte.String(der)
	var req, tbs, list, one, id cryptobyte.String
	ok := s.ReadASN1(&req, cbasn1.SEQUENCE) &&
		req.ReadASN1(&tbs, cbasn1.SEQUENCE) &&
		tbs.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) &&
		tbs.SkipOptionalASN1(cbasn1.Tag(1).Constructed().ContextSpecific()) &&
		tbs.ReadASN1(&list, cbasn1.SEQUENCE) &&
		list.ReadASN1(&one, cbasn1.SEQUENCE) &&
		one.ReadASN1Element(&id, cbasn1.SEQUENCE)
	if !ok {
		return nil, errors.New("cannot find the CertID of the request")
	}
	return id, nil
}

// statusName is how state and logs name an OCSP certificate status.
func statusName(status int) string {
	switch status {
	case ocsp.Good:
		return "good"
	case ocsp.Revoked:
		return "revoked"
	}
	return "unknown"
}
