package main

import (
	"io"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"stapler/internal/durable"
)

// writeMetrics writes the run's metrics to path in Prometheus' text format (0.0.4), for
// node_exporter's textfile collector, through the durable writer: the collector never reads
// half a file, a power loss leaves the old one or the new, and a killed run's temporary file
// is removed by the next run. The names follow ssl_exporter's ssl_ocsp_response_* family
// under the stapler_ prefix, so that alerts port over (README, Metrics, lists them and the
// names before 2026-12).
//
// The text is written as it is made, a few pieces of metricsChunk certificates at a time, each
// rendered on a core of its own: at 100,000 certificates a registry or the Prometheus client's
// data model would hold 1.2 million samples as objects at once. The tests read the file back
// with Prometheus' own parser.
//
// It covers the certificates of the configuration (covers, nil for all), as status and check
// do: a run limited to some certificates (the deploy hook's) still writes all of them, so that
// no series disappears between runs, and one whose directory was dropped from the
// configuration is no longer watched.
func writeMetrics(path string, state *State, covers func(string) bool, sum summary, now time.Time, took time.Duration, sockets []string) error {
	unix := func(t time.Time) float64 { return float64(t.Unix()) }
	// stapleTime is the series of a time of the valid staple on disk (s): absent without one,
	// or when that time is not set.
	stapleTime := func(field func(*Staple) time.Time) func(*CertState, *verdict, *Staple) (float64, bool) {
		return func(_ *CertState, _ *verdict, s *Staple) (float64, bool) {
			if s == nil || field(s).IsZero() {
				return 0, false
			}
			return unix(field(s)), true
		}
	}
	type perCert struct {
		name, help string
		// value is the certificate's sample, and whether it has one; s is its valid staple,
		// nil without one. nil for stapler_haproxy_in_sync: see inSync.
		value func(st *CertState, v *verdict, s *Staple) (float64, bool)
	}
	families := []perCert{
		{"stapler_ocsp_response_present", "1 when a valid staple (good or revoked) is on disk for the certificate, else 0. Absent while the certificate is expired or not valid yet: its staple is not judged.",
			func(_ *CertState, v *verdict, s *Staple) (float64, bool) { return float64(b2i(s != nil)), v.Cert == "" }},
		{"stapler_ocsp_response_status", "Status of the staple on disk: 0 good, 1 revoked. Absent without a valid staple.",
			func(_ *CertState, _ *verdict, s *Staple) (float64, bool) {
				return float64(b2i(s != nil && s.Status == "revoked")), s != nil
			}},
		{"stapler_ocsp_response_this_update_timestamp_seconds", "thisUpdate of the staple on disk, as a Unix time.",
			stapleTime(func(s *Staple) time.Time { return s.ThisUpdate })},
		{"stapler_ocsp_response_next_update_timestamp_seconds", "nextUpdate of the staple on disk, as a Unix time.",
			stapleTime(func(s *Staple) time.Time { return s.NextUpdate })},
		{"stapler_ocsp_response_produced_at_timestamp_seconds", "producedAt of the staple on disk, as a Unix time.",
			stapleTime(func(s *Staple) time.Time { return s.ProducedAt })},
		{"stapler_ocsp_response_signer_not_after_timestamp_seconds", "When the delegated responder certificate that signed the staple on disk expires, as a Unix time. Absent when the issuer signed it.",
			stapleTime(func(s *Staple) time.Time { return s.SignerNotAfter })},
		{"stapler_ocsp_response_expiry_timestamp_seconds", "When the staple on disk stops being worth stapling: the earlier of its nextUpdate and its signer's end, as a Unix time.",
			stapleTime((*Staple).Expiry)},
		{"stapler_cert_not_after_timestamp_seconds", "notAfter of the certificate, as a Unix time.",
			func(st *CertState, _ *verdict, _ *Staple) (float64, bool) {
				return unix(st.NotAfter), !st.NotAfter.IsZero()
			}},
		{"stapler_cert_must_staple", "1 when the certificate demands a staple (TLS feature status_request, RFC 7633), else 0.",
			func(st *CertState, _ *verdict, _ *Staple) (float64, bool) { return float64(b2i(st.MustStaple)), true }},
		{"stapler_ocsp_last_refresh_timestamp_seconds", "When stapler last fetched a valid staple for the certificate, as a Unix time.",
			func(st *CertState, _ *verdict, _ *Staple) (float64, bool) {
				return unix(st.LastUpdate), !st.LastUpdate.IsZero()
			}},
		{"stapler_ocsp_refresh_failures", "Consecutive failed refreshes of the certificate's staple.",
			func(st *CertState, _ *verdict, _ *Staple) (float64, bool) { return float64(st.Failures), true }},
	}
	if len(sockets) > 0 {
		families = append(families, perCert{"stapler_haproxy_in_sync", "1 when that HAProxy serves the staple on disk (or a newer one), 0 when it does not yet (a failed push, or a reload due). Only for certificates with a valid staple.", nil})
	}
	nf := len(families)

	// Each certificate's entry is read once, into a row with every family's sample: the
	// entries lie all over the heap, and reading them once per family took 0.1 s of CPU at
	// 100,000 certificates.
	type row struct {
		labels  string // cert="...",subject="...", escaped
		keep    bool
		has     uint64 // bit f: families[f] has a sample, in vals[i*nf+f] (at most 64 families)
		stapled bool   // a valid staple is on disk
		pending []string
	}
	paths := make([]string, 0, len(state.Certificates))
	for p := range state.Certificates {
		if covers == nil || covers(p) {
			paths = append(paths, p)
		}
	}
	paths = sortPaths(paths)
	rows := make([]row, len(paths))
	vals := make([]float64, len(paths)*nf)
	parallel(len(paths), runtime.GOMAXPROCS(0), func(i int) {
		st := state.Certificates[paths[i]]
		v := st.verdict(now)
		if v.Staple == "no_responder" && !v.MustStaple {
			return // nothing to staple, nothing to watch
		}
		var s *Staple
		if v.Staple == "good" || v.Staple == "revoked" {
			s = st.Staple
		}
		labels := appendLabels(make([]byte, 0, len(paths[i])+len(st.Subject)+20), "cert", paths[i], "subject", st.Subject)
		r := row{labels: string(labels), keep: true, stapled: s != nil, pending: v.Pending}
		for f, fam := range families {
			if fam.value == nil {
				continue
			}
			if x, ok := fam.value(st, &v, s); ok {
				r.has |= 1 << f
				vals[i*nf+f] = x
			}
		}
		rows[i] = r
	})
	n := 0
	for i := range rows {
		if rows[i].keep {
			rows[n] = rows[i]
			copy(vals[n*nf:(n+1)*nf], vals[i*nf:(i+1)*nf])
			n++
		}
	}
	rows, vals = rows[:n], vals[:n*nf]
	// inSync writes a certificate's samples of stapler_haproxy_in_sync, one per socket.
	socketLabels := make([]string, len(sockets))
	for i, s := range sockets {
		socketLabels[i] = string(appendLabels(nil, "socket", s))
	}
	inSync := func(t *promText, r *row) {
		if !r.stapled {
			return
		}
		for i, s := range sockets {
			t.sampleText("stapler_haproxy_in_sync", r.labels+","+socketLabels[i], float64(b2i(!slices.Contains(r.pending, s))))
		}
	}
	// The samples of each family are rendered metricsChunk certificates at a time, on every
	// core, two chunks per core at once (0.13 MB each), and written in order. At 100,000
	// certificates (146 MB) this took 0.1 s off a run with nothing due.
	type chunk struct{ family, lo, hi int }
	var chunks []chunk
	for fi := range families {
		for lo := 0; ; lo += metricsChunk {
			chunks = append(chunks, chunk{fi, lo, min(lo+metricsChunk, len(rows))})
			if lo+metricsChunk >= len(rows) {
				break
			}
		}
	}
	jobs := runtime.GOMAXPROCS(0)
	bufs := make([][]byte, 2*jobs)
	return durable.WriteStream(path, 0o644, func(w io.Writer) error {
		t := &promText{w: w}
		for start := 0; start < len(chunks) && t.err == nil; start += len(bufs) {
			round := chunks[start:min(start+len(bufs), len(chunks))]
			parallel(len(round), jobs, func(i int) {
				c, f := &promText{buf: bufs[i][:0]}, families[round[i].family]
				if round[i].lo == 0 {
					c.family(f.name, f.help)
				}
				fi := round[i].family
				for j := round[i].lo; j < round[i].hi; j++ {
					if r := &rows[j]; f.value == nil {
						inSync(c, r)
					} else if r.has&(1<<fi) != 0 {
						c.sampleText(f.name, r.labels, vals[j*nf+fi])
					}
				}
				bufs[i] = c.buf
			})
			for _, b := range bufs[:len(round)] {
				t.write(b)
			}
		}
		t.family("stapler_build_info", "1, with stapler's version and the Go version that built it.")
		t.sample("stapler_build_info", 1, "goversion", runtime.Version(), "version", buildVersion())
		t.family("stapler_run_timestamp_seconds", "When the last run started, as a Unix time.")
		t.sample("stapler_run_timestamp_seconds", unix(now))
		t.family("stapler_run_duration_seconds", "How long the last run took.")
		t.sample("stapler_run_duration_seconds", took.Seconds())
		t.family("stapler_run_success", "1 when the last run left every staple fresh, valid and in every HAProxy (exit status 0).")
		t.sample("stapler_run_success", float64(b2i(sum.ok())))
		t.family("stapler_run_certificates", "Certificates of the last run, by result.")
		for _, r := range []struct {
			result string
			n      int
		}{
			{"checked", sum.Checked}, {"failed", sum.Failed}, {"needs_reload", sum.NeedsReload}, {"push_failed", sum.PushFailed},
			{"refreshed", sum.Refreshed}, {"revoked", sum.Revoked}, {"skipped", sum.Skipped}, {"unfinished", sum.Unfinished},
			{"up_to_date", sum.UpToDate}, {"without_responder", sum.NoResponder},
		} {
			t.sample("stapler_run_certificates", float64(r.n), "result", r.result)
		}
		t.family("stapler_run_phase_seconds", "How long each phase of the last run took: load, observe, plan, fetch (of which verify, summed over concurrent fetches), write, record, push, save.")
		for _, ph := range sum.Phases {
			t.sample("stapler_run_phase_seconds", ph.D.Seconds(), "phase", ph.Name)
		}
		t.flush()
		return t.err
	})
}

