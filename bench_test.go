package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"stapler/internal/pki"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkFleet measures the built stapler on N certificates under two issuers, with an OCSP
// responder on 127.0.0.1 that answers after a fixed latency, and checks the targets of
// bench/README.md. Run it as bench/README.md says:
//
//	go test -run '^$' -bench Fleet -benchtime 1x -timeout 30m .
//
// STAPLER_BENCH_N (default "1000,10000") and STAPLER_BENCH_LATENCY (default 20ms) change the
// fleet; STAPLER_BENCH_PROFILE=DIR writes a CPU profile of each stapler run there. Each phase
// runs once per iteration; -benchtime 1x is enough.
func BenchmarkFleet(b *testing.B) {
	sizes := []int{1000, 10000}
	if s := os.Getenv("STAPLER_BENCH_N"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			sizes = append(sizes, must(strconv.Atoi(f)))
		}
	}
	latency := 20 * time.Millisecond
	if s := os.Getenv("STAPLER_BENCH_LATENCY"); s != "" {
		latency = must(time.ParseDuration(s))
	}
	const jobs = 32
	bin := benchBinary(b)
	fmt.Printf("\n%8s  %-32s %10s %10s %9s %8s\n", "N", "phase", "wall", "peak RSS", "requests", "conns")
	for _, n := range sizes {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				fleet := newBenchFleet(b, n, latency)
				fleet.bin = bin
				bound := time.Duration(n) * latency / jobs

				m := fleet.run(b, "run --jobs 32 (everything due)", "--jobs", strconv.Itoa(jobs))
				// The targets are set for 10,000 certificates; smaller fleets show that the
				// cost grows linearly, and pay a larger share of fixed costs.
				if limit := bound * 3 / 2; n >= 10000 && m.wall > limit {
					b.Errorf("everything due: %v, more than 1.5 x the latency bound %v", m.wall, bound)
				}
				if m.conns > jobs*2 { // one per job and responder, two responders
					b.Errorf("everything due: %d connections, more than %d jobs per responder", m.conns, jobs)
				}
				if m.requests != int64(n) {
					b.Errorf("everything due: %d requests, want %d", m.requests, n)
				}
				b.ReportMetric(m.wall.Seconds(), "due-s")

				m = fleet.run(b, "run (nothing due)")
				if m.requests != 0 {
					b.Errorf("nothing due: %d requests, want 0", m.requests)
				}
				if n == 10000 && m.wall > 500*time.Millisecond {
					b.Errorf("nothing due: %v, want under 0.5 s", m.wall)
				}
				if m.rssMB > 100 {
					b.Errorf("nothing due: peak RSS %d MB, want under 100 MB", m.rssMB)
				}
				b.ReportMetric(m.wall.Seconds(), "idle-s")
				b.ReportMetric(float64(m.rssMB), "idle-MB")

				if took, ok := fleet.push(b); ok {
					fmt.Printf("%8d  %-32s %10s\n", n, "push N staples into HAProxy", took.Round(time.Millisecond))
					if took > 5*time.Second {
						b.Errorf("pushing %d staples into HAProxy took %v, want under 5 s", n, took)
					}
					b.ReportMetric(took.Seconds(), "push-s")
				}
			}
		})
	}
}

// benchFleet is a directory of N certificates and the responders for them.
type benchFleet struct {
	bin        string // the stapler binary
	n          int
	dir, certs string
	cas        []*pki.CA
	responders []*pki.Responder
}

func newBenchFleet(b *testing.B, n int, latency time.Duration) *benchFleet {
	b.Helper()
	now := time.Now()
	f := &benchFleet{n: n, dir: b.TempDir()}
	f.certs = filepath.Join(f.dir, "certs")
	os.Mkdir(f.certs, 0o755)
	for i := range 2 {
		ca := pki.NewCA(fmt.Sprintf("Bench CA %d", i), now)
		r := pki.StartResponder(ca)
		r.SetLatency(latency)
		b.Cleanup(r.Close)
		f.cas, f.responders = append(f.cas, ca), append(f.responders, r)
	}
	for i := range n {
		ca, r := f.cas[i%2], f.responders[i%2]
		leaf, key := ca.Issue(pki.Leaf{Name: fmt.Sprintf("site%05d.bench.test", i), OCSP: []string{r.URL()}}, now)
		writeBundle(filepath.Join(f.certs, fmt.Sprintf("site%05d.pem", i)), leaf, key, []*x509.Certificate{ca.Cert}...)
	}
	return f
}

