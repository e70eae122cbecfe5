package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// runOptions is everything one run needs, as plain values.
type runOptions struct {
	Config
	Only   []string // certificate files named on the command line: check these only
	Force  bool     // treat every staple as due
	DryRun bool     // decide and report, contact nobody, write nothing
	Notes  []string // what stapler could not follow in HAProxy's configuration
	Naming naming   // what HAProxy makes of each certificate file
	// Progress, when set, is a terminal that shows how far the fetching is.
	Progress io.Writer
}

// summary counts what a run did. Every certificate checked lands in exactly one of UpToDate,
// Refreshed, NoResponder, Skipped, Due (dry run), Unfinished and Failed.
type summary struct {
	Checked     int
	Refreshed   int
	UpToDate    int
	NoResponder int
	Skipped     int // expired or not yet valid
	Due         int // dry run only
	Unfinished  int // due, but the run ended (deadline, signal) before they were fetched
	Failed      int
	Revoked     int // the staple says revoked
	PushFailed  int // staples that at least one HAProxy did not take
	NeedsReload int // staples some HAProxy serves only after a reload, which did not happen
	Errors      int // problems not tied to one certificate (an unreadable directory)
}

// ok reports whether the run met its promise: every certificate with a responder has a fresh,
// valid, good staple on disk and in every configured HAProxy.
func (s summary) ok() bool {
	return s.Failed == 0 && s.Revoked == 0 && s.PushFailed == 0 && s.NeedsReload == 0 && s.Errors == 0 && s.Unfinished == 0
}

func (s summary) log(dryRun bool, took time.Duration) {
	attrs := []any{"checked", s.Checked}
	if dryRun {
		attrs = append(attrs, "due", s.Due)
	} else {
		attrs = append(attrs, "refreshed", s.Refreshed)
	}
	attrs = append(attrs, "up_to_date", s.UpToDate, "without_responder", s.NoResponder, "failed", s.Failed)
	for _, extra := range []struct {
		name string
		n    int
	}{{"skipped", s.Skipped}, {"revoked", s.Revoked}, {"push_failed", s.PushFailed}, {"needs_reload", s.NeedsReload}, {"unfinished", s.Unfinished}, {"errors", s.Errors}} {
		if extra.n > 0 {
			attrs = append(attrs, extra.name, extra.n)
		}
	}
	attrs = append(attrs, "took", took.Round(time.Millisecond))
	slog.Info("run finished", attrs...)
}

