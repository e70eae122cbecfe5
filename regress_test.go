package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/haproxy/haproxytest"
	"stapler/internal/pki"
)

// Regression tests for the bugs that the shape before the redesign let through (issue 10),
// each reproduced then on a real HAProxy 2.6. Each asserts structured output: the JSON log,
// the state file, status --json and exit statuses.

// TestBugCorruptStapleNotTrusted (bug 1): a staple file whose bytes are not the staple stapler
// vouches for is never taken for it: garbage written over the staple while the responder is
// down fails every run (not only the first) and check says CRITICAL; a responder that returns
// the very bytes stapler vouched for puts them back; an older valid staple restored over a
// newer one is not taken either.
func TestBugCorruptStapleNotTrusted(t *testing.T) {
	f := newHAPFixture(t, hapBin{})
	f.resp.SetMode("cached") // the same bytes, every time
	site, _ := f.addCert("site.stapler.test")
	cfg := f.config("stapler", nil, "")
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	good := hapReadFile(t, site+".ocsp")

	f.resp.SetMode("down")
	hapWriteFile(t, site+".ocsp", []byte("garbage"))
	for i := range 2 { // the second run backs off: it must not call the garbage good
		code, l, _ := runLogged(t, "run", "--config", cfg)
		if code != 1 {
			t.Fatalf("run %d with garbage on disk and the responder down: exit %d, want 1\n%s", i+1, code, l)
		}
	}
	if code, _, out := runLogged(t, "check", "--config", cfg); code != checkCritical || !strings.Contains(out, "has no valid staple") {
		t.Errorf("check: exit %d, want CRITICAL\n%s", code, out)
	}
	if got := statusOf(t, cfg, site); got.StapleStatus != "none" || !strings.Contains(got.Problem, "staple on disk is not valid") {
		t.Errorf("status says %q (%s), want none: not valid", got.StapleStatus, got.Problem)
	}

	f.resp.SetMode("cached")
	code, l, _ := runLogged(t, "run", "--force", "--config", cfg)
	if code != 0 || !bytes.Equal(hapReadFile(t, site+".ocsp"), good) {
		t.Fatalf("forced run with the responder answering the vouched bytes: exit %d, staple restored %v\n%s", code, bytes.Equal(hapReadFile(t, site+".ocsp"), good), l)
	}

	// An older, valid staple restored over the newer one (a backup).
	leaf := must(parseBundle(hapReadFile(t, site)))[0]
	older := f.ca.Respond(leaf.SerialNumber, ocsp.Good, time.Now().Add(-3*time.Hour), time.Now().Add(20*time.Hour), nil, nil)
	hapWriteFile(t, site+".ocsp", older)
	f.resp.SetMode("down")
	code, l, _ = runLogged(t, "run", "--config", cfg)
	if code != 1 || l.find("refresh failed", "cert", site) == nil {
		t.Errorf("run with an older staple restored: exit %d, want 1 and a refresh attempt\n%s", code, l)
	}
	if got := statusOf(t, cfg, site); got.StapleStatus != "none" || !strings.Contains(got.Problem, "older than the last staple written") {
		t.Errorf("status of the restored older staple: %q (%s)", got.StapleStatus, got.Problem)
	}
}

// statusOf runs `stapler status --json` and returns one certificate's entry.
func statusOf(t *testing.T, cfg, path string) certStatus {
	t.Helper()
	_, _, out := runLogged(t, "status", "--json", "--config", cfg)
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, c := range rep.Certificates {
		if c.Path == path {
			return c
		}
	}
	t.Fatalf("status --json has no %s:\n%s", path, out)
	return certStatus{}
}

