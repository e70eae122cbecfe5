package main

import (
	"fmt"
	"testing"
	"time"
)

var testPolicy = policy{RenewAt: 0.5, Spread: 0.1, RetryBase: 5 * time.Minute, RetryMax: 6 * time.Hour, MaxAge: 96 * time.Hour}

// staple is a staple valid from this to next, for the scheduling tests.
func staple(this, next time.Time) *Staple { return &Staple{ThisUpdate: this, NextUpdate: next} }

func TestRenewalPoint(t *testing.T) {
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	next := this.Add(100 * time.Hour)
	spread := map[time.Time]bool{}
	for i := range 200 {
		key := fmt.Sprintf("/etc/haproxy/certs/site%d.pem", i)
		got := testPolicy.renewalPoint(key, staple(this, next))
		if got.Before(this.Add(40*time.Hour)) || got.After(this.Add(50*time.Hour)) {
			t.Fatalf("%s: renewal point %v is outside 40 h to 50 h into the window", key, got.Sub(this))
		}
		if again := testPolicy.renewalPoint(key, staple(this, next)); !again.Equal(got) {
			t.Fatalf("%s: renewal point moved from %v to %v", key, got, again)
		}
		spread[got.Truncate(time.Hour)] = true
	}
	if len(spread) < 8 {
		t.Errorf("200 certificates fall due in only %d distinct hours of 10", len(spread))
	}
	noSpread := policy{RenewAt: 0.5}
	if got := noSpread.renewalPoint("x", staple(this, next)); !got.Equal(this.Add(50 * time.Hour)) {
		t.Errorf("without spread: %v, want half-way", got.Sub(this))
	}
}

func TestAfterSuccess(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		this, next time.Time
		want       time.Time
	}{
		{"fresh 4-day response", now, now.Add(96 * time.Hour), testPolicy.renewalPoint("k", staple(now, now.Add(96*time.Hour)))},
		{"pre-produced response past its renewal point", now.Add(-80 * time.Hour), now.Add(16 * time.Hour), now.Add(5 * time.Minute)},
		{"short response is capped at the urgent point", now, now.Add(70 * time.Minute), now.Add(10 * time.Minute)},
	}
	for _, tt := range tests {
		if got := testPolicy.afterSuccess("k", now, staple(tt.this, tt.next)); !got.Equal(tt.want) {
			t.Errorf("%s: due at %v, want %v", tt.name, got.Sub(now), tt.want.Sub(now))
		}
	}
}

func TestAfterFailure(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	far := now.Add(7 * 24 * time.Hour)
	tests := []struct {
		failures   int
		stapleNext time.Time
		want       time.Duration
	}{
		{1, far, 5 * time.Minute},
		{2, far, 10 * time.Minute},
		{3, far, 20 * time.Minute},
		{7, far, 320 * time.Minute},
		{8, far, 6 * time.Hour}, // RetryMax
		{1000, far, 6 * time.Hour},
		{1, time.Time{}, 5 * time.Minute},          // no staple at all
		{8, now.Add(3 * time.Hour), 2 * time.Hour}, // never past the urgent point
		{8, now.Add(30 * time.Minute), -30 * time.Minute},
	}
	for _, tt := range tests {
		var onDisk *Staple
		if !tt.stapleNext.IsZero() {
			onDisk = staple(now.Add(-time.Hour), tt.stapleNext)
		}
		if got := testPolicy.afterFailure(now, tt.failures, onDisk).Sub(now); got != tt.want {
			t.Errorf("after %d failures with staple until %v: wait %v, want %v", tt.failures, tt.stapleNext, got, tt.want)
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
		got := testPolicy.renewalPoint("/c/site.pem", staple(this, tt.next))
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
	if got := testPolicy.renewalPoint("k", s); got.After(this.Add(time.Hour)) {
		t.Errorf("renewal point %v after thisUpdate, want at most half of the signer's 2 h", got.Sub(this))
	}
	if got := testPolicy.urgentPoint(s); !got.Equal(this.Add(time.Hour)) {
		t.Errorf("urgent point %v, want an hour before the signer's end", got.Sub(this))
	}
}