// run does the whole job once: scan, decide, fetch, validate, write, push, record. It stops
// starting new work when ctx ends; what was not done stays due for the next run.
func run(ctx context.Context, opt runOptions, now time.Time) (summary, error) {
	start := time.Now()
	var sum summary
	paths, explicit := opt.Only, map[string]bool{}
	for _, p := range append(slices.Clone(opt.Only), opt.Files...) {
		explicit[p] = true
	}
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
	if !opt.DryRun {
		dirs := []string{filepath.Dir(opt.State)}
		for _, p := range paths {
			dirs = append(dirs, filepath.Dir(p))
		}
		removeStaleTemps(dedupe(dirs))
	}

	client := httpClient(opt.Config)
	finder := &issuerFinder{Dirs: opt.IssuerDirs, CacheDir: filepath.Join(filepath.Dir(opt.State), "issuer-cache"), MaxBytes: opt.MaxResponseBytes, ReadOnly: opt.DryRun}
	if opt.FetchIssuers && !opt.DryRun {
		finder.Client = client
	}
	pol := policy{RenewAt: opt.RenewAt, Spread: opt.RenewSpread, RetryBase: opt.RetryBase, RetryMax: opt.RetryMax}

	var due, checked []*item
	keep := map[string]bool{} // state entries to keep
	dirs := &dirSyncer{}
	items := make([]*item, len(paths))
	for i, path := range paths {
		items[i] = &item{path: path, file: opt.Naming.file(path), old: state.Certificates[path], dryRun: opt.DryRun, dirs: dirs}
	}
	checkAll(ctx, items, finder, pol, now, opt.Force)
	// Certificates HAProxy's own ocsp-update keeps fresh (2.8+) are left to it while its copy
	// is good: one look at each HAProxy before deciding what to fetch.
	var auto map[string][]autoCopy
	if len(opt.Sockets) > 0 && !opt.Force {
		var files []certFile
		for _, it := range items {
			if it.err == nil && it.st.Responder != "" {
				files = append(files, it.file)
			}
		}
		auto = observeAutoUpdates(ctx, opt.Sockets, files, opt.SocketTimeout)
	}
	for _, it := range items {
		path, err := it.path, it.err
		it.err = nil
		if err == nil && it.st != nil && it.file.Auto {
			it.st.Updater = "haproxy" // so its configuration says, socket or not
		}
		if err == nil && auto != nil {
			if !it.file.Auto {
				it.st.Updater = ""
			}
			if copies := auto[path]; len(copies) > 0 && it.st.Responder != "" && now.Before(it.st.NotAfter) && !now.Before(it.st.NotBefore) {
				_, err = it.keptByHAProxy(ctx, finder, pol, copies, now)
			}
		}
		switch {
		case errors.Is(err, errNotCertificate) && !explicit[path] && it.old != nil:
			// Stapled before: HAProxy will refuse this file now, and its staple is stale.
			slog.Warn("file no longer holds a PEM certificate", "file", path)
			continue
		case errors.Is(err, errNotCertificate) && !explicit[path]:
			slog.Debug("skipping file without a PEM certificate", "file", path)
			continue
		case err != nil:
			slog.Error("cannot check certificate", "cert", path, "err", err)
			sum.Checked++
			sum.Failed++
			keep[path] = true
			continue
		}
		sum.Checked++
		keep[path] = true
		state.Certificates[path] = it.st
		checked = append(checked, it)
		// Pushes pending for sockets no longer configured are forgotten.
		it.st.PendingPush = slices.DeleteFunc(it.st.PendingPush, func(s string) bool { return !slices.Contains(opt.Sockets, s) })
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
		case it.reason == dueNotDue && !it.st.hasValidStaple(now):
			// Backing off after failures, with nothing valid left to staple.
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

	fetchAll(ctx, due, opt.Jobs, &fetcher{Client: client, MaxBytes: opt.MaxResponseBytes, Override: opt.ResponderOverride, PerResponder: opt.ResponderJobs}, finder, now, opt.Progress)
	for _, it := range due {
		switch {
		case it.err != nil && ctx.Err() != nil:
			sum.Unfinished++ // not the responder's fault: stays due, no back-off
		case it.err != nil:
			it.st.failed(it.err, now)
			it.st.NextDue = pol.afterFailure(now, it.st.Failures, it.st.NextUpdate)
			attrs := []any{"cert", it.path, "err", it.err, "failures", it.st.Failures, "retry_after", it.st.NextDue}
			if it.st.hasValidStaple(now) {
				attrs = append(attrs, "current_staple_valid_until", it.st.NextUpdate)
			}
			slog.Error("refresh failed", attrs...)
			sum.Failed++
		case !it.changed:
			// The responder answered with the staple already on disk, or an older one.
			it.st.NextDue = pol.afterSuccess(it.path, now, it.st.ThisUpdate, it.st.NextUpdate)
			slog.Debug("responder has nothing newer", "cert", it.path, "next_due", it.st.NextDue)
			sum.UpToDate++
			if it.st.Status == "revoked" {
				sum.Revoked++
				slog.Error("certificate is revoked", "cert", it.path, "revoked_at", it.st.RevokedAt, "serial", it.st.Serial)
			}
		default:
			it.st.NextDue = pol.afterSuccess(it.path, now, it.st.ThisUpdate, it.st.NextUpdate)
			sum.Refreshed++
			slog.Info("updated staple", "cert", it.path, "reason", it.reason, "status", it.st.Status, "next_update", it.st.NextUpdate, "next_due", it.st.NextDue)
			if it.st.Status == "revoked" {
				sum.Revoked++
				slog.Error("certificate is revoked", "cert", it.path, "revoked_at", it.st.RevokedAt, "serial", it.st.Serial)
			}
		}
	}
	if sum.Unfinished > 0 {
		slog.Error("run ended before every due staple was fetched; they stay due", "unfinished", sum.Unfinished, "err", context.Cause(ctx))
	}
	if len(opt.Sockets) > 0 {
		sum.PushFailed, sum.NeedsReload = syncHAProxies(ctx, opt, checked, now)
	}

	// A run that changed nothing (the common case) does not rewrite the state.
	dirty := state.Sockets != nil
	state.Sockets = nil // process marks of earlier versions: every run now compares
	for _, it := range checked {
		dirty = dirty || it.old == nil || !reflect.DeepEqual(*it.old, *it.st)
	}
	if len(opt.Only) == 0 && sum.Errors == 0 {
		for path := range state.Certificates {
			if !keep[path] {
				delete(state.Certificates, path)
				dirty = true
			}
		}
	}
	// The staples' directories are synced before the state that records them is saved.
	if err := dirs.sync(); err != nil {
		return sum, err
	}
	if _, err := os.Stat(opt.State); dirty || err != nil {
		if err := state.save(opt.State); err != nil {
			return sum, err
		}
	}
	if opt.MetricsFile != "" {
		if err := writeMetrics(opt.MetricsFile, state, checked, sum, now, time.Since(start)); err != nil {
			slog.Error("cannot write metrics", "file", opt.MetricsFile, "err", err)
			sum.Errors++
		}
	}
	sum.log(false, time.Since(start))
	return sum, nil
}

// checkAll runs check on every item, a few at a time: a run with nothing due reads two small
// files per certificate, and the disk answers faster when several wait on it.
func checkAll(ctx context.Context, items []*item, finder *issuerFinder, pol policy, now time.Time, force bool) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(checkJobs, len(items)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(items)); i = next.Add(1) - 1 {
				it := items[i]
				it.err = it.check(ctx, finder, pol, now, force)
				if it.reason == dueNotDue {
					it.data, it.bundle = nil, nil // not needed again: let the memory go
				}
			}
		})
	}
	wg.Wait()
}

