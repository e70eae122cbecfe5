package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Monitoring plugin exit statuses (Nagios, Icinga, Sensu, ...).
const (
	checkOK       = 0
	checkWarning  = 1
	checkCritical = 2
	checkUnknown  = 3
)

var checkStateNames = [...]string{"OK", "WARNING", "CRITICAL", "UNKNOWN"}

// checkThresholds are `stapler check`'s limits.
type checkThresholds struct {
	Warning  threshold     // staple validity left below which a certificate is WARNING
	Critical threshold     // ... CRITICAL
	Failing  time.Duration // refresh failing for longer than this is WARNING
}

// threshold is a limit on how long a staple has left: a duration, a share of the staple's
// validity window, or (the defaults) the smaller of the two, so that a fresh staple is fine
// whatever its window.
type threshold struct {
	Dur   time.Duration // 0: none
	Share float64       // of the window; 0: none
}

// Default thresholds: min(12h, 25%) and min(3h, 10%).
var (
	defaultWarning  = threshold{Dur: 12 * time.Hour, Share: 0.25}
	defaultCritical = threshold{Dur: 3 * time.Hour, Share: 0.10}
)

// at is the limit for a staple with that validity window.
func (th threshold) at(window time.Duration) time.Duration {
	share := time.Duration(float64(window) * th.Share)
	switch {
	case th.Share == 0:
		return th.Dur
	case th.Dur == 0:
		return share
	}
	return min(th.Dur, share)
}

func (th threshold) String() string {
	pct := strconv.FormatFloat(th.Share*100, 'f', -1, 64) + "%"
	dur := th.Dur.String() // 12h0m0s: 12h; 1h30m0s: 1h30m
	if strings.HasSuffix(dur, "m0s") {
		dur = strings.TrimSuffix(dur, "0s")
	}
	if strings.HasSuffix(dur, "h0m") {
		dur = strings.TrimSuffix(dur, "0m")
	}
	switch {
	case th.Share == 0:
		return dur
	case th.Dur == 0:
		return pct
	}
	return "min(" + dur + ", " + pct + ")"
}

// parseThreshold reads a --warning or --critical value: a duration ("12h") or a share of the
// validity window ("25%").
func parseThreshold(flag, s string) (threshold, error) {
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(pct, 64)
		if err != nil || f <= 0 || f >= 100 {
			return threshold{}, fmt.Errorf("--%s %s: a share of the validity window must be more than 0%% and less than 100%%", flag, s)
		}
		return threshold{Share: f / 100}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return threshold{}, fmt.Errorf("--%s %s: want a duration such as 12h or a share of the validity window such as 25%%", flag, s)
	}
	return threshold{Dur: d}, nil
}

// checkRank orders long-output lines by the state they start with.
func checkRank(line string) int {
	for i, name := range checkStateNames {
		if strings.HasPrefix(line, name+":") {
			return i
		}
	}
	return 0
}

// checkOrder reports thresholds that would make every staple CRITICAL before it is WARNING:
// comparable only when both are durations or both are shares.
func checkOrder(warning, critical threshold) error {
	switch {
	case warning.Share == 0 && critical.Share == 0 && critical.Dur > warning.Dur,
		warning.Dur == 0 && critical.Dur == 0 && critical.Share > warning.Share:
		return fmt.Errorf("--critical (%v) must not exceed --warning (%v)", critical, warning)
	}
	return nil
}

// checkResult is the plugin's verdict: a state, its status line, and the long output: a line
// per certificate that is not OK, as monitoring plugins print after the status line.
type checkResult struct {
	State int
	Line  string
	Long  []string
}

// finding is one thing the check says of a certificate.
type finding struct {
	state int
	text  string // with the certificate's name
}

