package ocspcheck

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

const (
	// HAProxyMargin: HAProxy stops stapling a response 300 s before its nextUpdate (3.2+
	// refuse such a response outright).
	HAProxyMargin = 300 * time.Second
	// ClockSkew is how far in the future a thisUpdate may lie, as OpenSSL's
	// OCSP_check_validity allows when HAProxy loads a response.
	ClockSkew = 5 * time.Minute
)

// Request returns the DER OCSP request for leaf and the DER CertID in it: a SHA-1 CertID with
// explicit NULL parameters, because HAProxy (2.6 to 3.4) files staples under nothing else,
// and no nonce, so that the response can be stapled and cached.
func Request(leaf, issuer *x509.Certificate) (req, certID []byte, err error) {
	req, err = ocsp.CreateRequest(leaf, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1})
	if err != nil {
		return nil, nil, err
	}
	certID, err = RequestCertID(req)
	return req, certID, err
}

// Response is a response that passed Check.
type Response struct {
	*ocsp.Response
	// SignerNotAfter is when the delegated responder certificate that signed the response
	// expires; zero when the issuer signed it. A client that checks the staple rejects it
	// from then on.
	SignerNotAfter time.Time
}

// Expiry is when the response stops being good to staple: its nextUpdate, or the expiry of
// its delegated signer if that comes first.
func (r *Response) Expiry() time.Time {
	if !r.SignerNotAfter.IsZero() && r.SignerNotAfter.Before(r.NextUpdate) {
		return r.SignerNotAfter
	}
	return r.NextUpdate
}

// Checker checks responses. It remembers the delegated responder certificates it verified
// against an issuer, so that thousands of responses signed by one responder cost one
// verification of it, and then each its own signature. The zero Checker is ready to use and
// safe for concurrent use.
type Checker struct {
	mu      sync.Mutex
	signers map[[2]string]error // issuer and signer (their raw DER, as strings): the verdict
}

// ErrNotOCSP is the error of a body that is no OCSP response at all.
var ErrNotOCSP = errors.New("invalid OCSP response")

// Check checks der, a response to a request whose DER CertID is certID, as strictly as
// HAProxy will when it is pushed, and verifies the signature, which HAProxy never does:
// status successful, one SingleResponse, the CertID byte for byte, signed by the issuer or by
// a responder certificate the issuer issued for OCSP signing and valid now (RFC 6960 section
// 4.2.2.2), a status other than unknown, a thisUpdate not in the future, a nextUpdate more than
// HAProxyMargin ahead. A revoked status passes: the caller decides.
func (c *Checker) Check(der, certID []byte, issuer *x509.Certificate, now time.Time) (*Response, error) {
	// Without an issuer, ParseResponse checks only that an embedded certificate's key signed
	// the response; who may sign is decided below, because ParseResponse(der, issuer) wrongly
	// insists that the issuer signed any embedded certificate, even the issuer's own.
	resp, err := ocsp.ParseResponse(der, nil)
	if err != nil {
		var rerr ocsp.ResponseError
		if errors.As(err, &rerr) {
			return nil, fmt.Errorf("responder answered %q", ResponseStatusName(rerr.Status))
		}
		return nil, fmt.Errorf("%w: %w", ErrNotOCSP, err)
	}
	out := &Response{Response: resp}
	// One signature verification per response: ParseResponse has verified the signature of a
	// response that carries a certificate with that certificate's key. Such a response is the
	// issuer's when that key is the issuer's (some responders embed the issuer's own
	// certificate, or another for the same key), else a delegate's, whose certificate the
	// issuer must have issued (verified once per Checker). One without a certificate must be
	// the issuer's.
	switch signer := resp.Certificate; {
	case signer == nil:
		if resp.CheckSignatureFrom(issuer) != nil {
			return nil, fmt.Errorf("bad OCSP signature: not signed by the issuer %q", issuer.Subject)
		}
	case bytes.Equal(signer.RawSubjectPublicKeyInfo, issuer.RawSubjectPublicKeyInfo):
	default:
		if err := c.delegate(issuer, signer, now); err != nil {
			return nil, err
		}
		out.SignerNotAfter = signer.NotAfter
	}
	got, err := ResponseCertID(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotOCSP, err)
	}
	if !bytes.Equal(got, certID) {
		return nil, certIDMismatch(got, certID)
	}
	if resp.Status == ocsp.Unknown {
		return nil, errors.New("responder says the certificate's status is unknown")
	}
	if err := CheckTimes(resp.ThisUpdate, resp.NextUpdate, now); err != nil {
		return nil, err
	}
	return out, nil
}

