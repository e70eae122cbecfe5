package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"stapler/internal/durable"
	"stapler/internal/ocspcheck"
)

// runOptions is everything one run needs, as plain values.
type runOptions struct {
	Config
	Only   []string // certificate files named on the command line: check these only
	Force  bool     // treat every staple as due
	DryRun bool     // decide and report, ask no responder, write nothing
	Notes  []string // what to look at in HAProxy's configuration (haproxycfg.Setup.Notes)
	Naming naming   // what HAProxy makes of each certificate file
	// Progress, when set, is a terminal that shows how far the fetching is.
	Progress io.Writer
}

// covers reports whether the configuration takes in the certificate file at path: in its
// directories, its files, or named on the command line. The state may know others (a
// directory since dropped from dirs: a run limited to some directories never forgets the
// others), which status and check, reading the configuration, do not list.
func (opt runOptions) covers() func(path string) bool {
	files := map[string]bool{}
	for _, f := range slices.Concat(opt.Files, opt.Only) {
		files[f] = true
	}
	return func(path string) bool {
		return files[path] || slices.ContainsFunc(opt.Dirs, func(dir string) bool { return within(path, dir) })
	}
}

// run does the whole job once: observe, plan, execute, record. It stops starting new fetches
// at run_timeout (what was not fetched stays due), but still gives every HAProxy what was
// fetched; a signal (ctx) stops everything.
func run(ctx context.Context, opt runOptions, now time.Time) (summary, error) {
	start := time.Now()
	sw := &stopwatch{last: start}
	fetchCtx, cancel := context.WithTimeoutCause(ctx, opt.RunTimeout, fmt.Errorf("run_timeout (%v) reached", opt.RunTimeout))
	defer cancel()
	if !opt.DryRun {
		unlock, err := lockState(fetchCtx, opt.State)
		if err != nil {
			return summary{}, err
		}
		defer unlock()
	}
	listed := startScan(opt) // while the state is read
	state, err := loadState(opt.State, !opt.DryRun)
	if err != nil {
		return summary{}, err
	}
	sw.lap("load")
	ex := newExecutor(opt, now)
	obs := ex.observeAll(fetchCtx, opt, state, listed)
	sw.lap("observe")
	rp := plan(now, opt.planOptions(), obs, state)
	sum := report(rp, obs, opt.DryRun)
	sw.lap("plan")
	if opt.DryRun {
		sum.log(true, time.Since(start))
		return sum, nil
	}
	removeTemps(opt, rp, obs.Seen)
	results, rest, issuerErrs := ex.fetchAndWrite(fetchCtx, rp.Certs, rp.due())
	sw.lap("fetch") // with the writing of all but the last writeChunk certificates
	sum.Errors += issuerErrs + ex.write(rest, results)
	ex.spares.Drop()
	sw.lap("write")
	record(now, opt.policy(), rp, results, &sum, fetchCtx)
	sum.Errors += runRevokedHooks(ctx, opt, rp)
	sw.lap("record")
	if len(opt.Sockets) > 0 {
		sum.PushFailed, sum.NeedsReload = reconcileHAProxies(ctx, opt, rp, now)
	}
	sw.lap("push")
	changed := apply(state, rp)
	if _, err := os.Stat(opt.State); changed || err != nil {
		if err := state.save(opt.State); err != nil {
			return sum, err
		}
	}
	sw.lap("save")
	sum.Phases = append(sw.phases, phaseTime{"verify", time.Duration(ex.verifying.Load())})
	if opt.MetricsFile != "" {
		if err := writeMetrics(opt.MetricsFile, state, opt.covers(), sum, now, time.Since(start), opt.Sockets); err != nil {
			slog.Error("cannot write metrics", "file", opt.MetricsFile, "err", err)
			sum.Errors++
		}
	}
	sum.log(false, time.Since(start))
	return sum, nil
}

