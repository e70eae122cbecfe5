package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"stapler/internal/durable"
	"stapler/internal/ocspcheck"
)

// fetched is what became of one certificate's due staple, or of HAProxy's copy of it.
type fetched struct {
	DER []byte
	// Staple is what stapler records of the response, kept instead of the parsed response
	// (with its embedded certificate) while thousands wait to be written.
	Staple    *Staple
	Responder string // the URL that answered
	// NotModified: the responder said (HTTP 304) that the staple on disk, which it gave
	// before, still stands.
	NotModified bool
	// CacheUntil is when the responder's HTTP cache may have something newer; ETag and
	// LastModified name its answer for the next conditional request.
	CacheUntil         time.Time
	ETag, LastModified string
	Err                error  // the refresh failed: the certificate's own failure
	Passed             error  // what went wrong with the responders asked before the one that answered
	Unfinished         bool   // the run ended (deadline, signal) before it was fetched: no fault of its
	Newer              bool   // newer than the valid staple on disk: written
	Stat               string // the staple file's stat mark after writing
}

// executor carries out a plan: it fetches, checks and writes staples.
type executor struct {
	*observer
	fetcher  *fetcher
	jobs     int
	progress io.Writer // a terminal that shows how far the fetching is, or nil
	// verifying is the time spent checking responses, in nanoseconds, summed over the
	// fetches running at once.
	verifying atomic.Int64
	// spares are the files (staples, issuer files) that write's batches replaced and did not
	// reuse yet: the next batch overwrites them rather than create new files. run drops them
	// once the writing ends.
	spares durable.Spares
}

// fetchAll refreshes the due staples, jobs at a time. Those not started before ctx ends are
// unfinished; a fetch that finished with an error is its certificate's failure, whatever
// happens to the run after.
// Each certificate's result goes in out, made beforehand; the certificate is then sent on
// finished, which is closed at the end.
func (ex *executor) fetchAll(ctx context.Context, due []*certPlan, out map[*certPlan]*fetched, finished chan<- *certPlan) {
	defer close(finished)
	var wg sync.WaitGroup
	var done atomic.Int64
	work := make(chan *certPlan)
	for range min(ex.jobs, len(due)) {
		wg.Go(func() {
			for p := range work {
				f := out[p]
				if ctx.Err() != nil {
					f.Unfinished = true
				} else {
					ex.fetch(ctx, p, f)
				}
				done.Add(1)
				finished <- p
			}
		})
	}
	if ex.progress != nil && len(due) >= minProgress {
		stop := showProgress(ex.progress, &done, len(due))
		defer stop()
	}
	for _, p := range due {
		work <- p
	}
	close(work)
	wg.Wait()
}

// writeChunk is how many fetched certificates are written together while the fetching goes on.
var writeChunk = 1024 // a variable for TestRunWritesWhileFetching

// fetchAndWrite fetches the due staples and writes what they bring as they come, writeChunk
// certificates at a time, so that the writing overlaps the fetching (the responders'
// latency). It returns the fetches' results, the certificates not written yet (the last
// ones, and those not fetched: write them with write), and how many issuer files could not be
// repaired.
func (ex *executor) fetchAndWrite(ctx context.Context, plans, due []*certPlan) (results map[*certPlan]*fetched, rest []*certPlan, issuerErrs int) {
	results = make(map[*certPlan]*fetched, len(due)) // each filled by fetchAll
	for _, p := range due {
		results[p] = &fetched{}
	}
	finished := make(chan *certPlan, len(due)) // never blocks a fetch
	written := map[*certPlan]bool{}
	var wg sync.WaitGroup
	wg.Go(func() {
		var chunk []*certPlan
		for p := range finished {
			if chunk = append(chunk, p); len(chunk) == writeChunk {
				issuerErrs += ex.write(chunk, results)
				for _, p := range chunk {
					written[p] = true
				}
				chunk = nil
			}
		}
	})
	ex.fetchAll(ctx, due, results, finished)
	wg.Wait()
	for _, p := range plans {
		if !written[p] {
			rest = append(rest, p)
		}
	}
	return results, rest, issuerErrs
}

