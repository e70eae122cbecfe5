package main

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestAgreement feeds the same state entries to the four readers of a certificate's state and
// asserts what each says: the status row (staple status, and whether it is a problem), the
// check verdict (default thresholds: min(12h, 25%), min(3h, 10%) of the window, failing 6 h),
// the status metric, and whether the verdict is a problem, the judgement behind the exit status
// of a run that finds the entry and has nothing to do (exit: what that judgement gives; real
// runs are asserted in e2e_test.go and regress_test.go). They read one verdict, so they cannot
// disagree about a staple: only the check's thresholds add their own judgement.
func TestAgreement(t *testing.T) {
	now := planNow
	tests := []struct {
		name   string
		state  func(*CertState)
		status string // staple_status
		check  int
		metric string // what the metrics say of the staple (metricStatus), "" for no series
		exit   int
	}{
		{"good", nil, "good", checkOK, "good", exitOK},
		{"revoked", func(st *CertState) { st.Staple.Status = "revoked" }, "revoked", checkCritical, "revoked", exitFailed},
		{"no staple on disk", func(st *CertState) { st.DiskStat, st.DiskHash = "", "" }, "none", checkCritical, "none", exitFailed},
		{"garbage on disk, verified", func(st *CertState) { st.DiskHash, st.DiskProblem = "g", "invalid OCSP response" }, "none", checkCritical, "none", exitFailed},
		{"changed on disk, not verified yet", func(st *CertState) { st.DiskHash = "g" }, "unknown", checkWarning, "none", exitFailed},
		{"expired staple", func(st *CertState) { st.Staple.NextUpdate = now.Add(-time.Minute) }, "none", checkCritical, "none", exitFailed},
		{"within HAProxy's last 300 s", func(st *CertState) { st.Staple.NextUpdate = now.Add(4 * time.Minute) }, "none", checkCritical, "none", exitFailed},
		{"two hours left of a day", func(st *CertState) {
			st.Staple.ThisUpdate, st.Staple.NextUpdate = now.Add(-22*time.Hour), now.Add(2*time.Hour)
		}, "good", checkCritical, "good", exitOK},
		{"signer ends in two hours", func(st *CertState) {
			st.Staple.ThisUpdate, st.Staple.NextUpdate, st.Staple.SignerNotAfter = now.Add(-22*time.Hour), now.Add(48*time.Hour), now.Add(2*time.Hour)
		}, "good", checkCritical, "good", exitOK},
		{"five hours left of a day", func(st *CertState) {
			st.Staple.ThisUpdate, st.Staple.NextUpdate = now.Add(-19*time.Hour), now.Add(5*time.Hour)
		}, "good", checkWarning, "good", exitOK},
		{"one-hour staple, half of it left", func(st *CertState) {
			st.Staple.ThisUpdate, st.Staple.NextUpdate = now.Add(-30*time.Minute), now.Add(30*time.Minute)
		}, "good", checkOK, "good", exitOK},
		{"one-hour staple, 12 minutes left", func(st *CertState) {
			st.Staple.ThisUpdate, st.Staple.NextUpdate = now.Add(-48*time.Minute), now.Add(12*time.Minute)
		}, "good", checkWarning, "good", exitOK},
		{"pending at a socket", func(st *CertState) { st.Pending = []string{"/run/a.sock"} }, "good", checkWarning, "good", exitFailed},
		{"needs a reload", func(st *CertState) { st.Pending, st.Reload = []string{"/run/a.sock"}, []string{"/run/a.sock"} }, "good", checkWarning, "good", exitFailed},
		{"failing for an hour, staple valid", func(st *CertState) { st.Failures, st.FailingSince, st.LastError = 3, now.Add(-time.Hour), "tryLater" }, "good", checkOK, "good", exitOK},
		{"failing for seven hours, staple valid", func(st *CertState) { st.Failures, st.FailingSince, st.LastError = 9, now.Add(-7*time.Hour), "tryLater" }, "good", checkWarning, "good", exitOK},
		{"no responder", func(st *CertState) { st.Responders, st.Staple, st.DiskHash = nil, nil, "" }, "no_responder", checkOK, "", exitOK},
		// A certificate that is not valid (yet, or any more) is skipped by a run: its staple
		// is not judged, by any reader.
		{"certificate not valid yet, no staple", func(st *CertState) { st.NotBefore, st.DiskStat, st.DiskHash = now.Add(time.Hour), "", "" }, "none", checkOK, "", exitOK},
		{"certificate expired, no staple", func(st *CertState) { st.NotAfter, st.DiskStat, st.DiskHash = now.Add(-time.Hour), "", "" }, "none", checkOK, "", exitOK},
		// Must-Staple: without a valid staple the site is down for the clients that enforce
		// it, and what is a warning for others is critical.
		{"must-staple, good", func(st *CertState) { st.MustStaple = true }, "good", checkOK, "good", exitOK},
		{"must-staple, no responder", func(st *CertState) { st.MustStaple, st.Responders, st.Staple, st.DiskHash = true, nil, nil, "" }, "no_responder", checkCritical, "none", exitFailed},
		{"must-staple, no staple on disk", func(st *CertState) { st.MustStaple, st.DiskStat, st.DiskHash = true, "", "" }, "none", checkCritical, "none", exitFailed},
		{"must-staple, five hours left of a day", func(st *CertState) {
			st.MustStaple, st.Staple.ThisUpdate, st.Staple.NextUpdate = true, now.Add(-19*time.Hour), now.Add(5*time.Hour)
		}, "good", checkCritical, "good", exitOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := vouched()
			if tt.state != nil {
				tt.state(st)
			}
			f := certFile{Path: "/c/site.pem", Name: "/c/site.pem", Staple: "/c/site.pem.ocsp"}
			cs := certStatusOf(f, st, "", nil, now)
			if cs.StapleStatus != tt.status {
				t.Errorf("status: %s, want %s", cs.StapleStatus, tt.status)
			}
			judged := st.verdict(now).Cert == ""
			if cs.problem != (tt.exit != exitOK || judged && tt.status != "good" && tt.status != "no_responder" || st.Failures > 0) {
				t.Errorf("status row sorted as a problem: %v", cs.problem)
			}
			res := evaluateCheck([]certStatus{cs}, checkThresholds{Warning: defaultWarning, Critical: defaultCritical, Failing: 6 * time.Hour}, now)
			if res.State != tt.check {
				t.Errorf("check: %s, want %s", res.Line, checkStateNames[tt.check])
			}
			if got := metricStatus(t, st, now); got != tt.metric {
				t.Errorf("metric status %q, want %q", got, tt.metric)
			}
			exit := exitOK
			if st.verdict(now).problem() {
				exit = exitFailed
			}
			if exit != tt.exit {
				t.Errorf("the verdict gives a run exit %d, want %d", exit, tt.exit)
			}
		})
	}
}

// metricStatus writes the metrics of a state holding st and returns what they say of its
// staple: good or revoked (stapler_ocsp_response_present 1 and its status), none (present 0),
// or "" when there is no series.
func metricStatus(t *testing.T, st *CertState, now time.Time) string {
	t.Helper()
	state := newState()
	state.Certificates["/c/site.pem"] = st
	path := filepath.Join(t.TempDir(), "stapler.prom")
	if err := writeMetrics(path, state, nil, summary{}, now, time.Second, nil); err != nil {
		t.Fatal(err)
	}
	families := readMetrics(t, path)
	present, status := families["stapler_ocsp_response_present"].GetMetric(), families["stapler_ocsp_response_status"].GetMetric()
	switch {
	case len(present) == 0:
		return ""
	case present[0].GetGauge().GetValue() == 0 && len(status) == 0:
		return "none"
	case present[0].GetGauge().GetValue() == 1 && len(status) == 1:
		return map[float64]string{0: "good", 1: "revoked"}[status[0].GetGauge().GetValue()]
	}
	return fmt.Sprintf("present %v with %d status series", present[0].GetGauge().GetValue(), len(status))
}
