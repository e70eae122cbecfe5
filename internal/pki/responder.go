package pki

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
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

// Responder is an OCSP responder on 127.0.0.1 for a CA, whose mode picks the answer: good
// ones, and every way a real responder fails. It also serves the CA certificate at /ca.der,
// for AIA caIssuers.
type Responder struct {
	CA       *CA
	Stranger *CA // signs the "stranger" answers
	addr     string

	mu        sync.Mutex
	mode      string
	srv       *http.Server
	cache     map[string][]byte // "cached" mode: the first answer per serial
	revoked   map[string]bool   // serials answered as revoked in every mode that answers good
	latency   atomic.Int64      // before each OCSP answer, as a distant responder has
	seqMu     sync.Mutex
	signer    *x509.Certificate // of "delegated" answers
	signerKey crypto.Signer
	seq       map[string]int64  // per serial: makes each response's thisUpdate its own
	maxAge    time.Duration     // SetCaching
	presigned map[string][]byte // Presign: the answer per serial of mode "presigned"

	Requests atomic.Int64 // OCSP requests answered
	// Answering is the time spent in answering them, summed, in nanoseconds: the latency set
	// plus the parsing and signing, and any wait for a CPU.
	Answering   atomic.Int64
	Conns       atomic.Int64 // TCP connections accepted
	Posts       atomic.Int64
	NotModified atomic.Int64 // conditional requests answered 304
}

// Modes are the answers a Responder can give.
var Modes = []string{"good", "revoked", "unknown", "tryLater", "internalError", "unauthorized",
	"http500", "garbage", "html", "empty", "wrongSerial", "stranger", "expired", "noNextUpdate", "tooShort",
	"future", "sha256", "delegated", "delegatedNoEKU", "delegatedExpired", "down", "cached", "older",
	"farFuture", "huge", "backdated", "delegatedNotYetValid", "twoSingles", "presigned"}

// StartResponder starts a responder for ca on 127.0.0.1, answering "good".
func StartResponder(ca *CA) *Responder {
	ln := must(net.Listen("tcp", "127.0.0.1:0"))
	return ServeResponder(ca, ln)
}

// ServeResponder serves a responder for ca on ln (whose address the certificates must name
// before the responder can start).
func ServeResponder(ca *CA, ln net.Listener) *Responder {
	r := &Responder{CA: ca, Stranger: NewCA("Stranger CA", time.Now()), mode: "good", addr: ln.Addr().String()}
	r.serve(ln)
	return r
}

// URL is the responder's URL, as certificates name it.
func (r *Responder) URL() string { return "http://" + r.addr }

func (r *Responder) serve(ln net.Listener) {
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.Conns.Add(1)
		}
	}}
	go r.srv.Serve(ln)
}