// TestBugPushNeverReceived (bug 2): what every configured HAProxy serves is compared with the
// disk each run. A hand run whose --socket replaced the configured one leaves the configured
// HAProxy with an older staple; the next plain run gives it the staple on disk.
func TestBugPushNeverReceived(t *testing.T) {
	f := newHAPFixture(t, hapBin{})
	site, leaf := f.addCert("site.stapler.test")
	configured, other := haproxytest.Start(t, "3.2.26-1", "admin"), haproxytest.Start(t, "3.2.26-1", "admin")
	for _, h := range []*haproxytest.Fake{configured, other} {
		h.Load(site, fmt.Sprintf("%x", leaf.SerialNumber), certIDHex(leaf, f.ca.Cert), true)
	}
	cfg := f.config("stapler", []string{configured.Addr}, "")
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	if code, l, _ := runLogged(t, "run", "--force", "--socket", other.Addr, "--config", cfg); code != 0 {
		t.Fatalf("hand run to the other socket: exit %d\n%s", code, l)
	}
	disk := hapReadFile(t, site+".ocsp")
	if bytes.Equal(configured.Held(site), disk) {
		t.Fatal("the configured HAProxy already has the hand run's staple: the test proves nothing")
	}
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 || l.find("HAProxy did not serve the staple on disk; sent it", "cert", site) == nil {
		t.Errorf("plain run: exit %d\n%s", code, l)
	}
	if !bytes.Equal(configured.Held(site), disk) {
		t.Error("the configured HAProxy does not serve the staple on disk")
	}
}

// TestBugFarFutureNextUpdate (bug 3): a response valid for ten years does not freeze the staple:
// it falls due within max_staple_age of its thisUpdate, and a fresher response replaces it,
// although its nextUpdate is nearer ("newer" is a later thisUpdate, never a later nextUpdate).
func TestBugFarFutureNextUpdate(t *testing.T) {
	f := newHAPFixture(t, hapBin{})
	f.resp.SetMode("farFuture")
	site, _ := f.addCert("site.stapler.test")
	cfg := f.config("stapler", nil, "")
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	st := readState(t, f.state).Certificates[site]
	if limit := st.Staple.ThisUpdate.Add(96 * time.Hour); st.NextDue.After(limit) {
		t.Errorf("next due %v, more than max_staple_age (96h) after thisUpdate %v", st.NextDue, st.Staple.ThisUpdate)
	}
	far := hapReadFile(t, site+".ocsp")
	f.resp.SetMode("good")
	code, l, _ := runLogged(t, "run", "--force", "--config", cfg)
	if code != 0 || l.find("updated staple", "cert", site) == nil || bytes.Equal(hapReadFile(t, site+".ocsp"), far) {
		t.Errorf("forced run with a fresher response: exit %d; the ten-year staple must give way\n%s", code, l)
	}
}

// TestBugRunTimeout (bug 4): a fetch that finished with an error is its certificate's failure,
// recorded and backed off, even when the run's deadline passes later while another responder
// hangs; and the HAProxy phase still has its own budget after the deadline.
func TestBugRunTimeout(t *testing.T) {
	t.Parallel()
	f := newHAPFixture(t, hapBin{})
	fast, _ := f.addCert("fast.stapler.test")
	ca2 := pki.NewCA("Slow CA", time.Now())
	slowResp := pki.StartResponder(ca2)
	t.Cleanup(slowResp.Close)
	slow := filepath.Join(f.certs, "slow.stapler.test.pem")
	leaf, key := ca2.Issue(pki.Leaf{Name: "slow.stapler.test", OCSP: []string{slowResp.URL()}}, time.Now())
	writeBundle(slow, leaf, key, ca2.Cert)
	h := haproxytest.Start(t, "3.2.26-1", "admin")
	fastLeaf := must(parseBundle(hapReadFile(t, fast)))[0]
	h.Load(fast, fmt.Sprintf("%x", fastLeaf.SerialNumber), certIDHex(fastLeaf, f.ca.Cert), true)
	h.Load(slow, fmt.Sprintf("%x", leaf.SerialNumber), certIDHex(leaf, ca2.Cert), true)
	cfg := f.config("stapler", []string{h.Addr}, "run_timeout = \"1s\"\ntimeout = \"10s\"\n")
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	f.resp.SetMode("tryLater")
	slowResp.SetLatency(3 * time.Second)
	code, l, _ := runLogged(t, "run", "--force", "--config", cfg)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if l.find("refresh failed", "cert", fast) == nil || l.find("run ended before every due staple was fetched; they stay due", "unfinished", "1") == nil {
		t.Errorf("want the fast failure reported and one unfinished fetch:\n%s", l)
	}
	if l.find("HAProxy unreachable; checked again at the next run") != nil || l.find("push failed") != nil {
		t.Errorf("HAProxy, healthy, was blamed after the deadline:\n%s", l)
	}
	st := readState(t, f.state)
	if st.Certificates[fast].Failures != 1 || !strings.Contains(st.Certificates[fast].LastError, "tryLater") {
		t.Errorf("fast: failures %d, last error %q; want the tryLater recorded", st.Certificates[fast].Failures, st.Certificates[fast].LastError)
	}
	if st.Certificates[slow].Failures != 0 || len(st.Certificates[slow].Pending) != 0 {
		t.Errorf("slow: %+v; an unfinished fetch is no failure", st.Certificates[slow])
	}
}

