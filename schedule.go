package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"stapler/internal/ocspcheck"
)

// Margins. Each is the fixed value for ordinary windows (hours to days), and scales down with
// a staple's useful life where the fixed value would not fit, so that any window works, from
// HAProxy's minimum to the ten days the Baseline Requirements allow (README, When a staple is refreshed).
const (
	// haproxyMargin: HAProxy stops stapling a response 300 s before its nextUpdate, and 3.2+
	// refuse one with less left.
	haproxyMargin = ocspcheck.HAProxyMargin
	// spareValidity: a new response must stay valid for HAProxy's margin and this long (a
	// quarter of its useful life when that is shorter) to be worth writing.
	spareValidity = 5 * time.Minute
	// urgentMargin: once the staple on disk has less than this left (HAProxy's margin and a
	// quarter of its useful life when that is shorter), a failed refresh is retried at every
	// run, whatever the back-off says.
	urgentMargin = time.Hour
)

// usefulLife is how long HAProxy staples a response: from its thisUpdate to HAProxy's margin
// before its expiry (nextUpdate, or its delegated signer's end if earlier).
func usefulLife(s *Staple) time.Duration { return max(0, s.Window()-haproxyMargin) }

// minValidity is how much validity a new response with that window must have left to be
// worth writing.
func minValidity(window time.Duration) time.Duration {
	return haproxyMargin + min(spareValidity, max(0, window-haproxyMargin)/4)
}

// tooSoon says why a verified response is not worth writing at now because it expires too
// soon, or returns nil.
func tooSoon(r *ocspcheck.Response, now time.Time) error {
	return (&Staple{ThisUpdate: r.ThisUpdate, NextUpdate: r.NextUpdate, SignerNotAfter: r.SignerNotAfter}).tooSoon(now)
}

// tooSoon is the package's tooSoon for a response recorded as s.
func (s *Staple) tooSoon(now time.Time) error {
	if !s.Expiry().Before(now.Add(minValidity(s.Window()))) {
		return nil
	}
	if s.Expiry().Before(s.NextUpdate) {
		return fmt.Errorf("the responder certificate that signed the response expires at %s, too soon to staple (HAProxy stops %v before)", s.Expiry().Format(time.RFC3339), haproxyMargin)
	}
	return fmt.Errorf("response expires at %s, too soon to staple (HAProxy stops %v before nextUpdate)", s.NextUpdate.Format(time.RFC3339), haproxyMargin)
}

// policy decides when staples are refreshed. All its methods are pure functions of their
// inputs.
type policy struct {
	RenewAt   float64 // fraction of the staple's useful life
	Spread    float64 // largest per-certificate advance, as a fraction of the useful life
	RetryBase time.Duration
	RetryMax  time.Duration
	// MaxAge: a staple is refreshed at least this long after its thisUpdate, whatever its
	// nextUpdate says (CAs under the Baseline Requirements publish a new response within 4
	// days), so that a revocation is learnt in time.
	MaxAge time.Duration
}

// spreadFraction maps key to a fixed number in [0, 1).
func spreadFraction(key string) float64 {
	sum := sha256.Sum256([]byte(key))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}

// renewalPoint is when a staple falls due: at RenewAt of its useful life, or MaxAge after its
// thisUpdate if that comes first, advanced by a fixed share of that interval (up to
// Spread/RenewAt of it: Spread of the useful life when that decides) that depends only on the
// certificate (its CertID: issuer and serial), so that certificates refreshed together drift
// apart instead of falling due together forever, while every host of a fleet that serves the
// same certificate asks for it at the same time, and a shared HTTP cache answers all but one.
func (p policy) renewalPoint(s *Staple) time.Time {
	interval := time.Duration(float64(usefulLife(s)) * p.RenewAt)
	if p.MaxAge > 0 {
		interval = min(interval, p.MaxAge)
	}
	advance := time.Duration(float64(interval) * p.Spread / p.RenewAt * spreadFraction(s.CertID))
	return s.ThisUpdate.Add(interval - advance)
}

// urgentPoint is when the staple on disk has so little left that a failed refresh is retried
// at every run: an hour before its expiry, or for a short one HAProxy's margin and a quarter
// of its useful life before.
func (p policy) urgentPoint(s *Staple) time.Time {
	return s.Expiry().Add(-min(urgentMargin, haproxyMargin+usefulLife(s)/4))
}

// retryWaits are the first wait after a failure and the longest one, for a staple with that
// useful life (0: none on disk): RetryBase and RetryMax, at most an eighth and a third of it.
func (p policy) retryWaits(life time.Duration) (base, most time.Duration) {
	base, most = p.RetryBase, p.RetryMax
	if life > 0 {
		base, most = min(base, max(life/8, time.Second)), min(most, max(life/3, time.Second))
	}
	return base, most
}

// afterSuccess is when a staple fetched (or kept) at now is next due. A responder that serves
// pre-produced responses may hand out one already past its renewal point: then ask again
// after the first retry wait rather than at every run. cacheUntil is when the responder's HTTP
// cache may have something newer (zero: no word): asking before then gets the same answer.
// Neither delays the refresh past the urgent point.
func (p policy) afterSuccess(now time.Time, s *Staple, cacheUntil time.Time) time.Time {
	base, _ := p.retryWaits(usefulLife(s))
	due := latest(latest(p.renewalPoint(s), now.Add(base)), cacheUntil)
	return earliest(due, p.urgentPoint(s))
}

// afterFailure is when to try again after the given number of consecutive failures at now:
// the first retry wait doubled per further failure, at most the longest one, and never later
// than the point where the staple on disk (nil if none) becomes urgent.
func (p policy) afterFailure(now time.Time, failures int, onDisk *Staple) time.Time {
	var life time.Duration
	if onDisk != nil {
		life = usefulLife(onDisk)
	}
	wait, most := p.retryWaits(life)
	for i := 1; i < failures && wait < most; i++ {
		wait *= 2
	}
	due := now.Add(min(wait, most))
	if onDisk != nil {
		due = earliest(due, p.urgentPoint(onDisk))
	}
	return due
}

// compareResponses orders two responses for one certificate by thisUpdate, then producedAt,
// to the second (HAProxy 2.6 shows them so): newer is never a later nextUpdate.
func compareResponses(thisA, producedA, thisB, producedB time.Time) int {
	if c := thisA.Truncate(time.Second).Compare(thisB.Truncate(time.Second)); c != 0 {
		return c
	}
	if producedA.IsZero() || producedB.IsZero() {
		return 0
	}
	return producedA.Truncate(time.Second).Compare(producedB.Truncate(time.Second))
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