// CheckTimes is what Check requires of a response's times at now: a thisUpdate not in the
// future (ClockSkew allowed), and a nextUpdate more than HAProxyMargin ahead. A response that
// passed Check once is checked again at a later now with it: its bytes, signature and issuer do
// not change, its times do.
func CheckTimes(thisUpdate, nextUpdate, now time.Time) error {
	switch {
	case thisUpdate.After(now.Add(ClockSkew)):
		return fmt.Errorf("response thisUpdate %s lies in the future", thisUpdate.Format(time.RFC3339))
	case nextUpdate.IsZero():
		return errors.New("response has no nextUpdate; HAProxy refuses such responses")
	case !nextUpdate.After(now.Add(HAProxyMargin)):
		return fmt.Errorf("response expires at %s, too soon to staple (HAProxy stops %v before nextUpdate)", nextUpdate.Format(time.RFC3339), HAProxyMargin)
	}
	return nil
}

// delegate checks a delegated responder certificate: issued by the issuer, marked for OCSP
// signing, valid now. The issuer's signature on it is verified once per Checker.
func (c *Checker) delegate(issuer, signer *x509.Certificate, now time.Time) error {
	key := [2]string{string(issuer.Raw), string(signer.Raw)}
	c.mu.Lock()
	err, seen := c.signers[key]
	c.mu.Unlock()
	if !seen {
		err = issuer.CheckSignature(signer.SignatureAlgorithm, signer.RawTBSCertificate, signer.Signature)
		if err != nil {
			err = fmt.Errorf("bad OCSP signature: responder certificate %q was not issued by %q", signer.Subject, issuer.Subject)
		}
		c.mu.Lock()
		if c.signers == nil {
			c.signers = map[[2]string]error{}
		}
		c.signers[key] = err
		c.mu.Unlock()
	}
	switch {
	case err != nil:
		return err
	case !slices.Contains(signer.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning):
		return fmt.Errorf("response signed by %q, which lacks id-kp-OCSPSigning", signer.Subject)
	case now.Before(signer.NotBefore) || now.After(signer.NotAfter):
		return fmt.Errorf("response signed by %q, valid only from %s to %s", signer.Subject, signer.NotBefore.Format(time.RFC3339), signer.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// ResponseStatusName is RFC 6960's name of an unsuccessful response status.
func ResponseStatusName(s ocsp.ResponseStatus) string {
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

// ReasonName is RFC 5280's name of a CRLReason.
func ReasonName(reason int) string {
	names := map[int]string{
		ocsp.Unspecified: "unspecified", ocsp.KeyCompromise: "keyCompromise", ocsp.CACompromise: "cACompromise",
		ocsp.AffiliationChanged: "affiliationChanged", ocsp.Superseded: "superseded",
		ocsp.CessationOfOperation: "cessationOfOperation", ocsp.CertificateHold: "certificateHold",
		ocsp.RemoveFromCRL: "removeFromCRL", ocsp.PrivilegeWithdrawn: "privilegeWithdrawn", ocsp.AACompromise: "aACompromise",
	}
	if n, ok := names[reason]; ok {
		return n
	}
	return fmt.Sprintf("reason %d", reason)
}

// StatusName names a certificate status as stapler's state and logs do.
func StatusName(status int) string {
	switch status {
	case ocsp.Good:
		return "good"
	case ocsp.Revoked:
		return "revoked"
	}
	return "unknown"
}

// certID mirrors RFC 6960's CertID for error messages.
type certID struct {
	HashAlgorithm  pkix.AlgorithmIdentifier
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	SerialNumber   *big.Int
}

var (
	oidSHA1   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
)

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
	case got.HashAlgorithm.Algorithm.Equal(oidSHA256):
		return errors.New("the response's CertID uses SHA-256; HAProxy matches only SHA-1 (the responder ignores the request's hash algorithm)")
	case !got.HashAlgorithm.Algorithm.Equal(oidSHA1):
		return fmt.Errorf("the response's CertID is hashed with %v, not SHA-1: HAProxy matches SHA-1 CertIDs only", got.HashAlgorithm.Algorithm)
	case got.SerialNumber.Cmp(want.SerialNumber) != 0:
		return fmt.Errorf("response is for serial %x, not this certificate's %x", got.SerialNumber, want.SerialNumber)
	case !bytes.Equal(got.IssuerNameHash, want.IssuerNameHash) || !bytes.Equal(got.IssuerKeyHash, want.IssuerKeyHash):
		return errors.New("response CertID names another issuer")
	case !bytes.Equal(got.HashAlgorithm.Parameters.FullBytes, []byte{5, 0}):
		return errors.New("response CertID lacks the SHA-1 NULL parameters: HAProxy takes it from a file at start-up but rejects it on its runtime API")
	}
	return errors.New("response CertID is encoded differently from the request's; HAProxy compares them byte for byte")
}
