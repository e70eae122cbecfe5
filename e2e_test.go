package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
	"golang.org/x/sys/unix"

	"stapler/internal/haproxy/haproxytest"
	"stapler/internal/ocspcheck"
	"stapler/internal/pki"
)

// runStapler runs the built command (put on PATH by TestMain) and returns its exit status
// and standard error.
func runStapler(t *testing.T, args ...string) (int, string) {
	t.Helper()
	res := execStapler(t, 0, nil, nil, args...)
	return res.code, res.stderr
}

func readState(t *testing.T, path string) *State {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("state file does not parse: %v\n%s", err, data)
	}
	return &st
}

// TestRunFailureKeepsStaple: whatever goes wrong with the responder, the run exits 1 with a
// message naming the certificate and the cause, the last good staple stays byte-identical, the
// state records the failure, and the next run, backing off, asks nobody. One case of each kind
// of failure: every way a response can be invalid is in internal/ocspcheck's table.
func TestRunFailureKeepsStaple(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode string
		want string // in the error message
	}{
		{"unknown", `status is unknown`},
		{"tryLater", `responder answered "tryLater"`},
		{"http500", `answered HTTP 500 Internal Server Error`},
		{"garbage", `invalid OCSP response`},
		{"html", `^responder http://127\.0\.0\.1:\d+: responder answered text/html, not an OCSP response: "<html><body>Service unavailable`},
		{"stranger", `bad OCSP signature`},
		{"expired", `response expires at .*, too soon to staple`},
		{"down", `connect: connection refused`},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			now := time.Now()
			ca := pki.NewCA("Failure Test CA", now)
			r := pki.StartResponder(ca)
			defer r.Close()
			dir := t.TempDir()
			certs := filepath.Join(dir, "certs")
			os.Mkdir(certs, 0o755)
			site := filepath.Join(certs, "site.pem")
			leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
			writeBundle(site, leaf, key, ca.Cert)
			state := filepath.Join(dir, "state.json")
			args := []string{"run", "--dir", certs, "--state", state}

			if code, stderr := runStapler(t, args...); code != 0 {
				t.Fatalf("first run: exit %d\n%s", code, stderr)
			}
			good, err := os.ReadFile(site + ".ocsp")
			if err != nil {
				t.Fatal(err)
			}

			r.SetMode(tt.mode)
			code, l, _ := runLogged(t, append(args, "--force")...)
			if code != 1 {
				t.Errorf("failed run: exit %d, want 1\n%s", code, l)
			}
			re := regexp.MustCompile(tt.want)
			if f := l.find("refresh failed", "level", "ERROR", "cert", site); f == nil || !re.MatchString(fmt.Sprint(f["err"])) {
				t.Errorf("no refresh failure whose error matches %s:\n%s", re, l)
			}
			if got, _ := os.ReadFile(site + ".ocsp"); !bytes.Equal(got, good) {
				t.Errorf("staple changed after a failed refresh")
			}
			st := readState(t, state).Certificates[site]
			if st == nil || st.Failures != 1 || st.LastError == "" || st.Staple == nil || st.Staple.Hash != hashBytes(good) {
				t.Errorf("state after failure = %+v, want 1 failure, an error and the old staple", st)
			}
			if leftovers, _ := filepath.Glob(filepath.Join(certs, ".*")); len(leftovers) > 0 {
				t.Errorf("temporary files left behind: %v", leftovers)
			}
			// status says when the next try comes: the back-off's end, from the state.
			listed := statusJSON(t, "--dir", certs, "--state", state).Certificates
			if len(listed) != 1 {
				t.Fatalf("status lists %d certificates, want 1", len(listed))
			}
			if cs := listed[0]; cs.NextRefresh == nil || st == nil || !cs.NextRefresh.Equal(st.NextDue) || !st.NextDue.After(now) {
				t.Errorf("status next_refresh %v, want the state's next_due, after now (state: %+v)", cs.NextRefresh, st)
			}

			// Backing off: the next run asks nobody and, with a valid staple still on disk,
			// exits 0.
			r.Requests.Store(0)
			if code, stderr := runStapler(t, args...); code != 0 || r.Requests.Load() != 0 {
				t.Errorf("run while backing off: exit %d, %d requests, want 0 and 0\n%s", code, r.Requests.Load(), stderr)
			}
		})
	}
}

// TestRunAcceptsDelegatedResponder: a response signed by a responder certificate that the
// issuer issued for OCSP signing is stapled.
func TestRunAcceptsDelegatedResponder(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Delegated Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	r.SetMode("delegated")
	dir := t.TempDir()
	site := filepath.Join(dir, "site.pem")
	leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	if code, stderr := runStapler(t, "run", "--state", filepath.Join(dir, "state.json"), site); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if _, err := os.Stat(site + ".ocsp"); err != nil {
		t.Fatal(err)
	}
}