// metricsChunk is how many certificates' samples of a family writeMetrics renders in one piece.
var metricsChunk = 1024

// promText writes Prometheus' text exposition format: gauges, each family's samples together.
// It writes to w by 32 KB, and flush writes the rest; without w it only appends to buf.
type promText struct {
	w   io.Writer
	buf []byte
	err error
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func (t *promText) family(name, help string) {
	t.buf = append(t.buf, "# HELP "...)
	t.buf = append(t.buf, name...)
	t.buf = append(t.buf, ' ')
	t.buf = append(t.buf, helpEscaper.Replace(help)...)
	t.buf = append(t.buf, "\n# TYPE "...)
	t.buf = append(t.buf, name...)
	t.buf = append(t.buf, " gauge\n"...)
	t.spill()
}

// sample writes one sample; labels are name, value pairs.
func (t *promText) sample(name string, value float64, labels ...string) {
	t.sampleText(name, string(appendLabels(nil, labels...)), value)
}

// sampleText writes one sample whose labels appendLabels rendered.
func (t *promText) sampleText(name, labels string, value float64) {
	t.buf = append(t.buf, name...)
	if labels != "" {
		t.buf = append(t.buf, '{')
		t.buf = append(t.buf, labels...)
		t.buf = append(t.buf, '}')
	}
	t.buf = append(t.buf, ' ')
	switch {
	case math.IsInf(value, +1):
		t.buf = append(t.buf, "+Inf"...)
	case math.IsInf(value, -1):
		t.buf = append(t.buf, "-Inf"...)
	case math.IsNaN(value):
		t.buf = append(t.buf, "NaN"...)
	default:
		t.buf = appendNumber(t.buf, value)
	}
	t.buf = append(t.buf, '\n')
	t.spill()
}

// appendLabels renders labels, name and value pairs, as a sample's braces hold them:
// name="value",... with each value escaped. A certificate's are rendered once for its eleven
// samples.
func appendLabels(b []byte, labels ...string) []byte {
	for i := 0; i+1 < len(labels); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, labels[i]...)
		b = append(b, `="`...)
		b = append(b, labelEscaper.Replace(labels[i+1])...)
		b = append(b, '"')
	}
	return b
}

