package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

var testPolicy = policy{RenewAt: 0.5, Spread: 0.1, RetryBase: 5 * time.Minute, RetryMax: 6 * time.Hour, MaxAge: 96 * time.Hour}

// staple is a staple valid from this to next, for the scheduling tests.
func staple(this, next time.Time) *Staple { return &Staple{ThisUpdate: this, NextUpdate: next} }

func TestRenewalPoint(t *testing.T) {
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	next := this.Add(100 * time.Hour)
	half := (100*time.Hour - haproxyMargin) / 2 // half of the useful life
	spread := map[time.Time]bool{}
	for i := range 200 {
		s := staple(this, next)
		s.CertID = fmt.Sprintf("3041300906052b0e03021a05000414%040x", i) // one certificate each
		got := testPolicy.renewalPoint(s)
		if got.Before(this.Add(half*4/5)) || got.After(this.Add(half)) {
			t.Fatalf("%s: renewal point %v is outside %v to %v into the window", s.CertID, got.Sub(this), half*4/5, half)
		}
		// Another host, another path, another fetch: the same certificate falls due at the
		// same time, so that a fleet's shared cache answers all but the first.
		again := staple(this, next)
		again.CertID = s.CertID
		if other := testPolicy.renewalPoint(again); !other.Equal(got) {
			t.Fatalf("%s: renewal point moved from %v to %v", s.CertID, got, other)
		}
		spread[got.Truncate(time.Hour)] = true
	}
	if len(spread) < 8 {
		t.Errorf("200 certificates fall due in only %d distinct hours of 10", len(spread))
	}
	noSpread := policy{RenewAt: 0.5}
	if got := noSpread.renewalPoint(staple(this, next)); !got.Equal(this.Add(half)) {
		t.Errorf("without spread: %v, want half-way through the useful life", got.Sub(this))
	}
}

// TestWindows: the schedule of a fresh response, for windows from HAProxy's minimum to the
// Baseline Requirements' maximum (the table in the README, When a staple is refreshed, comes from here).
// Without spread, so that the points are exact; the spread only brings the refresh earlier.
func TestWindows(t *testing.T) {
	pol := testPolicy
	pol.Spread = 0
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		window              time.Duration
		refresh, urgent     time.Duration // after thisUpdate
		minLeft             time.Duration // that a new response must have
		retryBase, retryMax time.Duration
	}{
		{10 * time.Minute, 150 * time.Second, 225 * time.Second, 375 * time.Second, 37500 * time.Millisecond, 100 * time.Second},
		{time.Hour, 27*time.Minute + 30*time.Second, 41*time.Minute + 15*time.Second, 10 * time.Minute, 5 * time.Minute, 18*time.Minute + 20*time.Second},
		{24 * time.Hour, 11*time.Hour + 57*time.Minute + 30*time.Second, 23 * time.Hour, 10 * time.Minute, 5 * time.Minute, 6 * time.Hour},
		{7 * 24 * time.Hour, 3*24*time.Hour + 11*time.Hour + 57*time.Minute + 30*time.Second, 7*24*time.Hour - time.Hour, 10 * time.Minute, 5 * time.Minute, 6 * time.Hour},
		{10 * 24 * time.Hour, 4 * 24 * time.Hour, 10*24*time.Hour - time.Hour, 10 * time.Minute, 5 * time.Minute, 6 * time.Hour},
	} {
		s := staple(this, this.Add(tt.window))
		if got := pol.renewalPoint(s).Sub(this); got != tt.refresh {
			t.Errorf("%v window: refreshed %v after thisUpdate, want %v", tt.window, got, tt.refresh)
		}
		if got := pol.urgentPoint(s).Sub(this); got != tt.urgent {
			t.Errorf("%v window: urgent %v after thisUpdate, want %v", tt.window, got, tt.urgent)
		}
		if got := minValidity(tt.window); got != tt.minLeft {
			t.Errorf("%v window: a new response needs %v left, want %v", tt.window, got, tt.minLeft)
		}
		if base, most := pol.retryWaits(usefulLife(s)); base != tt.retryBase || most != tt.retryMax {
			t.Errorf("%v window: retries after %v, at most %v; want %v, %v", tt.window, base, most, tt.retryBase, tt.retryMax)
		}
		// A run right after the refresh asks nothing: the next one is due at the renewal point.
		if got := pol.afterSuccess(this, s, time.Time{}).Sub(this); got != tt.refresh {
			t.Errorf("%v window: fetched at thisUpdate, due %v later, want %v", tt.window, got, tt.refresh)
		}
		if tt.refresh >= tt.urgent || tt.urgent >= tt.window-haproxyMargin {
			t.Errorf("%v window: refresh %v, urgent %v, HAProxy stops at %v: out of order", tt.window, tt.refresh, tt.urgent, tt.window-haproxyMargin)
		}
	}
}

