package main

import (
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/ocspcheck"
)

// step is what a run does with one certificate file.
type step int

const (
	stepSkip        step = iota // holds no certificate and never did: not stapler's
	stepGone                    // held a certificate stapled before, and holds none now
	stepError                   // cannot be read or checked
	stepNoResponder             // names no OCSP responder: nothing to do
	stepNotCurrent              // expired or not yet valid: its staple is not judged
	stepKeep                    // nothing due: the staple on disk stands
	stepBackoff                 // backing off after failures, with no valid staple left
	stepFetch                   // due: ask the responder
	stepHAProxyCopy             // HAProxy's own ocsp-update holds a good staple: keep it on disk
)

// certPlan is what a run will do with one certificate file, and its state as the observation
// leaves it (Next: the state itself is changed only when the run records).
type certPlan struct {
	Obs    *fileObs
	Step   step
	Reason string // why it is due (stepFetch)
	Err    error  // stepError; stepNoResponder of a Must-Staple certificate
	// Next is the certificate's state as the run leaves it; nil for stepSkip and stepGone.
	// While the run changes nothing of it, it is the state's own entry (shared): a copy of
	// every entry is 70 MB at 100,000 certificates. Change it only through edit or own,
	// which make the plan's copy.
	Next   *CertState
	shared bool
	// Copy is HAProxy's copy to write to disk (stepHAProxyCopy), nil when the disk holds one
	// at least as new.
	Copy  *autoCopy
	Notes []note // what to tell the operator
}

// note is a log line the plan asks for: plans are pure, so they log nothing themselves.
type note struct {
	Level slog.Level
	Msg   string
	Attrs []any
}

func (p *certPlan) note(level slog.Level, msg string, attrs ...any) {
	p.Notes = append(p.Notes, note{level, msg, append([]any{"cert", p.Obs.File.Path}, attrs...)})
}

// planOptions are what plan needs besides the observation and the state.
type planOptions struct {
	// Debug: the plan notes what only debug messages say (a note per certificate up to
	// date was a tenth of a plan at 10,000 certificates, logged or not).
	Debug   bool
	Policy  policy
	Force   bool
	Only    bool     // the run is limited to some files: nothing is pruned
	Sockets []string // the HAProxy sockets of this run: what is pending at others is forgotten
}

// runPlan is the plan of a run.
type runPlan struct {
	Certs []*certPlan
	// Prune lists the state entries of certificates whose files are gone from a directory the
	// run read whole.
	Prune []string
}

// plan decides, at now, what to do with each certificate observed. It is a pure function of its
// inputs: it reads the state and changes nothing.
func plan(now time.Time, opt planOptions, obs *observation, state *State) runPlan {
	var rp runPlan
	seen := make(map[string]bool, len(obs.Files))
	rp.Certs = make([]*certPlan, len(obs.Files))
	parallel(len(obs.Files), runtime.GOMAXPROCS(0), func(i int) { rp.Certs[i] = planFile(now, opt, obs.Files[i]) })
	for _, o := range obs.Files {
		seen[o.File.Path] = true
	}
	if !opt.Only && obs.ScanErr == nil {
		for path := range state.Certificates {
			if !seen[path] && slices.ContainsFunc(obs.Scanned, func(dir string) bool { return within(path, dir) }) {
				rp.Prune = append(rp.Prune, path)
			}
		}
		slices.Sort(rp.Prune)
	}
	return rp
}

// within reports whether path lies in the directory dir.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..")
}

// planFile decides for one certificate file.
func planFile(now time.Time, opt planOptions, o *fileObs) *certPlan {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	p := decide(now, opt, o, s)
	switch {
	case p.Next == nil:
	case o.Old != nil && p.Step != stepFetch && p.Step != stepHAProxyCopy && p.Next.equal(o.Old):
		p.Next, p.shared = o.Old, true // nothing changed
	default:
		p.Next = p.Next.clone() // off the scratch
	}
	return p
}