// TestRunReusesConnections: many certificates from one responder share the keep-alive
// connections of --jobs workers instead of opening one each.
func TestRunReusesConnections(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Fleet Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o755)
	const n, jobs = 60, 4
	for i := range n {
		leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
		writeBundle(filepath.Join(certs, "site"+string(rune('a'+i/26))+string(rune('a'+i%26))+".pem"), leaf, key, ca.Cert)
	}
	code, stderr := runStapler(t, "run", "--dir", certs, "--state", filepath.Join(dir, "state.json"), "--jobs", "4")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if got := r.Requests.Load(); got != n {
		t.Errorf("%d requests, want %d", got, n)
	}
	if got := r.Conns.Load(); got > jobs {
		t.Errorf("%d connections for %d requests, want at most %d (--jobs)", got, n, jobs)
	}
	if strings.Contains(stderr, "fetching staples") {
		t.Errorf("progress shown although stderr is no terminal:\n%s", stderr)
	}
}

// TestRunKeepsNewerStaple: a responder that answers with the staple already on disk (a cache)
// or with an older response changes nothing: no write, no push, the run succeeds.
func TestRunKeepsNewerStaple(t *testing.T) {
	for _, mode := range []string{"cached", "older"} {
		t.Run(mode, func(t *testing.T) {
			now := time.Now()
			ca := pki.NewCA("Cache Test CA", now)
			r := pki.StartResponder(ca)
			defer r.Close()
			h := haproxytest.Start(t, "3.2.26-1", "admin")
			dir := t.TempDir()
			site := filepath.Join(dir, "site.pem")
			leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
			writeBundle(site, leaf, key, ca.Cert)
			h.Load(site, fmt.Sprintf("%x", leaf.SerialNumber), certIDHex(leaf, ca.Cert), true)
			args := []string{"run", "--force", "--state", filepath.Join(dir, "state.json"), "--socket", h.Addr, site}
			r.SetMode(map[string]string{"cached": "cached", "older": "good"}[mode])
			if code, stderr := runStapler(t, args...); code != 0 {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			before, _ := os.Stat(site + ".ocsp")
			staple, _ := os.ReadFile(site + ".ocsp")
			h.Log()

			r.SetMode(mode)
			code, l, _ := runLogged(t, args...)
			if code != 0 || l.find("run finished", "refreshed", "0", "up_to_date", "1") == nil {
				t.Fatalf("exit %d, want 0 and nothing refreshed\n%s", code, l)
			}
			after, _ := os.Stat(site + ".ocsp")
			if got, _ := os.ReadFile(site + ".ocsp"); !bytes.Equal(got, staple) || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
				t.Error("staple file was rewritten")
			}
			if got := slices.DeleteFunc(h.Log(), func(cmd string) bool { return strings.HasPrefix(cmd, "show ") }); len(got) != 0 {
				t.Errorf("sent %q, want nothing", got)
			}
		})
	}
}

// TestRunRepairsIssuerFile: a <cert>.issuer that stapler wrote for an earlier certificate is
// replaced when the new certificate has another issuer, and removed when the new bundle holds
// its issuer, whether or not the new certificate has a responder: HAProxy 2.6 refuses to start
// with an .issuer that did not sign the certificate. One stapler did not write is reported.
func TestRunRepairsIssuerFile(t *testing.T) {
	now := time.Now()
	ca1, ca2 := pki.NewCA("First CA", now), pki.NewCA("Second CA", now)
	r1, r2 := pki.StartResponder(ca1), pki.StartResponder(ca2)
	defer r1.Close()
	defer r2.Close()
	dir := t.TempDir()
	issuers := filepath.Join(dir, "issuers")
	os.Mkdir(issuers, 0o755)
	os.WriteFile(filepath.Join(issuers, "ca1.pem"), pki.CertPEM(ca1.Cert), 0o644)
	os.WriteFile(filepath.Join(issuers, "ca2.pem"), pki.CertPEM(ca2.Cert), 0o644)
	config := filepath.Join(dir, "stapler.toml")
	os.WriteFile(config, []byte("issuer_dirs = [\"issuers\"]\nstate = \"state.json\"\nfetch_issuers = false\n"), 0o644)
	site := filepath.Join(dir, "site.pem")
	run := func(want int) string {
		t.Helper()
		code, stderr := runStapler(t, "run", "--config", config, site)
		if code != want {
			t.Fatalf("exit %d, want %d\n%s", code, want, stderr)
		}
		return stderr
	}
	issuerIs := func(want []byte) {
		t.Helper()
		got, err := os.ReadFile(site + ".issuer")
		if want == nil && !errors.Is(err, os.ErrNotExist) || want != nil && !bytes.Equal(got, want) {
			t.Fatalf("site.pem.issuer: %q, %v; want %q", got, err, want)
		}
	}

	leaf, key := ca1.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r1.URL()}}, now)
	writeBundle(site, leaf, key)
	run(0)
	issuerIs(pki.CertPEM(ca1.Cert))

	// Renewed by another CA, issuer not in the bundle, its responder down: the .issuer is
	// right at once, although no staple could be fetched.
	r2.SetMode("down")
	leaf, key = ca2.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r2.URL()}}, now)
	writeBundle(site, leaf, key)
	if stderr := run(1); strings.Contains(stderr, "ignoring issuer file") {
		t.Errorf("a warning about the issuer file stapler is replacing:\n%s", stderr)
	}
	issuerIs(pki.CertPEM(ca2.Cert))

	// Renewed again, now with the issuer in the bundle and no responder: the .issuer goes.
	leaf, key = ca1.Issue(pki.Leaf{Name: "site.test"}, now)
	writeBundle(site, leaf, key, ca1.Cert)
	run(0)
	issuerIs(nil)

	// Someone else's wrong .issuer is not touched, but reported.
	os.WriteFile(site+".issuer", pki.CertPEM(ca2.Cert), 0o644)
	leaf, key = ca1.Issue(pki.Leaf{Name: "site.test"}, now)
	writeBundle(site, leaf, key, ca1.Cert)
	if stderr := run(1); !strings.Contains(stderr, site+".issuer did not sign the certificate, and HAProxy refuses to start with it") {
		t.Errorf("no clear error about the wrong .issuer:\n%s", stderr)
	}
	issuerIs(pki.CertPEM(ca2.Cert))
}

