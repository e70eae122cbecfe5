package main

import (
	"fmt"
	"testing"
	"time"
)

var testPolicy = policy{RenewAt: 0.5, Spread: 0.1, RetryBase: 5 * time.Minute, RetryMax: 6 * time.Hour}

func TestRenewalPoint(t *testing.T) {
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	next := this.Add(100 * time.Hour)
	spread := map[time.Time]bool{}
	for i := range 200 {
		key := fmt.Sprintf("/etc/haproxy/certs/site%d.pem", i)
		got := testPolicy.renewalPoint(key, this, next)
		if got.Before(this.Add(40*time.Hour)) || got.After(this.Add(50*time.Hour)) {
			t.Fatalf("%s: renewal point %v is outside 40 h to 50 h into the window", key, got.Sub(this))
		}
		if again := testPolicy.renewalPoint(key, this, next); !again.Equal(got) {
			t.Fatalf("%s: renewal point moved from %v to %v", key, got, again)
		}
		spread[got.Truncate(time.Hour)] = true
	}
	if len(spread) < 8 {
		t.Errorf("200 certificates fall due in only %d distinct hours of 10", len(spread))
	}
	noSpread := policy{RenewAt: 0.5}
	if got := noSpread.renewalPoint("x", this, next); !got.Equal(this.Add(50 * time.Hour)) {
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
		{"fresh 4-day response", now, now.Add(96 * time.Hour), testPolicy.renewalPoint("k", now, now.Add(96*time.Hour))},
		{"pre-produced response past its renewal point", now.Add(-80 * time.Hour), now.Add(16 * time.Hour), now.Add(5 * time.Minute)},
		{"short response is capped at the urgent point", now, now.Add(70 * time.Minute), now.Add(10 * time.Minute)},
	}
	for _, tt := range tests {
		if got := testPolicy.afterSuccess("k", now, tt.this, tt.next); !got.Equal(tt.want) {
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
		if got := testPolicy.afterFailure(now, tt.failures, tt.stapleNext).Sub(now); got != tt.want {
			t.Errorf("after %d failures with staple until %v: wait %v, want %v", tt.failures, tt.stapleNext, got, tt.want)
		}
	}
}

func TestDueReason(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	fresh := &CertState{Hash: "c", StapleHash: "s", NextUpdate: now.Add(48 * time.Hour), NextDue: now.Add(time.Hour)}
	with := func(f func(*CertState)) *CertState {
		st := *fresh
		f(&st)
		return &st
	}
	tests := []struct {
		name             string
		st               *CertState
		certHash, staple string
		force            bool
		want             string
	}{
		{"up to date", fresh, "c", "s", false, dueNotDue},
		{"forced", fresh, "c", "s", true, dueForced},
		{"new certificate", nil, "c", stapleMissing, false, dueNew},
		{"certificate changed", fresh, "c2", "s", false, dueChanged},
		{"staple missing", fresh, "c", stapleMissing, false, dueMissing},
		{"staple replaced on disk", fresh, "c", "s2", false, dueReplaced},
		{"renewal point passed", with(func(s *CertState) { s.NextDue = now }), "c", "s", false, dueRenew},
		{"staple expiring", with(func(s *CertState) { s.NextUpdate = now.Add(minValidity) }), "c", "s", false, dueExpiring},
		{"backing off", with(func(s *CertState) { s.Failures = 2 }), "c", "s", false, dueNotDue},
		{"backing off, staple missing", with(func(s *CertState) { s.Failures = 2 }), "c", stapleMissing, false, dueMissing},
		{"backing off, staple replaced", with(func(s *CertState) { s.Failures = 2 }), "c", "s2", false, dueReplaced},
		{"back-off over", with(func(s *CertState) { s.Failures = 2; s.NextDue = now.Add(-time.Second) }), "c", "s", false, dueRetry},
		{"backing off, but the certificate changed", with(func(s *CertState) { s.Failures = 2 }), "c2", "s", false, dueChanged},
	}
	for _, tt := range tests {
		if got := dueReason(now, tt.st, tt.certHash, tt.staple, tt.force); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}
