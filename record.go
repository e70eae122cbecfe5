package main

import (
	"context"
	"log/slog"
	"time"
)

// summary counts what a run did. Every certificate checked lands in one of UpToDate, Refreshed,
// NoResponder, Skipped, Due (dry run), Unfinished and Failed; one without a responder that
// must staple (Must-Staple) in Failed too.
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
	// Errors are problems besides the certificates' own outcomes: an unreadable directory, an
	// issuer file that could not be repaired, a revoked_command that failed.
	Errors int
	// Phases is how long each phase of the run took; verify is the time spent checking
	// responses, summed over the fetches running at once (part of fetch).
	Phases []phaseTime
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
	attrs = append(attrs, "seconds", took)
	slog.Info("run finished", attrs...)
}

// report says what the plan found, and counts it.
func report(rp runPlan, obs *observation, dryRun bool) summary {
	var sum summary
	if obs.ScanErr != nil {
		sum.Errors++
	}
	for _, p := range rp.Certs {
		for _, n := range p.Notes {
			slog.Log(context.Background(), n.Level, n.Msg, n.Attrs...)
		}
		switch p.Step {
		case stepSkip, stepGone:
			continue
		case stepError, stepBackoff:
			sum.Failed++
		case stepNoResponder:
			sum.NoResponder++
			if p.Err != nil {
				sum.Failed++ // Must-Staple
			}
		case stepNotCurrent:
			sum.Skipped++
		case stepKeep, stepHAProxyCopy:
			if p.Copy == nil || dryRun {
				sum.UpToDate++ // else counted by record, once HAProxy's copy is written (or not)
			}
			if p.keptStatus() == "revoked" {
				sum.Revoked++
			}
		case stepFetch:
			if dryRun {
				slog.Info("would refresh staple", "cert", p.Obs.File.Path, "reason", p.Reason, "responder", p.Next.Responders[0])
				sum.Due++
			}
		}
		sum.Checked++
	}
	return sum
}

// record applies what the fetches did to the planned states, says so, and counts it.
func record(now time.Time, pol policy, rp runPlan, results map[*certPlan]*fetched, sum *summary, fetchCtx context.Context) {
	for _, p := range rp.Certs {
		f, path := results[p], p.Obs.File.Path
		if iss := p.Obs.issued; p.Next != nil && iss != nil && iss.Err == nil {
			p.edit(func(st *CertState) { st.issued(iss.CertID, iss.Src == issuerInBundle) })
		}
		st := p.Next
		if p.Step == stepFetch || p.Step == stepHAProxyCopy {
			st = p.own()
		}
		if p.Step == stepFetch && f.Err == nil && !f.Unfinished && f.Passed != nil {
			slog.Warn("a responder failed; the next of the certificate's responders answered", "cert", path, "err", f.Passed, "answered", f.Responder)
		}
		switch {
		case p.Step == stepHAProxyCopy && p.Copy != nil && f.Err == nil:
			if found := f.Staple; f.Stat != "" {
				st.vouch(found, f.Stat, now, false)
				slog.Info("kept HAProxy's own staple on disk", "cert", path, "this_update", found.ThisUpdate, "next_update", found.NextUpdate)
			}
			sum.UpToDate++
		case p.Step == stepHAProxyCopy && p.Copy != nil:
			slog.Error("cannot keep HAProxy's own staple on disk", "cert", path, "err", f.Err)
			sum.Failed++
		case p.Step != stepFetch:
		case f.Unfinished:
			sum.Unfinished++ // not the responder's fault: stays due, no back-off
		case f.Err != nil:
			st.failed(f.Err, now)
			st.schedule(pol.afterFailure(now, st.Failures, validStaple(st, now)))
			attrs := []any{"cert", path, "err", f.Err, "failures", st.Failures, "retry_after", st.NextDue}
			if st.validAt(now) {
				attrs = append(attrs, "current_staple_valid_until", st.Staple.Expiry())
			}
			slog.Error("refresh failed", attrs...)
			sum.Failed++
		case !f.Newer:
			// The responder answered with the staple already on disk (or said so: not
			// modified), or an older one.
			st.succeeded()
			if f.NotModified || f.Responder == st.Staple.Responder && hashBytes(f.DER) == st.Staple.Hash {
				st.named(f.ETag, f.LastModified)
			}
			st.schedule(pol.afterSuccess(now, st.Staple, f.CacheUntil))
			slog.Debug("responder has nothing newer", "cert", path, "next_due", st.NextDue, "not_modified", f.NotModified)
			sum.UpToDate++
			recordRevoked(path, st, sum)
		default:
			s := f.Staple
			st.vouch(s, f.Stat, now, true)
			st.schedule(pol.afterSuccess(now, s, f.CacheUntil))
			slog.Info("updated staple", "cert", path, "reason", p.Reason, "status", s.Status, "next_update", s.NextUpdate, "next_due", st.NextDue)
			sum.Refreshed++
			recordRevoked(path, st, sum)
		}
	}
	if sum.Unfinished > 0 {
		slog.Error("run ended before every due staple was fetched; they stay due", "unfinished", sum.Unfinished, "err", context.Cause(fetchCtx))
	}
}

