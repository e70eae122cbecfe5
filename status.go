package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// statusReport is `stapler status --json`: a stable schema, documented in the README. Times are
// RFC 3339; absent ones are null.
type statusReport struct {
	GeneratedAt  time.Time    `json:"generated_at"`
	Certificates []certStatus `json:"certificates"`
}

// certStatus is one certificate in `stapler status`.
type certStatus struct {
	Path      string     `json:"path"`
	Subject   string     `json:"subject"`
	Serial    string     `json:"serial"`
	NotAfter  *time.Time `json:"not_after"` // the certificate's expiry
	Responder string     `json:"responder"` // "" when the certificate names none
	// StapleStatus is good or revoked (a valid staple on disk), none (no valid staple),
	// unknown (a staple stapler has not checked: not run yet, or changed on disk) or
	// no_responder.
	StapleStatus string     `json:"staple_status"`
	ThisUpdate   *time.Time `json:"this_update"`
	NextUpdate   *time.Time `json:"next_update"`
	TimeLeft     *int64     `json:"time_left_seconds"` // until nextUpdate
	NextRefresh  *time.Time `json:"next_refresh"`
	Failures     int        `json:"failures"`
	FailingSince *time.Time `json:"failing_since"`
	LastError    string     `json:"last_error"`
	PendingPush  []string   `json:"pending_push"` // sockets that have not taken the staple yet
	// Updater is who keeps the staple fresh: "stapler", or "haproxy" for a certificate under
	// HAProxy's own ocsp-update (stapler then keeps HAProxy's copy on disk).
	Updater string         `json:"updater"`
	HAProxy []haproxyView  `json:"haproxy"`
	problem bool           // sorts first
	detail  string         // why the status is unknown or none, for the table
	ref     *stapleRef     // the staple HAProxy should serve, when there is one
	views   map[string]int // index in HAProxy by socket
}