// spill writes what is buffered once it is 32 KB.
func (t *promText) spill() {
	if t.w != nil && len(t.buf) >= 32<<10 {
		t.flush()
	}
}

// write writes what is buffered, then b.
func (t *promText) write(b []byte) {
	t.flush()
	if t.err == nil {
		_, t.err = t.w.Write(b)
	}
}

// flush writes what is buffered.
func (t *promText) flush() {
	if t.err == nil {
		_, t.err = t.w.Write(t.buf)
	}
	t.buf = t.buf[:0]
}

// appendNumber appends v as strconv.AppendFloat(b, v, 'g', -1, 64) does. Whole numbers (every
// time and count here) take a shorter way, a fifth of the CPU of rendering the metrics: below
// 10^15, an integer's shortest form is its digits without their trailing zeros, which 'g'
// writes as they are below 10^6, else with an exponent (1.79622312e+09).
func appendNumber(b []byte, v float64) []byte {
	if v != math.Trunc(v) || v >= 1e15 || v <= -1e15 || (v == 0 && math.Signbit(v)) {
		return strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	n := int64(v)
	if n > -1e6 && n < 1e6 {
		return strconv.AppendInt(b, n, 10)
	}
	if n < 0 {
		b, n = append(b, '-'), -n
	}
	var d [20]byte
	digits := strconv.AppendInt(d[:0], n, 10)
	exp := len(digits) - 1
	for digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
	}
	b = append(b, digits[0])
	if len(digits) > 1 {
		b = append(append(b, '.'), digits[1:]...)
	}
	b = append(b, 'e', '+')
	if exp < 10 {
		b = append(b, '0')
	}
	return strconv.AppendInt(b, int64(exp), 10)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
