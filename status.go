package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"stapler/internal/haproxy"
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
	TimeLeft     *int64     `json:"time_left_seconds"` // until its expiry
	NextRefresh  *time.Time `json:"next_refresh"`
	Failures     int        `json:"failures"`
	FailingSince *time.Time `json:"failing_since"`
	LastError    string     `json:"last_error"`
	PendingPush  []string   `json:"pending_push"` // sockets that do not serve the staple yet
	// SignerNotAfter is when the delegated responder certificate that signed the staple
	// expires, or null when the issuer signed it: the staple is good until the earlier of it
	// and next_update.
	SignerNotAfter *time.Time `json:"signer_not_after"`
	MustStaple     bool       `json:"must_staple"` // the certificate demands a staple (RFC 7633)
	// Updater is who keeps the staple fresh: "stapler", or "haproxy" for a certificate under
	// HAProxy's own ocsp-update (stapler then keeps HAProxy's copy on disk).
	Updater string `json:"updater"`
	// Problem says, for people, why there is no valid staple, or what failed last.
	Problem string        `json:"problem"`
	HAProxy []haproxyView `json:"haproxy"`
	problem bool          // sorts first

	ref        *stapleRef // the staple HAProxy should serve, when there is one
	verdict    verdict    // what every command says of it
	unreadable bool       // the file cannot be read as a certificate (LastError says why)
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

// collectStatus reads the state entries and looks at the certificates and staples on disk (cheaply:
// stat marks, and only what changed is read), and asks each HAProxy what it serves. It contacts
// no responder, verifies nothing and writes nothing: what changed since stapler verified it is
// reported as unknown. listed is startScan's, started before the state was read, as a run
// does (at 100,000 certificates listing the directory and reading the state take about a
// second each).
func collectStatus(ctx context.Context, opt runOptions, state *State, listed <-chan *observation, now time.Time) (*statusReport, error) {
	paths := opt.Only
	if len(paths) == 0 {
		obs := <-listed
		if obs.ScanErr != nil {
			return nil, obs.ScanErr
		}
		paths = obs.paths
	}
	rep := &statusReport{GeneratedAt: now, Certificates: []certStatus{}}
	// Looked at and judged several at a time: the disk answers faster when several stats wait
	// on it.
	seen := make([]certStatus, len(paths))
	skip := make([]bool, len(paths)) // not a certificate file
	dirs := newStatDirs()
	parallel(len(paths), observeJobs, func(i int) {
		f, old := opt.Naming.file(paths[i]), state.Certificates[paths[i]]
		st, changed, err := look(dirs, f, old)
		if skip[i] = errors.Is(err, errNotCertificate); skip[i] {
			return
		}
		why := ""
		switch {
		case changed && old == nil:
			why = "not checked yet"
		case changed:
			why = "certificate changed since stapler checked it"
		}
		seen[i] = certStatusOf(f, st, why, err, now)
	})
	dirs.close()
	var refs []stapleRef
	n := 0
	for i := range seen {
		if skip[i] {
			continue
		}
		if cs := &seen[i]; cs.ref != nil && len(opt.Sockets) > 0 {
			refs = append(refs, *cs.ref)
		}
		if n != i {
			seen[n] = seen[i]
		}
		n++
	}
	rep.Certificates = seen[:n]
	reports := reconcileSockets(ctx, opt.Sockets, refs, reconcileOptions{Timeout: opt.SocketTimeout, Now: now, ReadOnly: true})
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

// look brings a copy of a certificate's state entry up to date with the disk, as status and
// check see it: by stat marks (taken through dirs), reading only what changed, verifying
// nothing. changed reports a certificate file whose certificates are not those stapler checked
// (or new to it).
func look(dirs *statDirs, f certFile, old *CertState) (st *CertState, changed bool, err error) {
	st = old.clone()
	mark, err := dirs.mark(f.Path)
	if err != nil {
		return st, false, err
	}
	if old == nil || mark != old.CertStat || mark == "" {
		data, mark, err := readRegularStat(f.Path, maxBundleBytes)
		if err != nil {
			return st, false, err
		}
		blocks, hash := certBlocks(data)
		if old == nil || hash != old.CertHash {
			c, err := readCert(blocks, hash)
			if err != nil {
				if !errors.Is(err, errNotCertificate) {
					err = fmt.Errorf("%s: %w", f.Path, err)
				}
				return st, false, err
			}
			st.certificate(c)
			changed = true
		}
		st.certSeen(mark)
	}
	if !st.hasResponder() || changed {
		return st, changed, nil
	}
	smark, err := dirs.mark(f.Staple)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st.seen("", "", "")
	case err != nil:
		st.seen("", "", err.Error())
	case smark != st.DiskStat || st.DiskStat == "":
		data, mark, err := readRegularStat(f.Staple, maxStapleBytes)
		switch {
		case err != nil:
			st.seen("", "", err.Error())
		case hashBytes(data) == st.DiskHash:
			st.seen(mark, st.DiskHash, st.DiskProblem) // the same bytes, written again
		default:
			st.seen(mark, hashBytes(data), "") // unknown unless they are the vouched staple's
		}
	}
	return st, false, nil
}

