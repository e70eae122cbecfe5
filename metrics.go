package main

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// writeMetrics writes the run's metrics to path in Prometheus text format, for
// node_exporter's textfile collector. prometheus.WriteToTextfile writes a temporary file and
// renames it, so the collector never reads half a file.
//
// Per certificate (label cert, the file; subject, its first DNS name):
//
//	stapler_staple_expiry_timestamp_seconds   nextUpdate of the staple on disk
//	stapler_staple_status{status}             1 for the staple's status: good, revoked, none
//	stapler_staple_last_refresh_timestamp_seconds
//	stapler_staple_refresh_failures           consecutive failed refreshes
//	stapler_staple_this_update_timestamp_seconds  thisUpdate: with the expiry, the window
//	stapler_certificate_must_staple           1 when the certificate demands a staple
//
// A Must-Staple certificate without a responder has status none: it cannot be stapled.
//
// Per run: stapler_run_timestamp_seconds, stapler_run_duration_seconds,
// stapler_run_certificates{result} and stapler_run_success.
// A run limited to some certificates (the deploy hook's) still writes every certificate the
// state knows, so that no series disappears between runs.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func writeMetrics(path string, state *State, sum summary, now time.Time, took time.Duration) error {
	reg := prometheus.NewRegistry()
	certLabels := []string{"cert", "subject"}
	expiry := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_staple_expiry_timestamp_seconds",
		Help: "When the staple on disk expires (its nextUpdate), as a Unix time."}, certLabels)
	status := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_staple_status",
		Help: "1 for the status of the staple on disk: good, revoked or none (no valid staple)."}, append(certLabels, "status"))
	refreshed := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_staple_last_refresh_timestamp_seconds",
		Help: "When stapler last fetched a valid staple for the certificate, as a Unix time."}, certLabels)
	failures := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_staple_refresh_failures",
		Help: "Consecutive failed refreshes of the certificate's staple."}, certLabels)
	thisUpdate := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_staple_this_update_timestamp_seconds",
		Help: "The thisUpdate of the staple on disk, as a Unix time: its validity window runs from here to its expiry."}, certLabels)
	mustStaple := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_certificate_must_staple",
		Help: "1 when the certificate demands a staple (TLS feature status_request, RFC 7633), else 0."}, certLabels)
	runAt := prometheus.NewGauge(prometheus.GaugeOpts{Name: "stapler_run_timestamp_seconds", Help: "When the last run started, as a Unix time."})
	runTook := prometheus.NewGauge(prometheus.GaugeOpts{Name: "stapler_run_duration_seconds", Help: "How long the last run took."})
	runCerts := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "stapler_run_certificates",
		Help: "Certificates of the last run, by result."}, []string{"result"})
	runOK := prometheus.NewGauge(prometheus.GaugeOpts{Name: "stapler_run_success",
		Help: "1 when the last run left every staple fresh, valid and in every HAProxy (exit status 0)."})
	reg.MustRegister(expiry, status, refreshed, failures, thisUpdate, mustStaple, runAt, runTook, runCerts, runOK)

	for certPath, st := range state.Certificates {
		v := st.verdict(now)
		if v.Staple == "no_responder" && !v.MustStaple {
			continue
		}
		l := prometheus.Labels{"cert": certPath, "subject": st.Subject}
		mustStaple.With(l).Set(float64(b2i(st.MustStaple)))
		s := v.Staple
		switch s {
		case "good", "revoked":
			expiry.With(l).Set(float64(st.Staple.Expiry().Unix()))
			thisUpdate.With(l).Set(float64(st.Staple.ThisUpdate.Unix()))
		default:
			s = "none"
		}
		status.MustCurryWith(l).WithLabelValues(s).Set(1)
		if !st.LastUpdate.IsZero() {
			refreshed.With(l).Set(float64(st.LastUpdate.Unix()))
		}
		failures.With(l).Set(float64(st.Failures))
	}
	runAt.Set(float64(now.Unix()))
	runTook.Set(took.Seconds())
	for result, n := range map[string]int{
		"checked": sum.Checked, "refreshed": sum.Refreshed, "up_to_date": sum.UpToDate,
		"without_responder": sum.NoResponder, "skipped": sum.Skipped, "failed": sum.Failed,
		"revoked": sum.Revoked, "push_failed": sum.PushFailed, "needs_reload": sum.NeedsReload,
		"unfinished": sum.Unfinished,
	} {
		runCerts.WithLabelValues(result).Set(float64(n))
	}
	if sum.ok() {
		runOK.Set(1)
	}
	if err := prometheus.WriteToTextfile(path, reg); err != nil {
		return fmt.Errorf("writing metrics: %w", err)
	}
	return nil
}
