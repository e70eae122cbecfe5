package main

import (
	"errors"
	"slices"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/ocspcheck"
)

// CertState is what stapler knows of one certificate file between runs, keyed by its path.
// Every change to it is a method below, and every command reads it through the judgements
// below (verdict, validAt, onDisk): run, status, check and the metrics cannot disagree.
type CertState struct {
	// The certificate: the hash of its file's CERTIFICATE blocks (never of a key) and what
	// stapler read of it when that hash last changed.
	CertHash   string    `json:"cert_hash"`
	CertStat   string    `json:"cert_stat,omitempty"` // stat mark of the file when CertHash was taken
	Subject    string    `json:"subject"`             // first DNS name, else common name
	Serial     string    `json:"serial"`              // hex
	Issuer     string    `json:"issuer"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	Responders []string  `json:"responders,omitempty"` // its OCSP URLs, in order; none: no responder
	MustStaple bool      `json:"must_staple,omitempty"`
	// IssuerWritten is the SHA-256 of the issuer file stapler wrote (one it may replace);
	// IssuerStat the stat fingerprint of the issuer file it last checked.
	IssuerWritten string `json:"issuer_written,omitempty"`
	IssuerStat    string `json:"issuer_stat,omitempty"`
	// CertID is the hex DER CertID of the certificate with the issuer stapler found for it,
	// and IssuerInBundle says that the file's own chain holds that issuer: both about the
	// certificates that hash to CertHash. A refresh of an unchanged file that holds its
	// issuer makes its request from them, without reading the file.
	CertID         string `json:"cert_id,omitempty"`
	IssuerInBundle bool   `json:"issuer_in_bundle,omitempty"`

	// Staple is the staple stapler vouches for: the last one it fetched, or verified on disk or
	// in HAProxy and adopted. Nil when there is none.
	Staple *Staple `json:"staple,omitempty"`
	// The staple file as stapler last saw it: its stat fingerprint (size, mtime, inode), the
	// hash of its bytes, and, when those are not Staple's, why they are not a valid staple
	// ("" when stapler has not verified them yet). The file holds the vouched staple only when
	// DiskHash is Staple.Hash.
	DiskStat    string `json:"disk_stat,omitempty"`
	DiskHash    string `json:"disk_hash,omitempty"`
	DiskProblem string `json:"disk_problem,omitempty"`

	// The schedule.
	NextDue      time.Time `json:"next_due,omitzero"`
	Failures     int       `json:"failures,omitempty"` // consecutive failed refreshes
	FailingSince time.Time `json:"failing_since,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	LastUpdate   time.Time `json:"last_update,omitzero"` // last successful fetch

	// HAProxy: who keeps the staple fresh ("haproxy" for HAProxy's own ocsp-update, ""
	// for stapler), the sockets that do not serve it (Pending), and those of them where only
	// a reload helps and that is a problem (Reload).
	Updater string   `json:"updater,omitempty"`
	Pending []string `json:"pending_push,omitempty"`
	Reload  []string `json:"needs_reload,omitempty"`

	// RevocationHandled is the serial of the certificate whose revocation revoked_command
	// ran for.
	RevocationHandled string `json:"revocation_handled,omitempty"`
}