// SetMode switches the answer. "down" closes the listener, so that connections are refused;
// any other mode brings it back on the same address.
func (r *Responder) SetMode(mode string) {
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

// Revoke makes the responder answer "revoked" for serial where it would answer "good".
func (r *Responder) Revoke(serial *big.Int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.revoked == nil {
		r.revoked = map[string]bool{}
	}
	r.revoked[serial.String()] = true
}

// SetCaching makes the responder answer as one behind an HTTP cache (a CDN) does: every OCSP
// response with Cache-Control max-age, an ETag and Last-Modified, and 304 Not Modified to a
// request whose If-None-Match names the response it would send. Zero turns it off.
func (r *Responder) SetCaching(maxAge time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.maxAge = maxAge
}

// Presign signs now a "delegated" answer about each serial, which mode "presigned" serves
// without signing, as a CA's responder serves responses it produced ahead ("pre-produced
// responses", RFC 6960 section 2.5); it serves HTTP 500 about other serials.
func (r *Responder) Presign(serials []*big.Int, now time.Time) {
	answers := make(map[string][]byte, len(serials))
	for _, serial := range serials {
		answers[serial.String()] = r.Answer("delegated", serial, now)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.presigned = answers
}

// SetLatency makes the responder wait d before each OCSP answer.
func (r *Responder) SetLatency(d time.Duration) { r.latency.Store(int64(d)) }

// Close stops the responder.
func (r *Responder) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv.Close()
}

func (r *Responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/ca.der" {
		w.Write(r.CA.Cert.Raw)
		return
	}
	r.Requests.Add(1)
	start := time.Now()
	defer func() { r.Answering.Add(int64(time.Since(start))) }()
	time.Sleep(time.Duration(r.latency.Load()))
	oreq, err := ParseRequest(req)
	if err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	mode := r.mode
	if mode == "good" && r.revoked[oreq.SerialNumber.String()] {
		mode = "revoked"
	}
	var body []byte
	if mode == "cached" || mode == "backdated" {
		if r.cache == nil {
			r.cache = map[string][]byte{}
		}
		key := mode + oreq.SerialNumber.String()
		if r.cache[key] == nil {
			r.cache[key] = r.Answer(map[string]string{"cached": "good", "backdated": "backdated"}[mode], oreq.SerialNumber, time.Now())
		}
		body = r.cache[key]
	}
	if mode == "presigned" {
		if body = r.presigned[oreq.SerialNumber.String()]; body == nil {
			mode = "http500" // not presigned
		}
	}
	maxAge := r.maxAge
	r.mu.Unlock()
	if body == nil {
		body = r.Answer(mode, oreq.SerialNumber, time.Now())
	}
	switch {
	case body == nil:
		http.Error(w, "internal server error", http.StatusInternalServerError)
		return
	case mode == "html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	default:
		w.Header().Set("Content-Type", "application/ocsp-response")
	}
	if maxAge > 0 {
		sum := sha256.Sum256(body)
		etag := fmt.Sprintf(`"%x"`, sum[:8])
		w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(maxAge.Seconds())))
		w.Header().Set("ETag", etag)
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		if req.Header.Get("If-None-Match") == etag {
			r.NotModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Write(body)
}

// RequestDER is the DER OCSP request of an HTTP request: GET with the URL-encoded base64
// request as the path (RFC 6960 appendix A.1), or POST.
func RequestDER(req *http.Request) ([]byte, error) {
	switch req.Method {
	case http.MethodPost:
		return io.ReadAll(io.LimitReader(req.Body, 64<<10))
	case http.MethodGet:
		enc, err := url.PathUnescape(strings.TrimPrefix(req.URL.EscapedPath(), "/"))
		if err != nil {
			return nil, err
		}
		return base64.StdEncoding.DecodeString(enc)
	}
	return nil, fmt.Errorf("method %s", req.Method)
}

// ParseRequest reads the OCSP request of an HTTP request.
func ParseRequest(req *http.Request) (*ocsp.Request, error) {
	der, err := RequestDER(req)
	if err != nil {
		return nil, err
	}
	return ocsp.ParseRequest(der)
}

// delegate is the responder certificate that signs every "delegated" answer, as a real
// delegated responder has one for thousands of responses; made at the first.
func (r *Responder) delegate(now time.Time) (*x509.Certificate, crypto.Signer) {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	if r.signer == nil {
		r.signer, r.signerKey = r.CA.Delegate(true, now.Add(-time.Hour), now.Add(30*24*time.Hour))
	}
	return r.signer, r.signerKey
}

// nth counts the answers about serial.
func (r *Responder) nth(serial *big.Int) int64 {
	r.seqMu.Lock()
	defer r.seqMu.Unlock()
	if r.seq == nil {
		r.seq = map[string]int64{}
	}
	r.seq[serial.String()]++
	return r.seq[serial.String()]
}

