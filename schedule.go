package main

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// urgentMargin: once the current staple has less than this left before its nextUpdate, a failed
// refresh is retried at every run, whatever the back-off says.
const urgentMargin = time.Hour

// policy decides when staples are refreshed. All its methods are pure functions of their inputs.
type policy struct {
	RenewAt   float64 // fraction of the validity window
	Spread    float64 // largest per-certificate advance, as a fraction of the window
	RetryBase time.Duration
	RetryMax  time.Duration
}

// renewalPoint is when a staple valid from this to next falls due: at RenewAt of its window,
// advanced by a fixed amount between 0 and Spread of the window that depends only on key, so
// that certificates refreshed together drift apart instead of falling due together forever.
func (p policy) renewalPoint(key string, this, next time.Time) time.Time {
	window := next.Sub(this)
	frac := p.RenewAt - p.Spread*spreadFraction(key)
	return this.Add(time.Duration(float64(window) * frac))
}

// spreadFraction maps key to a fixed number in [0, 1).
func spreadFraction(key string) float64 {
	sum := sha256.Sum256([]byte(key))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}

// afterSuccess is when a staple valid from this to next, fetched at now, is next due. A responder
// that serves pre-produced responses may hand out one already past its renewal point: then ask
// again after RetryBase rather than at every run.
func (p policy) afterSuccess(key string, now, this, next time.Time) time.Time {
	due := p.renewalPoint(key, this, next)
	if min := now.Add(p.RetryBase); due.Before(min) {
		due = min
	}
	return p.capped(due, next)
}

// afterFailure is when to try again after the given number of consecutive failures at now:
// RetryBase doubled per further failure, at most RetryMax, and never later than the point where
// the staple still on disk (valid until stapleNext, zero if none) becomes urgent.
func (p policy) afterFailure(now time.Time, failures int, stapleNext time.Time) time.Time {
	wait := p.RetryBase
	for i := 1; i < failures && wait < p.RetryMax; i++ {
		wait *= 2
	}
	wait = min(wait, p.RetryMax)
	return p.capped(now.Add(wait), stapleNext)
}

// capped moves due no later than the urgent point of a staple valid until next.
func (p policy) capped(due, next time.Time) time.Time {
	if next.IsZero() {
		return due
	}
	if urgent := next.Add(-urgentMargin); due.After(urgent) {
		return urgent
	}
	return due
}

// Reasons a staple is due; the empty reason means it is not.
const (
	dueForced     = "forced"
	dueNew        = "new certificate"
	dueChanged    = "certificate changed"
	dueMissing    = "no staple on disk"
	dueReplaced   = "staple on disk differs from the last one written"
	dueExpiring   = "staple expires soon"
	dueRenew      = "renewal point passed"
	dueRetry      = "retrying after failure"
	dueNotDue     = ""
	stapleMissing = ""
)

// dueReason decides whether the certificate whose file hashes to certHash, with a staple on disk
// hashing to stapleHash (stapleMissing when absent or unreadable), is due at now, given what the
// state recorded (nil for a certificate never seen).
func dueReason(now time.Time, st *CertState, certHash, stapleHash string, force bool) string {
	switch {
	case force:
		return dueForced
	case st == nil:
		return dueNew
	case st.Hash != certHash:
		return dueChanged
	case stapleHash == stapleMissing:
		return dueMissing
	case stapleHash != st.StapleHash:
		return dueReplaced
	case st.Failures > 0 && now.Before(st.NextDue):
		return dueNotDue // backing off; NextDue is never later than the staple's urgent point
	case !st.NextUpdate.After(now.Add(minValidity)):
		return dueExpiring
	case st.Failures > 0:
		return dueRetry
	case !now.Before(st.NextDue):
		return dueRenew
	}
	return dueNotDue
}