// haproxyView is what one HAProxy does with a certificate's staple.
type haproxyView struct {
	Socket      string `json:"socket"`
	Slot        bool   `json:"slot"`         // HAProxy has an OCSP slot for the certificate
	MatchesDisk bool   `json:"matches_disk"` // and serves the staple on disk, or a newer one
	Newer       bool   `json:"newer"`        // a newer response than the disk's
	Version     string `json:"version"`      // HAProxy's version, when known
	Error       string `json:"error"`        // why stapler could not tell
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// collectStatus reads the state, the certificates and staples on disk, and asks each HAProxy
// what it serves. It contacts no responder and writes nothing.
func collectStatus(ctx context.Context, opt runOptions, now time.Time) (*statusReport, error) {
	paths := opt.Only
	if len(paths) == 0 {
		var err error
		if paths, err = scan(scanSpec{Dirs: opt.Dirs, Files: opt.Files, Recursive: opt.Recursive, Exclude: opt.Exclude}); err != nil {
			return nil, err
		}
	}
	state, err := loadState(opt.State, false)
	if err != nil {
		return nil, err
	}
	rep := &statusReport{GeneratedAt: now, Certificates: []certStatus{}}
	var refs []stapleRef
	for _, path := range paths {
		cs, ok := certStatusOf(opt.Naming.file(path), state.Certificates[path], now)
		if !ok {
			continue
		}
		if cs.ref != nil {
			refs = append(refs, *cs.ref)
		}
		rep.Certificates = append(rep.Certificates, cs)
	}
	reports := syncSockets(ctx, opt.Sockets, refs, syncOptions{Timeout: opt.SocketTimeout, Now: now, ReadOnly: true})
	for i := range rep.Certificates {
		cs := &rep.Certificates[i]
		cs.HAProxy = []haproxyView{}
		if cs.ref == nil {
			continue
		}
		for _, raw := range opt.Sockets {
			if reports[raw].Auto[cs.Path] {
				cs.Updater = "haproxy"
			}
			v := viewOf(raw, reports[raw])
			res := reports[raw].Results[cs.Path]
			v.Slot, v.MatchesDisk, v.Newer = res.slot, res.outcome == inSync, res.newer
			if res.outcome == unknown && v.Error == "" {
				v.Error = res.why
			}
			cs.HAProxy = append(cs.HAProxy, v)
			if !v.MatchesDisk {
				cs.problem = true
			}
		}
	}
	slices.SortStableFunc(rep.Certificates, func(a, b certStatus) int {
		switch {
		case a.problem == b.problem:
			return strings.Compare(a.Path, b.Path)
		case a.problem:
			return -1
		}
		return 1
	})
	return rep, nil
}

// certStatusOf describes the certificate file f from the state entry st and the disk; ok is
// false for a file that holds no certificate.
func certStatusOf(f certFile, st *CertState, now time.Time) (cs certStatus, ok bool) {
	path := f.Path
	cs = certStatus{Path: path, StapleStatus: "unknown", PendingPush: []string{}}
	data, err := readBundle(path, maxBundleBytes)
	if err != nil {
		cs.LastError, cs.problem = err.Error(), true
		return cs, true
	}
	if st == nil || st.Hash != hashBytes(data) {
		certs, err := parseBundle(data)
		switch {
		case errors.Is(err, errNotCertificate):
			return cs, false
		case err != nil:
			cs.LastError, cs.problem = err.Error(), true
			return cs, true
		}
		leaf := certs[0]
		cs.Subject, cs.Serial, cs.NotAfter, cs.Responder = subjectName(leaf), fmt.Sprintf("%x", leaf.SerialNumber), timePtr(leaf.NotAfter), responderURL(leaf)
		cs.detail, cs.problem = "not checked yet", true
		if cs.Responder == "" {
			cs.StapleStatus, cs.detail, cs.problem = "no_responder", "", false
		}
		return cs, true
	}
	cs.Subject, cs.Serial, cs.NotAfter, cs.Responder = st.Subject, st.Serial, timePtr(st.NotAfter), st.Responder
	cs.NextRefresh, cs.Failures, cs.FailingSince, cs.LastError = timePtr(st.NextDue), st.Failures, timePtr(st.FailingSince), st.LastError
	cs.PendingPush = append(cs.PendingPush, st.PendingPush...)
	if cs.Responder == "" {
		cs.StapleStatus, cs.NextRefresh = "no_responder", nil
		return cs, true
	}
	cs.Updater = "stapler"
	if st.Updater != "" {
		cs.Updater = st.Updater
	}
	staple, err := readRegular(f.Staple, maxStapleBytes)
	switch {
	case err != nil:
		cs.StapleStatus, cs.detail = "none", "no staple on disk"
	case hashBytes(staple) != st.StapleHash:
		cs.detail = "changed on disk"
	case !st.NextUpdate.After(now):
		cs.StapleStatus, cs.detail = "none", "staple expired"
	default:
		cs.StapleStatus = st.Status
		cs.ThisUpdate, cs.NextUpdate = timePtr(st.ThisUpdate), timePtr(st.NextUpdate)
		left := int64(st.NextUpdate.Sub(now) / time.Second)
		cs.TimeLeft = &left
		if st.CertID != "" {
			cs.ref = &stapleRef{Path: path, Name: f.Name, IssuerFile: f.Issuer, DER: staple, CertID: st.CertID, Serial: st.Serial, ThisUpdate: st.ThisUpdate, ProducedAt: st.ProducedAt, Status: st.Status, NextUpdate: st.NextUpdate}
		}
	}
	cs.problem = cs.StapleStatus != "good" || cs.LastError != "" || now.After(st.NotAfter)
	return cs, true
}

// viewOf starts the view of one socket for one certificate.
func viewOf(socket string, rep socketReport) haproxyView {
	v := haproxyView{Socket: socket, Version: rep.Version}
	if rep.Err != nil {
		v.Error = rep.Err.Error()
	}
	return v
}

func writeStatusJSON(w io.Writer, rep *statusReport) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// writeStatusTable writes the report as a table that fits 100 columns, problems first.
func writeStatusTable(w io.Writer, rep *statusReport, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tSUBJECT\tSTAPLE\tLEFT\tREFRESH\tHAPROXY\tPROBLEM")
	for _, cs := range rep.Certificates {
		staple := strings.ReplaceAll(cs.StapleStatus, "_", " ")
		left, refresh := "-", "-"
		if cs.NextUpdate != nil {
			left = shortDuration(cs.NextUpdate.Sub(now))
		}
		switch {
		case cs.Updater == "haproxy":
			refresh = "haproxy" // HAProxy's own ocsp-update
		case cs.NextRefresh != nil:
			refresh = "now"
			if d := cs.NextRefresh.Sub(now); d > 0 {
				refresh = shortDuration(d)
			}
		}
		problem := cs.LastError
		if problem == "" {
			problem = cs.detail
		}
		if cs.NotAfter != nil && now.After(*cs.NotAfter) {
			problem = "certificate expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", clip(baseName(cs.Path), 16), clip(cs.Subject, 20), staple, left, refresh, haproxySummary(cs.HAProxy), clip(problem, 20))
	}
	return tw.Flush()
}

// haproxySummary is the HAPROXY column: "ok" when every HAProxy serves the staple on disk,
// otherwise what is wrong at the first one that does not.
func haproxySummary(views []haproxyView) string {
	for _, v := range views {
		switch {
		case v.Error != "":
			return "down"
		case !v.Slot:
			return "no slot"
		case !v.MatchesDisk:
			return "stale"
		}
	}
	if len(views) == 0 {
		return "-"
	}
	return "ok"
}

func baseName(path string) string { return path[strings.LastIndexByte(path, '/')+1:] }

// clip shortens s to n characters, marking the cut.
func clip(s string, n int) string {
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// shortDuration is d as "3d4h", "5h12m" or "25m".
func shortDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "expired"
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dm", int(d.Minutes()))
}
