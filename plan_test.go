package main

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/ocspcheck"
)

// planNow is the clock of the plan tests.
var planNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// vouched is a state entry for a certificate with a responder and a good staple valid for
// 48 h more, on disk as recorded, due in an hour.
func vouched() *CertState {
	s := &Staple{Hash: "s1", CertID: "30", Status: "good", ThisUpdate: planNow.Add(-time.Hour), NextUpdate: planNow.Add(48 * time.Hour)}
	return &CertState{CertHash: "c1", CertStat: "cs", Serial: "1f", Issuer: "CN=CA", NotBefore: planNow.Add(-24 * time.Hour),
		NotAfter: planNow.Add(90 * 24 * time.Hour), Responders: []string{"http://ocsp.test"}, Staple: s,
		DiskStat: "d1", DiskHash: "s1", NextDue: planNow.Add(time.Hour)}
}

// seenAsRecorded is the observation of a file whose certificate and staple are as the state
// recorded them.
func seenAsRecorded(old *CertState) *fileObs {
	return &fileObs{File: certFile{Path: "/c/site.pem", Name: "/c/site.pem", Staple: "/c/site.pem.ocsp"}, Old: old, Hash: "c1", CertStat: "cs",
		Staple: diskStaple{Stat: "d1", Hash: "s1"}}
}