// scratch is where decide works on a copy of a state entry: one per goroutine, used again
// from file to file, so that entries the plan does not change cost no copy.
type scratch struct {
	st     CertState
	staple Staple
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// copyOf copies the state entry old (nil: a new one) into the scratch.
func (s *scratch) copyOf(old *CertState) *CertState {
	s.st = CertState{}
	if old == nil {
		return &s.st
	}
	s.st = *old
	if old.Staple != nil {
		s.staple = *old.Staple
		s.st.Staple = &s.staple
	}
	s.st.Responders, s.st.Pending, s.st.Reload = slices.Clone(old.Responders), slices.Clone(old.Pending), slices.Clone(old.Reload)
	return &s.st
}

// own is the plan's own copy of Next, to change: made now if Next is the state's entry.
func (p *certPlan) own() *CertState {
	if p.shared {
		p.Next, p.shared = p.Next.clone(), false
	}
	return p.Next
}

// edit applies change to Next, making the plan's own copy only if change changes something.
func (p *certPlan) edit(change func(st *CertState)) {
	if !p.shared {
		change(p.Next)
		return
	}
	c := p.Next.clone()
	change(c)
	if !c.equal(p.Next) {
		p.Next, p.shared = c, false
	}
}

// decide decides for one certificate file, on a copy of its state entry in s.
func decide(now time.Time, opt planOptions, o *fileObs, s *scratch) *certPlan {
	p := &certPlan{Obs: o}
	switch {
	case o.NotCert && o.Named:
		p.Step, p.Err = stepError, errNotCertificate
		p.note(slog.LevelError, "cannot check certificate", "err", errNotCertificate)
		return p
	case o.NotCert && o.Old != nil:
		// Stapled before: HAProxy will refuse this file now, and its staple is stale.
		p.Step = stepGone
		p.Notes = append(p.Notes, note{slog.LevelWarn, "file no longer holds a PEM certificate", []any{"file", o.File.Path}})
		return p
	case o.NotCert:
		p.Step = stepSkip
		if opt.Debug {
			p.Notes = append(p.Notes, note{slog.LevelDebug, "skipping file without a PEM certificate", []any{"file", o.File.Path}})
		}
		return p
	case o.Err != nil:
		p.Step, p.Err = stepError, o.Err
		p.note(slog.LevelError, "cannot check certificate", "err", o.Err)
		return p
	}
	p.Next = s.copyOf(o.Old)
	if o.Changed {
		p.Next.certificate(o.Cert)
	}
	p.Next.certSeen(o.CertStat)
	st := p.Next
	gone := func(s string) bool { return !slices.Contains(opt.Sockets, s) }
	st.served(slices.DeleteFunc(st.Pending, gone), slices.DeleteFunc(st.Reload, gone))
	if o.Issuer.Checked && o.Issuer.Err != nil {
		p.Step, p.Err = stepError, o.Issuer.Err
		p.note(slog.LevelError, "cannot check certificate", "err", o.Issuer.Err)
		return p
	}
	if o.Issuer.Checked && !o.Issuer.Remove && o.Issuer.Write == nil {
		st.issuerChecked(o.Issuer.Stat, "")
	}
	switch {
	case !st.hasResponder() && st.MustStaple && st.certCurrent(now):
		p.Step, p.Err = stepNoResponder, errMustStapleNoResponder
		p.note(slog.LevelError, "cannot staple a Must-Staple certificate", "err", p.Err)
		return p
	case !st.hasResponder():
		p.Step = stepNoResponder
		if opt.Debug {
			p.note(slog.LevelDebug, "certificate has no OCSP responder")
		}
		return p
	case now.After(st.NotAfter):
		p.Step = stepNotCurrent
		p.note(slog.LevelWarn, "skipping expired certificate", "not_after", st.NotAfter)
		return p
	case now.Before(st.NotBefore):
		p.Step = stepNotCurrent
		p.note(slog.LevelWarn, "skipping certificate that is not valid yet", "not_before", st.NotBefore)
		return p
	}
	if o.File.Auto || len(o.Auto) > 0 {
		st.setUpdater("haproxy")
	} else {
		st.setUpdater("")
	}
	// A run limited to files named on its command line (a deploy hook's) is asked to staple
	// them now: without a valid staple, the back-off does not hold it.
	reason := opt.Policy.observeStaple(now, p, opt.Force, opt.Only)
	if !opt.Force && len(o.Auto) > 0 && opt.Policy.haproxyKeeps(now, p) {
		return p
	}
	switch {
	case reason != "":
		p.Step, p.Reason = stepFetch, reason
	case !st.validAt(now):
		// Backing off after failures, with nothing valid left to staple.
		p.Step = stepBackoff
		p.note(slog.LevelError, "no valid staple; backing off", "last_error", st.LastError, "failures", st.Failures, "retry_after", st.NextDue)
	default:
		p.Step = stepKeep
		if st.Staple.Status == "revoked" {
			p.note(slog.LevelError, "certificate is revoked", "revoked_at", st.Staple.RevokedAt, "serial", st.Serial)
		} else if opt.Debug {
			p.note(slog.LevelDebug, "staple is up to date", "next_due", st.NextDue)
		}
	}
	return p
}

// Reasons a staple is due.
const (
	dueForced   = "forced"
	dueNew      = "new certificate"
	dueChanged  = "certificate changed"
	dueMissing  = "no staple on disk"
	dueExpiring = "staple expires soon"
	dueRenew    = "renewal point passed"
	dueRetry    = "retrying after failure"
)

// observeStaple brings the planned state up to date with the staple file as observed, adopting
// a valid staple that someone else put there, and returns why the staple is due ("" when it is
// not). A staple file whose bytes are not the vouched staple's is never taken for it: its own
// validity counts.
func (pol policy) observeStaple(now time.Time, p *certPlan, force, named bool) string {
	o, st := p.Obs, p.Next
	s := o.Staple
	reason := ""
	switch {
	case s.Missing:
		st.seen("", "", "")
		reason = dueMissing
	case s.Err != nil:
		st.seen("", "", s.Err.Error())
		reason = "staple file cannot be read: " + s.Err.Error()
	case st.Staple != nil && s.Hash == st.Staple.Hash:
		st.seen(s.Stat, s.Hash, "")
	case s.Problem != "":
		st.seen(s.Stat, s.Hash, s.Problem)
		reason = "staple on disk is not valid: " + s.Problem
	case s.Resp.Status != ocsp.Good:
		st.seen(s.Stat, s.Hash, "it says "+ocspcheck.StatusName(s.Resp.Status))
		reason = "staple on disk says " + ocspcheck.StatusName(s.Resp.Status)
	default:
		found := newStaple(s.DER, s.Resp, o.issued.CertID, "")
		if st.Staple != nil && st.Staple.newerThan(found) {
			// A restored backup, or configuration management with an old copy: never go back.
			st.seen(s.Stat, s.Hash, "older than the last staple written")
			reason = "staple on disk is older than the last one written"
			break
		}
		// Someone else wrote a valid, good staple (another tool, a restored backup): keep it.
		st.vouch(found, s.Stat, now, false)
		st.schedule(pol.afterSuccess(now, found, time.Time{}))
		p.note(slog.LevelInfo, "adopted staple found on disk", "next_update", found.NextUpdate)
	}
	// A staple file that changed since stapler last saw it is dealt with at once, back-off or
	// not; one that was already wrong waits for the back-off like any failure. A certificate
	// new to stapler (a lost state, a directory added) or replaced by another is due unless
	// the staple beside it is a valid, good one for it, adopted above.
	news := o.Old == nil || s.Stat != o.Old.DiskStat || s.Missing != (o.Old.DiskHash == "")
	switch {
	case force:
		return dueForced
	case o.Old == nil && reason != "":
		return dueNew
	case o.Old != nil && o.Changed && (o.Old.Serial != st.Serial || o.Old.Issuer != st.Issuer) && reason != "":
		return dueChanged
	case reason != "" && news:
		return reason
	case st.Failures > 0 && now.Before(st.NextDue) && (!named || st.validAt(now)):
		return "" // backing off; NextDue is never later than the staple's urgent point
	case reason != "":
		return reason
	case st.Staple == nil || !st.Staple.Expiry().After(now.Add(minValidity(st.Staple.Window()))):
		return dueExpiring
	case st.Failures > 0:
		return dueRetry
	case !now.Before(st.NextDue):
		return dueRenew
	}
	return ""
}

// haproxyKeeps decides for a certificate that HAProxy's own ocsp-update keeps fresh. While
// HAProxy's copy is good (it verifies, HAProxy's updater is not failing, and it is not past its
// renewal point) stapler asks no responder, and keeps that copy in the staple file when it is
// newer than the disk's, so that every restart and reload of HAProxy, which keeps what it
// fetches in memory only, starts from it. It returns false when stapler must fetch as for any
// certificate.
func (pol policy) haproxyKeeps(now time.Time, p *certPlan) bool {
	st := p.Next
	var best *autoCopy
	var bestStaple *Staple
	for i, c := range p.Obs.Auto {
		if c.Update.Failing() {
			p.note(slog.LevelInfo, "HAProxy's ocsp-update is failing; stapler fetches the staple itself", "socket", c.Socket, "haproxy_says", c.Update.StatusText)
			return false
		}
		if c.DER == nil {
			continue
		}
		if c.Err != nil {
			p.note(slog.LevelWarn, "HAProxy holds a staple that stapler cannot verify", "socket", c.Socket, "err", c.Err)
			continue
		}
		s := c.staple(p.Obs.issued)
		if bestStaple == nil || s.newerThan(bestStaple) {
			best, bestStaple = &p.Obs.Auto[i], s
		}
	}
	if best == nil || !now.Before(pol.renewalPoint(bestStaple)) {
		return false
	}
	p.Step = stepHAProxyCopy
	if !st.validAt(now) || bestStaple.newerThan(st.Staple) {
		p.Copy = best
	}
	if p.keptStatus() == "revoked" {
		p.note(slog.LevelError, "certificate is revoked", "revoked_at", bestStaple.RevokedAt, "serial", st.Serial, "source", "HAProxy's ocsp-update")
	}
	st.schedule(pol.afterSuccess(now, bestStaple, time.Time{}))
	return true
}

// keptStatus is the status of the staple a stepKeep or stepHAProxyCopy leaves on disk: HAProxy's
// copy, when one is written, else the disk's.
func (p *certPlan) keptStatus() string {
	switch {
	case p.Copy != nil && p.Copy.Resp != nil:
		return ocspcheck.StatusName(p.Copy.Resp.Status)
	case p.Copy != nil && p.Copy.Vouched != nil:
		return p.Copy.Vouched.Status
	case p.Next.Staple != nil:
		return p.Next.Staple.Status
	}
	return ""
}

// equal reports whether a and b hold the same state, as reflect.DeepEqual would (a nil slice
// is not an empty one), at a twentieth of its cost: plan and apply compare every entry
// (1.4 us each through reflection). Times are equal when their representations are,
// Location pointer included, which is how entries copied from one another compare.
// TestCertStateEqual changes each field in turn: a field added to CertState or Staple and
// not compared here fails it.
func (a *CertState) equal(b *CertState) bool {
	if a == nil || b == nil {
		return a == b
	}
	sameStrings := func(x, y []string) bool { return (x == nil) == (y == nil) && slices.Equal(x, y) }
	return a.CertHash == b.CertHash && a.CertStat == b.CertStat && a.Subject == b.Subject && a.Serial == b.Serial &&
		a.Issuer == b.Issuer && a.NotBefore == b.NotBefore && a.NotAfter == b.NotAfter &&
		sameStrings(a.Responders, b.Responders) && a.MustStaple == b.MustStaple &&
		a.IssuerWritten == b.IssuerWritten && a.IssuerStat == b.IssuerStat && a.CertID == b.CertID &&
		a.IssuerInBundle == b.IssuerInBundle &&
		(a.Staple == nil) == (b.Staple == nil) && (a.Staple == nil || *a.Staple == *b.Staple) &&
		a.DiskStat == b.DiskStat && a.DiskHash == b.DiskHash && a.DiskProblem == b.DiskProblem &&
		a.NextDue == b.NextDue && a.Failures == b.Failures && a.FailingSince == b.FailingSince &&
		a.LastError == b.LastError && a.LastUpdate == b.LastUpdate && a.Updater == b.Updater &&
		sameStrings(a.Pending, b.Pending) && sameStrings(a.Reload, b.Reload) &&
		a.RevocationHandled == b.RevocationHandled
}

// clone copies a state entry; nil gives a new, empty one.
func (st *CertState) clone() *CertState {
	if st == nil {
		return &CertState{}
	}
	c := *st
	if st.Staple != nil {
		s := *st.Staple
		c.Staple = &s
	}
	c.Responders, c.Pending, c.Reload = slices.Clone(st.Responders), slices.Clone(st.Pending), slices.Clone(st.Reload)
	return &c
}