func TestAfterSuccess(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		this, next time.Time
		cache      time.Time // the responder's HTTP cache
		want       time.Time
	}{
		{"fresh 4-day response", now, now.Add(96 * time.Hour), time.Time{}, testPolicy.renewalPoint(staple(now, now.Add(96*time.Hour)))},
		{"pre-produced response past its renewal point", now.Add(-80 * time.Hour), now.Add(16 * time.Hour), time.Time{}, now.Add(5 * time.Minute)},
		{"... served from a cache for another hour", now.Add(-80 * time.Hour), now.Add(16 * time.Hour), now.Add(time.Hour), now.Add(time.Hour)},
		{"... whose max-age outlasts the urgent point", now.Add(-80 * time.Hour), now.Add(16 * time.Hour), now.Add(20 * time.Hour), now.Add(15 * time.Hour)},
		{"fresh response, short max-age", now, now.Add(24 * time.Hour), now.Add(time.Hour), testPolicy.renewalPoint(staple(now, now.Add(24*time.Hour)))},
		{"one-hour response, 40 minutes old", now.Add(-40 * time.Minute), now.Add(20 * time.Minute), time.Time{}, now.Add(75 * time.Second)},
	}
	for _, tt := range tests {
		if got := testPolicy.afterSuccess(now, staple(tt.this, tt.next), tt.cache); !got.Equal(tt.want) {
			t.Errorf("%s: due at %v, want %v", tt.name, got.Sub(now), tt.want.Sub(now))
		}
	}
}

func TestAfterFailure(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	week := 7 * 24 * time.Hour
	tests := []struct {
		name       string
		failures   int
		this, next time.Duration // the staple on disk, from now; both zero: none
		want       time.Duration
	}{
		{"first", 1, -time.Hour, week, 5 * time.Minute},
		{"second", 2, -time.Hour, week, 10 * time.Minute},
		{"third", 3, -time.Hour, week, 20 * time.Minute},
		{"seventh", 7, -time.Hour, week, 320 * time.Minute},
		{"retry_max", 8, -time.Hour, week, 6 * time.Hour},
		{"many", 1000, -time.Hour, week, 6 * time.Hour},
		{"no staple at all", 1, 0, 0, 5 * time.Minute},
		{"never past the urgent point", 1000, -20 * time.Hour, 4 * time.Hour, 3 * time.Hour},
		{"urgent point passed", 1000, -20 * time.Hour, 30 * time.Minute, -30 * time.Minute},
		// A 4-hour window: retries wait at most a third of its useful life (3 h 55 m).
		{"short window", 8, -time.Hour, 3 * time.Hour, 78*time.Minute + 20*time.Second},
		// A one-hour window: an eighth of its 55 useful minutes is more than 5 minutes, a third
		// is 18 m 20 s; its urgent point, 41 m 15 s after its thisUpdate, comes later.
		{"one-hour window", 3, 0, time.Hour, 18*time.Minute + 20*time.Second},
	}
	for _, tt := range tests {
		var onDisk *Staple
		if tt.next != 0 {
			onDisk = staple(now.Add(tt.this), now.Add(tt.next))
		}
		if got := testPolicy.afterFailure(now, tt.failures, onDisk).Sub(now); got != tt.want {
			t.Errorf("%s: after %d failures wait %v, want %v", tt.name, tt.failures, got, tt.want)
		}
	}
}

// TestRenewalPointMaxAge: a staple whose nextUpdate is far away is still refreshed within
// max_staple_age of its thisUpdate (bug: one response valid for ten years froze the staple).
func TestRenewalPointMaxAge(t *testing.T) {
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		next time.Time
		max  time.Duration // at the latest, after thisUpdate
	}{
		{"ten years", this.AddDate(10, 0, 0), 96 * time.Hour},
		{"ten days", this.Add(240 * time.Hour), 96 * time.Hour},
		{"one day", this.Add(24 * time.Hour), 12 * time.Hour},
	} {
		got := testPolicy.renewalPoint(staple(this, tt.next))
		if got.After(this.Add(tt.max)) || got.Before(this) {
			t.Errorf("%s: due %v after thisUpdate, want at most %v", tt.name, got.Sub(this), tt.max)
		}
	}
}

