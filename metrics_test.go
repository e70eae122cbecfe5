package main

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"stapler/internal/pki"
)

// TestRunWritesMetrics: --metrics-file leaves a Prometheus text file that the Prometheus text
// parser reads back with the staple's expiry, status, last refresh and failures, and the run's
// counts.
func TestRunWritesMetrics(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Metrics Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o755)
	good, bad := filepath.Join(certs, "good.pem"), filepath.Join(certs, "bad.pem")
	for _, p := range []string{good, bad} {
		leaf, key := ca.Issue(pki.Leaf{Name: filepath.Base(p) + ".test", OCSP: []string{r.URL()}}, now)
		writeBundle(p, leaf, key, ca.Cert)
	}
	leaf, key := ca.Issue(pki.Leaf{Name: "plain.test"}, now)
	writeBundle(filepath.Join(certs, "plain.pem"), leaf, key, ca.Cert)
	state, metrics := filepath.Join(dir, "state.json"), filepath.Join(dir, "stapler.prom")
	args := []string{"run", "--dir", certs, "--state", state, "--metrics-file", metrics}
	if code, stderr := runStapler(t, args...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	r.SetMode("tryLater")
	if code, stderr := runStapler(t, append(args, "--force", bad)...); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, stderr)
	}

	families := readMetrics(t, metrics)
	st := readState(t, state).Certificates
	value := func(name string, labels map[string]string) (float64, bool) {
		for _, m := range families[name].GetMetric() {
			if matches(m, labels) {
				return m.GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	// The last run checked only bad.pem; both certificates it knows of are in the file.
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"stapler_ocsp_response_next_update_timestamp_seconds", map[string]string{"cert": bad, "subject": "bad.pem.test"}, float64(st[bad].Staple.NextUpdate.Unix())},
		{"stapler_ocsp_response_expiry_timestamp_seconds", map[string]string{"cert": good, "subject": "good.pem.test"}, float64(st[good].Staple.Expiry().Unix())},
		{"stapler_ocsp_response_this_update_timestamp_seconds", map[string]string{"cert": good}, float64(st[good].Staple.ThisUpdate.Unix())},
		{"stapler_ocsp_response_produced_at_timestamp_seconds", map[string]string{"cert": good}, float64(st[good].Staple.ProducedAt.Unix())},
		{"stapler_ocsp_response_present", map[string]string{"cert": good}, 1},
		{"stapler_ocsp_response_status", map[string]string{"cert": good}, 0},
		{"stapler_ocsp_refresh_failures", map[string]string{"cert": good}, 0},
		{"stapler_ocsp_response_present", map[string]string{"cert": bad}, 1},
		{"stapler_ocsp_refresh_failures", map[string]string{"cert": bad}, 1},
		{"stapler_ocsp_last_refresh_timestamp_seconds", map[string]string{"cert": bad}, float64(st[bad].LastUpdate.Unix())},
		{"stapler_cert_not_after_timestamp_seconds", map[string]string{"cert": bad}, float64(st[bad].NotAfter.Unix())},
		{"stapler_cert_must_staple", map[string]string{"cert": bad}, 0},
		{"stapler_build_info", nil, 1},
		{"stapler_run_certificates", map[string]string{"result": "checked"}, 1},
		{"stapler_run_certificates", map[string]string{"result": "failed"}, 1},
		{"stapler_run_success", nil, 0},
	} {
		if got, ok := value(tt.name, tt.labels); !ok || got != tt.want {
			t.Errorf("%s%v = %v (found %v), want %v", tt.name, tt.labels, got, ok, tt.want)
		}
	}
	if _, ok := value("stapler_run_duration_seconds", nil); !ok {
		t.Error("no stapler_run_duration_seconds")
	}
	if _, ok := value("stapler_ocsp_response_present", map[string]string{"cert": filepath.Join(certs, "plain.pem")}); ok {
		t.Error("a certificate without a responder has a staple series")
	}
	if _, ok := value("stapler_ocsp_response_signer_not_after_timestamp_seconds", nil); ok {
		t.Error("a staple the issuer signed has a signer's end")
	}
	if _, ok := value("stapler_haproxy_in_sync", nil); ok {
		t.Error("a run without sockets has HAProxy series")
	}
}