// Staple is a response stapler verified: as HAProxy will take it, signature included.
type Staple struct {
	Hash       string    `json:"hash"`    // SHA-256 of the DER
	CertID     string    `json:"cert_id"` // hex DER CertID: HAProxy's key for it
	Status     string    `json:"status"`  // good or revoked
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	ProducedAt time.Time `json:"produced_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	// RevokedReason is RFC 5280's name of the revocation reason (unspecified when none given).
	RevokedReason string `json:"revoked_reason,omitempty"`
	// SignerNotAfter is when the delegated responder certificate that signed it expires:
	// clients that check the staple reject it from then on. Zero when the issuer signed it.
	SignerNotAfter time.Time `json:"signer_not_after,omitzero"`
	Responder      string    `json:"responder,omitempty"` // the URL that answered; "" when adopted
	// ETag and LastModified are how that responder's HTTP server named its answer, for
	// conditional requests.
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// newStaple records a response that passed ocspcheck.
func newStaple(der []byte, r *ocspcheck.Response, certID []byte, responder string) *Staple {
	s := &Staple{
		Hash: hashBytes(der), CertID: hexString(certID), Status: ocspcheck.StatusName(r.Status),
		ThisUpdate: r.ThisUpdate, NextUpdate: r.NextUpdate, ProducedAt: r.ProducedAt, RevokedAt: r.RevokedAt,
		SignerNotAfter: r.SignerNotAfter, Responder: responder,
	}
	if r.Status == ocsp.Revoked {
		s.RevokedReason = ocspcheck.ReasonName(r.RevocationReason)
	}
	return s
}

// Expiry is when the staple stops being worth stapling: its nextUpdate, or its delegated
// signer's expiry if that comes first.
func (s *Staple) Expiry() time.Time {
	if !s.SignerNotAfter.IsZero() && s.SignerNotAfter.Before(s.NextUpdate) {
		return s.SignerNotAfter
	}
	return s.NextUpdate
}

// recheck checks at now a staple that stapler verified before, as Check and tooSoon would
// check its response now: its bytes, their signature and their issuer do not change, its times
// do (a signer that has expired makes tooSoon refuse it).
func (s *Staple) recheck(now time.Time) error {
	if err := ocspcheck.CheckTimes(s.ThisUpdate, s.NextUpdate, now); err != nil {
		return err
	}
	return s.tooSoon(now)
}

// Window is the staple's validity window, thisUpdate to its expiry.
func (s *Staple) Window() time.Duration { return s.Expiry().Sub(s.ThisUpdate) }

// newerThan orders two responses for one certificate: a later thisUpdate, then a later
// producedAt (to the second, as responders give them). A later nextUpdate alone never makes a
// response newer. Of two from the same second, one that says revoked wins over one that does
// not: a revocation is never hidden.
func (s *Staple) newerThan(o *Staple) bool {
	if o == nil {
		return true
	}
	if c := compareResponses(s.ThisUpdate, s.ProducedAt, o.ThisUpdate, o.ProducedAt); c != 0 {
		return c > 0
	}
	return s.Status == "revoked" && o.Status != "revoked"
}

// --- Judgements. Every command reads a certificate's state through these.

// hasResponder reports whether the certificate names an OCSP responder.
func (st *CertState) hasResponder() bool { return len(st.Responders) > 0 }

// onDisk reports whether the staple file holds the staple stapler vouches for.
func (st *CertState) onDisk() bool { return st.Staple != nil && st.DiskHash == st.Staple.Hash }

// validAt reports whether the staple on disk is still worth stapling at now: HAProxy stops
// stapling a response 300 s before it expires.
func (st *CertState) validAt(now time.Time) bool {
	return st.onDisk() && now.Before(st.Staple.Expiry().Add(-haproxyMargin))
}

// certCurrent reports whether the certificate itself is valid at now; stapler does not judge
// the staples of others.
func (st *CertState) certCurrent(now time.Time) bool {
	return !now.Before(st.NotBefore) && !now.After(st.NotAfter)
}

// verdict is what every command says of a certificate at now.
type verdict struct {
	// Staple: good or revoked (a valid staple on disk), none (no valid staple), unchecked
	// (the file changed since stapler last verified it), no_responder.
	Staple string
	// Cert: "" while valid, else expired or not_yet_valid: its staple is not judged.
	Cert string
	// Left is how long the staple on disk stays valid (until its expiry); zero unless good or
	// revoked. Window is its validity window.
	Left, Window time.Duration
	Why          string   // why there is no valid staple, for people
	Pending      []string // sockets that do not serve it
	Reload       []string // sockets where only a reload helps, and that is a problem
	Failing      bool     // the last refreshes failed
	Updater      string   // stapler or haproxy; "" without a responder
	// MustStaple: the certificate demands a staple (RFC 7633). Without a valid one, clients
	// that enforce it refuse the site; so does one without a responder.
	MustStaple bool
}

// verdict judges the certificate at now, the staple file as last seen.
func (st *CertState) verdict(now time.Time) verdict {
	v := verdict{Pending: slices.Clone(st.Pending), Reload: slices.Clone(st.Reload), Failing: st.Failures > 0, MustStaple: st.MustStaple}
	switch {
	case now.After(st.NotAfter):
		v.Cert = "expired"
	case now.Before(st.NotBefore):
		v.Cert = "not_yet_valid"
	}
	if !st.hasResponder() {
		v.Staple = "no_responder"
		if st.MustStaple {
			v.Why = errMustStapleNoResponder.Error()
		}
		return v
	}
	v.Updater = "stapler"
	if st.Updater != "" {
		v.Updater = st.Updater
	}
	switch {
	case st.DiskHash == "":
		v.Staple, v.Why = "none", "no staple on disk"
	case st.Staple != nil && !st.onDisk() && st.DiskProblem == "":
		v.Staple, v.Why = "unknown", "staple file changed since stapler verified it"
	case st.Staple == nil && st.DiskProblem == "":
		v.Staple, v.Why = "unknown", "not checked yet"
	case !st.onDisk():
		v.Staple, v.Why = "none", "staple on disk is not valid: "+st.DiskProblem
	case !st.validAt(now):
		v.Staple, v.Why = "none", "staple expired"
	default:
		v.Staple = st.Staple.Status
		v.Left, v.Window = st.Staple.Expiry().Sub(now), st.Staple.Window()
	}
	if st.LastError != "" && v.Why == "" {
		v.Why = st.LastError
	}
	return v
}

// problem reports whether the verdict breaks stapler's promise (exit status 0: every
// certificate with a responder has a valid, good staple on disk and in every HAProxy).
// Expired and not yet valid certificates are not judged.
func (v verdict) problem() bool {
	switch {
	case v.Cert != "":
		return false
	case v.Staple == "no_responder":
		return v.MustStaple
	}
	return v.Staple != "good" || len(v.Pending) > 0 || len(v.Reload) > 0
}

// errMustStapleNoResponder is the problem of a Must-Staple certificate without a responder.
var errMustStapleNoResponder = errors.New("the certificate demands a staple (Must-Staple) but names no OCSP responder: clients that enforce Must-Staple refuse it; replace it with a certificate without Must-Staple or from a CA that runs OCSP")

// --- Transitions. Nothing else changes a CertState.

// certificate records what stapler read of the certificate file. A new certificate (another
// serial or issuer) makes the vouched staple, which was about the old one, none.
func (st *CertState) certificate(c *certInfo) {
	if st.Serial != c.Serial || st.Issuer != c.IssuerName {
		st.Staple, st.DiskProblem = nil, ""
		st.Failures, st.FailingSince, st.LastError, st.NextDue = 0, time.Time{}, "", time.Time{}
		st.Pending, st.Reload = nil, nil
	}
	st.CertHash, st.Subject, st.Serial, st.Issuer = c.Hash, c.Subject, c.Serial, c.IssuerName
	st.NotBefore, st.NotAfter, st.Responders, st.MustStaple = c.NotBefore, c.NotAfter, c.Responders, c.MustStaple
	st.CertID, st.IssuerInBundle = "", false // until its issuer is found again
}

// issued records the CertID of the certificate with the issuer found for it in this run, and
// whether the file's chain holds that issuer.
func (st *CertState) issued(certID []byte, inBundle bool) {
	st.CertID, st.IssuerInBundle = hexString(certID), inBundle
}

// certSeen records the stat mark of the certificate file whose certificates hash to CertHash.
func (st *CertState) certSeen(stat string) { st.CertStat = stat }

// seen records the staple file as it is now: its fingerprint and hash, and why its bytes are
// not a valid staple when they are not the vouched staple's ("" when not verified).
func (st *CertState) seen(stat, hash, problem string) {
	st.DiskStat, st.DiskHash, st.DiskProblem = stat, hash, problem
	if st.onDisk() {
		st.DiskProblem = ""
	}
}

// vouch makes s, now on disk with that fingerprint, the staple stapler vouches for: fetched
// (fetched true: the failures end), or found valid on disk or in HAProxy and adopted.
func (st *CertState) vouch(s *Staple, stat string, now time.Time, fetched bool) {
	st.Staple = s
	st.seen(stat, s.Hash, "")
	if fetched {
		st.LastUpdate = now
		st.succeeded()
	}
}

// named records how the responder's HTTP server names the vouched staple (ETag,
// Last-Modified), for the next conditional request.
func (st *CertState) named(etag, lastModified string) {
	if st.Staple != nil {
		st.Staple.ETag, st.Staple.LastModified = etag, lastModified
	}
}

// succeeded ends a run of failures: the responder answered, new or not.
func (st *CertState) succeeded() { st.Failures, st.FailingSince, st.LastError = 0, time.Time{}, "" }

// failed records a failed refresh at now.
func (st *CertState) failed(err error, now time.Time) {
	if st.Failures == 0 {
		st.FailingSince = now
	}
	st.Failures++
	st.LastError = err.Error()
}

// schedule sets when the staple is next due.
func (st *CertState) schedule(due time.Time) { st.NextDue = due }

// served records what the HAProxy sockets did with the staple: those that do not serve it,
// and those where only a reload helps.
func (st *CertState) served(pending, reload []string) {
	st.Pending, st.Reload = pending, reload
}

// reloaded records that reload_command ran: HAProxy reads the staple from disk again.
func (st *CertState) reloaded() { st.Pending, st.Reload = nil, nil }

// issuerChecked records the issuer file as checked (stat fingerprint), and the hash of the
// one stapler wrote, if it wrote one ("" keeps what was known; "-" forgets it).
func (st *CertState) issuerChecked(stat, written string) {
	st.IssuerStat = stat
	switch written {
	case "":
	case "-":
		st.IssuerWritten = ""
	default:
		st.IssuerWritten = written
	}
}

// revocationHandled records that revoked_command ran for the revocation of the certificate
// with that serial.
func (st *CertState) revocationHandled(key string) { st.RevocationHandled = key }

// setUpdater records who keeps the staple fresh.
func (st *CertState) setUpdater(u string) { st.Updater = u }