// Answer is the body the responder sends in mode about serial at now; nil means HTTP 500.
// Each good answer has a thisUpdate of its own, to the second (as HAProxy 2.6 shows it): two
// answers in the same second are told apart.
func (r *Responder) Answer(mode string, serial *big.Int, now time.Time) []byte {
	ca := r.CA
	this := now.Add(-time.Hour).Truncate(time.Second).Add(time.Duration(r.nth(serial)) * time.Second)
	next := now.Add(24 * time.Hour).Truncate(time.Second)
	switch mode {
	case "good":
		return ca.Respond(serial, ocsp.Good, this, next, nil, nil)
	case "revoked":
		return ca.Respond(serial, ocsp.Revoked, this, next, nil, nil)
	case "unknown":
		return ca.Respond(serial, ocsp.Unknown, this, next, nil, nil)
	case "tryLater":
		return ocsp.TryLaterErrorResponse
	case "internalError":
		return ocsp.InternalErrorErrorResponse
	case "unauthorized":
		return ocsp.UnauthorizedErrorResponse
	case "http500":
		return nil
	case "garbage":
		return []byte("this is not an OCSP response")
	case "html":
		return []byte("<html><body>Service unavailable</body></html>")
	case "empty":
		return []byte{}
	case "wrongSerial":
		return ca.Respond(new(big.Int).Add(serial, big.NewInt(1)), ocsp.Good, this, next, nil, nil)
	case "stranger":
		// Signed by another CA's key, claiming to come from ours.
		return must(ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{Status: ocsp.Good, SerialNumber: serial, ThisUpdate: this, NextUpdate: next}, r.Stranger.Key))
	case "older":
		return ca.Respond(serial, ocsp.Good, now.Add(-2*time.Hour), now.Add(time.Hour), nil, nil)
	case "farFuture":
		// Valid for ten years: only max_staple_age makes stapler ask again.
		return ca.Respond(serial, ocsp.Good, this, now.AddDate(10, 0, 0), nil, nil)
	case "huge":
		// Over 12 KB (a non-critical single extension of padding): too large for a command
		// on HAProxy's runtime API, not for its start-up.
		return must(ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{Status: ocsp.Good, SerialNumber: serial, ThisUpdate: this, NextUpdate: next,
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: must(asn1.Marshal(make([]byte, 12<<10)))}}}, ca.Key))
	case "expired":
		return ca.Respond(serial, ocsp.Good, now.Add(-48*time.Hour), now.Add(-time.Hour), nil, nil)
	case "backdated":
		// Produced 13 hours ago for a day: past its renewal point when served, as a CDN
		// serves a response it cached long ago.
		return ca.Respond(serial, ocsp.Good, now.Add(-13*time.Hour), now.Add(11*time.Hour), nil, nil)
	case "noNextUpdate":
		return ca.Respond(serial, ocsp.Good, this, time.Time{}, nil, nil)
	case "tooShort":
		return ca.Respond(serial, ocsp.Good, this, now.Add(4*time.Minute), nil, nil)
	case "future":
		return ca.Respond(serial, ocsp.Good, now.Add(time.Hour), now.Add(48*time.Hour), nil, nil)
	case "sha256":
		return must(ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{Status: ocsp.Good, SerialNumber: serial, ThisUpdate: this, NextUpdate: next, IssuerHash: crypto.SHA256}, ca.Key))
	case "delegated":
		c, k := r.delegate(now)
		return ca.Respond(serial, ocsp.Good, this, next, c, k)
	case "delegatedNoEKU":
		c, k := ca.Delegate(false, now.Add(-time.Hour), now.Add(30*24*time.Hour))
		return ca.Respond(serial, ocsp.Good, this, next, c, k)
	case "delegatedExpired":
		c, k := ca.Delegate(true, now.Add(-30*24*time.Hour), now.Add(-time.Hour))
		return ca.Respond(serial, ocsp.Good, this, next, c, k)
	case "delegatedNotYetValid":
		c, k := ca.Delegate(true, now.Add(time.Hour), now.Add(30*24*time.Hour))
		return ca.Respond(serial, ocsp.Good, this, next, c, k)
	case "twoSingles":
		return ca.TwoSingles(serial, now)
	}
	panic("unknown responder mode " + mode)
}