// certStatusOf describes one certificate from its state entry as seen now, through the one
// verdict every command uses.
// unchecked, when not "", says why the certificate was not checked by stapler yet.
func certStatusOf(f certFile, st *CertState, unchecked string, err error, now time.Time) certStatus {
	cs := certStatus{Path: f.Path, StapleStatus: "unknown", PendingPush: []string{}}
	if err != nil {
		cs.LastError, cs.Problem, cs.problem, cs.unreadable = err.Error(), err.Error(), true, true
		return cs
	}
	v := st.verdict(now)
	cs.Subject, cs.Serial, cs.NotAfter = st.Subject, st.Serial, timePtr(st.NotAfter)
	if st.hasResponder() {
		cs.Responder = st.Responders[0]
	}
	cs.MustStaple, cs.Updater = st.MustStaple, v.Updater
	cs.StapleStatus, cs.Problem = v.Staple, v.Why
	if unchecked != "" && v.Staple != "no_responder" {
		cs.StapleStatus, cs.Problem = "unknown", unchecked
	}
	cs.NextRefresh, cs.Failures, cs.FailingSince, cs.LastError = timePtr(st.NextDue), st.Failures, timePtr(st.FailingSince), st.LastError
	if (cs.StapleStatus == "none" || cs.StapleStatus == "unknown") && st.Failures == 0 && (unchecked != "" || v.Cert == "") {
		// No staple stapler vouches for on disk, no back-off, a certificate that is current
		// (or not read yet): the next run fetches one.
		cs.NextRefresh = &now
	}
	cs.PendingPush = append(cs.PendingPush, v.Pending...)
	cs.verdict = v
	if v.Staple == "no_responder" {
		cs.NextRefresh, cs.problem = nil, v.problem()
		return cs
	}
	if v.Staple == "good" || v.Staple == "revoked" {
		s := st.Staple
		cs.ThisUpdate, cs.NextUpdate = timePtr(s.ThisUpdate), timePtr(s.NextUpdate)
		cs.SignerNotAfter = timePtr(s.SignerNotAfter)
		left := int64(v.Left / time.Second)
		cs.TimeLeft = &left
		if unchecked == "" {
			cs.ref = &stapleRef{Path: f.Path, Name: f.Name, File: f.Staple, IssuerFile: f.Issuer, Hash: s.Hash, CertID: s.CertID, Serial: st.Serial,
				ThisUpdate: s.ThisUpdate, ProducedAt: s.ProducedAt, Status: s.Status, NextUpdate: s.NextUpdate}
		}
	}
	cs.problem = v.problem() || cs.StapleStatus == "unknown" || cs.LastError != ""
	return cs
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

// writeStatusTable writes the report as a table that fits 100 columns, problems first. Names
// are shortened in the middle only when they must be (the start and the end tell similar ones
// apart); a certificate's problem follows its row, whole, wrapped, where it is never cut.
func writeStatusTable(w io.Writer, rep *statusReport, now time.Time) error {
	rows := [][]string{{"FILE", "SUBJECT", "STAPLE", "LEFT", "REFRESH", "HAPROXY"}}
	var problems []string
	said := map[string]bool{} // a socket's error, said once
	for _, cs := range rep.Certificates {
		staple := strings.ReplaceAll(cs.StapleStatus, "_", " ")
		if cs.MustStaple {
			staple += " (must-staple)"
		}
		left, refresh := "-", "-"
		if cs.TimeLeft != nil {
			left = shortDuration(time.Duration(*cs.TimeLeft) * time.Second)
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
		switch {
		case problem == "":
			problem = cs.Problem
		case cs.Problem != "" && cs.Problem != cs.LastError && cs.StapleStatus != "good":
			// What is wrong on disk, then why the last fetch did not mend it.
			problem = cs.Problem + "; the last fetch failed: " + cs.LastError
		}
		if cs.NotAfter != nil && now.After(*cs.NotAfter) {
			problem = "certificate expired"
		}
		rows = append(rows, []string{baseName(cs.Path), cs.Subject, staple, left, refresh, haproxySummary(cs.HAProxy)})
		var lines []string
		if problem != "" {
			lines = append(lines, problem)
		}
		for _, v := range cs.HAProxy {
			switch {
			case v.Error != "" && said[v.Error]:
				lines = append(lines, "HAProxy "+v.Socket+": as above")
			case v.Error != "":
				said[v.Error] = true
				lines = append(lines, "HAProxy "+strings.TrimPrefix(v.Error, haproxy.ErrUnreachable.Error()+": "))
				if !strings.Contains(v.Error, v.Socket) {
					lines[len(lines)-1] = "HAProxy " + v.Socket + ": " + v.Error
				}
			case !v.MatchesDisk:
				lines = append(lines, "HAProxy "+v.Socket+" does not serve the staple on disk")
			}
		}
		problems = append(problems, strings.Join(lines, "\n"))
	}
	widths := columnWidths(rows, 100, []int{0, 1}) // FILE and SUBJECT give way first
	var b strings.Builder
	for i, row := range rows {
		line := ""
		for c, cell := range row {
			cell = elide(cmp.Or(cell, "-"), widths[c])
			if c < len(row)-1 {
				cell += strings.Repeat(" ", widths[c]-len([]rune(cell))+2)
			}
			line += cell
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
		if i > 0 && problems[i-1] != "" {
			for _, problem := range strings.Split(problems[i-1], "\n") {
				for _, l := range wrapText(problem, 96) {
					b.WriteString("    " + l + "\n")
				}
			}
		}
	}
	if len(rep.Certificates) > 0 {
		b.WriteString("(every field: stapler status --json; what each run did: stapler run -v)\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// columnWidths fits rows within width: each column as wide as its widest cell, and when the
// whole is too wide, the shrinkable columns (widest first) give way, to no less than 12.
func columnWidths(rows [][]string, width int, shrinkable []int) []int {
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for c, cell := range row {
			widths[c] = max(widths[c], len([]rune(cmp.Or(cell, "-"))))
		}
	}
	total := func() int {
		t := 0
		for _, w := range widths {
			t += w + 2
		}
		return t - 2
	}
	for total() > width {
		widest := -1
		for _, c := range shrinkable {
			if widths[c] > 12 && (widest < 0 || widths[c] > widths[widest]) {
				widest = c
			}
		}
		if widest < 0 {
			break
		}
		widths[widest]--
	}
	return widths
}

// elide shortens s to n characters by cutting its middle: the start and the end of similar
// names (www.example.com.pem, www.example.net.pem) stay.
func elide(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	head := (n - 1) / 2
	return string(r[:head]) + "…" + string(r[len(r)-(n-1-head):])
}

// wrapText breaks s into lines of at most width characters, at spaces where it can.
func wrapText(s string, width int) []string {
	var lines []string
	for len([]rune(s)) > width {
		r := []rune(s)
		cut := width
		for i := width; i > width/2; i-- {
			if r[i] == ' ' {
				cut = i
				break
			}
		}
		lines = append(lines, strings.TrimRight(string(r[:cut]), " "))
		s = strings.TrimLeft(string(r[cut:]), " ")
	}
	return append(lines, s)
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
