package main

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"stapler/internal/durable"
)

// writeMetrics writes the run's metrics to path in Prometheus text format, for
// node_exporter's textfile collector, through the durable writer: the collector never reads
// half a file, and a killed run leaves no temporary file behind that the next run does not
// remove.
//
// Per certificate (label cert, the file; subject, its first DNS name):
//
//	stapler_staple_expiry_timestamp_seconds       expiry of the staple on disk (nextUpdate, or its signer's end)
//	stapler_staple_this_update_timestamp_seconds  its thisUpdate: with the expiry, the window
//	stapler_staple_status{status}                 1 for the staple's status: good, revoked, none
//	stapler_staple_last_refresh_timestamp_seconds
//	stapler_staple_refresh_failures               consecutive failed refreshes
//	stapler_certificate_must_staple               1 when the certificate demands a staple
//
// A Must-Staple certificate without a responder has status none: it cannot be stapled.
// Per run: stapler_run_timestamp_seconds, stapler_run_duration_seconds,
// stapler_run_certificates{result}, stapler_run_success and stapler_run_phase_seconds{phase}.
// A run limited to some certificates (the deploy hook's) still writes every certificate the
// state knows, so that no series disappears between runs.
//
// The families are built directly and encoded with expfmt: a registry would sort and check
// tens of thousands of series again at every run.
func writeMetrics(path string, state *State, sum summary, now time.Time, took time.Duration) error {
	m := newMetricSet()
	expiry := m.family("stapler_staple_expiry_timestamp_seconds", "When the staple on disk expires (its nextUpdate, or its delegated signer's end if earlier), as a Unix time.")
	thisUpdate := m.family("stapler_staple_this_update_timestamp_seconds", "The thisUpdate of the staple on disk, as a Unix time: its validity window runs from here to its expiry.")
	status := m.family("stapler_staple_status", "1 for the status of the staple on disk: good, revoked or none (no valid staple).")
	refreshed := m.family("stapler_staple_last_refresh_timestamp_seconds", "When stapler last fetched a valid staple for the certificate, as a Unix time.")
	failures := m.family("stapler_staple_refresh_failures", "Consecutive failed refreshes of the certificate's staple.")
	mustStaple := m.family("stapler_certificate_must_staple", "1 when the certificate demands a staple (TLS feature status_request, RFC 7633), else 0.")
	paths := make([]string, 0, len(state.Certificates))
	for p := range state.Certificates {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, certPath := range paths {
		st := state.Certificates[certPath]
		v := st.verdict(now)
		if v.Staple == "no_responder" && !v.MustStaple {
			continue
		}
		labels := []string{"cert", certPath, "subject", st.Subject}
		m.set(mustStaple, float64(b2i(st.MustStaple)), labels...)
		s := v.Staple
		switch s {
		case "good", "revoked":
			m.set(expiry, float64(st.Staple.Expiry().Unix()), labels...)
			m.set(thisUpdate, float64(st.Staple.ThisUpdate.Unix()), labels...)
		default:
			s = "none"
		}
		m.set(status, 1, append(labels[:2:2], "status", s, "subject", st.Subject)...)
		if !st.LastUpdate.IsZero() {
			m.set(refreshed, float64(st.LastUpdate.Unix()), labels...)
		}
		m.set(failures, float64(st.Failures), labels...)
	}
	m.set(m.family("stapler_run_timestamp_seconds", "When the last run started, as a Unix time."), float64(now.Unix()))
	m.set(m.family("stapler_run_duration_seconds", "How long the last run took."), took.Seconds())
	runCerts := m.family("stapler_run_certificates", "Certificates of the last run, by result.")
	for _, r := range []struct {
		result string
		n      int
	}{
		{"checked", sum.Checked}, {"failed", sum.Failed}, {"needs_reload", sum.NeedsReload}, {"push_failed", sum.PushFailed},
		{"refreshed", sum.Refreshed}, {"revoked", sum.Revoked}, {"skipped", sum.Skipped}, {"unfinished", sum.Unfinished},
		{"up_to_date", sum.UpToDate}, {"without_responder", sum.NoResponder},
	} {
		m.set(runCerts, float64(r.n), "result", r.result)
	}
	m.set(m.family("stapler_run_success", "1 when the last run left every staple fresh, valid and in every HAProxy (exit status 0)."), float64(b2i(sum.ok())))
	phases := m.family("stapler_run_phase_seconds", "How long each phase of the last run took: load, observe, plan, fetch (of which verify, summed over concurrent fetches), write, record, push, save.")
	for _, ph := range sum.Phases {
		m.set(phases, ph.D.Seconds(), "phase", ph.Name)
	}
	data, err := m.encode()
	if err == nil {
		_, err = durable.WriteFile(path, data, 0o644)
	}
	if err != nil {
		return fmt.Errorf("writing metrics: %w", err)
	}
	return nil
}

// metricSet is a set of gauge families in the order they were made, sorted by name when
// encoded.
type metricSet struct{ families []*dto.MetricFamily }

func newMetricSet() *metricSet { return &metricSet{} }

func (m *metricSet) family(name, help string) *dto.MetricFamily {
	f := &dto.MetricFamily{Name: &name, Help: &help, Type: dto.MetricType_GAUGE.Enum()}
	m.families = append(m.families, f)
	return f
}

// set adds a sample to f with labels given as name, value pairs (in name order).
func (m *metricSet) set(f *dto.MetricFamily, value float64, labels ...string) {
	metric := &dto.Metric{Gauge: &dto.Gauge{Value: &value}}
	for i := 0; i+1 < len(labels); i += 2 {
		metric.Label = append(metric.Label, &dto.LabelPair{Name: &labels[i], Value: &labels[i+1]})
	}
	f.Metric = append(f.Metric, metric)
}

func (m *metricSet) encode() ([]byte, error) {
	slices.SortFunc(m.families, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	var buf bytes.Buffer
	for _, f := range m.families {
		if len(f.Metric) == 0 {
			continue
		}
		if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
