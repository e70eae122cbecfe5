package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// certRow is what `stapler status` knows of one certificate.
type certRow struct {
	Path       string
	Staple     string // good, revoked, none, no responder, not checked yet, changed on disk
	NextUpdate time.Time
	NextDue    time.Time
	LastError  string
	HAProxy    map[string]string // by socket: serves, older, no slot, unreachable, ...
}

// collectStatus reads the state, the certificates and staples on disk, and asks each HAProxy
// what it serves. It contacts no responder and writes nothing.
func collectStatus(ctx context.Context, opt runOptions, now time.Time) ([]certRow, error) {
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
	var rows []certRow
	var refs []stapleRef
	for _, path := range paths {
		data, err := readBundle(path, maxBundleBytes)
		if err != nil {
			rows = append(rows, certRow{Path: path, Staple: "unreadable", LastError: err.Error()})
			continue
		}
		st := state.Certificates[path]
		row := certRow{Path: path, HAProxy: map[string]string{}}
		staple, serr := os.ReadFile(stapleName(path))
		switch {
		case st == nil || st.Hash != hashBytes(data):
			if _, err := parseBundle(data); errors.Is(err, errNotCertificate) {
				continue
			}
			row.Staple = "not checked yet"
		case st.Responder == "":
			row.Staple = "no responder"
		case serr != nil:
			row.Staple = "none"
		case hashBytes(staple) != st.StapleHash:
			row.Staple = "changed on disk"
		default:
			row.Staple = st.Status
			row.NextUpdate = st.NextUpdate
			if st.CertID != "" {
				refs = append(refs, stapleRef{Path: path, CertID: st.CertID, ThisUpdate: st.ThisUpdate})
			}
		}
		if st != nil && st.Hash == hashBytes(data) {
			row.NextDue, row.LastError = st.NextDue, st.LastError
		}
		rows = append(rows, row)
	}
	byPath := map[string]*certRow{}
	for i := range rows {
		byPath[rows[i].Path] = &rows[i]
	}
	for _, raw := range opt.Sockets {
		addr, _ := parseSocketAddr(raw) // checked by validate
		for path, view := range servedBy(ctx, addr, refs, opt.SocketTimeout) {
			byPath[path].HAProxy[raw] = view
		}
	}
	return rows, nil
}

// servedBy tells for each staple whether the HAProxy at addr serves it: "serves", "older",
// "no slot", or why it cannot tell.
func servedBy(ctx context.Context, addr socketAddr, refs []stapleRef, timeout time.Duration) map[string]string {
	views := map[string]string{}
	all := func(v string) map[string]string {
		for _, r := range refs {
			views[r.Path] = v
		}
		return views
	}
	if len(refs) == 0 {
		return views
	}
	s, err := openCLI(ctx, addr, timeout)
	if err != nil {
		return all("unreachable")
	}
	defer s.close()
	keys, err := s.ocspKeys()
	if err != nil {
		return all("unreachable")
	}
	var cmds []string
	var present []stapleRef
	for _, r := range refs {
		if keys[r.CertID] {
			cmds = append(cmds, "show ssl ocsp-response "+r.CertID)
			present = append(present, r)
		} else {
			views[r.Path] = "no slot"
		}
	}
	answers, err := s.execAll(cmds)
	if err != nil {
		return all("unreachable")
	}
	for i, a := range answers {
		r := present[i]
		switch served := servedThisUpdate(a.text); {
		case served.IsZero():
			views[r.Path] = "no staple"
		case served.Before(r.ThisUpdate.Add(-time.Second)):
			views[r.Path] = "older"
		default:
			views[r.Path] = "serves"
		}
	}
	return views
}

// printStatus writes the rows as a table, problems first.
func printStatus(w io.Writer, rows []certRow, sockets []string, now time.Time) error {
	problem := func(r certRow) bool {
		if r.LastError != "" || (r.Staple != "good" && r.Staple != "no responder") {
			return true
		}
		for _, v := range r.HAProxy {
			if v != "serves" {
				return true
			}
		}
		return false
	}
	var ordered []certRow
	for _, first := range []bool{true, false} {
		for _, r := range rows {
			if problem(r) == first {
				ordered = append(ordered, r)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tSTAPLE\tVALID FOR\tNEXT REFRESH\tHAPROXY\tLAST ERROR")
	for _, r := range ordered {
		hap := "-"
		if len(sockets) > 0 && len(r.HAProxy) > 0 {
			var views []string
			for _, s := range sockets {
				views = append(views, r.HAProxy[s])
			}
			hap = strings.Join(views, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Path, r.Staple, until(r.NextUpdate, now, "expired"), until(r.NextDue, now, "due"), hap, r.LastError)
	}
	if len(sockets) > 0 {
		fmt.Fprintf(tw, "\nHAPROXY column, in order: %s\n", strings.Join(sockets, ", "))
	}
	return tw.Flush()
}

// until is a short duration from now to t: "3d4h", "25m", past when t has passed, or "-".
func until(t, now time.Time, past string) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return past
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dm", int(d.Minutes()))
}