func TestShowProgress(t *testing.T) {
	var buf bytes.Buffer
	var done atomic.Int64
	done.Store(7)
	stop := showProgress(&syncWriter{w: &buf}, &done, 40)
	stop()
	if got := buf.String(); !strings.HasPrefix(got, "\rstapler: fetching staples 7/40") || !strings.HasSuffix(got, "\r\033[K") {
		t.Errorf("progress %q", got)
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestRunFIFOsNeverBlock: a FIFO where a certificate, a staple or an issuer belongs is no
// file to read, and opening one never hangs the run.
func TestRunFIFOsNeverBlock(t *testing.T) {
	skipProcesses(t)
	now := time.Now()
	ca := pki.NewCA("FIFO Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o755)
	site := filepath.Join(certs, "site.pem")
	leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	run := func() (int, logs) {
		res := execStapler(t, 20*time.Second, nil, nil, "run", "--log-format", "json", "--dir", certs, "--state", filepath.Join(dir, "state.json"))
		if res.killed {
			t.Fatal("stapler hangs on a FIFO")
		}
		return res.code, parseLogs(res.stderr)
	}
	for _, p := range []string{filepath.Join(certs, "fifo.pem"), site + ".ocsp"} {
		if err := syscall.Mkfifo(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The FIFO named site.pem.ocsp is replaced by a staple; fifo.pem is no certificate.
	if code, l := run(); code != 0 || l.find("run finished", "checked", "1", "refreshed", "1") == nil {
		t.Fatalf("exit %d\n%s", code, l)
	}
	if fi, err := os.Lstat(site + ".ocsp"); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("site.pem.ocsp: %v, %v", fi, err)
	}
	// A FIFO named site.pem.issuer would hang HAProxy's start: an error naming it.
	if err := syscall.Mkfifo(site+".issuer", 0o644); err != nil {
		t.Fatal(err)
	}
	if code, l := run(); code != 1 || l.find("cannot check certificate", "cert", site) == nil || !l.mentions(site+".issuer cannot be read as HAProxy will try to") {
		t.Fatalf("FIFO issuer: exit %d\n%s", code, l)
	}
}

// TestRunKeepsOwners: a run as root (a certbot hook's) rewrites the state, the staple and the
// metrics file with the owner, group and mode each had, so that the
// dedicated user whose timer runs stapler can still read and write them.
func TestRunKeepsOwners(t *testing.T) {
	skipProcesses(t)
	if os.Getuid() != 0 {
		cannotRun(t, "chowning files to another user needs root")
	}
	const uid, gid = 65534, 65534 // nobody, nogroup
	now := time.Now()
	ca := pki.NewCA("Owner Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o755)
	site := filepath.Join(certs, "site.pem")
	leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key) // no chain: stapler writes site.pem.issuer
	issuers := filepath.Join(dir, "issuers")
	os.Mkdir(issuers, 0o755)
	os.WriteFile(filepath.Join(issuers, "ca.pem"), pki.CertPEM(ca.Cert), 0o644)
	state, metrics := filepath.Join(dir, "state.json"), filepath.Join(dir, "stapler.prom")
	args := []string{"run", "--dir", certs, "--state", state, "--metrics-file", metrics}
	config := filepath.Join(dir, "stapler.toml")
	os.WriteFile(config, fmt.Appendf(nil, "issuer_dirs = [%q]\nfetch_issuers = false\n", issuers), 0o644)
	args = append(args, "--config", config)
	if code, stderr := runStapler(t, args...); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, stderr)
	}
	// Each of these is rewritten by the forced run (.issuer files go through the same writer,
	// but keep their bytes here, so nothing rewrites them).
	files := map[string]os.FileMode{state: 0o600, site + ".ocsp": 0o640, metrics: 0o640}
	for f, mode := range files {
		if err := os.Chown(f, uid, gid); err != nil {
			t.Fatal(err)
		}
		os.Chmod(f, mode)
	}
	r.SetMode("good")
	if code, stderr := runStapler(t, append(args, "--force")...); code != 0 {
		t.Fatalf("forced run: exit %d\n%s", code, stderr)
	}
	for f, mode := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid || fi.Mode().Perm() != mode {
			t.Errorf("%s: uid %d gid %d mode %v after the run, want %d %d %v", filepath.Base(f), st.Uid, st.Gid, fi.Mode().Perm(), uid, gid, mode)
		}
	}
}

// TestPermissionHint: a user who may not read the state (a monitoring agent's, or an
// operator's without sudo) is told how to run stapler, not only "permission denied".
func TestPermissionHint(t *testing.T) {
	t.Parallel()
	skipProcesses(t)
	if os.Getuid() != 0 {
		cannotRun(t, "running stapler as another user needs root")
	}
	setpriv := hapLookTool(t, "setpriv")
	self, err := exec.LookPath("stapler")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "stapler-perm") // t.TempDir's parents are 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "stapler")
	hapWriteFile(t, bin, hapReadFile(t, self))
	os.Chmod(bin, 0o755)
	certs, private := filepath.Join(dir, "certs"), filepath.Join(dir, "private")
	os.Mkdir(certs, 0o755)
	os.Mkdir(private, 0o700)
	ca := pki.NewCA("Permission Test CA", time.Now())
	leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{"http://127.0.0.1:9/"}}, time.Now())
	writeBundle(filepath.Join(certs, "site.pem"), leaf, key, ca.Cert)
	os.Chmod(filepath.Join(certs, "site.pem"), 0o644)
	hapWriteFile(t, filepath.Join(private, "state.json"), []byte(`{"version":2,"certificates":{}}`))
	wrap := []string{"sh", "-c", `shift; exec "$SETPRIV" --reuid=65534 --regid=65534 --clear-groups "$BIN" "$@"`, "sh"}
	env := []string{"SETPRIV=" + setpriv, "BIN=" + bin}
	settings := []string{"--config", "/dev/null", "--dir", certs, "--state", filepath.Join(private, "state.json")}

	res := execStapler(t, 0, wrap, env, append([]string{"check"}, settings...)...)
	if res.code != checkUnknown || !strings.Contains(res.stdout, "permission denied: run the check as the user that owns stapler's state") {
		t.Errorf("check: exit %d, %q; want UNKNOWN with the hint", res.code, res.stdout)
	}
	res = execStapler(t, 0, wrap, env, append([]string{"status"}, settings...)...)
	if res.code != exitFailed || !strings.Contains(res.stderr, "stapler: hint: run stapler as the user that owns its state") {
		t.Errorf("status: exit %d, %q; want 1 with the hint", res.code, res.stderr)
	}
}

