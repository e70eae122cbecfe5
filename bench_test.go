package main

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"stapler/internal/pki"
)

// BenchmarkFleet measures the built stapler on N certificates under two issuers, each with an
// OCSP responder on 127.0.0.1 whose responses a delegated responder certificate signs, and
// checks the targets of bench/README.md. Run it as bench/README.md says:
//
//	go test -run '^$' -bench Fleet -benchtime 1x -timeout 60m .
//
// STAPLER_BENCH_N (default "1000,10000") sets the fleet sizes; STAPLER_BENCH_DIR (default
// the user's cache directory) where the fleet lives; STAPLER_BENCH_BIN another stapler binary
// to measure; STAPLER_BENCH_PROFILE=DIR writes a CPU and a heap profile of each stapler
// command there; STAPLER_BENCH_AB=BIN,BIN... compares builds instead of checking the targets
// (see compare). Each phase runs once per iteration; -benchtime 1x is enough.
func BenchmarkFleet(b *testing.B) {
	sizes := []int{1000, 10000}
	if s := os.Getenv("STAPLER_BENCH_N"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			sizes = append(sizes, must(strconv.Atoi(f)))
		}
	}
	bin := benchBinary(b)
	hapStartWait = 3 * time.Minute
	var phases []string
	fmt.Printf("\n%8s  %-40s %9s %9s %9s %6s %9s %9s %9s\n", "N", "command", "wall", "peak RSS", "requests", "conns", "CPU", "resp CPU", "answer")
	for _, n := range sizes {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				fleet := newBenchFleet(b, n)
				fmt.Printf("%8d  %-40s %9s\n", n, "(minting the fleet, not stapler)", fleet.minting.Round(time.Millisecond))
				fmt.Printf("%8d  %-40s %9s\n", n, "(1,000 file creations there)", benchCreates(b, fleet.dir).Round(time.Millisecond))
				fleet.bin = bin
				fleet.measure(b)
				phases = append(phases, fleet.phaseRows...)
			}
		})
	}
	fmt.Printf("\n%8s  %-40s", "N", "run: seconds per phase")
	for _, ph := range benchPhases {
		fmt.Printf(" %7s", ph)
	}
	fmt.Println()
	for _, row := range phases {
		fmt.Println(row)
	}
}

// benchPhases are the phases of a run, as stapler_run_phase_seconds names them.
var benchPhases = []string{"load", "observe", "plan", "fetch", "verify", "write", "record", "push", "save"}