// TestMetricsCoverTheConfiguration: the metrics cover the certificates of the configuration,
// as status and check do. A directory dropped from it stays in the state (a run limited to
// some directories forgets nothing of the others) but is no longer watched.
func TestMetricsCoverTheConfiguration(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Metrics Scope CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	var sites []string
	for _, name := range []string{"one", "two"} {
		os.Mkdir(filepath.Join(dir, name), 0o755)
		site := filepath.Join(dir, name, "site.pem")
		leaf, key := ca.Issue(pki.Leaf{Name: name + ".test", OCSP: []string{r.URL()}}, now)
		writeBundle(site, leaf, key, ca.Cert)
		sites = append(sites, site)
	}
	state, metrics := filepath.Join(dir, "state.json"), filepath.Join(dir, "stapler.prom")
	args := []string{"run", "--state", state, "--metrics-file", metrics, "--dir", filepath.Join(dir, "one")}
	if code, stderr := runStapler(t, append(args, "--dir", filepath.Join(dir, "two"))...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if got := len(readMetrics(t, metrics)["stapler_ocsp_response_present"].GetMetric()); got != 2 {
		t.Fatalf("%d certificates in the metrics, want 2", got)
	}
	if code, stderr := runStapler(t, args...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	present := readMetrics(t, metrics)["stapler_ocsp_response_present"].GetMetric()
	if len(present) != 1 || !matches(present[0], map[string]string{"cert": sites[0]}) {
		t.Errorf("metrics of a run over one/ only: %v, want one/site.pem alone", present)
	}
	if readState(t, state).Certificates[sites[1]] == nil {
		t.Error("the run over one/ only forgot two/site.pem")
	}
}

// TestMetricsChunks: rendered in pieces of a few certificates on every core, the file is the
// one rendered in one piece, with each family's samples together in path order.
func TestMetricsChunks(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st := newState()
	for i := range 23 {
		cs := &CertState{CertHash: "c", Subject: fmt.Sprintf("site%02d.test", i), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Duration(i+1) * time.Hour),
			Responders: []string{"http://ocsp.test"}, Failures: i % 3, Pending: []string{"/run/b.sock"}}
		switch i % 4 {
		case 0: // no responder: no series
			cs.Responders = nil
		case 1: // no staple
		default:
			cs.Staple = &Staple{Hash: "s", Status: "good", ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Duration(i) * time.Hour), SignerNotAfter: now.Add(time.Duration(i) * 24 * time.Hour)}
			cs.DiskHash = "s"
		}
		st.Certificates[fmt.Sprintf("/c/site%02d.pem", i)] = cs
	}
	write := func(chunk int) []byte {
		defer func(old int) { metricsChunk = old }(metricsChunk)
		metricsChunk = chunk
		path := filepath.Join(t.TempDir(), "stapler.prom")
		if err := writeMetrics(path, st, nil, summary{Checked: 23}, now, time.Second, []string{"/run/a.sock", "/run/b.sock"}); err != nil {
			t.Fatal(err)
		}
		readMetrics(t, path) // Prometheus' parser takes it
		return must(os.ReadFile(path))
	}
	whole := write(1 << 20)
	if n := bytes.Count(whole, []byte("\n# TYPE ")); n != 11+1+6 {
		t.Fatalf("%d families, want 18 (11 per certificate, stapler_haproxy_in_sync, 6 of the run)", n)
	}
	if n := bytes.Count(whole, []byte("stapler_haproxy_in_sync{")); n != 2*11 {
		t.Fatalf("%d samples of stapler_haproxy_in_sync, want 22 (11 staples, 2 sockets)", n)
	}
	for _, chunk := range []int{1, 2, 5, 22, 23} {
		if got := write(chunk); !bytes.Equal(got, whole) {
			t.Errorf("rendered %d certificates at a time, the file differs:\n%s\nwant\n%s", chunk, got, whole)
		}
	}
}

// readMetrics parses a metrics file with Prometheus' own text parser.
func readMetrics(t *testing.T, path string) map[string]*dto.MetricFamily {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("%s does not parse: %v", path, err)
	}
	return families
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if want, ok := labels[l.GetName()]; ok {
			if l.GetValue() != want {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

// BenchmarkWriteMetrics: the metrics file of 10,000 certificates with valid staples.
func BenchmarkWriteMetrics(b *testing.B) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st := newState()
	for i := range 10000 {
		st.Certificates[fmt.Sprintf("/etc/haproxy/certs/site%05d.pem", i)] = &CertState{CertHash: "c", Subject: fmt.Sprintf("site%05d.example.com", i),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour), Responders: []string{"http://ocsp.example.com"},
			Staple: &Staple{Hash: "s", Status: "good", ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(48 * time.Hour), ProducedAt: now.Add(-time.Hour),
				SignerNotAfter: now.Add(30 * 24 * time.Hour)}, DiskHash: "s", LastUpdate: now.Add(-time.Hour), NextDue: now.Add(time.Hour)}
	}
	path := filepath.Join(b.TempDir(), "stapler.prom")
	b.ReportAllocs()
	for b.Loop() {
		if err := writeMetrics(path, st, nil, summary{}, now, time.Second, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAppendNumber: the metrics' numbers are written as strconv.AppendFloat(b, v, 'g', -1, 64)
// writes them, whole or not.
func TestAppendNumber(t *testing.T) {
	values := []float64{0, math.Copysign(0, -1), 1, -1, 7, 10, 999999, 1e6, -1e6, 1000001, 1234567, 1.5e6, 1796223120,
		1796219562, -1796219562, 1e14, 999999999999999, 1e15, -1e15, 1e15 + 2, 1e21, 1e300, 0.5, -0.25, 1e-7,
		1796219562.5, math.MaxInt64, math.MinInt64, math.Inf(1), math.Inf(-1), math.NaN(), 4503599627370496.5}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		exp := rnd.IntN(17)
		n := rnd.Int64N(int64(math.Pow10(exp)) + 1)
		values = append(values, float64(n), -float64(n), float64(n)*math.Pow10(rnd.IntN(4)), float64(n)+rnd.Float64())
	}
	for _, v := range values {
		got, want := string(appendNumber([]byte("x"), v)), string(strconv.AppendFloat([]byte("x"), v, 'g', -1, 64))
		if got != want {
			t.Errorf("%v: %q, want %q", v, got, want)
		}
	}
}

// TestAppendLabels: label values are escaped as the text format wants (backslash, double
// quote, line feed), and only those.
func TestAppendLabels(t *testing.T) {
	for _, tt := range []struct{ value, want string }{
		{"/etc/ssl/site.pem", `/etc/ssl/site.pem`},
		{`C:\certs`, `C:\\certs`},
		{`say "hi"`, `say \"hi\"`},
		{"two\nlines", `two\nlines`},
		{"tab\there, é", "tab\there, é"},
		{"", ""},
	} {
		got := string(appendLabels([]byte("x"), "cert", tt.value, "subject", "s"))
		if want := `xcert="` + tt.want + `",subject="s"`; got != want {
			t.Errorf("%q: %s, want %s", tt.value, got, want)
		}
	}
}