// certFindings judges one certificate: what is wrong with it, and, for a staple on disk, how
// long it has left and the limits that apply to its window.
func certFindings(cs certStatus, th checkThresholds, now time.Time) (fs []finding, left, warn, crit time.Duration, judged bool) {
	name := baseName(cs.Path)
	if cs.unreadable {
		// HAProxy refuses to start with a file it cannot read as a certificate either.
		return []finding{{checkCritical, name + ": " + cs.LastError}}, 0, 0, 0, false
	}
	if cs.verdict.Cert != "" {
		return nil, 0, 0, 0, false // expired or not valid yet: its staple is not judged
	}
	// A Must-Staple certificate without a valid staple is an outage for the clients that
	// enforce it: what is a warning for others is critical for it.
	soon := checkWarning
	if cs.MustStaple {
		name += " (must-staple)"
		soon = checkCritical
	}
	switch cs.StapleStatus {
	case "no_responder":
		if cs.MustStaple {
			fs = append(fs, finding{checkCritical, name + " names no OCSP responder"})
		}
		return fs, 0, 0, 0, false
	case "revoked":
		fs = append(fs, finding{checkCritical, name + " is revoked"})
	case "none":
		fs = append(fs, finding{checkCritical, name + " has no valid staple"})
	case "unknown":
		fs = append(fs, finding{soon, name + " has a staple stapler has not checked"})
	}
	if cs.StapleStatus == "good" || cs.StapleStatus == "revoked" {
		judged = true
		left = cs.verdict.Left // until its expiry: nextUpdate, or its signer's end
		warn, crit = th.Warning.at(cs.verdict.Window), th.Critical.at(cs.verdict.Window)
		switch {
		case left < crit:
			fs = append(fs, finding{checkCritical, name + " staple expires in " + shortDuration(left)})
		case left < warn:
			fs = append(fs, finding{soon, name + " staple expires in " + shortDuration(left)})
		}
	}
	if cs.FailingSince != nil && now.Sub(*cs.FailingSince) > th.Failing {
		fs = append(fs, finding{checkWarning, fmt.Sprintf("%s failing for %s: %s", name, shortDuration(now.Sub(*cs.FailingSince)), cs.LastError)})
	}
	if len(cs.PendingPush) > 0 {
		fs = append(fs, finding{checkWarning, name + " not yet in HAProxy at " + strings.Join(cs.PendingPush, ", ")})
	}
	return fs, left, warn, crit, judged
}

// evaluateCheck judges the certificates of a status report at now.
func evaluateCheck(certs []certStatus, th checkThresholds, now time.Time) checkResult {
	var findings []finding
	var long []string
	counts := map[string]int{}
	minLeft := time.Duration(-1)
	var minWarn, minCrit time.Duration // the limits of the staple with the least left
	for _, cs := range certs {
		counts[cs.StapleStatus]++
		fs, left, warn, crit, judged := certFindings(cs, th, now)
		if judged && (minLeft < 0 || left < minLeft) {
			minLeft, minWarn, minCrit = left, warn, crit
		}
		if len(fs) == 0 {
			continue
		}
		worst := checkOK
		var texts []string
		for _, f := range fs {
			worst = max(worst, f.state)
			texts = append(texts, f.text)
		}
		long = append(long, checkStateNames[worst]+": "+strings.Join(texts, "; ")+" ("+cs.Path+")")
		findings = append(findings, fs...)
	}
	state := checkOK
	for _, f := range findings {
		state = max(state, f.state)
	}
	slices.SortStableFunc(findings, func(a, b finding) int { return b.state - a.state })
	slices.SortStableFunc(long, func(a, b string) int { return checkRank(b) - checkRank(a) })
	var texts []string
	for _, f := range findings {
		texts = append(texts, f.text)
	}
	if len(texts) > 3 {
		texts = append(texts[:3], fmt.Sprintf("and %d more", len(texts)-3))
	}
	summary := fmt.Sprintf("%d good staples", counts["good"])
	if len(texts) > 0 {
		summary = strings.Join(texts, "; ")
	} else if minLeft >= 0 {
		summary += ", shortest valid for " + shortDuration(minLeft)
	}
	perf := []string{}
	if minLeft >= 0 {
		perf = append(perf, fmt.Sprintf("min_validity=%ds;%d:;%d:;0", int64(minLeft/time.Second), int64(minWarn/time.Second), int64(minCrit/time.Second)))
	}
	for _, k := range []string{"good", "revoked", "none", "unknown", "no_responder"} {
		perf = append(perf, fmt.Sprintf("%s=%d", k, counts[k]))
	}
	failing := 0
	for _, cs := range certs {
		if cs.Failures > 0 {
			failing++
		}
	}
	perf = append(perf, fmt.Sprintf("failing=%d", failing))
	return checkResult{State: state, Line: fmt.Sprintf("STAPLER %s - %s | %s", checkStateNames[state], summary, strings.Join(perf, " ")), Long: long}
}