// measure runs every command the targets speak of over the fleet and checks the targets.
func (f *benchFleet) measure(b *testing.B) {
	n := f.n
	m := f.run(b, "run (everything due, no latency)", "run")
	if m.requests != int64(n) {
		b.Errorf("everything due: %d requests, want %d", m.requests, n)
	}
	if bins := os.Getenv("STAPLER_BENCH_AB"); bins != "" {
		f.compare(b, strings.Split(bins, ","))
		return
	}
	f.target(b, "everything due, no latency", m.wall, map[int]time.Duration{10000: 3 * time.Second, 100000: 30 * time.Second})
	f.rssTarget(b, "everything due, no latency", m, map[int]int64{10000: 100})
	b.ReportMetric(m.wall.Seconds(), "due-s")

	// The same, every staple replaced (the first run creates them): a full refresh.
	m = f.run(b, "run --force (full refresh, no latency)", "run", "--force")
	f.target(b, "full refresh, no latency", m.wall, map[int]time.Duration{10000: 3 * time.Second, 100000: 30 * time.Second})
	f.rssTarget(b, "full refresh, no latency", m, map[int]int64{10000: 100})
	b.ReportMetric(m.wall.Seconds(), "refresh-s")

	// The same, from responders that sign nothing while stapler runs: they serve answers they
	// signed before it started, as a CA's responders serve pre-produced responses, from other
	// machines than stapler's. Not a target of its own: it shows stapler's part of the refresh
	// above, whose responders sign each answer on the same 2 cores as stapler.
	for i, r := range f.responders {
		r.Presign(f.serials[i], time.Now())
		r.SetMode("presigned")
	}
	m = f.run(b, "run --force (pre-signed responses)", "run", "--force")
	for _, r := range f.responders {
		r.SetMode("delegated")
	}
	if m.requests != int64(n) {
		b.Errorf("pre-signed responses: %d requests, want %d", m.requests, n)
	}
	b.ReportMetric(m.wall.Seconds(), "refresh-presigned-s")

	const jobs, latency = 32, 20 * time.Millisecond
	if n <= 10000 {
		f.setLatency(latency)
		m = f.run(b, "run --force --jobs 32 (20 ms latency)", "run", "--force", "--jobs", strconv.Itoa(jobs))
		f.setLatency(0)
		bound := time.Duration(n) * latency / jobs
		f.target(b, fmt.Sprintf("everything due, 20 ms latency (1.2 x the latency bound %v)", bound), m.wall, map[int]time.Duration{10000: bound * 6 / 5})
		if m.conns > jobs*2 { // one per job and responder, two responders
			b.Errorf("20 ms latency: %d connections, more than %d jobs per responder", m.conns, jobs)
		}
	}

	m = f.runMedian(b, "run (nothing due)", benchWall, "run")
	if m.requests != 0 {
		b.Errorf("nothing due: %d requests, want 0", m.requests)
	}
	f.target(b, "nothing due", m.wall, map[int]time.Duration{10000: 250 * time.Millisecond, 100000: 2500 * time.Millisecond})
	f.rssTarget(b, "nothing due", m, map[int]int64{10000: 60, 100000: 400})
	b.ReportMetric(m.wall.Seconds(), "idle-s")

	m = f.runMedian(b, "check", benchWall, "check")
	f.target(b, "check", m.wall, map[int]time.Duration{10000: 250 * time.Millisecond})
	m = f.runMedian(b, "status (no sockets)", benchWall, "status")
	f.target(b, "status", m.wall, map[int]time.Duration{10000: 500 * time.Millisecond})

	if n > 10000 || os.Getenv("STAPLER_BENCH_HAPROXY") == "0" {
		return // HAProxy takes minutes to load 100,000 certificates
	}
	for _, branch := range []string{"2.6", "3.4"} {
		h, ok := findHAProxies()[branch]
		if !ok {
			fmt.Printf("          (HAProxy %s is not installed: no figures for it)\n", branch)
			continue
		}
		sock := f.startHAProxy(b, h)
		cpu := f.haproxy.cpu(b)
		runs := 1
		if branch == "3.4" { // 2.6 takes seconds: once is enough
			runs = benchRepeat
			m = f.runMedian(b, "run --socket, HAProxy "+branch+" in sync", benchPush, "run", "--socket", sock)
		} else {
			m = f.run(b, "run --socket, HAProxy "+branch+" in sync", "run", "--socket", sock)
		}
		cpu = f.haproxyCPU(b, cpu, runs)
		if branch == "3.4" {
			f.target(b, "checking what HAProxy 3.4 serves", m.phases["push"], map[int]time.Duration{10000: 500 * time.Millisecond})
		}
		m = f.run(b, "run --force --socket, push to "+branch, "run", "--force", "--socket", sock)
		f.haproxyCPU(b, cpu, 1)
		if branch == "3.4" {
			f.target(b, "pushing every staple to HAProxy 3.4", m.phases["push"], map[int]time.Duration{10000: 500 * time.Millisecond})
		}
		b.ReportMetric(m.phases["push"].Seconds(), "push-"+branch+"-s")
		f.stopHAProxy()
	}
}

func (f *benchFleet) target(b *testing.B, what string, got time.Duration, limits map[int]time.Duration) {
	if limit, ok := limits[f.n]; ok && got > limit {
		b.Errorf("N=%d, %s: %v, target %v", f.n, what, got.Round(time.Millisecond), limit)
	}
}

func (f *benchFleet) rssTarget(b *testing.B, what string, m benchMeasure, limits map[int]int64) {
	if limit, ok := limits[f.n]; ok && m.rssMB > limit {
		bound := ""
		if m.rssAtMost {
			bound = "at most " // the benchmark's own memory: stapler's peak is not known
		}
		b.Errorf("N=%d, %s: peak RSS %s%d MB, target %d MB", f.n, what, bound, m.rssMB, limit)
	}
}

