package ocspcheck

import (
	"bytes"
	"crypto/x509"
	"math/big"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"stapler/internal/pki"
)

// TestRequesterMatchesRequest: the Requester's requests and CertIDs are, byte for byte, those
// of Request (x/crypto/ocsp), for every kind of serial number and for several issuers in turn,
// from one goroutine and from several.
func TestRequesterMatchesRequest(t *testing.T) {
	now := time.Now()
	issuers := []*x509.Certificate{pki.NewCA("Requester CA 1", now).Cert, pki.NewCA("Requester CA 2", now).Cert}
	// ocsp.CreateRequest reads only the serial number of the certificate asked about.
	serials := []*big.Int{big.NewInt(1), big.NewInt(0), big.NewInt(127), big.NewInt(128), big.NewInt(255), big.NewInt(256),
		big.NewInt(-1), big.NewInt(-128), big.NewInt(-129), new(big.Int).Lsh(big.NewInt(1), 159), new(big.Int).Lsh(big.NewInt(1), 160)}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, 1+rng.IntN(20))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		serials = append(serials, new(big.Int).SetBytes(b))
	}
	check := func(r *Requester, iss *x509.Certificate, serial *big.Int) {
		leaf := &x509.Certificate{SerialNumber: serial}
		wantReq, wantID, err := Request(leaf, iss)
		if err != nil {
			t.Fatal(err)
		}
		req, id, err := r.Request(leaf, iss)
		if err != nil || !bytes.Equal(req, wantReq) || !bytes.Equal(id, wantID) {
			t.Errorf("serial %v: request %x, CertID %x, %v; want %x, %x", serial, req, id, err, wantReq, wantID)
		}
	}
	var r Requester
	for _, s := range serials {
		for _, iss := range issuers {
			check(&r, iss, s)
		}
	}
	var fresh Requester
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for _, s := range serials[i*100 : i*100+100] {
				check(&fresh, issuers[i%2], s)
			}
		})
	}
	wg.Wait()
	if _, _, err := r.Request(&x509.Certificate{}, issuers[0]); err == nil {
		t.Error("no error for a certificate without a serial number")
	}
}

// BenchmarkRequest: a request through x/crypto/ocsp, and through a Requester that knows the
// issuer.
func BenchmarkRequest(b *testing.B) {
	now := time.Now()
	ca := pki.NewCA("Bench CA", now)
	leaf, _ := ca.Issue(pki.Leaf{Name: "bench.test"}, now)
	b.Run("ocsp", func(b *testing.B) {
		for b.Loop() {
			Request(leaf, ca.Cert)
		}
	})
	b.Run("Requester", func(b *testing.B) {
		var r Requester
		for b.Loop() {
			r.Request(leaf, ca.Cert)
		}
	})
}