// benchBinary builds stapler as users build it, unless STAPLER_BENCH_PROFILE asks for the test
// binary, which writes CPU profiles.
func benchBinary(b *testing.B) string {
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
	wall     time.Duration
	rssMB    int64
	requests int64
	conns    int64
}

// run runs the built stapler once over the fleet and prints a row of the table.
func (f *benchFleet) run(b *testing.B, phase string, args ...string) benchMeasure {
	b.Helper()
	for _, r := range f.responders {
		r.Requests.Store(0)
		r.Conns.Store(0)
	}
	cmd := exec.Command(f.bin, append([]string{"run", "-q", "--dir", f.certs, "--state", filepath.Join(f.dir, "state.json")}, args...)...)
	cmd.Env = append(os.Environ(), "STAPLER_CONFIG=")
	if dir := os.Getenv("STAPLER_BENCH_PROFILE"); dir != "" {
		slug := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
				return r
			}
			return '-'
		}, phase)
		cmd.Env = append(cmd.Env, fmt.Sprintf("STAPLER_CPUPROFILE=%s/%d-%s.pprof", dir, f.n, slug))
	}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	m := benchMeasure{wall: time.Since(start)}
	if err != nil {
		b.Fatalf("%s: %v\n%s", phase, err, out)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.rssMB = ru.Maxrss / 1024 // kilobytes on Linux
	}
	for _, r := range f.responders {
		m.requests += r.Requests.Load()
		m.conns += r.Conns.Load()
	}
	fmt.Printf("%8d  %-32s %10s %7d MB %9d %8d\n", f.n, phase, m.wall.Round(time.Millisecond), m.rssMB, m.requests, m.conns)
	return m
}

// push starts a real HAProxy on the fleet's certificates (it reads their staples from disk,
// so every certificate has a slot) and times one batch of `set ssl ocsp-response` for all of
// them, as a run sends it. ok is false without HAProxy.
func (f *benchFleet) push(b *testing.B) (took time.Duration, ok bool) {
	b.Helper()
	haproxy := lookHAProxy()
	if haproxy == "" {
		fmt.Println("          (haproxy is not installed: no push figure)")
		return 0, false
	}
	sockDir := must(os.MkdirTemp("", "stp"))
	b.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "admin.sock")
	cfg := filepath.Join(f.dir, "haproxy.cfg")
	hapWriteFile(b, cfg, hapConfig(hapFreePort(b), f.certs, sock+" level admin"))
	start := time.Now()
	hapLaunch(b, haproxy, sock, filepath.Join(f.dir, "haproxy.log"), "-db", "-f", cfg)
	fmt.Printf("%8d  %-32s %10s\n", f.n, "(HAProxy start-up, not stapler)", time.Since(start).Round(time.Millisecond))

	state, err := loadState(filepath.Join(f.dir, "state.json"), false)
	if err != nil {
		b.Fatal(err)
	}
	var refs []stapleRef
	for path, st := range state.Certificates {
		s := st.Staple
		refs = append(refs, stapleRef{Path: path, DER: hapReadFile(b, stapleName(path)), CertID: s.CertID, Serial: st.Serial, ThisUpdate: s.ThisUpdate, ProducedAt: s.ProducedAt, Status: s.Status, NextUpdate: s.NextUpdate})
	}
	start = time.Now()
	rep := reconcileSockets(context.Background(), []string{sock}, refs, reconcileOptions{Timeout: 10 * time.Second, Now: time.Now()})[sock]
	took = time.Since(start)
	for _, r := range refs {
		if o := rep.Results[r.Path].outcome; o != pushed && o != inSync {
			b.Fatalf("%s: not pushed (%+v)", r.Path, rep.Results[r.Path])
		}
	}
	return took, true
}
