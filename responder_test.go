package main

import (
	"crypto"
	"encoding/base64"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"
)

// fakeResponder is an OCSP responder on 127.0.0.1 for the test CA, with a switchable mode that
// picks the answer, including every way a real responder fails. It also serves the CA
// certificate at /ca.der for AIA caIssuers.
type fakeResponder struct {
	ca       *testCA
	stranger *testCA
	addr     string

	mu   sync.Mutex
	mode string
	srv  *http.Server

	cache   map[string][]byte // "cached" mode: the first answer per serial
	latency time.Duration     // before each OCSP answer, as a distant responder has

	seq      atomic.Int64 // makes each response's thisUpdate its own
	requests atomic.Int64 // OCSP requests answered
	conns    atomic.Int64 // TCP connections accepted
	posts    atomic.Int64
}

var responderModes = []string{"good", "revoked", "unknown", "tryLater", "internalError", "unauthorized",
	"http500", "garbage", "empty", "wrongSerial", "stranger", "expired", "noNextUpdate", "tooShort",
	"future", "sha256", "delegated", "delegatedNoEKU", "delegatedExpired", "down", "cached", "older"}

func startResponder(ca *testCA) *fakeResponder {
	r := &fakeResponder{ca: ca, stranger: newTestCA("Stranger CA", time.Now()), mode: "good"}
	ln := must(net.Listen("tcp", "127.0.0.1:0"))
	r.addr = ln.Addr().String()
	r.serve(ln)
	return r
}

func (r *fakeResponder) URL() string { return "http://" + r.addr }

func (r *fakeResponder) serve(ln net.Listener) {
	r.srv = &http.Server{Handler: r, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}}
	go r.srv.Serve(ln)
}

// setMode switches the answer. "down" closes the listener, so that connections are refused;
// any other mode brings it back on the same address.
func (r *fakeResponder) setMode(mode string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case mode == "down" && r.mode != "down":
		r.srv.Close()
	case mode != "down" && r.mode == "down":
		r.serve(must(net.Listen("tcp", r.addr)))
	}
	r.mode = mode
}

func (r *fakeResponder) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv.Close()
}

func (r *fakeResponder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/ca.der" {
		w.Write(r.ca.Cert.Raw)
		return
	}
	r.requests.Add(1)
	time.Sleep(r.latency)
	var der []byte
	if req.Method == http.MethodPost {
		r.posts.Add(1)
		der, _ = io.ReadAll(req.Body)
	} else {
		enc, err := url.PathUnescape(strings.TrimPrefix(req.URL.EscapedPath(), "/"))
		if err == nil {
			der, _ = base64.StdEncoding.DecodeString(enc)
		}
	}
	oreq, err := ocsp.ParseRequest(der)
	if err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	mode := r.mode
	var body []byte
	if mode == "cached" {
		if r.cache == nil {
			r.cache = map[string][]byte{}
		}
		if r.cache[oreq.SerialNumber.String()] == nil {
			r.cache[oreq.SerialNumber.String()] = r.answer("good", oreq.SerialNumber, time.Now())
		}
		body = r.cache[oreq.SerialNumber.String()]
	}
	r.mu.Unlock()
	if body == nil {
		body = r.answer(mode, oreq.SerialNumber, time.Now())
	}
	if body == nil {
		http.Error(w, "internal server error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(body)
}

// answer is the body the responder sends in mode about serial at now; nil means HTTP 500.
func (r *fakeResponder) answer(mode string, serial *big.Int, now time.Time) []byte {
	ca := r.ca
	// Each response has a thisUpdate of its own, to the second, as HAProxy 2.6 shows it: two
	// responses fetched in the same second are still told apart.
	this := now.Add(-time.Hour).Truncate(time.Second).Add(time.Duration(r.seq.Add(1)) * time.Second)
	next := now.Add(24 * time.Hour).Truncate(time.Second)
	switch mode {
	case "good":
		return ca.respond(serial, ocsp.Good, this, next, nil, nil)
	case "revoked":
		return ca.respond(serial, ocsp.Revoked, this, next, nil, nil)
	case "unknown":
		return ca.respond(serial, ocsp.Unknown, this, next, nil, nil)
	case "tryLater":
		return ocsp.TryLaterErrorResponse
	case "internalError":
		return ocsp.InternalErrorErrorResponse
	case "unauthorized":
		return ocsp.UnauthorizedErrorResponse
	case "http500":
		return nil
	case "garbage":
		return []byte("<html>this is not an OCSP response</html>")
	case "empty":
		return []byte{}
	case "wrongSerial":
		return ca.respond(new(big.Int).Add(serial, big.NewInt(1)), ocsp.Good, this, next, nil, nil)
	case "stranger":
		// Signed by another CA's key, claiming to come from ours.
		return must(ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{Status: ocsp.Good, SerialNumber: serial, ThisUpdate: this, NextUpdate: next}, r.stranger.Key))
	case "older":
		return ca.respond(serial, ocsp.Good, now.Add(-2*time.Hour), now.Add(time.Hour), nil, nil)
	case "expired":
		return ca.respond(serial, ocsp.Good, now.Add(-48*time.Hour), now.Add(-time.Hour), nil, nil)
	case "noNextUpdate":
		return ca.respond(serial, ocsp.Good, this, time.Time{}, nil, nil)
	case "tooShort":
		return ca.respond(serial, ocsp.Good, this, now.Add(4*time.Minute), nil, nil)
	case "future":
		return ca.respond(serial, ocsp.Good, now.Add(time.Hour), now.Add(48*time.Hour), nil, nil)
	case "sha256":
		return must(ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{Status: ocsp.Good, SerialNumber: serial, ThisUpdate: this, NextUpdate: next, IssuerHash: crypto.SHA256}, ca.Key))
	case "delegated":
		c, k := ca.delegate(true, now.Add(-time.Hour), now.Add(30*24*time.Hour))
		return ca.respond(serial, ocsp.Good, this, next, c, k)
	case "delegatedNoEKU":
		c, k := ca.delegate(false, now.Add(-time.Hour), now.Add(30*24*time.Hour))
		return ca.respond(serial, ocsp.Good, this, next, c, k)
	case "delegatedExpired":
		c, k := ca.delegate(true, now.Add(-30*24*time.Hour), now.Add(-time.Hour))
		return ca.respond(serial, ocsp.Good, this, next, c, k)
	}
	panic("unknown responder mode " + mode)
}
