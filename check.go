package main

import (
	"fmt"
	"slices"
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
	Warning  time.Duration // staple validity left below which a certificate is WARNING
	Critical time.Duration // ... CRITICAL
	Failing  time.Duration // refresh failing for longer than this is WARNING
}

// checkResult is the plugin's verdict: a state, its one-line output and the exit status.
type checkResult struct {
	State int
	Line  string
}

// evaluateCheck judges the certificates of a status report at now.
func evaluateCheck(certs []certStatus, th checkThresholds, now time.Time) checkResult {
	type finding struct {
		state int
		text  string
	}
	var findings []finding
	counts := map[string]int{}
	minLeft := time.Duration(-1)
	for _, cs := range certs {
		name := baseName(cs.Path)
		counts[cs.StapleStatus]++
		if cs.StapleStatus == "no_responder" || cs.NotAfter != nil && now.After(*cs.NotAfter) {
			continue
		}
		switch cs.StapleStatus {
		case "revoked":
			findings = append(findings, finding{checkCritical, name + " is revoked"})
		case "none":
			findings = append(findings, finding{checkCritical, name + " has no valid staple"})
		case "unknown":
			findings = append(findings, finding{checkWarning, name + " has a staple stapler has not checked"})
		}
		if cs.StapleStatus == "good" || cs.StapleStatus == "revoked" {
			left := cs.verdict.Left // until its expiry: nextUpdate, or its signer's end
			if minLeft < 0 || left < minLeft {
				minLeft = left
			}
			switch {
			case left < th.Critical:
				findings = append(findings, finding{checkCritical, name + " staple expires in " + shortDuration(left)})
			case left < th.Warning:
				findings = append(findings, finding{checkWarning, name + " staple expires in " + shortDuration(left)})
			}
		}
		if cs.FailingSince != nil && now.Sub(*cs.FailingSince) > th.Failing {
			findings = append(findings, finding{checkWarning, fmt.Sprintf("%s failing for %s: %s", name, shortDuration(now.Sub(*cs.FailingSince)), cs.LastError)})
		}
		if len(cs.PendingPush) > 0 {
			findings = append(findings, finding{checkWarning, name + " not yet in HAProxy at " + strings.Join(cs.PendingPush, ", ")})
		}
	}
	state := checkOK
	for _, f := range findings {
		state = max(state, f.state)
	}
	slices.SortStableFunc(findings, func(a, b finding) int { return b.state - a.state })
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
		perf = append(perf, fmt.Sprintf("min_validity=%ds;%d:;%d:;0", int64(minLeft/time.Second), int64(th.Warning/time.Second), int64(th.Critical/time.Second)))
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
	return checkResult{State: state, Line: fmt.Sprintf("STAPLER %s - %s | %s", checkStateNames[state], summary, strings.Join(perf, " "))}
}