// benchFleet is a directory of N certificates and the responders for them.
type benchFleet struct {
	bin        string // the stapler binary
	n          int
	dir, certs string
	responders []*pki.Responder
	serials    [2][]*big.Int // per responder: the serials of its certificates
	phaseRows  []string      // the per-phase table's rows, one per run
	haproxy    *hapProc
	minting    time.Duration // how long making the certificates took
}

func newBenchFleet(b *testing.B, n int) *benchFleet {
	b.Helper()
	now := time.Now()
	base := os.Getenv("STAPLER_BENCH_DIR")
	if base == "" {
		base = filepath.Join(must(os.UserCacheDir()), "stapler-bench")
	}
	os.MkdirAll(base, 0o755)
	dir, err := os.MkdirTemp(base, "fleet")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	f := &benchFleet{n: n, dir: dir}
	f.certs = filepath.Join(f.dir, "certs")
	os.Mkdir(f.certs, 0o755)
	var cas []*pki.CA
	for i := range 2 {
		ca := pki.NewCA(fmt.Sprintf("Bench CA %d", i), now)
		r := pki.StartResponder(ca)
		r.SetMode("delegated") // one delegated responder certificate signs every response
		b.Cleanup(r.Close)
		cas, f.responders = append(cas, ca), append(f.responders, r)
	}
	start := time.Now()
	for i := range n {
		ca, r := cas[i%2], f.responders[i%2]
		leaf, key := ca.Issue(pki.Leaf{Name: fmt.Sprintf("site%06d.bench.test", i), OCSP: []string{r.URL()}}, now)
		f.serials[i%2] = append(f.serials[i%2], leaf.SerialNumber)
		writeBundle(filepath.Join(f.certs, fmt.Sprintf("site%06d.pem", i)), leaf, key, []*x509.Certificate{ca.Cert}...)
	}
	f.minting = time.Since(start)
	return f
}