// TestRunCrtStoreWithoutIssuer: a crt-store entry whose bundle lacks the issuer and that names
// no issuer file cannot use a staple (HAProxy could not find the issuer): the run says what to
// add, and asks the CA nothing, at this run or the next.
func TestRunCrtStoreWithoutIssuer(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Store Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	store, issuers := filepath.Join(dir, "store"), filepath.Join(dir, "issuers")
	os.Mkdir(store, 0o755)
	os.Mkdir(issuers, 0o755)
	hapWriteFile(t, filepath.Join(issuers, "ca.pem"), pki.CertPEM(ca.Cert))
	leaf, key := ca.Issue(pki.Leaf{Name: "store.test", OCSP: []string{r.URL()}}, now)
	writeBundle(filepath.Join(store, "s.pem"), leaf, key) // no chain
	cfg := filepath.Join(dir, "haproxy.cfg")
	hapWriteFile(t, cfg, []byte("crt-store web\n\tcrt-base "+store+"\n\tload crt \"s.pem\" ocsp \"s.der\" alias \"site\"\n\n"+
		"frontend fe\n\tmode http\n\tbind 127.0.0.1:0 ssl crt \"@web/site\"\n"))
	conf := filepath.Join(dir, "stapler.toml")
	hapWriteFile(t, conf, fmt.Appendf(nil, "haproxy_configs = [%q]\nissuer_dirs = [%q]\nfetch_issuers = false\nstate = %q\n", cfg, issuers, filepath.Join(dir, "state.json")))
	for run := range 2 {
		code, l, _ := runLogged(t, "run", "--config", conf)
		if code != 1 || !l.mentions(`names no issuer file, so HAProxy could not use a staple: add issuer "FILE" to its load line`) {
			t.Errorf("run %d: exit %d; want 1 and the load line's fix\n%s", run+1, code, l)
		}
		if _, err := os.Stat(filepath.Join(store, "s.der")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("run %d: a staple was written that HAProxy cannot use (%v)", run+1, err)
		}
	}
	if n := r.Requests.Load(); n != 0 {
		t.Errorf("the responder was asked %d times for a staple that could not be used", n)
	}
}