// fetch asks each of the certificate's responders in turn until one gives a valid answer. The
// one that gave the staple on disk is asked conditionally when it named its answer (ETag,
// Last-Modified): "not modified" means that staple still stands.
func (ex *executor) fetch(ctx context.Context, p *certPlan, f *fetched) {
	iss := ex.issuer(ctx, p.Obs)
	switch {
	case iss.Err != nil && ctx.Err() != nil:
		f.Unfinished = true // the run ended while the issuer was fetched (AIA): no failure
		return
	case iss.Err != nil:
		f.Err = iss.Err
		return
	}
	// A staple HAProxy could not use is not asked for: the CA would answer every run.
	if err := ex.needsIssuerFile(p); err != nil {
		f.Err = err
		return
	}
	held := validStaple(p.Next, ex.now)
	var errs []error
	for _, url := range p.Next.Responders {
		var cond *conditional
		if held != nil && held.Responder == url && (held.ETag != "" || held.LastModified != "") {
			cond = &conditional{ETag: held.ETag, LastModified: held.LastModified}
		}
		a, err := ex.fetcher.fetch(ctx, url, iss.Req, cond, ex.now)
		f.Passed = errors.Join(errs...)
		if err == nil && a.NotModified {
			f.Responder, f.NotModified, f.CacheUntil = url, true, a.CacheUntil
			f.ETag, f.LastModified = cmp.Or(a.ETag, held.ETag), cmp.Or(a.LastModified, held.LastModified)
			return
		}
		var resp *ocspcheck.Response
		if err == nil {
			checking := time.Now()
			resp, err = ex.checker.Check(a.Body, iss.CertID, iss.Issuer, ex.now)
			ex.verifying.Add(int64(time.Since(checking)))
			if err == nil {
				err = tooSoon(resp, ex.now)
			}
			if err != nil {
				err = fmt.Errorf("responder %s: %w", url, notOCSP(err, a))
			}
		}
		if err == nil {
			f.DER, f.Responder, f.CacheUntil, f.ETag, f.LastModified = a.Body, url, a.CacheUntil, a.ETag, a.LastModified
			f.Staple = newStaple(a.Body, resp, iss.CertID, url)
			f.Staple.ETag, f.Staple.LastModified = a.ETag, a.LastModified
			f.Newer = held == nil || f.Staple.newerThan(held)
			return
		}
		if ctx.Err() != nil {
			// The run's deadline, or a signal, cut this fetch short: no fault of the
			// responder's. (A responder that answered with an error before then has not.)
			f.Unfinished = true
			return
		}
		errs = append(errs, err)
	}
	f.Err = errors.Join(errs...)
}

// notOCSP says what a body that is no OCSP response was, when its content type tells: an HTML
// error page from a proxy or a CDN, say.
func notOCSP(err error, a *answer) error {
	ct, _, _ := mime.ParseMediaType(a.ContentType)
	if !errors.Is(err, ocspcheck.ErrNotOCSP) || ct == "" || ct == "application/ocsp-response" {
		return err
	}
	start := a.Body[:min(len(a.Body), 60)]
	return fmt.Errorf("responder answered %s, not an OCSP response: %q", ct, start)
}

