package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"time"
)

// RFC 6960's structures, as far as TwoSingles needs them: x/crypto/ocsp writes one
// SingleResponse per response, never two.
type (
	ocspResponse struct {
		Status   asn1.Enumerated
		Response responseBytes `asn1:"explicit,tag:0,optional"`
	}
	responseBytes struct {
		ResponseType asn1.ObjectIdentifier
		Response     []byte
	}
	basicResponse struct {
		TBSResponseData    asn1.RawValue
		SignatureAlgorithm pkix.AlgorithmIdentifier
		Signature          asn1.BitString
	}
	responseData struct {
		Version        int `asn1:"optional,default:0,explicit,tag:0"`
		RawResponderID asn1.RawValue
		ProducedAt     time.Time `asn1:"generalized"`
		Responses      []singleResponse
	}
	certID struct {
		HashAlgorithm  pkix.AlgorithmIdentifier
		IssuerNameHash []byte
		IssuerKeyHash  []byte
		SerialNumber   *big.Int
	}
	singleResponse struct {
		CertID     certID
		Good       asn1.Flag `asn1:"tag:0,optional"`
		ThisUpdate time.Time `asn1:"generalized"`
		NextUpdate time.Time `asn1:"generalized,explicit,tag:0,optional"`
	}
)

var (
	oidSHA1            = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidOCSPBasic       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
)

// TwoSingles is a response signed by the CA with two good SingleResponses: first the one for
// serial, then one for the next serial. HAProxy ignores such a response ("contains multiple
// single responses"), and x/crypto/ocsp's ParseResponse refuses it.
func (ca *CA) TwoSingles(serial *big.Int, now time.Time) []byte {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	must(asn1.Unmarshal(ca.Cert.RawSubjectPublicKeyInfo, &spki))
	nameHash, keyHash := sha1.Sum(ca.Cert.RawSubject), sha1.Sum(spki.PublicKey.RightAlign())
	id := func(serial *big.Int) certID {
		return certID{HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA1, Parameters: asn1.NullRawValue},
			IssuerNameHash: nameHash[:], IssuerKeyHash: keyHash[:], SerialNumber: serial}
	}
	this, next := now.Add(-time.Hour).UTC().Truncate(time.Second), now.Add(24*time.Hour).UTC().Truncate(time.Second)
	tbs := must(asn1.Marshal(responseData{
		RawResponderID: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 1, IsCompound: true, Bytes: ca.Cert.RawSubject},
		ProducedAt:     now.UTC().Truncate(time.Second),
		Responses: []singleResponse{
			{CertID: id(serial), Good: true, ThisUpdate: this, NextUpdate: next},
			{CertID: id(new(big.Int).Add(serial, big.NewInt(1))), Good: true, ThisUpdate: this, NextUpdate: next},
		},
	}))
	digest := sha256.Sum256(tbs)
	sig := must(ca.Key.Sign(rand.Reader, digest[:], crypto.SHA256))
	basic := must(asn1.Marshal(basicResponse{
		TBSResponseData:    asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256},
		Signature:          asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	}))
	return must(asn1.Marshal(ocspResponse{Response: responseBytes{ResponseType: oidOCSPBasic, Response: basic}}))
}
