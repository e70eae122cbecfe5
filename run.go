package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// runOptions is everything one run needs, as plain values.
type runOptions struct {
	Config
	Only   []string // certificate files named on the command line: check these only
	Force  bool     // treat every staple as due
	DryRun bool     // decide and report, contact nobody, write nothing
}

// summary counts what a run did. Every certificate checked lands in exactly one of UpToDate,
// Refreshed, NoResponder, Skipped, Due (dry run) and Failed.
type summary struct {
	Checked     int
	Refreshed   int
	UpToDate    int
	NoResponder int
	Skipped     int // expired or not yet valid
	Due         int // dry run only
	Failed      int
	Revoked     int // refreshed, and the responder says revoked
	PushFailed  int // refreshed, but at least one HAProxy did not take the staple
	Errors      int // problems not tied to one certificate (an unreadable directory)
}

// ok reports whether the run met its promise: every certificate with a responder has a fresh,
// valid, good staple on disk and in every configured HAProxy.
func (s summary) ok() bool {
	return s.Failed == 0 && s.Revoked == 0 && s.PushFailed == 0 && s.Errors == 0
}

func (s summary) log(dryRun bool, took time.Duration) {
	attrs := []any{"checked", s.Checked}
	if dryRun {
		attrs = append(attrs, "due", s.Due)
	} else {
		attrs = append(attrs, "refreshed", s.Refreshed)
	}
	attrs = append(attrs, "up_to_date", s.UpToDate, "without_responder", s.NoResponder, "failed", s.Failed)
	if s.Skipped > 0 {
		attrs = append(attrs, "skipped", s.Skipped)
	}
	if s.Revoked > 0 {
		attrs = append(attrs, "revoked", s.Revoked)
	}
	if s.PushFailed > 0 {
		attrs = append(attrs, "push_failed", s.PushFailed)
	}
	attrs = append(attrs, "took", took.Round(time.Millisecond))
	slog.Info("run finished", attrs...)
}

// item is one certificate file on its way through a run.
type item struct {
	path   string
	old    *CertState // what the state recorded before this run, nil if nothing
	st     *CertState // what it records after
	bundle []*x509.Certificate
	reason string // why it is due
	err    error
	staple []byte   // the staple on disk when the run began
	der    []byte   // the staple to push
	pushTo []string // the sockets to push it to
}