// stopwatch times the phases of a run, for the metrics and the benchmark's breakdown.
type stopwatch struct {
	last   time.Time
	phases []phaseTime
}

// phaseTime is how long one phase of a run took.
type phaseTime struct {
	Name string
	D    time.Duration
}

// lap ends the phase called name.
func (w *stopwatch) lap(name string) {
	now := time.Now()
	w.phases = append(w.phases, phaseTime{name, now.Sub(w.last)})
	w.last = now
}

// due are the certificates whose staples the run fetches: Must-Staple ones first, since
// without a staple their sites are down for the clients that enforce it.
func (rp runPlan) due() []*certPlan {
	var due, rest []*certPlan
	for _, p := range rp.Certs {
		switch {
		case p.Step != stepFetch:
		case p.Next.MustStaple:
			due = append(due, p)
		default:
			rest = append(rest, p)
		}
	}
	return append(due, rest...)
}

// newExecutor makes what observing and executing a run share.
func newExecutor(opt runOptions, now time.Time) *executor {
	client := httpClient(opt.Config)
	finder := &issuerFinder{Dirs: opt.IssuerDirs, CacheDir: filepath.Join(filepath.Dir(opt.State), "issuer-cache"), MaxBytes: opt.MaxResponseBytes, ReadOnly: opt.DryRun}
	if opt.FetchIssuers && !opt.DryRun {
		finder.Client = client
	}
	return &executor{
		observer: &observer{finder: finder, checker: &ocspcheck.Checker{}, now: now},
		fetcher:  newFetcher(opt.Config, client),
		jobs:     opt.Jobs,
		progress: opt.Progress,
	}
}

// startScan lists the certificate directories in the background, unless the run is limited to
// the certificates it names (opt.Only): the observation it sends holds the paths found, the
// directories read and what was seen in them.
func startScan(opt runOptions) <-chan *observation {
	listed := make(chan *observation, 1) // never blocks: a run that stops early leaves it
	if len(opt.Only) == 0 {
		go func() {
			obs := &observation{}
			obs.paths, obs.Scanned, obs.Seen, obs.ScanErr = scan(scanSpec{Dirs: opt.Dirs, Files: opt.Files, Recursive: opt.Recursive, Exclude: opt.Exclude})
			listed <- obs
		}()
	}
	return listed
}

// observeAll observes every certificate file the run covers, and what HAProxy's own updaters
// hold for them.
func (ex *executor) observeAll(ctx context.Context, opt runOptions, state *State, listed <-chan *observation) *observation {
	obs := &observation{}
	paths := opt.Only
	if len(paths) == 0 {
		obs = <-listed
		paths = obs.paths
		if obs.ScanErr != nil {
			slog.Error("cannot read certificates", "err", obs.ScanErr)
		}
	}
	named := map[string]bool{}
	for _, p := range append(slices.Clone(opt.Only), opt.Files...) {
		named[p] = true
	}
	obs.Files = make([]*fileObs, len(paths))
	parallel(len(paths), observeJobs, func(i int) {
		obs.Files[i] = &fileObs{File: opt.Naming.file(paths[i]), Old: state.Certificates[paths[i]], Named: named[paths[i]]}
	})
	ex.seen = obs.Seen
	ex.observeFiles(ctx, obs.Files)
	if len(opt.Sockets) > 0 && !opt.Force {
		var stapled []*fileObs
		var files []certFile
		for _, o := range obs.Files {
			if o.Err == nil && !o.NotCert {
				if r, _, _ := o.identity(); len(r) > 0 {
					stapled, files = append(stapled, o), append(files, o.File)
				}
			}
		}
		ex.observeHAProxyCopies(ctx, stapled, observeAutoUpdates(ctx, opt.Sockets, files, opt.SocketTimeout))
	}
	return obs
}

func (opt runOptions) policy() policy {
	return policy{RenewAt: opt.RenewAt, Spread: opt.RenewSpread, RetryBase: opt.RetryBase, RetryMax: opt.RetryMax, MaxAge: opt.MaxStapleAge}
}