// benchCreates is how long creating 1,000 empty files takes in a new directory beside the
// fleet: the file system's own price for what stapler must do once per staple written (on
// this project's machine it varies tenfold between directories of one ext4 file system).
func benchCreates(b *testing.B, dir string) time.Duration {
	probe := filepath.Join(dir, "probe")
	os.Mkdir(probe, 0o755)
	defer os.RemoveAll(probe)
	start := time.Now()
	for i := range 1000 {
		f, err := os.OpenFile(filepath.Join(probe, strconv.Itoa(i)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	return time.Since(start)
}

func (f *benchFleet) setLatency(d time.Duration) {
	for _, r := range f.responders {
		r.SetLatency(d)
	}
}

// benchBinary builds stapler as users build it, unless STAPLER_BENCH_PROFILE asks for the test
// binary, which writes CPU profiles.
func benchBinary(b *testing.B) string {
	if bin := os.Getenv("STAPLER_BENCH_BIN"); bin != "" {
		return bin // another build, to compare with: bench/README.md's "before"
	}
	if os.Getenv("STAPLER_BENCH_PROFILE") != "" {
		return "stapler" // on PATH, set up by TestMain
	}
	bin := filepath.Join(b.TempDir(), "stapler")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type benchMeasure struct {
	wall  time.Duration
	rssMB int64
	// rssAtMost: stapler's peak was not above the benchmark's own memory, which its peak
	// inherits (see benchRSSFloor): rssMB is then only a bound.
	rssAtMost bool
	cpu       time.Duration // stapler's user and system time
	// respCPU is the benchmark process's own CPU time meanwhile: its responders' (signing a
	// response for each request), on the same 2 cores as stapler.
	respCPU  time.Duration
	requests int64
	conns    int64
	// answer is the responders' mean time to answer a request, from its arrival to the end
	// of their answer (the latency they were given included).
	answer time.Duration
	phases map[string]time.Duration // of a run, from its metrics
}

// benchRSSFloor makes the peak RSS that getrusage gives for the next child stapler's own, as
// far as it can, and returns the floor left, in MB. A child's ru_maxrss starts at the peak RSS
// of the memory it runs in until its exec: os/exec's clone shares this process's, and Linux
// keeps the larger of that peak and the new program's. At 100,000 certificates, minting the
// fleet took this process to 530 MB, and every stapler command measured 530 MB (stapler's own
// peak was 300 to 350 MB: /usr/bin/time from a shell). So this process gives its free memory
// back and resets its peak to what it holds now (/proc/self/clear_refs, 5), which is then the
// floor. A command that peaks below it (at 1,000 certificates: 17 to 18 MB) is shown as at
// most the floor.
func benchRSSFloor(b *testing.B) int64 {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("resetting the benchmark's peak RSS: %v", err)
	}
	status := string(must(os.ReadFile("/proc/self/status")))
	for line := range strings.Lines(status) {
		if kb, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return must(strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)) / 1024
		}
	}
	b.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// run runs one stapler command over the fleet, prints a row of the table and, for a run, a
// row of the per-phase table.
func (f *benchFleet) run(b *testing.B, what string, args ...string) benchMeasure {
	b.Helper()
	m := f.measureRun(b, what, args...)
	f.report(what, m, "")
	return m
}

// benchRepeat is how many times the commands that take less than a second are run: the
// median is reported, and checked against the targets (this machine's speed moves by a fifth
// within an hour, and a single run of 0.25 s by more).
const benchRepeat = 5

// compare runs a full refresh, a run with nothing due, and a dry run without the state, with
// each build of stapler in bins in turn (in the opposite order every other round),
// benchRepeat times over, and reports each build's median, fastest and slowest wall time and
// median CPU; then, up to 10,000 certificates and with HAProxy 3.4 installed (unless
// STAPLER_BENCH_HAPROXY=0), full refreshes that push every staple to it, by the push phase
// and HAProxy's CPU. The builds meet the same fleet, responders and minutes, which a
// comparison of two benchmark runs cannot promise on a machine whose speed moves by a fifth
// within an hour (bench/README.md). No target is checked.
func (f *benchFleet) compare(b *testing.B, bins []string) {
	b.Helper()
	f.compareCase(b, bins, "refresh", benchWall, "run", "--force")
	f.compareCase(b, bins, "nothing due", benchWall, "run")
	// Without its state a run reads and parses every certificate file, as a first run does,
	// and verifies every staple file (a first run finds none). A dry run writes nothing, so
	// each build meets the same files.
	state := filepath.Join(f.dir, "state.json")
	if err := os.Rename(state, state+".hidden"); err != nil {
		b.Fatal(err)
	}
	f.compareCase(b, bins, "no state (dry run)", benchWall, "run", "--dry-run")
	if err := os.Rename(state+".hidden", state); err != nil {
		b.Fatal(err)
	}
	if f.n > 10000 || os.Getenv("STAPLER_BENCH_HAPROXY") == "0" {
		return
	}
	h, ok := findHAProxies()["3.4"]
	if !ok {
		fmt.Printf("          (HAProxy 3.4 is not installed: no push compared)\n")
		return
	}
	sock := f.startHAProxy(b, h)
	defer f.stopHAProxy()
	f.compareCase(b, bins, "push to 3.4", benchPush, "run", "--force", "--socket", sock)
}

// compareCase is one command of compare, measured by key.
func (f *benchFleet) compareCase(b *testing.B, bins []string, what string, key benchKey, args ...string) {
	b.Helper()
	keep := f.bin
	defer func() { f.bin = keep }()
	got, cpus, hcpus := make([][]time.Duration, len(bins)), make([][]time.Duration, len(bins)), make([][]time.Duration, len(bins))
	for round := range benchRepeat {
		for k := range bins {
			i := k
			if round%2 == 1 { // ABBA: no build always runs right after the same one
				i = len(bins) - 1 - k
			}
			f.bin = bins[i]
			var before time.Duration
			if f.haproxy != nil {
				before = f.haproxy.cpu(b)
			}
			m := f.measureRun(b, what, args...)
			got[i], cpus[i] = append(got[i], key.of(m)), append(cpus[i], m.cpu)
			if f.haproxy != nil {
				hcpus[i] = append(hcpus[i], f.haproxy.cpu(b)-before)
			}
		}
	}
	median := func(ds []time.Duration) time.Duration { return ds[len(ds)/2] }
	for i, bin := range bins {
		slices.Sort(got[i])
		slices.Sort(cpus[i])
		slices.Sort(hcpus[i])
		hcpu := ""
		if f.haproxy != nil {
			hcpu = fmt.Sprintf("; HAProxy's CPU %v", median(hcpus[i]).Round(10*time.Millisecond))
		}
		fmt.Printf("%8d  %-40s %9s %9s %9s %6s %9s  (median %s and CPU of %d runs, alternating builds; %v to %v%s)\n",
			f.n, what+", "+bin, median(got[i]).Round(time.Millisecond), "", "", "", median(cpus[i]).Round(10*time.Millisecond),
			key.name, benchRepeat, got[i][0].Round(time.Millisecond), got[i][len(got[i])-1].Round(time.Millisecond), hcpu)
	}
}

// runMedian runs the command benchRepeat times and reports and returns the run with the
// median of what key measures (the target's measure), with the highest peak RSS of them all;
// the row notes the fastest and slowest.
func (f *benchFleet) runMedian(b *testing.B, what string, key benchKey, args ...string) benchMeasure {
	b.Helper()
	ms := make([]benchMeasure, benchRepeat)
	for i := range ms {
		ms[i] = f.measureRun(b, what, args...)
	}
	slices.SortFunc(ms, func(x, y benchMeasure) int { return cmp.Compare(key.of(x), key.of(y)) })
	m := ms[len(ms)/2]
	for _, o := range ms {
		if o.requests != m.requests {
			b.Errorf("%s: the runs made %d and %d requests", what, o.requests, m.requests)
		}
		if o.rssMB > m.rssMB {
			m.rssMB, m.rssAtMost = o.rssMB, o.rssAtMost
		}
	}
	f.report(what, m, fmt.Sprintf("median %s of %d runs, %v to %v", key.name, len(ms), key.of(ms[0]).Round(time.Millisecond), key.of(ms[len(ms)-1]).Round(time.Millisecond)))
	return m
}

// measureRun runs stapler once with args on the fleet and measures it.
func (f *benchFleet) measureRun(b *testing.B, what string, args ...string) benchMeasure {
	b.Helper()
	for _, r := range f.responders {
		r.Requests.Store(0)
		r.Conns.Store(0)
		r.Answering.Store(0)
	}
	metrics := filepath.Join(f.dir, "stapler.prom")
	os.Remove(metrics)
	phased := args[0] == "run" && !slices.Contains(args, "--dry-run") // a dry run writes no metrics
	args = append(args, "-q", "--dir", f.certs, "--state", filepath.Join(f.dir, "state.json"))
	if phased {
		args = append(args, "--metrics-file", metrics)
	}
	cmd := exec.Command(f.bin, args...)
	cmd.Env = append(os.Environ(), "STAPLER_CONFIG=")
	if dir := os.Getenv("STAPLER_BENCH_PROFILE"); dir != "" {
		slug := regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(what, "-")
		cmd.Env = append(cmd.Env, fmt.Sprintf("STAPLER_CPUPROFILE=%s/%d-%s.pprof", dir, f.n, slug))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	selfCPU := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
	}
	floor := benchRSSFloor(b)
	start, startCPU := time.Now(), selfCPU()
	err := cmd.Run()
	m := benchMeasure{wall: time.Since(start), respCPU: selfCPU() - startCPU}
	if err != nil {
		tail := out.Bytes()[max(0, out.Len()-2000):]
		b.Fatalf("%s: %v\n...%s", what, err, tail)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.rssMB = ru.Maxrss / 1024 // kilobytes on Linux
		m.cpu = time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
	}
	m.rssAtMost = m.rssMB <= floor
	var answering time.Duration
	for _, r := range f.responders {
		m.requests += r.Requests.Load()
		m.conns += r.Conns.Load()
		answering += time.Duration(r.Answering.Load())
	}
	if m.requests > 0 {
		m.answer = answering / time.Duration(m.requests)
	}
	if phased {
		m.phases = benchReadPhases(b, metrics)
	}
	return m
}

// report prints a run's row, with a note after it when note is not empty, and its phases.
func (f *benchFleet) report(what string, m benchMeasure, note string) {
	rss := fmt.Sprintf("%d MB", m.rssMB)
	if m.rssAtMost {
		rss = fmt.Sprintf("<=%d MB", m.rssMB) // a bound, which a target still checks
	}
	answer := "-"
	if m.requests > 0 {
		answer = fmt.Sprintf("%.2fms", float64(m.answer)/float64(time.Millisecond))
	}
	if note != "" {
		note = "  (" + note + ")"
	}
	fmt.Printf("%8d  %-40s %9s %9s %9d %6d %9s %9s %9s%s\n", f.n, what, m.wall.Round(time.Millisecond), rss, m.requests, m.conns, m.cpu.Round(10*time.Millisecond), m.respCPU.Round(10*time.Millisecond), answer, note)
	if m.phases != nil {
		row := fmt.Sprintf("%8d  %-40s", f.n, what)
		for _, ph := range benchPhases {
			row += fmt.Sprintf(" %7.3f", m.phases[ph].Seconds())
		}
		f.phaseRows = append(f.phaseRows, row)
	}
}

// benchKey is what a run's target measures, and its name.
type benchKey struct {
	name string
	of   func(benchMeasure) time.Duration
}

var (
	benchWall = benchKey{"wall", func(m benchMeasure) time.Duration { return m.wall }}
	benchPush = benchKey{"push phase", func(m benchMeasure) time.Duration { return m.phases["push"] }}
)

// benchReadPhases reads stapler_run_phase_seconds from a metrics file.
func benchReadPhases(b *testing.B, path string) map[string]time.Duration {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("metrics: %v", err)
	}
	re := regexp.MustCompile(`^stapler_run_phase_seconds\{phase="([a-z]+)"\} (\S+)$`)
	phases := map[string]time.Duration{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			phases[m[1]] = time.Duration(must(strconv.ParseFloat(m[2], 64)) * float64(time.Second))
		}
	}
	return phases
}

