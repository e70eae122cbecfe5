package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stapler/internal/pki"
)

// opensslResponder is an OCSP responder over HTTP on 127.0.0.1 in front of Debian's
// `openssl ocsp`, the responder of many private PKIs. `openssl ocsp -port` would listen on every
// interface, so Go does the HTTP and hands each DER request to a fresh `openssl ocsp -reqin`:
// openssl produces every byte of every response, from its CA index (index.txt).
type opensslResponder struct {
	t       *testing.T
	openssl string
	dir     string // index.txt, ca.pem, signer.pem, signer.key
	URL     string
	// Minutes is the validity of each response (openssl -nmin): nextUpdate that long after
	// thisUpdate. HAProxy refuses responses without a nextUpdate.
	Minutes int
	// MaxAge, when set, is sent as Cache-Control max-age, as RFC 5019 responders do.
	MaxAge   time.Duration
	Requests atomic.Int64

	mu    sync.Mutex
	index map[string]string // serial: its index.txt line
}

// startOpenSSLResponder starts a responder for ca whose responses signer signs (ca itself when
// signer is nil), valid for an hour. Certificates are unknown to it until Valid or Revoked.
func startOpenSSLResponder(t *testing.T, ca *pki.CA, signer *x509.Certificate, key crypto.Signer) *opensslResponder {
	t.Helper()
	r := &opensslResponder{t: t, openssl: hapLookTool(t, "openssl"), dir: t.TempDir(), Minutes: 60, index: map[string]string{}}
	if signer == nil {
		signer, key = ca.Cert, ca.Key
	}
	hapWriteFile(t, filepath.Join(r.dir, "ca.pem"), pki.CertPEM(ca.Cert))
	hapWriteFile(t, filepath.Join(r.dir, "signer.pem"), pki.CertPEM(signer))
	hapWriteFile(t, filepath.Join(r.dir, "signer.key"), pki.KeyPEM(key.(*ecdsa.PrivateKey)))
	r.writeIndex()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.URL = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: r}
	go srv.Serve(ln)
	t.Cleanup(func() {
		// Shutdown waits for the handlers in flight: none may report to a finished test.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	})
	return r
}

// Valid makes the responder answer good for leaf.
func (r *opensslResponder) Valid(leaf *x509.Certificate) {
	r.set(leaf, fmt.Sprintf("V\t%s\t\t%X\tunknown\t/CN=%s\n", leaf.NotAfter.UTC().Format("060102150405Z"), leaf.SerialNumber.Bytes(), leaf.Subject.CommonName))
}

// Revoked makes the responder answer revoked for leaf, since at, for reason (RFC 5280's name,
// as openssl's index takes it: keyCompromise, superseded, ...).
func (r *opensslResponder) Revoked(leaf *x509.Certificate, at time.Time, reason string) {
	r.set(leaf, fmt.Sprintf("R\t%s\t%s,%s\t%X\tunknown\t/CN=%s\n", leaf.NotAfter.UTC().Format("060102150405Z"),
		at.UTC().Format("060102150405Z"), reason, leaf.SerialNumber.Bytes(), leaf.Subject.CommonName))
}

// set writes index.txt with line for leaf. openssl looks a serial up as BN_bn2hex prints it:
// upper case, whole bytes.
func (r *opensslResponder) set(leaf *x509.Certificate, line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index[leaf.SerialNumber.String()] = line
	r.writeIndex()
}

func (r *opensslResponder) writeIndex() {
	var b strings.Builder
	for _, line := range r.index {
		b.WriteString(line)
	}
	hapWriteFile(r.t, filepath.Join(r.dir, "index.txt"), []byte(b.String()))
}

func (r *opensslResponder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.Requests.Add(1)
	fail := func(format string, args ...any) {
		r.t.Errorf("openssl responder: "+format, args...)
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
	der, err := pki.RequestDER(req)
	if err != nil {
		fail("bad request: %v", err)
		return
	}
	work, err := os.MkdirTemp(r.dir, "req")
	if err != nil {
		fail("%v", err)
		return
	}
	defer os.RemoveAll(work)
	reqFile, respFile := filepath.Join(work, "req.der"), filepath.Join(work, "resp.der")
	if err := os.WriteFile(reqFile, der, 0o600); err != nil {
		fail("%v", err)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	r.mu.Lock() // index.txt is rewritten under the lock
	out, err := exec.CommandContext(ctx, r.openssl, "ocsp",
		"-index", filepath.Join(r.dir, "index.txt"),
		"-CA", filepath.Join(r.dir, "ca.pem"),
		"-rsigner", filepath.Join(r.dir, "signer.pem"),
		"-rkey", filepath.Join(r.dir, "signer.key"),
		"-reqin", reqFile, "-respout", respFile,
		"-nmin", strconv.Itoa(r.Minutes),
	).CombinedOutput()
	r.mu.Unlock()
	if err != nil {
		fail("%v\n%s", err, out)
		return
	}
	resp, err := os.ReadFile(respFile)
	if err != nil {
		fail("%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	if r.MaxAge > 0 {
		w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d, public, no-transform, must-revalidate", int(r.MaxAge.Seconds())))
	}
	w.Write(resp)
}