// inRun is a certificate directory, a CA and its responder, for runs made in the test's own
// process, so that -race sees the fetchers and the writer. It silences slog: its tests never
// run in parallel.
type inRun struct {
	t          *testing.T
	now        time.Time
	dir, certs string
	ca         *pki.CA
	r          *pki.Responder
	url        string // where certificates send OCSP requests: the responder, or a front
	opt        runOptions
}

func newInRun(t *testing.T, name string) *inRun {
	quietLogs(t)
	e := &inRun{t: t, now: time.Now(), dir: t.TempDir()}
	e.ca = pki.NewCA(name+" CA", e.now)
	e.r = pki.StartResponder(e.ca)
	t.Cleanup(e.r.Close)
	e.url = e.r.URL()
	e.certs = filepath.Join(e.dir, "certs")
	os.Mkdir(e.certs, 0o755)
	e.opt.Config = defaultConfig()
	e.opt.Dirs, e.opt.State, e.opt.Jobs = []string{e.certs}, filepath.Join(e.dir, "state.json"), 1
	return e
}

// front puts a server before the responder for the certificates issued after: it calls hold
// with the number of each request, then the responder answers.
func (e *inRun) front(hold func(n int64)) {
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		hold(asked.Add(1))
		e.r.ServeHTTP(w, req)
	}))
	e.t.Cleanup(srv.Close)
	e.url = srv.URL
}

// issue writes a certificate for name to <certs>/<file>, with the CA in its chain or not.
func (e *inRun) issue(file, name string, chain bool) (string, *x509.Certificate, *ecdsa.PrivateKey) {
	path := filepath.Join(e.certs, file)
	leaf, key := e.ca.Issue(pki.Leaf{Name: name, OCSP: []string{e.url}}, e.now)
	if chain {
		writeBundle(path, leaf, key, e.ca.Cert)
	} else {
		writeBundle(path, leaf, key)
	}
	return path, leaf, key
}

// issuerDir puts the CA in issuer_dirs, and turns AIA off.
func (e *inRun) issuerDir() {
	dir := filepath.Join(e.dir, "issuers")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "ca.pem"), pki.CertPEM(e.ca.Cert), 0o644)
	e.opt.IssuerDirs, e.opt.FetchIssuers = []string{dir}, false
}

// run runs stapler at at (with --force if force), and fails the test if it cannot.
func (e *inRun) run(what string, at time.Time, force bool) summary {
	e.t.Helper()
	e.opt.Force = force
	if err := e.opt.discover(); err != nil {
		e.t.Fatal(err)
	}
	sum, err := run(context.Background(), e.opt, at)
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
	return sum
}

// wantStaple fails the test unless <path>.ocsp is a valid response about leaf.
func (e *inRun) wantStaple(what, path string, leaf *x509.Certificate) {
	e.t.Helper()
	der, err := os.ReadFile(path + ".ocsp")
	if err == nil {
		_, err = ocsp.ParseResponseForCert(der, leaf, e.ca.Cert)
	}
	if err != nil {
		e.t.Errorf("%s: %s.ocsp: %v", what, filepath.Base(path), err)
	}
}