// run does the whole job once: scan, decide, fetch, validate, write, push, record.
func run(ctx context.Context, opt runOptions, now time.Time) (summary, error) {
	start := time.Now()
	var sum summary
	paths := opt.Only
	if len(paths) == 0 {
		var err error
		paths, err = scan(scanSpec{Dirs: opt.Dirs, Files: opt.Files, Recursive: opt.Recursive, Exclude: opt.Exclude})
		if err != nil {
			slog.Error("cannot read certificates", "err", err)
			sum.Errors++
		}
	}

	if !opt.DryRun {
		unlock, err := lockState(ctx, opt.State)
		if err != nil {
			return sum, err
		}
		defer unlock()
	}
	state, err := loadState(opt.State, !opt.DryRun)
	if err != nil {
		return sum, err
	}

	client := httpClient(opt.Config)
	finder := &issuerFinder{Dirs: opt.IssuerDirs, CacheDir: filepath.Join(filepath.Dir(opt.State), "issuers"), MaxBytes: opt.MaxResponseBytes}
	if opt.FetchIssuers && !opt.DryRun {
		finder.Client = client
	}
	pol := policy{RenewAt: opt.RenewAt, Spread: opt.RenewSpread, RetryBase: opt.RetryBase, RetryMax: opt.RetryMax}

	var due, pushes []*item
	seen := map[string]bool{}
	for _, path := range paths {
		it := &item{path: path, old: state.Certificates[path]}
		err := it.check(ctx, finder, pol, now, opt.Force)
		switch {
		case errors.Is(err, errNotCertificate):
			slog.Debug("skipping file without a PEM certificate", "file", path)
			continue
		case err != nil:
			slog.Error("cannot check certificate", "cert", path, "err", err)
			sum.Checked++
			sum.Failed++
			continue
		}
		sum.Checked++
		seen[path] = true
		state.Certificates[path] = it.st
		switch {
		case it.st.Responder == "":
			slog.Debug("certificate has no OCSP responder", "cert", path)
			sum.NoResponder++
		case now.After(it.st.NotAfter):
			slog.Warn("skipping expired certificate", "cert", path, "not_after", it.st.NotAfter)
			sum.Skipped++
		case now.Before(it.st.NotBefore):
			slog.Warn("skipping certificate that is not valid yet", "cert", path, "not_before", it.st.NotBefore)
			sum.Skipped++
		case it.reason == dueNotDue && it.st.Failures > 0 && !it.st.hasValidStaple(now):
			// Backing off with nothing valid to staple: nothing asked, but not fine either.
			slog.Error("no valid staple; backing off", "cert", path, "last_error", it.st.LastError, "failures", it.st.Failures, "retry_after", it.st.NextDue)
			sum.Failed++
		case it.reason == dueNotDue:
			if it.st.Status == "revoked" {
				slog.Error("certificate is revoked", "cert", path, "revoked_at", it.st.RevokedAt, "serial", it.st.Serial)
				sum.Revoked++
			} else {
				slog.Debug("staple is up to date", "cert", path, "next_due", it.st.NextDue)
			}
			sum.UpToDate++
			// A push that failed in an earlier run is tried again with the staple on disk.
			it.pushTo = slices.DeleteFunc(it.st.PendingPush, func(s string) bool { return !slices.Contains(opt.Sockets, s) })
			if len(it.pushTo) > 0 && !opt.DryRun {
				it.der = it.staple
				pushes = append(pushes, it)
			}
		case opt.DryRun:
			slog.Info("would refresh staple", "cert", path, "reason", it.reason, "responder", it.st.Responder)
			sum.Due++
		default:
			due = append(due, it)
		}
	}
	if opt.DryRun {
		sum.log(true, time.Since(start))
		return sum, nil
	}

	f := &fetcher{Client: client, MaxBytes: opt.MaxResponseBytes, Override: opt.ResponderOverride}
	var wg sync.WaitGroup
	work := make(chan *item)
	for range min(opt.Jobs, len(due)) {
		wg.Go(func() {
			for it := range work {
				it.err = it.refresh(ctx, f, finder, now)
			}
		})
	}
	for _, it := range due {
		work <- it
	}
	close(work)
	wg.Wait()

	for _, it := range due {
		if it.err != nil {
			it.st.Failures++
			it.st.LastError = it.err.Error()
			it.st.NextDue = pol.afterFailure(now, it.st.Failures, it.st.NextUpdate)
			attrs := []any{"cert", it.path, "err", it.err, "failures", it.st.Failures, "retry_after", it.st.NextDue}
			if !it.st.NextUpdate.IsZero() {
				attrs = append(attrs, "current_staple_valid_until", it.st.NextUpdate)
			}
			slog.Error("refresh failed", attrs...)
			sum.Failed++
			continue
		}
		it.st.NextDue = pol.afterSuccess(it.path, now, it.st.ThisUpdate, it.st.NextUpdate)
		sum.Refreshed++
		if it.st.Status == "revoked" {
			sum.Revoked++
			slog.Error("certificate is revoked", "cert", it.path, "revoked_at", it.st.RevokedAt, "serial", it.st.Serial)
		} else {
			slog.Info("updated staple", "cert", it.path, "reason", it.reason, "next_update", it.st.NextUpdate, "next_due", it.st.NextDue)
		}
		it.pushTo = opt.Sockets
		pushes = append(pushes, it)
	}
	for _, it := range pushes {
		sum.PushFailed += it.push(ctx, opt.SocketTimeout)
	}

	if len(opt.Only) == 0 {
		for path := range state.Certificates {
			if !seen[path] {
				delete(state.Certificates, path)
			}
		}
	}
	if err := state.save(opt.State); err != nil {
		return sum, err
	}
	sum.log(false, time.Since(start))
	return sum, nil
}

// check reads the certificate file, brings its state entry up to date and decides whether its
// staple is due. It contacts nobody, except to fetch an issuer needed to verify a staple that
// changed on disk.
func (it *item) check(ctx context.Context, finder *issuerFinder, pol policy, now time.Time, force bool) error {
	data, err := readBundle(it.path, maxBundleBytes)
	if err != nil {
		return err
	}
	hash := hashBytes(data)
	if it.old != nil && it.old.Hash == hash {
		st := *it.old
		it.st = &st
	} else {
		if it.bundle, err = parseBundle(data); err != nil {
			return err
		}
		leaf := it.bundle[0]
		it.st = &CertState{
			Hash:      hash,
			Serial:    fmt.Sprintf("%x", leaf.SerialNumber),
			Issuer:    leaf.Issuer.String(),
			NotBefore: leaf.NotBefore,
			NotAfter:  leaf.NotAfter,
			Responder: responderURL(leaf),
		}
	}
	if it.st.Responder == "" || now.After(it.st.NotAfter) || now.Before(it.st.NotBefore) {
		return nil // run reports these
	}
	staple, err := os.ReadFile(stapleName(it.path))
	stapleHash := stapleMissing
	if err == nil {
		it.staple = staple
		stapleHash = hashBytes(staple)
	}
	it.reason = dueReason(now, it.old, hash, stapleHash, force)
	if it.reason != dueReplaced {
		return nil
	}
	// Someone else wrote the staple (another tool, a restored backup). Keep it if it is valid
	// for this certificate; replace it otherwise.
	resp, err := it.verifyStaple(ctx, finder, staple, now)
	if err != nil {
		it.reason = "staple on disk is not valid: " + err.Error()
		return nil
	}
	if resp.Status != ocsp.Good {
		it.reason = "staple on disk says " + statusName(resp.Status)
		return nil
	}
	it.st.recordStaple(staple, resp)
	it.st.NextDue = pol.afterSuccess(it.path, now, resp.ThisUpdate, resp.NextUpdate)
	it.reason = dueReason(now, it.st, hash, stapleHash, false)
	if it.reason == dueNotDue {
		slog.Info("adopted staple found on disk", "cert", it.path, "next_update", resp.NextUpdate)
	}
	return nil
}