// checkJobs is how many certificates are checked at once.
const checkJobs = 8

// fetchAll refreshes the due items, jobs at a time. Items not started before ctx ends get
// ctx's error.
func fetchAll(ctx context.Context, due []*item, jobs int, f *fetcher, finder *issuerFinder, now time.Time, progress io.Writer) {
	var wg sync.WaitGroup
	var done atomic.Int64
	work := make(chan *item)
	for range min(jobs, len(due)) {
		wg.Go(func() {
			for it := range work {
				if it.err = context.Cause(ctx); it.err == nil {
					it.err = it.refresh(ctx, f, finder, now)
				}
				done.Add(1)
			}
		})
	}
	if progress != nil && len(due) >= minProgress {
		stop := showProgress(progress, &done, len(due))
		defer stop()
	}
	for _, it := range due {
		work <- it
	}
	close(work)
	wg.Wait()
}

// minProgress is how many staples must be due for a run to show its progress.
const minProgress = 20

// showProgress rewrites one line on a terminal with how many of total staples are fetched,
// until stop, which clears it.
func showProgress(w io.Writer, done *atomic.Int64, total int) (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			fmt.Fprintf(w, "\rstapler: fetching staples %d/%d", done.Load(), total)
			select {
			case <-quit:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// syncHAProxies makes every HAProxy serve the staple on disk of each checked certificate, and
// records per certificate the sockets that do not (pending_push), for the next run, status and
// check. It runs reload_command when only a reload can help. It returns how many certificates
// some HAProxy does not serve, and how many still need a reload.
func syncHAProxies(ctx context.Context, opt runOptions, items []*item, now time.Time) (failed, reload int) {
	var refs []stapleRef
	var synced []*item
	for _, it := range items {
		if ref, ok := it.ref(now); ok {
			refs = append(refs, ref)
			synced = append(synced, it)
		}
	}
	reports := syncSockets(ctx, opt.Sockets, refs, syncOptions{Timeout: opt.SocketTimeout, Now: now, Reloadable: opt.ReloadCommand != ""})
	var severe []*item
	for _, it := range synced {
		it.st.PendingPush = nil
		needs := false
		for _, sock := range opt.Sockets {
			switch res := reports[sock].Results[it.path]; {
			case res.outcome == pushFailed, res.outcome == unknown:
				it.st.PendingPush = append(it.st.PendingPush, sock)
			case res.outcome == needsReload && res.severe:
				needs = true
				it.st.PendingPush = append(it.st.PendingPush, sock) // shown by status and check
			}
		}
		if needs {
			severe = append(severe, it)
		} else if len(it.st.PendingPush) > 0 {
			failed++
		}
	}
	if len(severe) > 0 && opt.ReloadCommand != "" {
		if err := runReload(ctx, opt.ReloadCommand, opt.ReloadTimeout); err != nil {
			slog.Error("reload failed; staples wait for the next reload", "err", err, "certificates", len(severe))
		} else {
			slog.Info("reloaded HAProxy: it reads the staples from disk", "certificates", len(severe))
			for _, it := range severe {
				it.st.PendingPush = nil
			}
			return failed, 0
		}
	}
	return failed, len(severe)
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
	t.MaxConnsPerHost = min(cfg.Jobs, cfg.ResponderJobs)
	t.MaxIdleConnsPerHost = t.MaxConnsPerHost
	return &http.Client{Transport: t, Timeout: cfg.Timeout}
}