// TestRunWritesWhileFetching: the staples fetched first are written while the others are
// still being fetched, a chunk at a time, and every one ends on disk once, valid, with its
// issuer file before it.
func TestRunWritesWhileFetching(t *testing.T) {
	old := writeChunk
	writeChunk = 3
	defer func() { writeChunk = old }()
	e := newInRun(t, "Chunk")
	const n = 11
	// The last request is answered only once staples are on disk: they were written while it
	// was being fetched, or the test fails after 5 s.
	var early atomic.Bool
	e.front(func(asked int64) {
		if asked != n {
			return
		}
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			if written, _ := filepath.Glob(filepath.Join(e.certs, "*.ocsp")); len(written) >= 3 {
				early.Store(true)
				return
			}
		}
	})
	e.issuerDir()
	e.opt.Jobs = 4
	var paths []string
	var leaves []*x509.Certificate
	for i := range n {
		// Every other one without its chain: its issuer comes from issuer_dirs, and goes to
		// <cert>.issuer.
		path, leaf, _ := e.issue(fmt.Sprintf("c%d.pem", i), fmt.Sprintf("c%d.test", i), i%2 == 0)
		paths, leaves = append(paths, path), append(leaves, leaf)
	}
	if sum := e.run("run", e.now, false); !sum.ok() || sum.Refreshed != n {
		t.Fatalf("run: %+v; want %d refreshed", sum, n)
	}
	if !early.Load() {
		t.Errorf("no staple was written while the last one was fetched (writeChunk %d)", writeChunk)
	}
	for i, path := range paths {
		e.wantStaple("run", path, leaves[i])
		if _, err := os.Stat(path + ".issuer"); (i%2 == 1) != (err == nil) {
			t.Errorf("%s.issuer: %v", path, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(e.certs, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}

	// A refresh replaces every staple, a chunk at a time: each chunk after the first
	// overwrites the files the chunks before it replaced (durable.Spares) instead of creating
	// new ones, and none is left at the end. A file is known by its inode number and birth
	// time: the file system may give a new file the number of one just removed, not its birth.
	before := map[fileID]bool{}
	for _, path := range paths {
		before[birthID(t, path+".ocsp")] = true
	}
	time.Sleep(20 * time.Millisecond) // past the file system's clock tick
	if sum := e.run("refresh", e.now.Add(time.Minute), true); !sum.ok() || sum.Refreshed != n {
		t.Fatalf("refresh: %+v; want %d refreshed", sum, n)
	}
	reused := 0
	for i, path := range paths {
		e.wantStaple("refresh", path, leaves[i])
		if before[birthID(t, path+".ocsp")] {
			reused++
		}
	}
	if reused < n-writeChunk {
		t.Errorf("%d of %d staples went into files an earlier chunk replaced, want at least %d (all but the first chunk's)", reused, n, n-writeChunk)
	}
	if left, _ := filepath.Glob(filepath.Join(e.certs, ".*")); len(left) > 0 {
		t.Errorf("after the refresh, temporary files left: %q", left)
	}
}

// fileID tells a file from any other on its file system, even one created later with its inode
// number.
type fileID struct {
	ino   uint64
	birth unix.StatxTimestamp
}

// birthID is the fileID of the file at path; it fails the test where the file system does not
// give a birth time.
func birthID(t *testing.T, path string) fileID {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mask&unix.STATX_BTIME == 0 {
		t.Fatalf("%s: the file system gives no birth time, which this test needs (ext4, XFS, Btrfs and tmpfs give one)", path)
	}
	return fileID{st.Ino, st.Btime}
}

// TestRunRefreshFromRecordedCertID: a refresh of files that have not changed and hold their
// issuer makes their requests from the CertIDs the state recorded, reading only the first
// file per issuer; the staples it writes are as valid as ever. A recorded CertID whose serial
// is not the certificate's, or a file not known to hold its issuer, is read again.
func TestRunRefreshFromRecordedCertID(t *testing.T) {
	e := newInRun(t, "Recorded")
	const n = 6
	var paths []string
	var leaves []*x509.Certificate
	for i := range n {
		path, leaf, _ := e.issue(fmt.Sprintf("r%d.pem", i), fmt.Sprintf("r%d.test", i), true)
		paths, leaves = append(paths, path), append(leaves, leaf)
	}
	if sum := e.run("first run", e.now, false); sum.Refreshed != n {
		t.Fatalf("first run: %+v", sum)
	}
	st := readState(t, e.opt.State)
	for i, leaf := range leaves {
		cs := st.Certificates[paths[i]]
		_, want, _ := ocspcheck.Request(leaf, e.ca.Cert)
		if cs == nil || cs.CertID != hex.EncodeToString(want) || !cs.IssuerInBundle {
			t.Fatalf("r%d: state records %+v; want CertID %x, in bundle", i, cs, want)
		}
	}
	refresh := func(what string, wantReads int64) {
		t.Helper()
		before := certReads.Load()
		if sum := e.run(what, e.now.Add(time.Minute), true); !sum.ok() || sum.Refreshed != n {
			t.Fatalf("%s: %+v; want %d refreshed", what, sum, n)
		}
		if got := certReads.Load() - before; got != wantReads {
			t.Errorf("%s: %d certificate files read, want %d", what, got, wantReads)
		}
		for i, path := range paths {
			e.wantStaple(what, path, leaves[i])
		}
	}
	refresh("refresh", 1) // the first file gives the issuer; the others need not be read

	// A CertID recorded for another serial, and a file not known to hold its issuer.
	other, _ := e.ca.Issue(pki.Leaf{Name: "other.test"}, e.now)
	_, wrong, _ := ocspcheck.Request(other, e.ca.Cert)
	st = readState(t, e.opt.State)
	st.Certificates[paths[3]].CertID = hex.EncodeToString(wrong)
	st.Certificates[paths[4]].IssuerInBundle = false
	if err := st.save(e.opt.State); err != nil {
		t.Fatal(err)
	}
	refresh("refresh after the state was changed", 3)
	refresh("refresh after the state was mended", 1) // the run saved the right CertID and flag
}

// TestRunRecordedCertIDChainLost: a file that loses its chain (the same certificate) is no
// longer taken to hold its issuer, even when its issuer could not be found in the run that
// saw the change: when another file brings the issuer later, the staple gets its .issuer
// file, as HAProxy needs.
func TestRunRecordedCertIDChainLost(t *testing.T) {
	e := newInRun(t, "Chain")
	e.opt.FetchIssuers = false
	site, leaf, key := e.issue("site.pem", "site.test", true)
	if sum := e.run("first run", e.now, false); sum.Refreshed != 1 {
		t.Fatalf("first run: %+v", sum)
	}
	// The chain goes, and the issuer is nowhere else: the issuer cache emptied.
	writeBundle(site, leaf, key)
	os.RemoveAll(filepath.Join(e.dir, "issuer-cache"))
	if sum := e.run("run without the chain", e.now.Add(time.Minute), true); sum.Failed != 1 {
		t.Fatalf("run without the chain: %+v, want the refresh failed (issuer not found)", sum)
	}
	// Another file brings the issuer in its chain.
	e.issue("a-other.pem", "other.test", true)
	if sum := e.run("run with the other file", e.now.Add(2*time.Minute), true); !sum.ok() || sum.Refreshed != 2 {
		t.Fatalf("run with the other file: %+v", sum)
	}
	if got, err := os.ReadFile(site + ".issuer"); err != nil || !bytes.Equal(got, pki.CertPEM(e.ca.Cert)) {
		t.Errorf("site.pem.issuer: %v; want the CA beside the staple, as HAProxy needs", err)
	}
	if cs := readState(t, e.opt.State).Certificates[site]; cs == nil || cs.IssuerInBundle {
		t.Error("the state says that site.pem holds its issuer")
	}
}

// TestRunCertChangedBeforeItsFetch: a certificate file replaced after the run looked at it
// and before its fetch read it again fails that fetch, and what the state records of the file
// stays what was looked at, so that the next run reads the new certificate and staples it.
func TestRunCertChangedBeforeItsFetch(t *testing.T) {
	e := newInRun(t, "Changed")
	var b string
	var renewed *x509.Certificate
	var key *ecdsa.PrivateKey
	// The forced run's first request (the third), a.pem's, is answered once b.pem holds
	// another certificate.
	e.front(func(asked int64) {
		if asked == 3 {
			tmp := filepath.Join(e.dir, "b.pem.new")
			writeBundle(tmp, renewed, key)
			os.Rename(tmp, b)
		}
	})
	e.issuerDir()
	e.issue("a.pem", "c0.test", false) // no chain: each is read at every fetch
	b, _, _ = e.issue("b.pem", "c1.test", false)
	renewed, key = e.ca.Issue(pki.Leaf{Name: "c1.test", OCSP: []string{e.url}}, e.now)
	if sum := e.run("first run", e.now, false); sum.Refreshed != 2 {
		t.Fatalf("first run: %+v", sum)
	}
	if sum := e.run("forced run", e.now.Add(time.Minute), true); sum.Failed != 1 {
		t.Fatalf("forced run: %+v; want b.pem's refresh failed (changed during the run)", sum)
	}
	if sum := e.run("next run", e.now.Add(2*time.Minute), false); sum.Refreshed != 1 {
		t.Fatalf("next run: %+v; want the new certificate's staple", sum)
	}
	e.wantStaple("next run", b, renewed)
}

// TestObserveHAProxyCopiesVouched: a copy that HAProxy's own ocsp-update holds is taken on the
// state's word when it is, byte for byte, the staple the state vouches for and the staple file
// holds that staple too; only what time changes is checked again. Any other copy is verified.
func TestObserveHAProxyCopiesVouched(t *testing.T) {
	e := newInRun(t, "Vouched")
	a, _, _ := e.issue("a.pem", "a.test", true)
	b, leafB, _ := e.issue("b.pem", "b.test", true)
	if sum := e.run("first run", e.now, false); sum.Refreshed != 2 {
		t.Fatalf("first run: %+v", sum)
	}
	onDisk := must(os.ReadFile(a + ".ocsp"))
	// b's staple file now holds another valid response than the one the state vouches for.
	vouchedB := must(os.ReadFile(b + ".ocsp"))
	other := e.r.Answer("good", leafB.SerialNumber, time.Now())
	os.WriteFile(b+".ocsp", other, 0o644)

	observe := func(at time.Time, copies map[string][]byte) map[string]autoCopy {
		t.Helper()
		state := must(loadState(e.opt.State, false))
		ex := newExecutor(e.opt, at)
		obs := ex.observeAll(context.Background(), e.opt, state, startScan(e.opt))
		in := map[string][]autoCopy{}
		for path, der := range copies {
			in[path] = []autoCopy{{Socket: "/run/haproxy.sock", DER: der}}
		}
		ex.observeHAProxyCopies(context.Background(), obs.Files, in)
		out := map[string]autoCopy{}
		for _, o := range obs.Files {
			if len(o.Auto) == 1 {
				out[o.File.Path] = o.Auto[0]
			}
		}
		return out
	}
	got := observe(e.now, map[string][]byte{a: onDisk, b: other})
	if c := got[a]; c.Vouched == nil || c.Resp != nil || c.Err != nil {
		t.Errorf("a copy of the vouched staple, on disk too: vouched %v, verified %v, error %v; want taken on the state's word", c.Vouched != nil, c.Resp != nil, c.Err)
	}
	if c := got[b]; c.Vouched != nil || c.Resp == nil || c.Err != nil {
		t.Errorf("a copy of a staple file the state does not vouch for: vouched %v, verified %v, error %v; want verified", c.Vouched != nil, c.Resp != nil, c.Err)
	}
	// The vouched staple, while the staple file holds another: verified (the plan may write it).
	if c := observe(e.now, map[string][]byte{b: vouchedB})[b]; c.Vouched != nil || c.Resp == nil || c.Err != nil {
		t.Errorf("the vouched staple, not on disk: vouched %v, verified %v, error %v; want verified", c.Vouched != nil, c.Resp != nil, c.Err)
	}
	// Garbage with the vouched staple's name is not it.
	if c := observe(e.now, map[string][]byte{a: []byte("not a response")})[a]; c.Vouched != nil || c.Err == nil {
		t.Errorf("garbage from HAProxy: vouched %v, error %v; want an error", c.Vouched != nil, c.Err)
	}
	// A day on, the staple is past its nextUpdate: refused, as a check would refuse it.
	if c := observe(e.now.Add(25*time.Hour), map[string][]byte{a: onDisk})[a]; c.Vouched != nil || c.Err == nil || !strings.Contains(c.Err.Error(), "expires at") {
		t.Errorf("the vouched staple, expired: vouched %v, error %v; want refused as expired", c.Vouched != nil, c.Err)
	}
}

// BenchmarkObserveHAProxyCopies: what checking the staples that HAProxy's own ocsp-update
// holds costs for 1,000 certificates (of the fleet benchmark's fleet: responses a delegated
// responder signed), as every run with a 2.8+ socket does for the files HAProxy keeps fresh:
// verified (copies that stapler has not vouched for), and vouched (the steady state: the
// staples stapler wrote, taken on the state's word). -cpu 1,2 compares one core with two.
func BenchmarkObserveHAProxyCopies(b *testing.B) {
	now := time.Now()
	f := newBenchFleet(b, 1000)
	var opt runOptions
	opt.Config = defaultConfig()
	opt.Dirs, opt.State, opt.Jobs = []string{f.certs}, filepath.Join(f.dir, "state.json"), 8
	quietLogs(b)
	if sum, err := run(context.Background(), opt, now); err != nil || sum.Refreshed != 1000 {
		b.Fatalf("first run: %+v, %v", sum, err)
	}
	state, err := loadState(opt.State, false)
	if err != nil {
		b.Fatal(err)
	}
	ex := newExecutor(opt, now)
	obs := ex.observeAll(context.Background(), opt, state, startScan(opt))
	copies := map[string][]autoCopy{}
	for _, o := range obs.Files {
		copies[o.File.Path] = []autoCopy{{Socket: "/run/haproxy.sock", DER: must(os.ReadFile(o.File.Staple))}}
	}
	for _, vouched := range []bool{false, true} {
		b.Run(map[bool]string{false: "verified", true: "vouched"}[vouched], func(b *testing.B) {
			for _, o := range obs.Files {
				o.Old = state.Certificates[o.File.Path].clone()
				if !vouched {
					o.Old.Staple.Hash = "not this one"
				}
			}
			for b.Loop() {
				for _, o := range obs.Files {
					o.Auto = nil
				}
				ex.observeHAProxyCopies(context.Background(), obs.Files, copies)
			}
			for _, o := range obs.Files {
				if len(o.Auto) != 1 || o.Auto[0].Err != nil || (o.Auto[0].Resp == nil) != vouched || (o.Auto[0].Vouched != nil) != vouched {
					b.Fatalf("%s: %+v", o.File.Path, o.Auto)
				}
			}
		})
	}
}