// validStaple is the staple on disk if it is still valid, else nil.
func validStaple(st *CertState, now time.Time) *Staple {
	if st.validAt(now) {
		return st.Staple
	}
	return nil
}

func recordRevoked(path string, st *CertState, sum *summary) {
	if st.Staple != nil && st.Staple.Status == "revoked" {
		sum.Revoked++
		slog.Error("certificate is revoked", "cert", path, "revoked_at", st.Staple.RevokedAt, "serial", st.Serial)
	}
}

// reconcileHAProxies makes every HAProxy serve the valid staple on disk of each certificate,
// and records per certificate the sockets that do not (pending_push) and those where only a
// reload helps. It runs reload_command when only a reload can help. It returns how many
// certificates some HAProxy does not serve, and how many still need a reload.
func reconcileHAProxies(ctx context.Context, opt runOptions, rp runPlan, now time.Time) (failed, reload int) {
	var refs []stapleRef
	var plans []*certPlan
	for _, p := range rp.Certs {
		switch p.Step {
		case stepKeep, stepFetch, stepHAProxyCopy:
		default:
			continue
		}
		st := p.Next
		if !st.validAt(now) {
			p.edit(func(st *CertState) { st.served(nil, nil) })
			continue
		}
		refs = append(refs, stapleRef{Path: p.Obs.File.Path, Name: p.Obs.File.Name, File: p.Obs.File.Staple, Hash: st.Staple.Hash,
			CertID: st.Staple.CertID, Serial: st.Serial, ThisUpdate: st.Staple.ThisUpdate, ProducedAt: st.Staple.ProducedAt,
			Status: st.Staple.Status, NextUpdate: st.Staple.NextUpdate, Fresh: st.LastUpdate.Equal(now),
			NewCert: p.Obs.Changed, IssuerFile: p.Obs.File.Issuer, Pending: st.Pending})
		plans = append(plans, p)
	}
	reports := reconcileSockets(ctx, opt.Sockets, refs, reconcileOptions{Timeout: opt.SocketTimeout, Now: now, Reloadable: opt.ReloadCommand != ""})
	var severe []*certPlan
	for _, p := range plans {
		var pending, needs []string
		for _, sock := range opt.Sockets {
			switch res := reports[sock].Results[p.Obs.File.Path]; {
			case res.outcome == pushFailed, res.outcome == unknown:
				pending = append(pending, sock)
			case res.outcome == needsReload && res.severe:
				pending, needs = append(pending, sock), append(needs, sock)
			}
		}
		p.edit(func(st *CertState) { st.served(pending, needs) })
		if len(needs) > 0 {
			severe = append(severe, p)
		} else if len(pending) > 0 {
			failed++
		}
	}
	if len(severe) > 0 && opt.ReloadCommand != "" {
		if err := runReload(ctx, opt.ReloadCommand, opt.ReloadTimeout); err != nil {
			slog.Error("reload failed; staples wait for the next reload", "err", err, "certificates", len(severe))
		} else {
			slog.Info("reloaded HAProxy: it reads the staples from disk", "certificates", len(severe))
			for _, p := range severe {
				p.edit((*CertState).reloaded)
			}
			return failed, 0
		}
	}
	return failed, len(severe)
}