// write writes, in one durable batch, every new staple and the issuer file HAProxy needs
// beside it, the copies of HAProxy's own staples to keep, and the repairs of wrong issuer files
// stapler wrote. An issuer file is durable before its staple is renamed into place. A staple
// that could not be written is its fetch's error; it returns how many issuer files could not be
// repaired or removed.
func (ex *executor) write(plans []*certPlan, results map[*certPlan]*fetched) (issuerErrs int) {
	b := durable.Batch{Spares: &ex.spares}
	type pending struct {
		p              *certPlan
		f              *fetched
		issuer, staple int
	}
	var queue []pending
	for _, p := range plans {
		f := results[p]
		if p.Step == stepHAProxyCopy && p.Copy != nil {
			f = &fetched{DER: p.Copy.DER, Staple: p.Copy.staple(p.Obs.issued), Newer: true}
			results[p] = f
		}
		o := p.Obs
		q := pending{p: p, f: f, issuer: -1, staple: -1}
		switch {
		case o.Issuer.Remove:
			if err := os.Remove(o.File.Issuer); err != nil && !errors.Is(err, os.ErrNotExist) {
				slog.Error("cannot remove outdated issuer file", "file", o.File.Issuer, "err", err)
				issuerErrs++
			} else {
				slog.Info("removed outdated issuer file; the issuer is in the bundle", "file", o.File.Issuer)
				p.edit(func(st *CertState) { st.issuerChecked("", "-") })
			}
		case o.Issuer.Write != nil:
			q.issuer = b.Add(0, o.File.Issuer, issuerPEM(o.Issuer.Write), 0o644)
		}
		if f != nil && f.Err == nil && f.DER != nil && f.Newer {
			var err error
			if p.Step == stepHAProxyCopy { // a fetched staple passed this before it was asked for
				err = ex.needsIssuerFile(p)
			}
			if err != nil {
				f.Err = err
			} else {
				if iss := p.Obs.issued; q.issuer < 0 && iss != nil && (iss.Src == issuerFromDir || iss.Src == issuerFromAIA) {
					q.issuer = b.Add(0, o.File.Issuer, issuerPEM(iss.Issuer), 0o644)
				}
				if s := o.Staple; s.Err == nil && s.Hash != "" && f.Staple != nil && f.Staple.Hash != s.Hash {
					// The file held other bytes when observed: no need to read it to compare.
					q.staple = b.AddChanged(1, o.File.Staple, f.DER, 0o644)
				} else {
					q.staple = b.Add(1, o.File.Staple, f.DER, 0o644)
				}
			}
		}
		if q.issuer >= 0 || q.staple >= 0 {
			queue = append(queue, q)
		}
	}
	if b.Len() == 0 {
		return issuerErrs
	}
	b.Commit() // its errors are each file's, read below
	for _, q := range queue {
		if q.issuer >= 0 {
			written, err := b.Result(q.issuer)
			ex.logOwner(err)
			if err != nil && !errors.Is(err, durable.ErrOwner) {
				if q.f != nil && q.staple >= 0 {
					q.f.Err = fmt.Errorf("writing issuer: %w", err)
				} else {
					issuerErrs++ // a repair: the staple on disk stands, its issuer file is wrong
				}
				slog.Error("cannot write issuer file", "file", q.p.Obs.File.Issuer, "err", err)
			} else {
				if q.p.Obs.Issuer.Write != nil && written {
					if q.p.Obs.Issuer.Stat != "" {
						slog.Info("replaced outdated issuer file", "file", q.p.Obs.File.Issuer)
					} else {
						slog.Info("wrote issuer file; the bundle no longer holds the issuer", "file", q.p.Obs.File.Issuer)
					}
				}
				ex.recordIssuerFile(q.p)
			}
		}
		if q.staple >= 0 && q.f.Err == nil {
			_, err := b.Result(q.staple)
			ex.logOwner(err)
			if err != nil && !errors.Is(err, durable.ErrOwner) {
				q.f.Err = fmt.Errorf("writing staple: %w", err)
				continue
			}
			if fi, err := os.Stat(q.p.Obs.File.Staple); err == nil {
				q.f.Stat = statMark(fi)
			}
			q.f.DER = nil // on disk now: a push to HAProxy reads it back, one at a time
		}
	}
	return issuerErrs
}

// needsIssuerFile says why a staple cannot be written when HAProxy could not find its issuer:
// a staple file whose issuer HAProxy cannot find stops HAProxy from starting.
func (ex *executor) needsIssuerFile(p *certPlan) error {
	iss, f := p.Obs.issued, p.Obs.File
	if iss == nil || (iss.Src != issuerFromDir && iss.Src != issuerFromAIA) {
		return nil
	}
	_, statErr := os.Stat(f.Issuer)
	switch {
	case f.Issuer == "":
		return fmt.Errorf("the bundle lacks the issuer and the crt-store entry %s (%s) names no issuer file, so HAProxy could not use a staple: add issuer \"FILE\" to its load line", f.Name, f.Where)
	case f.IssuerGiven && statErr == nil:
		return fmt.Errorf("%s, named by %s, did not sign the certificate: correct it", f.Issuer, f.Where)
	}
	return nil
}

// recordIssuerFile notes the issuer file stapler just wrote in the planned state.
func (ex *executor) recordIssuerFile(p *certPlan) {
	data, stat, err := readRegularStat(p.Obs.File.Issuer, maxStapleBytes)
	if err != nil {
		return
	}
	written := hashBytes(data)
	if p.Obs.File.IssuerGiven {
		written = "" // the operator's file: never stapler's to replace
	}
	p.edit(func(st *CertState) { st.issuerChecked(stat, written) })
}

// logOwner says so when a file could not keep its owner.
func (ex *executor) logOwner(err error) {
	if errors.Is(err, durable.ErrOwner) {
		slog.Warn("wrote a file with another owner than it had; give stapler the user that owns the files (or run it as root)", "err", err)
	}
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