// startHAProxy starts a real HAProxy on the fleet's certificates, which reads their staples
// from disk (so every certificate has a slot), and returns its admin socket.
func (f *benchFleet) startHAProxy(b *testing.B, h hapBin) (sock string) {
	b.Helper()
	sockDir := must(os.MkdirTemp("", "stp"))
	b.Cleanup(func() { os.RemoveAll(sockDir) })
	sock = filepath.Join(sockDir, "admin.sock")
	cfg := filepath.Join(f.dir, "haproxy.cfg")
	hapWriteFile(b, cfg, hapConfig(hapFreePort(b), f.certs, sock+" level admin"))
	start := time.Now()
	f.haproxy = hapLaunch(b, h.Path, sock, filepath.Join(f.dir, "haproxy.log"), "-db", "-f", cfg)
	fmt.Printf("%8d  %-40s %9s\n", f.n, "(HAProxy "+h.Branch+" start-up, not stapler)", time.Since(start).Round(time.Millisecond))
	return sock
}

// haproxyCPU prints a row with the CPU time HAProxy used since it had used before (in the run
// just measured: what it took to answer stapler, on the same 2 cores), and returns its total.
func (f *benchFleet) haproxyCPU(b *testing.B, before time.Duration, runs int) time.Duration {
	now := f.haproxy.cpu(b)
	what := "(HAProxy's own CPU in that run)"
	if runs > 1 {
		what = fmt.Sprintf("(HAProxy's own CPU, mean of those %d)", runs)
	}
	fmt.Printf("%8d  %-40s %9s %9s %9s %6s %9s\n", f.n, what, "", "", "", "", ((now - before) / time.Duration(runs)).Round(10*time.Millisecond))
	return now
}

func (f *benchFleet) stopHAProxy() {
	if f.haproxy != nil {
		f.haproxy.stop()
		f.haproxy = nil
	}
}
