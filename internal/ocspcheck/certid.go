// Package ocspcheck builds OCSP requests as HAProxy needs them and checks responses as
// strictly as HAProxy will when it loads them, plus the signature, which HAProxy never checks.
package ocspcheck

import (
	"errors"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// ResponseCertID returns the DER CertID of the first SingleResponse of an OCSP response:
// the key under which HAProxy files it, byte for byte.
func ResponseCertID(der []byte) ([]byte, error) {
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