func (opt runOptions) planOptions() planOptions {
	return planOptions{Policy: opt.policy(), Force: opt.Force, Only: len(opt.Only) > 0, Sockets: opt.Sockets,
		Debug: slog.Default().Enabled(context.Background(), slog.LevelDebug)}
}

// removeTemps removes the temporary files that a killed run left for the files it writes, and
// only those (the caller holds the state lock: no other run is writing them).
func removeTemps(opt runOptions, rp runPlan, seen listing) {
	// A directory the scan listed is looked at only when its listing holds a temporary file's
	// name (a killed run: rare); the others (the state's, the metrics file's, a certificate's
	// named outside dirs) are read. (A set of every file's name was 0.16 s at 100,000
	// certificates, for nothing, most runs.)
	temps := map[string]bool{}
	for dir, listed := range seen {
		for name := range listed {
			if _, ok := durable.TempFor(name); ok {
				temps[dir] = true
				break
			}
		}
	}
	names := map[string]map[string]bool{} // dir: base names
	add := func(path string) {
		if path == "" {
			return
		}
		dir := filepath.Dir(path)
		if _, listed := seen[dir]; listed && !temps[dir] {
			return
		}
		if names[dir] == nil {
			names[dir] = map[string]bool{}
		}
		names[dir][filepath.Base(path)] = true
	}
	add(opt.State)
	add(opt.MetricsFile)
	for _, p := range rp.Certs {
		add(p.Obs.File.Staple)
		add(p.Obs.File.Issuer)
	}
	for dir, base := range names {
		var removed []string
		if listed, ok := seen[dir]; ok { // read by the scan a moment ago: not read again
			removed = durable.RemoveListedTemps(dir, slices.Collect(maps.Keys(listed)), base)
		} else {
			removed = durable.RemoveTemps(dir, base)
		}
		for _, p := range removed {
			slog.Info("removed a temporary file left by an interrupted run", "file", p)
		}
	}
}

// apply stores the planned states in the state, prunes what is gone, and reports whether
// anything changed.
func apply(state *State, rp runPlan) bool {
	// Which planned entries differ from the state's, compared on every core (a comparison
	// per certificate: see equal).
	same := make([]bool, len(rp.Certs))
	parallel(len(rp.Certs), runtime.GOMAXPROCS(0), func(i int) {
		p := rp.Certs[i]
		if old := state.Certificates[p.Obs.File.Path]; old != nil && p.Next != nil {
			same[i] = old.equal(p.Next)
		}
	})
	changed := false
	for i, p := range rp.Certs {
		path := p.Obs.File.Path
		switch p.Step {
		case stepSkip:
			continue
		case stepGone:
			if _, ok := state.Certificates[path]; ok {
				delete(state.Certificates, path)
				changed = true
			}
			continue
		case stepError:
			continue // what was known stays
		}
		if !same[i] {
			state.Certificates[path] = p.Next
			changed = true
		}
	}
	for _, path := range rp.Prune {
		delete(state.Certificates, path)
		changed = true
	}
	return changed
}

// newFetcher makes the fetcher of a run: through client, and, with cache_fallback, straight to
// the responders when the cache is down.
func newFetcher(cfg Config, client *http.Client) *fetcher {
	f := &fetcher{Client: client, MaxBytes: cfg.MaxResponseBytes, Override: cfg.ResponderOverride, PerResponder: cfg.ResponderJobs}
	t := client.Transport.(*http.Transport)
	f.Proxy = func(u *url.URL) string {
		if t.Proxy == nil {
			return ""
		}
		if p, err := t.Proxy(&http.Request{URL: u}); err == nil && p != nil {
			return p.Redacted()
		}
		return ""
	}
	if cfg.CacheFallback {
		direct := t.Clone()
		direct.Proxy = nil
		f.Direct = &http.Client{Transport: direct, Timeout: client.Timeout}
	}
	return f
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