// TestPlan: what the plan decides for one certificate, in-process, from an observation and a
// state entry, at planNow. Each row changes the recorded state or what was observed.
func TestPlan(t *testing.T) {
	good := &ocspcheck.Response{Response: &ocsp.Response{Status: ocsp.Good, ThisUpdate: planNow.Add(-30 * time.Minute), NextUpdate: planNow.Add(47 * time.Hour)}}
	older := &ocspcheck.Response{Response: &ocsp.Response{Status: ocsp.Good, ThisUpdate: planNow.Add(-3 * time.Hour), NextUpdate: planNow.Add(47 * time.Hour)}}
	revoked := &ocspcheck.Response{Response: &ocsp.Response{Status: ocsp.Revoked, ThisUpdate: planNow.Add(-30 * time.Minute), NextUpdate: planNow.Add(47 * time.Hour)}}
	tests := []struct {
		name    string
		state   func(*CertState)
		obs     func(*fileObs)
		force   bool
		named   bool // the run is limited to files named on its command line
		step    step
		reason  string // for stepFetch
		checkSt func(*CertState) string
	}{
		{name: "up to date", step: stepKeep},
		{name: "forced", force: true, step: stepFetch, reason: dueForced},
		{name: "new certificate", obs: func(o *fileObs) {
			o.Old, o.Changed = nil, true
			o.Cert = &certInfo{Hash: "c1", Serial: "1f", IssuerName: "CN=CA", NotBefore: planNow.Add(-time.Hour), NotAfter: planNow.Add(time.Hour * 24), Responders: []string{"http://ocsp.test"}}
			o.Staple = diskStaple{Missing: true}
		}, step: stepFetch, reason: dueNew},
		// A lost state or a directory added: a valid, good staple for the certificate is
		// adopted, not fetched again (thousands of certificates at once would be a burst).
		{name: "new certificate, its valid staple on disk", obs: func(o *fileObs) {
			o.Old, o.Changed = nil, true
			o.Cert = &certInfo{Hash: "c1", Serial: "1f", IssuerName: "CN=CA", NotBefore: planNow.Add(-time.Hour), NotAfter: planNow.Add(time.Hour * 24), Responders: []string{"http://ocsp.test"}}
			o.Staple = diskStaple{Stat: "d2", Hash: "s2", DER: []byte("x"), Resp: good}
			o.issued = &issuedFor{CertID: []byte{0x30}}
		}, step: stepKeep, checkSt: func(st *CertState) string {
			if st.Staple == nil || st.Staple.Hash != hashBytes([]byte("x")) || !st.NextDue.After(planNow) {
				return "the staple on disk was not adopted and scheduled"
			}
			return ""
		}},
		{name: "certificate renewed, the new one's staple on disk", obs: func(o *fileObs) {
			o.Changed, o.Hash = true, "c2"
			o.Cert = &certInfo{Hash: "c2", Serial: "20", IssuerName: "CN=CA", NotBefore: planNow.Add(-time.Hour), NotAfter: planNow.Add(time.Hour * 24), Responders: []string{"http://ocsp.test"}}
			o.Staple = diskStaple{Stat: "d2", Hash: "s2", DER: []byte("x"), Resp: good}
			o.issued = &issuedFor{CertID: []byte{0x30}}
		}, step: stepKeep},
		{name: "certificate renewed", obs: func(o *fileObs) {
			o.Changed, o.Hash = true, "c2"
			o.Cert = &certInfo{Hash: "c2", Serial: "20", IssuerName: "CN=CA", NotBefore: planNow.Add(-time.Hour), NotAfter: planNow.Add(time.Hour * 24), Responders: []string{"http://ocsp.test"}}
			o.Staple = diskStaple{Stat: "d1", Hash: "s1", Problem: "response is for serial 1f"}
		}, step: stepFetch, reason: dueChanged, checkSt: func(st *CertState) string {
			if st.Staple != nil || st.Serial != "20" {
				return "the old certificate's staple is still vouched for"
			}
			return ""
		}},
		{name: "same certificate, chain changed", obs: func(o *fileObs) {
			o.Changed, o.Hash = true, "c2"
			o.Cert = &certInfo{Hash: "c2", Serial: "1f", IssuerName: "CN=CA", NotBefore: planNow.Add(-24 * time.Hour), NotAfter: planNow.Add(90 * 24 * time.Hour), Responders: []string{"http://ocsp.test"}}
		}, step: stepKeep},
		{name: "renewal point passed", state: func(st *CertState) { st.NextDue = planNow }, step: stepFetch, reason: dueRenew},
		{name: "staple expiring", state: func(st *CertState) { st.Staple.NextUpdate = planNow.Add(minValidity(st.Staple.Window())) }, step: stepFetch, reason: dueExpiring},
		{name: "delegated signer expiring", state: func(st *CertState) { st.Staple.SignerNotAfter = planNow.Add(time.Minute) }, step: stepFetch, reason: dueExpiring},
		{name: "staple file removed", obs: func(o *fileObs) { o.Staple = diskStaple{Missing: true} }, step: stepFetch, reason: dueMissing},
		{name: "garbage over the staple", obs: func(o *fileObs) { o.Staple = diskStaple{Stat: "d2", Hash: "g", Problem: "invalid OCSP response"} },
			step: stepFetch, reason: "staple on disk is not valid: invalid OCSP response", checkSt: func(st *CertState) string {
				if st.validAt(planNow) || st.DiskProblem == "" {
					return "garbage taken for the staple"
				}
				return ""
			}},
		{name: "garbage, seen before, backing off", state: func(st *CertState) {
			st.DiskStat, st.DiskHash, st.DiskProblem, st.Failures, st.NextDue = "d2", "g", "invalid OCSP response", 1, planNow.Add(time.Minute)
		}, obs: func(o *fileObs) { o.Staple = diskStaple{Stat: "d2", Hash: "g", Problem: "invalid OCSP response"} }, step: stepBackoff},
		{name: "valid staple from someone else", obs: func(o *fileObs) {
			o.Staple = diskStaple{Stat: "d2", Hash: "s2", DER: []byte("x"), Resp: good}
			o.issued = &issuedFor{CertID: []byte{0x30}}
		}, step: stepKeep, checkSt: func(st *CertState) string {
			if st.Staple.Hash != hashBytes([]byte("x")) || !st.onDisk() {
				return "not adopted"
			}
			return ""
		}},
		{name: "older staple restored", obs: func(o *fileObs) {
			o.Staple = diskStaple{Stat: "d2", Hash: "s0", DER: []byte("y"), Resp: older}
			o.issued = &issuedFor{CertID: []byte{0x30}}
		}, step: stepFetch, reason: "staple on disk is older than the last one written"},
		{name: "revoked staple from someone else", obs: func(o *fileObs) {
			o.Staple = diskStaple{Stat: "d2", Hash: "s3", DER: []byte("z"), Resp: revoked}
			o.issued = &issuedFor{CertID: []byte{0x30}}
		}, step: stepFetch, reason: "staple on disk says revoked"},
		{name: "backing off, staple valid", state: func(st *CertState) { st.Failures, st.NextDue = 2, planNow.Add(time.Hour) }, step: stepKeep},
		{name: "back-off over", state: func(st *CertState) { st.Failures, st.NextDue = 2, planNow.Add(-time.Second) }, step: stepFetch, reason: dueRetry},
		// A deploy hook's run names the bundle: without a valid staple it is fetched now.
		{name: "backing off, no staple, named", state: func(st *CertState) {
			st.DiskStat, st.DiskHash, st.Failures, st.NextDue = "", "", 1, planNow.Add(time.Minute)
		}, obs: func(o *fileObs) { o.Staple = diskStaple{Missing: true} }, named: true, step: stepFetch, reason: dueMissing},
		{name: "backing off, no staple, not named", state: func(st *CertState) {
			st.DiskStat, st.DiskHash, st.Failures, st.NextDue = "", "", 1, planNow.Add(time.Minute)
		}, obs: func(o *fileObs) { o.Staple = diskStaple{Missing: true} }, step: stepBackoff},
		{name: "backing off, staple valid, named", state: func(st *CertState) { st.Failures, st.NextDue = 2, planNow.Add(time.Hour) }, named: true, step: stepKeep},
		{name: "no responder", state: func(st *CertState) { st.Responders = nil }, step: stepNoResponder},
		{name: "expired certificate", state: func(st *CertState) { st.NotAfter = planNow.Add(-time.Second) }, step: stepNotCurrent},
		{name: "unreadable", obs: func(o *fileObs) { o.Err = errors.New("permission denied") }, step: stepError},
		{name: "no longer a certificate", obs: func(o *fileObs) { o.NotCert = true }, step: stepGone},
		{name: "pending at a socket no longer configured", state: func(st *CertState) { st.Pending = []string{"/old.sock", "/run/a.sock"} },
			step: stepKeep, checkSt: func(st *CertState) string {
				if !slices.Equal(st.Pending, []string{"/run/a.sock"}) {
					return "pending pushes: " + strings.Join(st.Pending, ",")
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := vouched()
			if tt.state != nil {
				tt.state(old)
			}
			o := seenAsRecorded(old)
			if tt.obs != nil {
				tt.obs(o)
			}
			before := old.clone()
			opt := planOptions{Policy: testPolicy, Force: tt.force, Only: tt.named, Sockets: []string{"/run/a.sock"}}
			p := planFile(planNow, opt, o)
			if p.Step != tt.step || (tt.step == stepFetch && p.Reason != tt.reason) {
				t.Errorf("step %d %q, want %d %q", p.Step, p.Reason, tt.step, tt.reason)
			}
			if o.Old != nil && !equalStates(o.Old, before) {
				t.Error("plan changed the recorded state")
			}
			if tt.checkSt != nil {
				if p.Next == nil {
					t.Fatal("no planned state to check")
				}
				if msg := tt.checkSt(p.Next); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
}

// TestPlanSharesUnchanged: an entry the plan leaves as it was is the state's own, not a copy
// (70 MB at 100,000 certificates); a change after planning makes the plan's copy, and the
// state's entry stays as it was.
func TestPlanSharesUnchanged(t *testing.T) {
	old := vouched()
	before := old.clone()
	opt := planOptions{Policy: testPolicy, Sockets: []string{"/run/a.sock"}}
	p := planFile(planNow, opt, seenAsRecorded(old))
	if p.Step != stepKeep || p.Next != old {
		t.Fatalf("up to date: step %d, planned state %p, want stepKeep and the state's own %p", p.Step, p.Next, old)
	}
	if len(p.Notes) != 0 {
		t.Errorf("up to date, without debug messages: notes %v", p.Notes)
	}
	if d := planFile(planNow, planOptions{Policy: testPolicy, Debug: true}, seenAsRecorded(old)); len(d.Notes) != 1 || d.Notes[0].Msg != "staple is up to date" {
		t.Errorf("up to date, with debug messages: notes %v", d.Notes)
	}
	p.edit(func(st *CertState) { st.served(nil, nil) }) // as recorded: no change
	if p.Next != old {
		t.Error("a change that changed nothing made a copy")
	}
	p.edit(func(st *CertState) { st.served([]string{"/run/a.sock"}, nil) })
	if p.Next == old || !slices.Equal(p.Next.Pending, []string{"/run/a.sock"}) || !reflect.DeepEqual(old, before) {
		t.Errorf("a change went to %p (the state's is %p), pending %q; the state's entry became %+v", p.Next, old, p.Next.Pending, old)
	}
	q := planFile(planNow, opt, seenAsRecorded(old))
	if st := q.own(); st == old || !reflect.DeepEqual(st, old) {
		t.Errorf("own gave %p, the state's entry %p: want an equal copy", st, old)
	}
	for _, force := range []bool{true, false} {
		o := seenAsRecorded(old)
		o.Staple = diskStaple{Missing: true} // due, or with force
		p := planFile(planNow, planOptions{Policy: testPolicy, Force: force}, o)
		if p.Step != stepFetch || p.Next == old {
			t.Errorf("force %v: step %d, planned state is the state's own entry: %v", force, p.Step, p.Next == old)
		}
	}
	if !reflect.DeepEqual(old, before) {
		t.Errorf("planning changed the state's entry: %+v", old)
	}
}

func equalStates(a, b *CertState) bool {
	ca, cb := *a, *b
	sa, sb := ca.Staple, cb.Staple
	ca.Staple, cb.Staple = nil, nil
	return (sa == nil) == (sb == nil) && (sa == nil || *sa == *sb) &&
		slices.Equal(ca.Responders, cb.Responders) && slices.Equal(ca.Pending, cb.Pending) && ca.NextDue.Equal(cb.NextDue) &&
		ca.DiskHash == cb.DiskHash && ca.DiskStat == cb.DiskStat && ca.Failures == cb.Failures
}

// TestPlanPrune: only a run that read a directory whole forgets what is gone from it.
func TestPlanPrune(t *testing.T) {
	state := newState()
	for _, p := range []string{"/one/a.pem", "/one/gone.pem", "/two/b.pem"} {
		state.Certificates[p] = vouched()
	}
	obs := &observation{Files: []*fileObs{seenAsRecorded(state.Certificates["/one/a.pem"])}, Scanned: []string{"/one"}}
	obs.Files[0].File.Path = "/one/a.pem"
	if got := plan(planNow, planOptions{Policy: testPolicy}, obs, state).Prune; !slices.Equal(got, []string{"/one/gone.pem"}) {
		t.Errorf("pruned %q, want only /one/gone.pem", got)
	}
	if got := plan(planNow, planOptions{Policy: testPolicy, Only: true}, obs, state).Prune; len(got) != 0 {
		t.Errorf("a run limited to files pruned %q", got)
	}
	obs.ScanErr = errors.New("cannot read /one/x")
	if got := plan(planNow, planOptions{Policy: testPolicy}, obs, state).Prune; len(got) != 0 {
		t.Errorf("a run that could not read a directory pruned %q", got)
	}
}

// TestDueMustStapleFirst: a run fetches the staples of Must-Staple certificates first, in plan
// order, then the others.
func TestDueMustStapleFirst(t *testing.T) {
	mk := func(name string, step step, must bool) *certPlan {
		return &certPlan{Obs: &fileObs{File: certFile{Path: name}}, Step: step, Next: &CertState{MustStaple: must}}
	}
	rp := runPlan{Certs: []*certPlan{
		mk("a", stepFetch, false), mk("b", stepKeep, true), mk("c", stepFetch, true),
		mk("d", stepFetch, false), mk("e", stepFetch, true),
	}}
	var got []string
	for _, p := range rp.due() {
		got = append(got, p.Obs.File.Path)
	}
	if want := []string{"c", "e", "a", "d"}; !slices.Equal(got, want) {
		t.Errorf("fetch order %q, want %q", got, want)
	}
}

// TestCertStateEqual: equal agrees with reflect.DeepEqual on an entry and its copy, and on
// each field changed alone (of CertState and of its Staple), a nil slice against an empty
// one, and a missing staple: a field equal forgets fails here.
func TestCertStateEqual(t *testing.T) {
	base := fullCertState(t)
	if !base.equal(base.clone()) || !(*CertState)(nil).equal(nil) || base.equal(nil) || (*CertState)(nil).equal(base) {
		t.Fatal("equal: an entry and its copy, or nil and nil, differ (or nil equals an entry)")
	}
	// change sets field (of v, a CertState or Staple) to another value of its kind.
	change := func(f reflect.Value) {
		switch v := f.Addr().Interface().(type) {
		case *string:
			*v += "x"
		case *bool:
			*v = !*v
		case *int:
			*v++
		case *time.Time:
			*v = v.Add(time.Nanosecond)
		case *[]string:
			*v = append(slices.Clone(*v), "x")
		case **Staple:
			*v = nil
		default:
			t.Fatalf("TestCertStateEqual cannot change a field of type %s: teach it", f.Type())
		}
	}
	for _, staple := range []bool{false, true} {
		typ := reflect.TypeFor[CertState]()
		if staple {
			typ = reflect.TypeFor[Staple]()
		}
		for i := range typ.NumField() {
			c := base.clone()
			v := reflect.ValueOf(c).Elem()
			if staple {
				v = reflect.ValueOf(c.Staple).Elem()
			}
			change(v.Field(i))
			if c.equal(base) || base.equal(c) || reflect.DeepEqual(c, base) {
				t.Errorf("%s.%s changed: equal says the entries are the same", typ.Name(), typ.Field(i).Name)
			}
		}
	}
	for _, slice := range []func(*CertState) *[]string{
		func(c *CertState) *[]string { return &c.Responders },
		func(c *CertState) *[]string { return &c.Pending },
		func(c *CertState) *[]string { return &c.Reload },
	} {
		a, b := base.clone(), base.clone()
		*slice(a), *slice(b) = nil, []string{}
		if a.equal(b) != reflect.DeepEqual(a, b) {
			t.Errorf("a nil slice and an empty one: equal %v, reflect.DeepEqual %v", a.equal(b), reflect.DeepEqual(a, b))
		}
	}
}