func (it *item) verifyStaple(ctx context.Context, finder *issuerFinder, staple []byte, now time.Time) (*ocsp.Response, error) {
	if err := it.parse(); err != nil {
		return nil, err
	}
	issuer, _, err := finder.find(ctx, it.path, it.bundle)
	if err != nil {
		return nil, err
	}
	req, err := newRequest(it.bundle[0], issuer)
	if err != nil {
		return nil, err
	}
	return validateResponse(staple, req, it.bundle[0], issuer, now)
}

// parse parses the bundle if check did not need to.
func (it *item) parse() error {
	if it.bundle != nil {
		return nil
	}
	data, err := readBundle(it.path, maxBundleBytes)
	if err != nil {
		return err
	}
	it.bundle, err = parseBundle(data)
	return err
}

// refresh fetches, validates and writes a new staple. Nothing touches disk until the response
// has passed validation, so a failure leaves the last good staple as it was. It writes
// <cert>.issuer before <cert>.ocsp when HAProxy could not otherwise find the issuer: HAProxy
// 2.6 refuses to start with a .ocsp whose issuer it cannot find.
func (it *item) refresh(ctx context.Context, f *fetcher, finder *issuerFinder, now time.Time) error {
	if err := it.parse(); err != nil {
		return err
	}
	leaf := it.bundle[0]
	issuer, src, err := finder.find(ctx, it.path, it.bundle)
	if err != nil {
		return err
	}
	req, err := newRequest(leaf, issuer)
	if err != nil {
		return err
	}
	der, err := f.fetch(ctx, it.st.Responder, req)
	if err != nil {
		return err
	}
	resp, err := validateResponse(der, req, leaf, issuer, now)
	if err != nil {
		return err
	}
	if src == issuerFromDir || src == issuerFromAIA {
		if _, err := writeFileAtomic(issuerName(it.path), issuerPEM(issuer), 0o644); err != nil {
			return fmt.Errorf("writing issuer: %w", err)
		}
	}
	if _, err := writeFileAtomic(stapleName(it.path), der, 0o644); err != nil {
		return fmt.Errorf("writing staple: %w", err)
	}
	it.st.recordStaple(der, resp)
	it.st.LastUpdate = now
	it.der = der
	return nil
}

// push hands the item's staple to every socket in pushTo. Sockets that did not take it are
// recorded, to be tried again by the next run; it returns how many.
func (it *item) push(ctx context.Context, timeout time.Duration) (failed int) {
	it.st.PendingPush = nil
	for _, sock := range it.pushTo {
		if err := pushStaple(ctx, sock, it.der, timeout); err != nil {
			slog.Error("push failed", "cert", it.path, "socket", sock, "err", err)
			it.st.PendingPush = append(it.st.PendingPush, sock)
			failed++
		} else {
			slog.Debug("pushed staple", "cert", it.path, "socket", sock)
		}
	}
	return failed
}

// hasValidStaple reports whether the staple recorded as on disk is still worth stapling at now.
func (st *CertState) hasValidStaple(now time.Time) bool {
	return st.StapleHash != "" && st.NextUpdate.After(now.Add(minValidity))
}

// recordStaple notes a valid staple now on disk.
func (st *CertState) recordStaple(der []byte, resp *ocsp.Response) {
	st.StapleHash = hashBytes(der)
	st.Status = statusName(resp.Status)
	st.ThisUpdate = resp.ThisUpdate
	st.NextUpdate = resp.NextUpdate
	st.RevokedAt = resp.RevokedAt
	st.Failures = 0
	st.LastError = ""
}

// httpClient is shared by every request of a run so that requests to one responder reuse a
// few keep-alive connections.
func httpClient(cfg Config) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = http.ProxyFromEnvironment
	if cfg.Proxy != "" {
		u, _ := url.Parse(cfg.Proxy) // checked by validate
		t.Proxy = http.ProxyURL(u)
	}
	t.MaxConnsPerHost = cfg.Jobs
	t.MaxIdleConnsPerHost = cfg.Jobs
	return &http.Client{Transport: t, Timeout: cfg.Timeout}
}