// TestBugLimitedRunKeepsState (bug 6): a run limited to one directory prunes nothing of the
// others; only a run that read a directory whole forgets the certificates gone from it.
func TestBugLimitedRunKeepsState(t *testing.T) {
	f := newHAPFixture(t, hapBin{})
	f.addCert("one.stapler.test")
	two := filepath.Join(f.dir, "two")
	os.Mkdir(two, 0o755)
	leaf, key := f.ca.Issue(pki.Leaf{Name: "two.stapler.test", OCSP: []string{f.resp.URL()}}, time.Now())
	writeBundle(filepath.Join(two, "two.pem"), leaf, key, f.ca.Cert)
	cfg := f.config("stapler", nil, fmt.Sprintf("dirs = [%q, %q]\n", f.certs, two))
	os.WriteFile(cfg, bytes.Replace(hapReadFile(t, cfg), []byte(fmt.Sprintf("dirs = [%q]\n", f.certs)), nil, 1), 0o644)
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, l)
	}
	if code, l, _ := runLogged(t, "run", "--dir", f.certs, "--config", cfg); code != 0 {
		t.Fatalf("run limited to one directory: exit %d\n%s", code, l)
	}
	if readState(t, f.state).Certificates[filepath.Join(two, "two.pem")] == nil {
		t.Fatal("the limited run pruned the other directory's certificate")
	}
	f.resp.Requests.Store(0)
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 || f.resp.Requests.Load() != 0 {
		t.Errorf("full run after the limited one: exit %d, %d requests; want 0\n%s", code, f.resp.Requests.Load(), l)
	}
	os.Remove(filepath.Join(two, "two.pem"))
	runLogged(t, "run", "--config", cfg)
	if readState(t, f.state).Certificates[filepath.Join(two, "two.pem")] != nil {
		t.Error("a certificate gone from a directory read whole is still in the state")
	}
}

// TestBugCertHashCoversCertificatesOnly (bug 9): the state's certificate hash covers the
// certificate blocks, not the key: nothing derived from a key is stored, and a file rewritten
// with the same certificates (a new key order, a comment) changes nothing.
func TestBugCertHashCoversCertificatesOnly(t *testing.T) {
	f := newHAPFixture(t, hapBin{})
	site, leaf := f.addCert("site.stapler.test")
	cfg := f.config("stapler", nil, "")
	runLogged(t, "run", "--config", cfg)
	h := sha256.New()
	h.Write(leaf.Raw)
	h.Write(f.ca.Cert.Raw)
	if got, want := readState(t, f.state).Certificates[site].CertHash, hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("cert_hash %s, want the hash of the certificate blocks %s", got, want)
	}
	data := hapReadFile(t, site)
	hapWriteFile(t, site, append([]byte("# a comment HAProxy ignores\n"), data...))
	f.resp.Requests.Store(0)
	if code, l, _ := runLogged(t, "run", "--config", cfg); code != 0 || f.resp.Requests.Load() != 0 {
		t.Errorf("run after a rewrite with the same certificates: exit %d, %d requests\n%s", code, f.resp.Requests.Load(), l)
	}
}

// TestExitErrorNil (bug 9): an exit status without a message has an Error all the same.
func TestExitErrorNil(t *testing.T) {
	e := &exitError{code: 1}
	if got := e.Error(); got != "exit status 1" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(&exitError{code: 2, err: errNotCertificate}, errNotCertificate) {
		t.Error("exitError does not unwrap")
	}
}
