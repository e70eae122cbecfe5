package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stapler/internal/pki"
)

// respFixture is a certificate directory and a state file for the responder tests, which run
// the built stapler, some at a shifted clock.
type respFixture struct {
	t            *testing.T
	dir, certs   string
	state, hooks string
}

func newRespFixture(t *testing.T) *respFixture {
	t.Helper()
	skipProcesses(t)
	dir := t.TempDir()
	f := &respFixture{t: t, dir: dir, certs: filepath.Join(dir, "certs"), state: filepath.Join(dir, "state.json"), hooks: filepath.Join(dir, "hooks.log")}
	if err := os.Mkdir(f.certs, 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

// issue writes a bundle for a leaf of ca into the certificate directory.
func (f *respFixture) issue(ca *pki.CA, spec pki.Leaf) (string, *x509.Certificate) {
	path := filepath.Join(f.certs, spec.Name+".pem")
	leaf, key := ca.Issue(spec, time.Now())
	writeBundle(path, leaf, key, ca.Cert)
	return path, leaf
}

// stapler runs the built stapler with the fixture's directory and state, --log-format json,
// its clock moved by clock ("" or "0s": the real time).
func (f *respFixture) stapler(clock string, args ...string) (int, logs, string) {
	f.t.Helper()
	args = append(jsonLogArgs(args), "--dir", f.certs, "--state", f.state)
	res := execStapler(f.t, 0, nil, []string{"STAPLER_TEST_CLOCK=" + clock}, args...)
	checkLogKeys(f.t, res.stderr)
	return res.code, parseLogs(res.stderr), res.stdout
}

func (f *respFixture) entry(path string) *CertState {
	f.t.Helper()
	st := readState(f.t, f.state).Certificates[path]
	if st == nil || st.Staple == nil {
		f.t.Fatalf("%s: no staple in the state: %+v", path, st)
	}
	return st
}

// waitNextSecond waits until the clock has passed the second of t: a response produced now
// is then newer than one produced at t.
func waitNextSecond(tb testing.TB, t time.Time) {
	hapWaitFor(tb, "the next second", 3*time.Second, func() error {
		if time.Now().Truncate(time.Second).After(t) {
			return nil
		}
		return fmt.Errorf("still %v", t)
	})
}

// TestOneHourResponses: `openssl ocsp -nmin 60`, as private PKIs run it. The first run fetches;
// the next asks nothing, and check, with its default limits, says OK; the staple is refreshed
// once, about half-way, and the run after that asks nothing again.
func TestOneHourResponses(t *testing.T) {
	t.Parallel()
	f := newRespFixture(t)
	ca := pki.NewCA("One Hour CA", time.Now())
	r := startOpenSSLResponder(t, ca, nil, nil)
	site, leaf := f.issue(ca, pki.Leaf{Name: "hourly.test", OCSP: []string{r.URL}})
	r.Valid(leaf)

	if code, l, _ := f.stapler("", "run"); code != 0 || r.Requests.Swap(0) != 1 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	first := f.entry(site)
	if w := first.Staple.Window(); w != time.Hour {
		t.Fatalf("openssl's window is %v, want an hour", w)
	}
	if due := first.NextDue.Sub(first.Staple.ThisUpdate); due < 20*time.Minute || due > 28*time.Minute {
		t.Errorf("next refresh %v after thisUpdate, want about half-way through the hour", due)
	}
	for _, clock := range []string{"", "15m"} {
		if code, l, _ := f.stapler(clock, "run"); code != 0 || r.Requests.Swap(0) != 0 {
			t.Errorf("run at +%s: exit %d, asked the responder; nothing was due\n%s", clock, code, l)
		}
	}
	if code, _, out := f.stapler("", "check"); code != checkOK {
		t.Errorf("check with the default limits: exit %d: %s", code, out)
	}
	if code, _, out := f.stapler("15m", "check"); code != checkOK {
		t.Errorf("check at +15m: exit %d: %s", code, out)
	}
	if code, l, _ := f.stapler("29m", "run"); code != 0 || r.Requests.Swap(0) != 1 {
		t.Errorf("run at +29m: exit %d; want the staple refreshed\n%s", code, l)
	}
	if code, l, _ := f.stapler("30m", "run"); code != 0 || r.Requests.Swap(0) != 0 {
		t.Errorf("run at +30m, right after the refresh: exit %d, asked the responder\n%s", code, l)
	}
}

// TestSignerEndsFirst: openssl's 10-hour responses signed by a delegated responder certificate
// that expires in 2 hours. The staple is worth only as much as its signer: it is refreshed
// before the signer's end, status shows both ends, and after the signer's end nothing says the
// staple is good.
func TestSignerEndsFirst(t *testing.T) {
	t.Parallel()
	f := newRespFixture(t)
	now := time.Now()
	ca := pki.NewCA("Delegating CA", now)
	signer, key := ca.Delegate(true, now.Add(-time.Hour), now.Add(2*time.Hour))
	r := startOpenSSLResponder(t, ca, signer, key)
	r.Minutes = 600
	site, leaf := f.issue(ca, pki.Leaf{Name: "delegated.test", OCSP: []string{r.URL}})
	r.Valid(leaf)

	if code, l, _ := f.stapler("", "run"); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	st := f.entry(site)
	if got := st.Staple.NextUpdate.Sub(st.Staple.ThisUpdate); got != 10*time.Hour {
		t.Fatalf("openssl's window is %v, want 10h", got)
	}
	if !st.Staple.SignerNotAfter.Equal(signer.NotAfter) {
		t.Errorf("signer_not_after %v, want the delegate's %v", st.Staple.SignerNotAfter, signer.NotAfter)
	}
	if !st.NextDue.Before(signer.NotAfter.Add(-time.Hour)) {
		t.Errorf("next refresh at %v, not well before the signer's end at %v", st.NextDue, signer.NotAfter)
	}
	_, _, out := f.stapler("", "status", "--json")
	if !strings.Contains(out, `"signer_not_after": "`+signer.NotAfter.UTC().Format(time.RFC3339)) {
		t.Errorf("status --json does not show the signer's end:\n%s", out)
	}
	// An hour later the staple is due (the responder is down: it stays the old one).
	r.Requests.Store(0)
	if code, l, _ := f.stapler("62m", "run"); code != 0 || r.Requests.Load() != 1 {
		t.Errorf("run at +62m: exit %d, %d requests; want the staple refreshed before the signer ends\n%s", code, r.Requests.Load(), l)
	}
	// Past the signer's end, whatever nextUpdate says, the staple is no good.
	if code, _, out := f.stapler("2h1m", "check"); code != checkCritical || !strings.Contains(out, "has no valid staple") {
		t.Errorf("check after the signer's end: exit %d: %s", code, out)
	}
	// The window ends with the signer: 2 hours, so the default limits are 30 and 12 minutes.
	if code, _, out := f.stapler("100m", "check"); code != checkWarning || !strings.Contains(out, "staple expires in 19m") {
		t.Errorf("check 20 minutes before the signer's end: exit %d: %s", code, out)
	}
	if code, _, out := f.stapler("110m", "check"); code != checkCritical || !strings.Contains(out, "staple expires in 9m") {
		t.Errorf("check 10 minutes before the signer's end: exit %d: %s", code, out)
	}
}

// TestResponderURLs: a certificate that names two responders, the first dead. The second
// answers; the run succeeds, warns about the first, and the state says which one answered.
// [responder_override] applies to each URL.
func TestResponderURLs(t *testing.T) {
	t.Parallel()
	f := newRespFixture(t)
	ca := pki.NewCA("Two URL CA", time.Now())
	r := startOpenSSLResponder(t, ca, nil, nil)
	dead := "http://" + faultClosedAddr(t)
	site, leaf := f.issue(ca, pki.Leaf{Name: "twourls.test", OCSP: []string{dead, r.URL}})
	r.Valid(leaf)

	code, l, _ := f.stapler("", "run")
	if code != 0 || r.Requests.Swap(0) != 1 {
		t.Fatalf("exit %d\n%s", code, l)
	}
	if w := l.find("a responder failed; the next of the certificate's responders answered", "cert", site, "answered", r.URL); w == nil || !strings.Contains(fmt.Sprint(w["err"]), dead) {
		t.Errorf("no warning naming the dead responder:\n%s", l)
	}
	if got := f.entry(site).Staple.Responder; got != r.URL {
		t.Errorf("the state says %q answered, want %q", got, r.URL)
	}

	// Both overridden: the first to the live responder, which now answers first. (openssl's
	// times are to the second: a response from the same second would be nothing newer.)
	waitNextSecond(t, f.entry(site).Staple.ThisUpdate)
	config := filepath.Join(f.dir, "override.toml")
	hapWriteFile(t, config, fmt.Appendf(nil, "[responder_override]\n%q = %q\n%q = %q\n", dead, r.URL, r.URL, "http://"+faultClosedAddr(t)))
	if code, l, _ := f.stapler("", "run", "--force", "--config", config); code != 0 || l.find("a responder failed; the next of the certificate's responders answered") != nil {
		t.Errorf("with overrides: exit %d\n%s", code, l)
	}
	if got := f.entry(site).Staple.Responder; got != dead {
		t.Errorf("the state says %q answered, want the certificate's first URL %q (overridden)", got, dead)
	}
}

// TestMustStapleOpenSSL: a Must-Staple certificate with an openssl responder is stapled like
// any; one without a responder fails the run and is CRITICAL.
func TestMustStapleOpenSSL(t *testing.T) {
	t.Parallel()
	f := newRespFixture(t)
	ca := pki.NewCA("Must-Staple CA", time.Now())
	r := startOpenSSLResponder(t, ca, nil, nil)
	site, leaf := f.issue(ca, pki.Leaf{Name: "must.test", OCSP: []string{r.URL}, MustStaple: true})
	r.Valid(leaf)
	if code, l, _ := f.stapler("", "run"); code != 0 || f.entry(site).Staple.Status != "good" || !f.entry(site).MustStaple {
		t.Fatalf("exit %d\n%s", code, l)
	}
	if code, _, out := f.stapler("", "check"); code != checkOK {
		t.Errorf("check: exit %d: %s", code, out)
	}
	bare, _ := f.issue(ca, pki.Leaf{Name: "bare.test", MustStaple: true})
	code, l, _ := f.stapler("", "run")
	if code != 1 || l.find("cannot staple a Must-Staple certificate", "level", "ERROR", "cert", bare) == nil {
		t.Errorf("without a responder: exit %d, want 1 and an error\n%s", code, l)
	}
	if code, _, out := f.stapler("", "check"); code != checkCritical || !strings.Contains(out, "bare.test.pem (must-staple) names no OCSP responder") {
		t.Errorf("check: exit %d: %s", code, out)
	}
}

// TestRevokedHookOpenSSL: openssl's index revokes the certificate (keyCompromise): the
// revocation hook runs once, with the certificate, its serial and openssl's revocation time and
// reason in its environment.
func TestRevokedHookOpenSSL(t *testing.T) {
	t.Parallel()
	f := newRespFixture(t)
	ca := pki.NewCA("Revoking CA", time.Now())
	r := startOpenSSLResponder(t, ca, nil, nil)
	site, leaf := f.issue(ca, pki.Leaf{Name: "revoked.test", OCSP: []string{r.URL}})
	r.Valid(leaf)
	config := filepath.Join(f.dir, "hook.toml")
	hapWriteFile(t, config, fmt.Appendf(nil, "revoked_command = %q\n",
		`printf '%s|%s|%s|%s|%s\n' "$STAPLER_CERT" "$STAPLER_SUBJECT" "$STAPLER_SERIAL" "$STAPLER_REVOKED_AT" "$STAPLER_REASON" >> `+f.hooks))
	if code, l, _ := f.stapler("", "run", "--config", config); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	if _, err := os.Stat(f.hooks); err == nil {
		t.Fatal("the hook ran for a good certificate")
	}
	revokedAt := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	r.Revoked(leaf, revokedAt, "keyCompromise")
	for i := range 3 {
		if code, l, _ := f.stapler("", "run", "--force", "--config", config); code != 1 || l.find("certificate is revoked", "cert", site) == nil {
			t.Fatalf("run %d after the revocation: exit %d\n%s", i+1, code, l)
		}
	}
	want := fmt.Sprintf("%s|revoked.test|%x|%s|keyCompromise\n", site, leaf.SerialNumber, revokedAt.Format(time.RFC3339))
	if got := string(hapReadFile(t, f.hooks)); got != want {
		t.Errorf("the hook ran with\n%q\nwant once with\n%q", got, want)
	}
}

// TestHTTPCaching: a responder behind a CDN serves a response cached long ago, already past
// its renewal point, with Cache-Control max-age=3600 and an ETag. stapler asks again only when
// the cache may have something newer, and then conditionally; "not modified" is nothing newer.
func TestHTTPCaching(t *testing.T) {
	t.Parallel()
	f := newRespFixture(t)
	ca := pki.NewCA("CDN CA", time.Now())
	r := pki.StartResponder(ca)
	t.Cleanup(r.Close)
	r.SetMode("backdated")
	r.SetCaching(time.Hour)
	site, _ := f.issue(ca, pki.Leaf{Name: "cdn.test", OCSP: []string{r.URL()}})

	start := time.Now()
	if code, l, _ := f.stapler("", "run"); code != 0 || r.Requests.Swap(0) != 1 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	st := f.entry(site)
	if st.Staple.ETag == "" || st.Staple.LastModified == "" {
		t.Errorf("the state does not keep the response's ETag and Last-Modified: %+v", st.Staple)
	}
	if due := st.NextDue.Sub(start); due < 59*time.Minute || due > 61*time.Minute {
		t.Errorf("next attempt %v from now, want when the cache's max-age ends (1h)", due)
	}
	// Past its renewal point, the staple would be due again after retry_base (5m): the cache
	// would only hand out the same bytes.
	if code, l, _ := f.stapler("10m", "run"); code != 0 || r.Requests.Swap(0) != 0 {
		t.Errorf("run at +10m: exit %d, asked the responder before its cache could change\n%s", code, l)
	}
	code, l, _ := f.stapler("61m", "run", "-v")
	if code != 0 || r.Requests.Swap(0) != 1 || r.NotModified.Swap(0) != 1 {
		t.Errorf("run at +61m: exit %d; want one conditional request answered 304\n%s", code, l)
	}
	if l.find("responder has nothing newer", "cert", site, "not_modified", "true") == nil || l.find("updated staple") != nil {
		t.Errorf("the 304 was not recorded as not modified, or was taken for a new staple:\n%s", l)
	}
	if st := f.entry(site); st.NextDue.Sub(start) < 2*time.Hour || st.Failures != 0 {
		t.Errorf("after the 304: next attempt %v from the start, failures %d; want after another max-age", st.NextDue.Sub(start), st.Failures)
	}
	// The CDN gets a fresh response: the next conditional request gets it whole.
	r.SetMode("good")
	if code, l, _ := f.stapler("130m", "run"); code != 0 || r.NotModified.Load() != 0 || l.find("updated staple", "cert", site) == nil {
		t.Errorf("run at +130m: exit %d; want the new response\n%s", code, l)
	}
}