// TestSignerCapsRenewal: the renewal point and the urgent point follow the staple's expiry,
// its delegated signer's end when that comes before nextUpdate.
func TestSignerCapsRenewal(t *testing.T) {
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := &Staple{ThisUpdate: this, NextUpdate: this.Add(10 * time.Hour), SignerNotAfter: this.Add(2 * time.Hour)}
	if got := s.Expiry(); !got.Equal(this.Add(2 * time.Hour)) {
		t.Fatalf("expiry %v, want the signer's end", got)
	}
	if got := testPolicy.renewalPoint(s); got.After(this.Add(time.Hour)) {
		t.Errorf("renewal point %v after thisUpdate, want at most half of the signer's 2 h", got.Sub(this))
	}
	// The signer's 2 h window leaves 1 h 55 m of useful life: urgent HAProxy's 5 minutes and a
	// quarter of that before the signer's end.
	if got := testPolicy.urgentPoint(s); !got.Equal(this.Add(2*time.Hour - 5*time.Minute - 115*time.Minute/4)) {
		t.Errorf("urgent point %v after thisUpdate, want 1h26m15s", got.Sub(this))
	}
}

// TestNewerThan: which of two responses for one certificate is newer.
func TestNewerThan(t *testing.T) {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	s := func(this, produced time.Time, next time.Duration, status string) *Staple {
		return &Staple{ThisUpdate: this, ProducedAt: produced, NextUpdate: this.Add(next), Status: status}
	}
	for _, tt := range []struct {
		name string
		a, b *Staple
		want bool
	}{
		{"later thisUpdate", s(at.Add(time.Second), at, time.Hour, "good"), s(at, at, time.Hour, "good"), true},
		{"earlier thisUpdate, later nextUpdate", s(at.Add(-time.Second), at, 99*time.Hour, "good"), s(at, at, time.Hour, "good"), false},
		{"same thisUpdate, later producedAt", s(at, at.Add(time.Second), time.Hour, "good"), s(at, at, time.Hour, "good"), true},
		{"the same second", s(at.Add(300*time.Millisecond), at, time.Hour, "good"), s(at, at, time.Hour, "good"), false},
		{"revoked in the same second as good", s(at, at, time.Hour, "revoked"), s(at, at, time.Hour, "good"), true},
		{"good in the same second as revoked", s(at, at, time.Hour, "good"), s(at, at, time.Hour, "revoked"), false},
		{"revoked, but older", s(at.Add(-time.Second), at, time.Hour, "revoked"), s(at, at, time.Hour, "good"), false},
		{"anything over none", s(at, at, time.Hour, "good"), nil, true},
	} {
		if got := tt.a.newerThan(tt.b); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestStapleRecheck: a staple verified before is judged at a later time as Check and tooSoon
// would judge its response then.
func TestStapleRecheck(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	good := Staple{ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(23 * time.Hour)}
	for _, tt := range []struct {
		name string
		edit func(*Staple)
		err  string // empty: still good
	}{
		{"good", func(*Staple) {}, ""},
		{"signed by a delegate still valid", func(s *Staple) { s.SignerNotAfter = now.Add(48 * time.Hour) }, ""},
		{"thisUpdate in the future", func(s *Staple) { s.ThisUpdate = now.Add(time.Hour) }, "lies in the future"},
		{"no nextUpdate", func(s *Staple) { s.NextUpdate = time.Time{} }, "no nextUpdate"},
		{"inside HAProxy's margin", func(s *Staple) { s.NextUpdate = now.Add(haproxyMargin) }, "response expires at"},
		{"past nextUpdate", func(s *Staple) { s.NextUpdate = now.Add(-time.Minute) }, "response expires at"},
		{"too little left to be worth it", func(s *Staple) { s.NextUpdate = now.Add(haproxyMargin + time.Minute) }, "too soon to staple"},
		{"its signer expired", func(s *Staple) { s.SignerNotAfter = now.Add(-time.Minute) }, "responder certificate that signed the response expires"},
	} {
		s := good
		tt.edit(&s)
		err := s.recheck(now)
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.err)
		}
	}
}
