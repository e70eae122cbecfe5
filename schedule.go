package main

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

const (
	// haproxyMargin: HAProxy stops stapling a response 300 s before its nextUpdate, and 3.2+
	// refuse one with less left.
	haproxyMargin = 300 * time.Second
	// minValidity is how much validity a new response must have left to be worth writing:
	// HAProxy's margin plus time for HAProxy to serve it.
	minValidity = haproxyMargin + 5*time.Minute
	// urgentMargin: once the staple on disk has less than this left, a failed refresh is
	// retried at every run, whatever the back-off says.
	urgentMargin = time.Hour
)

// policy decides when staples are refreshed. All its methods are pure functions of their
// inputs.
type policy struct {
	RenewAt   float64 // fraction of the validity window
	Spread    float64 // largest per-certificate advance, as a fraction of the window
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

// renewalPoint is when a staple falls due: at RenewAt of its window, or MaxAge after its
// thisUpdate if that comes first, advanced by a fixed share of that interval (up to
// Spread/RenewAt of it: Spread of the window when the window decides) that depends only on key,
// so that certificates refreshed together drift apart instead of falling due together forever.
// The window ends at the staple's expiry (its nextUpdate, or its delegated signer's end if
// earlier).
func (p policy) renewalPoint(key string, s *Staple) time.Time {
	interval := time.Duration(float64(s.Window()) * p.RenewAt)
	if p.MaxAge > 0 {
		interval = min(interval, p.MaxAge)
	}
	advance := time.Duration(float64(interval) * p.Spread / p.RenewAt * spreadFraction(key))
	return s.ThisUpdate.Add(interval - advance)
}

// urgentPoint is when the staple on disk has so little left that a failed refresh is retried
// at every run.
func (p policy) urgentPoint(s *Staple) time.Time { return s.Expiry().Add(-urgentMargin) }

// afterSuccess is when a staple fetched (or kept) at now is next due. A responder that serves
// pre-produced responses may hand out one already past its renewal point: then ask again after
// RetryBase rather than at every run.
func (p policy) afterSuccess(key string, now time.Time, s *Staple) time.Time {
	due := latest(p.renewalPoint(key, s), now.Add(p.RetryBase))
	return earliest(due, p.urgentPoint(s))
}

// afterFailure is when to try again after the given number of consecutive failures at now:
// RetryBase doubled per further failure, at most RetryMax, and never later than the point where
// the staple on disk (nil if none) becomes urgent.
func (p policy) afterFailure(now time.Time, failures int, onDisk *Staple) time.Time {
	wait := p.RetryBase
	for i := 1; i < failures && wait < p.RetryMax; i++ {
		wait *= 2
	}
	due := now.Add(min(wait, p.RetryMax))
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
