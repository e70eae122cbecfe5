package ocspcheck

import (
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"golang.org/x/crypto/ocsp"
)

// TestResponseTimesFractions: times with fractions of a second, which OpenSSL (so HAProxy)
// and x/crypto/ocsp take and cryptobyte refuses, are read as x/crypto/ocsp reads them.
func TestResponseTimesFractions(t *testing.T) {
	p := newFuzzPKI()
	for _, mode := range []string{"good", "noNextUpdate"} {
		plain := p.responder.Answer(mode, p.leaf.SerialNumber, p.now)
		der := withFractions(t, plain)
		got, err := ResponseTimes(der)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		want, err := ocsp.ParseResponse(der, nil)
		if err != nil {
			t.Fatalf("%s: x/crypto/ocsp: %v", mode, err)
		}
		before := must(ResponseTimes(plain))
		if got.ThisUpdate.Sub(before.ThisUpdate) != 500*time.Millisecond || !got.ThisUpdate.Equal(want.ThisUpdate) ||
			!got.ProducedAt.Equal(want.ProducedAt) || !got.NextUpdate.Equal(want.NextUpdate) {
			t.Errorf("%s: read %+v; x/crypto/ocsp %v %v %v; without fractions %+v", mode, got, want.ProducedAt, want.ThisUpdate, want.NextUpdate, before)
		}
	}
}

// withFractions writes every GeneralizedTime of der with ".5" seconds more, DER otherwise
// unchanged (the signature no longer matches: ResponseTimes does not check it).
func withFractions(t *testing.T, der []byte) []byte {
	t.Helper()
	var b cryptobyte.Builder
	in := cryptobyte.String(der)
	for !in.Empty() {
		var body cryptobyte.String
		var tag cbasn1.Tag
		if !in.ReadAnyASN1(&body, &tag) {
			t.Fatal("not DER")
		}
		out := []byte(body)
		switch {
		case tag == cbasn1.GeneralizedTime:
			out = append(out[:len(out)-1:len(out)-1], ".5Z"...)
		case tag&0x20 != 0 || (tag == cbasn1.OCTET_STRING && len(body) > 100): // a constructed value, or the response's DER
			out = withFractions(t, body)
		}
		b.AddASN1(tag, func(b *cryptobyte.Builder) { b.AddBytes(out) })
	}
	return b.BytesOrPanic()
}
