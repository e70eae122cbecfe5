package main

import (
	"crypto/ecdsa"
	"crypto/x509"

	"stapler/internal/pki"
)

// must returns v, and panics on err: for test setup that cannot fail.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// writeBundle writes an HAProxy PEM bundle (leaf, chain, key) to path, or panics.
func writeBundle(path string, leaf *x509.Certificate, key *ecdsa.PrivateKey, chain ...*x509.Certificate) {
	if err := pki.WriteBundle(path, leaf, key, chain...); err != nil {
		panic(err)
	}
}
