// Package ocspcheck builds OCSP requests as HAProxy needs them and checks responses as
// strictly as HAProxy will when it loads them, plus the signature, which HAProxy never checks.
package ocspcheck

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// ResponseCertID returns the DER CertID of the first SingleResponse of an OCSP response:
// the key under which HAProxy files it, byte for byte.
func ResponseCertID(der []byte) ([]byte, error) {
	id, _, _, err := firstSingle(der)
	return id, err
}

// Times are the times an OCSP response states about its first SingleResponse.
type Times struct {
	ProducedAt, ThisUpdate time.Time
	NextUpdate             time.Time // zero when the response has none
}

// ResponseTimes reads the times of an OCSP response without checking its signature: what
// a response HAProxy already holds says of itself, to compare it with another. Only a
// response found newer needs the check (x/crypto/ocsp's ParseResponse), which costs a
// signature verification; most comparisons do not.
func ResponseTimes(der []byte) (Times, error) {
	_, produced, single, err := firstSingle(der)
	var t Times
	if err != nil {
		return t, err
	}
	var status, next cryptobyte.String
	var tag cbasn1.Tag
	var hasNext bool
	ok := readGeneralizedTime(&produced, &t.ProducedAt) &&
		single.SkipASN1(cbasn1.SEQUENCE) && // the CertID, read by firstSingle
		single.ReadAnyASN1(&status, &tag) && // certStatus: a CHOICE of three context-specific tags
		readGeneralizedTime(&single, &t.ThisUpdate) &&
		single.ReadOptionalASN1(&next, &hasNext, cbasn1.Tag(0).Constructed().ContextSpecific()) &&
		(!hasNext || readGeneralizedTime(&next, &t.NextUpdate))
	if !ok {
		return Times{}, errors.New("cannot read the times of the response")
	}
	return t, nil
}

// readGeneralizedTime reads a GeneralizedTime as x/crypto/ocsp does (encoding/asn1), which,
// as OpenSSL and so HAProxy, also takes fractions of a second; cryptobyte, tried first as
// the faster, refuses them.
func readGeneralizedTime(s *cryptobyte.String, t *time.Time) bool {
	var elem cryptobyte.String
	if !s.ReadASN1Element(&elem, cbasn1.GeneralizedTime) {
		return false
	}
	if c := elem; c.ReadASN1GeneralizedTime(t) {
		return true
	}
	rest, err := asn1.Unmarshal(elem, t)
	return err == nil && len(rest) == 0
}

// firstSingle walks an OCSP response to its first SingleResponse and returns its DER CertID,
// the response's producedAt element, and the SingleResponse's content (from the CertID on).
func firstSingle(der []byte) (id []byte, produced, single cryptobyte.String, err error) {
	s := cryptobyte.String(der)
	var resp, rb, basicOctets, basic, tbs, responderID, responses, idElem cryptobyte.String
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
		tbs.ReadASN1Element(&produced, cbasn1.GeneralizedTime) &&
		tbs.ReadASN1(&responses, cbasn1.SEQUENCE) &&
		responses.ReadASN1(&single, cbasn1.SEQUENCE)
	if ok {
		rest := single
		ok = rest.ReadASN1Element(&idElem, cbasn1.SEQUENCE)
	}
	if !ok {
		return nil, nil, nil, errors.New("cannot find the CertID of the response")
	}
	return idElem, produced, single, nil
}

// RequestCertID returns the DER CertID of the single request of an OCSP request.
func RequestCertID(der []byte) ([]byte, error) {
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

// RequestFor is the OCSP request Request makes for the certificate whose DER CertID this is:
// the request of a certificate stapler recorded, made without the certificate. (x/crypto/ocsp
// writes the CertID in four SEQUENCEs: request, tbsRequest, requestList, the one request.)
func RequestFor(certID []byte) ([]byte, error) {
	if _, _, err := SplitCertID(certID); err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddBytes(certID)
				})
			})
		})
	})
	return b.Bytes()
}

// SplitCertID splits a DER CertID into the part that names the issuer (hash algorithm,
// issuer name hash and issuer key hash, as DER) and the serial number.
func SplitCertID(certID []byte) (issuer []byte, serial *big.Int, err error) {
	s := cryptobyte.String(certID)
	var id, alg, name, key cryptobyte.String
	serial = new(big.Int)
	if !s.ReadASN1(&id, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, nil, errors.New("not a CertID")
	}
	rest := id
	if !rest.ReadASN1Element(&alg, cbasn1.SEQUENCE) || !rest.ReadASN1Element(&name, cbasn1.OCTET_STRING) ||
		!rest.ReadASN1Element(&key, cbasn1.OCTET_STRING) || !rest.ReadASN1Integer(serial) || !rest.Empty() {
		return nil, nil, errors.New("not a CertID")
	}
	return id[:len(alg)+len(name)+len(key)], serial, nil // the three are contiguous
}

// Requester makes the requests Request makes, hashing each issuer's name and key once: the
// issuer part of the CertID (hash algorithm, issuer name hash, issuer key hash) comes from
// Request about the first certificate of that issuer, and the others' CertIDs differ from it
// only in their serial numbers (ocsp.CreateRequest reads nothing else of the certificate). A
// request through x/crypto/ocsp costs 11 us on this project's machine, most of it ASN.1 by
// reflection and the two hashes; through a Requester that knows the issuer, 1.4 us
// (BenchmarkRequest). The zero Requester is ready to use and safe for concurrent use.
type Requester struct {
	mu    sync.Mutex
	parts map[string][]byte // by the issuer's DER: the issuer part of its CertIDs
}

// Request is Request, for many certificates of few issuers.
func (r *Requester) Request(leaf, issuer *x509.Certificate) (req, certID []byte, err error) {
	r.mu.Lock()
	part, ok := r.parts[string(issuer.Raw)]
	r.mu.Unlock()
	if !ok {
		if req, certID, err = Request(leaf, issuer); err != nil {
			return nil, nil, err
		}
		if part, _, err := SplitCertID(certID); err == nil {
			r.mu.Lock()
			if r.parts == nil {
				r.parts = map[string][]byte{}
			}
			r.parts[string(issuer.Raw)] = slices.Clone(part)
			r.mu.Unlock()
		}
		return req, certID, nil
	}
	if leaf.SerialNumber == nil {
		return nil, nil, errors.New("the certificate has no serial number")
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(part)
		b.AddASN1BigInt(leaf.SerialNumber)
	})
	if certID, err = b.Bytes(); err != nil {
		return nil, nil, err
	}
	if req, err = RequestFor(certID); err != nil {
		return nil, nil, err
	}
	return req, certID, nil
}
