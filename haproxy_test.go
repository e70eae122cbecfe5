package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/haproxy"
	"stapler/internal/haproxy/haproxytest"
	"stapler/internal/ocspcheck"
	"stapler/internal/pki"
)

// fakeVersions are the HAProxy versions the fake plays: every branch stapler supports.
var fakeVersions = []string{"2.6.12-1+deb12u4", "3.0.11-1+deb13u5", "3.2.26-1", "3.4.7-1"}

// certIDHex is the CertID HAProxy files the staples of leaf under.
func certIDHex(leaf, issuer *x509.Certificate) string {
	req := must(ocsp.CreateRequest(leaf, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1}))
	return hex.EncodeToString(must(ocspcheck.RequestCertID(req)))
}

// syncCase is a certificate and two of its responses, for the HAProxy tests.
type syncCase struct {
	leaf            *x509.Certificate
	ref             stapleRef
	older, newer    []byte
	forged          []byte // newer, but its embedded signer did not sign it
	serial, certID  string
	path            string
	otherSerial, oc string // a previous certificate in the same file
}

func newSyncCase(ca *pki.CA, name string, now time.Time) syncCase {
	leaf, _ := ca.Issue(pki.Leaf{Name: name}, now)
	prev, _ := ca.Issue(pki.Leaf{Name: name}, now)
	c := syncCase{leaf: leaf, path: "/c/" + name + ".pem", serial: fmt.Sprintf("%x", leaf.SerialNumber), certID: certIDHex(leaf, ca.Cert),
		otherSerial: fmt.Sprintf("%x", prev.SerialNumber), oc: certIDHex(prev, ca.Cert)}
	this := now.Add(-time.Hour).Truncate(time.Second)
	der := ca.Respond(leaf.SerialNumber, ocsp.Good, this, now.Add(24*time.Hour), nil, nil)
	c.older = ca.Respond(leaf.SerialNumber, ocsp.Good, this.Add(-time.Hour), now.Add(20*time.Hour), nil, nil)
	c.newer = ca.Respond(leaf.SerialNumber, ocsp.Good, this.Add(time.Minute), now.Add(25*time.Hour), nil, nil)
	signer, _ := ca.Delegate(true, now.Add(-time.Hour), now.Add(48*time.Hour))
	_, otherKey := ca.Delegate(true, now.Add(-time.Hour), now.Add(48*time.Hour))
	c.forged = ca.Respond(leaf.SerialNumber, ocsp.Good, this.Add(time.Minute), now.Add(25*time.Hour), signer, otherKey)
	resp := must(ocsp.ParseResponse(der, nil))
	c.ref = stapleRef{Path: c.path, DER: der, CertID: c.certID, Serial: c.serial, ThisUpdate: resp.ThisUpdate, ProducedAt: resp.ProducedAt, Status: "good", NextUpdate: resp.NextUpdate}
	return c
}

// TestSyncSockets: what stapler makes of what each HAProxy version holds for a staple, against
// the fake HAProxy of each version: the outcome, what HAProxy holds afterwards, and that a
// read-only look (stapler status) sends nothing.
func TestSyncSockets(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Sync Test CA", now)
	tests := []struct {
		name  string
		level string
		setup func(f *haproxytest.Fake, c syncCase)
		ref   func(c syncCase) stapleRef
		want  outcome
		held  func(c syncCase) []byte // what HAProxy must hold after the run; nil: not checked
		// severe: a needsReload that is a problem; newer: HAProxy serves a newer response
		severe, newer bool
		// textKeeps: 2.6 shows the response only as text, whose signature stapler cannot
		// check: there the response HAProxy holds is kept, as newer
		textKeeps bool
	}{
		{name: "empty slot", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.serial, c.certID, true) },
			want: pushed, held: func(c syncCase) []byte { return c.ref.DER }},
		{name: "older response", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.older)
		}, want: pushed, held: func(c syncCase) []byte { return c.ref.DER }},
		{name: "same response", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.ref.DER)
		}, want: inSync, held: func(c syncCase) []byte { return c.ref.DER }},
		{name: "newer response is kept", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.newer)
		}, want: inSync, newer: true, held: func(c syncCase) []byte { return c.newer }},
		{name: "newer response, badly signed, is replaced", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.forged)
		}, want: pushed, held: func(c syncCase) []byte { return c.ref.DER }, textKeeps: true},
		{name: "no slot: created", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.serial, c.certID, false) },
			want: pushed, held: func(c syncCase) []byte { return c.ref.DER }},
		{name: "hot update left an orphan slot", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.older)
			f.HotUpdate(c.path, c.serial, c.certID) // the listing would still show the slot
		}, want: pushed, held: func(c syncCase) []byte { return c.ref.DER }},
		{name: "no slot, operator level", level: "operator", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.serial, c.certID, false) },
			want: needsReload, severe: true},
		{name: "no slot, renewed in this run", level: "operator", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.serial, c.certID, false) },
			ref: func(c syncCase) stapleRef { r := c.ref; r.NewCert = true; return r }, want: needsReload},
		{name: "another certificate runs from the file", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.otherSerial, c.oc, true) },
			want: needsReload, severe: true},
		{name: "another certificate without slot", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.otherSerial, c.oc, false) },
			want: needsReload, severe: true},
		{name: "not loaded", setup: func(f *haproxytest.Fake, c syncCase) {}, want: notLoaded},
		{name: "someone's transaction is open", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, false)
			f.Load("/c/other.pem", "01", "00", false)
			f.OpenTransaction("/c/other.pem")
		}, want: needsReload, severe: true},
		{name: "HAProxy refuses the response", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			f.Override("set ssl ocsp-response", "[3]: Unable to parse OCSP response.\n")
		}, want: pushFailed},
		{name: "HAProxy says updated and keeps the old one", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.older)
			f.Override("set ssl ocsp-response", "[6]: OCSP Response updated!\n")
		}, want: pushFailed, held: func(c syncCase) []byte { return c.older }},
		{name: "too large for HAProxy's buffer", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.serial, c.certID, true) },
			ref: func(c syncCase) stapleRef { r := c.ref; r.DER = make([]byte, 11600); return r }, want: needsReload, severe: true},
		{name: "too large, and no slot to put it in", setup: func(f *haproxytest.Fake, c syncCase) { f.Load(c.path, c.serial, c.certID, false) },
			ref: func(c syncCase) stapleRef { r := c.ref; r.DER = make([]byte, 11600); return r }, want: needsReload, severe: true},
		{name: "never answers", setup: func(f *haproxytest.Fake, c syncCase) { f.SetSilent(true) }, want: unknown},
		{name: "expires within 300 s: never sent", setup: func(f *haproxytest.Fake, c syncCase) {
			f.Load(c.path, c.serial, c.certID, true)
			setHeld(f, c.older)
		}, ref: func(c syncCase) stapleRef { r := c.ref; r.NextUpdate = now.Add(4 * time.Minute); return r },
			want: pushFailed, held: func(c syncCase) []byte { return c.older }},
	}
	for _, version := range fakeVersions {
		for _, tt := range tests {
			t.Run(version+"/"+tt.name, func(t *testing.T) {
				if tt.textKeeps && !haproxy.ParseVersion(version).Caps().ByPath {
					tt.want, tt.newer, tt.held = inSync, true, func(c syncCase) []byte { return c.forged }
				}
				level := tt.level
				if level == "" {
					level = "admin"
				}
				f := haproxytest.Start(t, version, level)
				c := newSyncCase(ca, "site", now)
				tt.setup(f, c)
				ref := c.ref
				if tt.ref != nil {
					ref = tt.ref(c)
				}
				f.Log()
				look := reconcileSockets(context.Background(), []string{f.Addr}, []stapleRef{ref}, reconcileOptions{Timeout: 300 * time.Millisecond, Now: now, ReadOnly: true})
				if sent := slices.DeleteFunc(f.Log(), func(cmd string) bool { return strings.HasPrefix(cmd, "show ") }); len(sent) > 0 {
					t.Errorf("a read-only look sent %q", sent)
				}
				if res := look[f.Addr].Results[ref.Path]; tt.want == inSync && (res.outcome != inSync || res.newer != tt.newer) {
					t.Errorf("read-only look: %+v, want in sync (newer %v)", res, tt.newer)
				}
				start := time.Now()
				rep := reconcileSockets(context.Background(), []string{f.Addr}, []stapleRef{ref}, reconcileOptions{Timeout: 300 * time.Millisecond, Now: now})
				if took := time.Since(start); took > 2*time.Second {
					t.Errorf("took %v despite its deadlines", took)
				}
				res := rep[f.Addr].Results[ref.Path]
				if strings.HasPrefix(version, "3.4") && level != "admin" {
					// 3.4 refuses every OCSP command below admin: one error for the socket.
					if rep[f.Addr].Err == nil || res.outcome != unknown {
						t.Errorf("3.4 below admin: got %+v, socket error %v; want the socket's error", res, rep[f.Addr].Err)
					}
					return
				}
				if res.outcome != tt.want || res.severe != tt.severe || res.newer != tt.newer {
					t.Errorf("got %+v (socket error %v), want outcome %v, severe %v, newer %v", res, rep[f.Addr].Err, tt.want, tt.severe, tt.newer)
				}
				if tt.held != nil {
					if got := f.Held(c.path); string(got) != string(tt.held(c)) {
						t.Errorf("HAProxy holds %d bytes, not the %d expected", len(got), len(tt.held(c)))
					}
				}
			})
		}
	}
}

// setHeld puts der in the slot of its CertID, as a start-up .ocsp or an earlier push would.
func setHeld(f *haproxytest.Fake, der []byte) {
	c, err := haproxy.Dial(context.Background(), mustAddr(f.Addr), time.Second)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	answers, err := c.ExecAll("", []string{"set ssl ocsp-response " + b64(der)})
	if err != nil || answers[0].Text != haproxy.ReplyUpdated {
		panic(fmt.Sprintf("setting the fake's response: %v %v", answers, err))
	}
}

func mustAddr(s string) haproxy.Addr { return must(haproxy.ParseAddr(s)) }

func b64(der []byte) string { return base64.StdEncoding.EncodeToString(der) }

// lockedBuffer is a bytes.Buffer that log handlers on several goroutines can share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// logs are the JSON lines written so far.
func (l *lockedBuffer) logs() logs { return parseLogs(l.String()) }

// captureLogs sends slog's output to a buffer until the test ends.
func captureLogs(t *testing.T) *lockedBuffer {
	buf := &lockedBuffer{}
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(old) })
	return buf
}

// TestSyncAdminOnly: HAProxy 3.4 refuses every OCSP command below level admin. That is one
// error naming the socket and the fix, not one per certificate; 3.2 takes the commands.
func TestSyncAdminOnly(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Admin Test CA", now)
	for _, tt := range []struct {
		version string
		fails   bool
	}{{"3.4.7-1", true}, {"3.2.26-1", false}, {"2.6.12-1+deb12u4", false}} {
		t.Run(tt.version, func(t *testing.T) {
			f := haproxytest.Start(t, tt.version, "operator")
			var refs []stapleRef
			for i := range 5 {
				c := newSyncCase(ca, fmt.Sprintf("site%d", i), now)
				f.Load(c.path, c.serial, c.certID, true)
				refs = append(refs, c.ref)
			}
			captured := captureLogs(t)
			rep := reconcileSockets(context.Background(), []string{f.Addr}, refs, reconcileOptions{Timeout: time.Second, Now: now})[f.Addr]
			if (rep.Err != nil) != tt.fails {
				t.Fatalf("socket error %v, want one: %v", rep.Err, tt.fails)
			}
			if !tt.fails {
				for _, r := range refs {
					if rep.Results[r.Path].outcome != pushed {
						t.Errorf("%s: %+v", r.Path, rep.Results[r.Path])
					}
				}
				return
			}
			if !strings.Contains(rep.Err.Error(), "level admin") || !strings.Contains(rep.Err.Error(), f.Addr) {
				t.Errorf("error %q does not name the socket and the fix", rep.Err)
			}
			if n := captured.logs().count("ERROR"); n != 1 {
				t.Errorf("%d error lines, want 1:\n%s", n, captured)
			}
		})
	}
}

// TestSyncStoppingWorker: a connection that reaches a stopping process (an old worker, just
// after a reload) is not used: what it is told is lost.
func TestSyncStoppingWorker(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Stopping Test CA", now)
	f := haproxytest.Start(t, "3.2.26-1", "admin")
	c := newSyncCase(ca, "site", now)
	f.Load(c.path, c.serial, c.certID, true)
	f.SetStopping(true)
	rep := reconcileSockets(context.Background(), []string{f.Addr}, []stapleRef{c.ref}, reconcileOptions{Timeout: 300 * time.Millisecond, Now: now})[f.Addr]
	if rep.Err == nil || !strings.Contains(rep.Err.Error(), "stopping") {
		t.Errorf("socket error %v, want one about a stopping process", rep.Err)
	}
	if f.Held(c.path) != nil {
		t.Error("pushed to a stopping process")
	}
	if f.Conns() < 2 {
		t.Errorf("%d connections: a stopping process is tried again until the timeout", f.Conns())
	}
}

// TestSyncConcurrent: sockets of different HAProxy processes are handled at once: three that
// never answer are waited for together (one socket_timeout, not three). Shown without a clock:
// all three connections are open at the same moment.
func TestSyncConcurrent(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Concurrent Test CA", now)
	c := newSyncCase(ca, "site", now)
	var socks []string
	var fakes []*haproxytest.Fake
	for range 3 {
		f := haproxytest.Start(t, "3.0.11-1+deb13u5", "admin")
		f.SetSilent(true)
		socks, fakes = append(socks, f.Addr), append(fakes, f)
	}
	done := make(chan map[string]socketReport)
	go func() {
		done <- reconcileSockets(context.Background(), socks, []stapleRef{c.ref}, reconcileOptions{Timeout: 2 * time.Second, Now: now})
	}()
	most := 0
	var reps map[string]socketReport
	for reps == nil {
		select {
		case reps = <-done:
		case <-time.After(5 * time.Millisecond):
			open := 0
			for _, f := range fakes {
				open += f.Open()
			}
			most = max(most, open)
		}
	}
	if most != 3 {
		t.Errorf("at most %d of the three silent sockets were waited for at once", most)
	}
	for _, s := range socks {
		if reps[s].Err == nil {
			t.Errorf("%s: no error", s)
		}
	}
}

// TestSyncProcessesReadTheFile: two HAProxy processes are handled at once, each reading the
// staple from its file (under -race, this is where a shared read would show).
func TestSyncProcessesReadTheFile(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Two Processes Test CA", now)
	c := newSyncCase(ca, "site", now)
	ref := c.ref
	ref.File, ref.Hash, ref.DER = filepath.Join(t.TempDir(), "site.pem.ocsp"), hashBytes(c.ref.DER), nil
	if err := os.WriteFile(ref.File, c.ref.DER, 0o644); err != nil {
		t.Fatal(err)
	}
	var socks []string
	var fakes []*haproxytest.Fake
	for range 2 {
		f := haproxytest.Start(t, "3.2.26-1", "admin")
		f.Load(c.path, c.serial, c.certID, true)
		socks, fakes = append(socks, f.Addr), append(fakes, f)
	}
	reps := reconcileSockets(context.Background(), socks, []stapleRef{ref}, reconcileOptions{Timeout: 2 * time.Second, Now: now})
	for i, s := range socks {
		if got := reps[s].Results[c.path]; got.outcome != pushed {
			t.Errorf("%s: outcome %v (%s), want pushed", s, got.outcome, got.why)
		}
		if !bytes.Equal(fakes[i].Held(c.path), c.ref.DER) {
			t.Errorf("%s does not hold the staple on disk", s)
		}
	}
}

// TestSyncLevelUser: at level user HAProxy lists no certificate (`show ssl cert` answers
// "Can't allocate memory!" on 2.6, 3.0 and 3.4): the socket fails, naming its level, and no
// certificate is reported as not loaded.
func TestSyncLevelUser(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Level User Test CA", now)
	c := newSyncCase(ca, "site", now)
	for _, version := range fakeVersions {
		f := haproxytest.Start(t, version, "user")
		f.Load(c.path, c.serial, c.certID, true)
		for _, ro := range []bool{true, false} {
			rep := reconcileSockets(context.Background(), []string{f.Addr}, []stapleRef{c.ref}, reconcileOptions{Timeout: time.Second, Now: now, ReadOnly: ro})[f.Addr]
			if !errors.Is(rep.Err, haproxy.ErrNeedsAdmin) || !strings.Contains(rep.Err.Error(), "level user") {
				t.Errorf("%s, read-only %v: socket error %v, want one naming level user", version, ro, rep.Err)
			}
			if got := rep.Results[c.path]; got.outcome != unknown {
				t.Errorf("%s, read-only %v: outcome %v, want unknown", version, ro, got.outcome)
			}
		}
		if f.Held(c.path) != nil {
			t.Errorf("%s: a staple was sent through a level user socket", version)
		}
	}
}

// TestSyncCertificateLock: HAProxy refuses certificate commands while another session holds
// its certificate lock (a `show ssl cert` through another socket, a transaction); stapler sends
// them again, and a lock that is never released fails the socket, saying so.
func TestSyncCertificateLock(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Lock Test CA", now)
	c := newSyncCase(ca, "site", now)
	for _, version := range fakeVersions {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			testSyncCertificateLock(t, version, c, now)
		})
	}
}

func testSyncCertificateLock(t *testing.T, version string, c syncCase, now time.Time) {
	f := haproxytest.Start(t, version, "admin")
	f.Load(c.path, c.serial, c.certID, false) // no slot: a transaction too
	f.Lock(5)
	rep := reconcileSockets(context.Background(), []string{f.Addr}, []stapleRef{c.ref}, reconcileOptions{Timeout: time.Second, Now: now})[f.Addr]
	if got := rep.Results[c.path]; got.outcome != pushed || !bytes.Equal(f.Held(c.path), c.ref.DER) {
		t.Errorf("%s, locked for 5 commands: %v (%s), socket error %v; want pushed", version, got.outcome, got.why, rep.Err)
	}
	g := haproxytest.Start(t, version, "admin")
	g.Load(c.path, c.serial, c.certID, true)
	g.Lock(-1)
	rep = reconcileSockets(context.Background(), []string{g.Addr}, []stapleRef{c.ref}, reconcileOptions{Timeout: time.Second, Now: now})[g.Addr]
	if !errors.Is(rep.Err, haproxy.ErrUnreachable) || !strings.Contains(rep.Err.Error(), "locked") || rep.Results[c.path].outcome != unknown {
		t.Errorf("%s, locked for good: socket error %v, outcome %v; want the lock named and unknown", version, rep.Err, rep.Results[c.path].outcome)
	}
}

// TestRunPushes: each new staple goes to every socket; one that fails leaves the staple on
// disk, exits 1, and is pushed again by the next run although nothing is due.
func TestRunPushes(t *testing.T) {
	t.Parallel()
	for _, version := range []string{fakeVersions[0], fakeVersions[3]} {
		t.Run(version, func(t *testing.T) { testRunPushes(t, version) })
	}
}

func testRunPushes(t *testing.T, version string) {
	now := time.Now()
	ca := pki.NewCA("Push Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	h1, h2 := haproxytest.Start(t, version, "admin"), haproxytest.Start(t, version, "admin")
	dir := t.TempDir()
	site := filepath.Join(dir, "site.pem")
	leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	for _, h := range []*haproxytest.Fake{h1, h2} {
		h.Load(site, fmt.Sprintf("%x", leaf.SerialNumber), certIDHex(leaf, ca.Cert), true)
	}
	state := filepath.Join(dir, "state.json")
	args := []string{"run", "--state", state, "--socket", h1.Addr, "--socket", h2.Addr}
	serves := func(h *haproxytest.Fake) bool {
		return string(h.Held(site)) == string(hapReadFile(t, site+".ocsp"))
	}

	if code, stderr := runStapler(t, append(args, site)...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if !serves(h1) || !serves(h2) {
		t.Fatal("HAProxy does not hold the staple on disk")
	}

	h2.Override("set ssl ocsp-response", "[3]: Unable to parse OCSP response.\n")
	// HAProxy 2.6 shows response times to the second: the forced response must differ.
	first := time.Now()
	hapWaitFor(t, "the next second", 2*time.Second, func() error {
		if time.Now().Truncate(time.Second).After(first.Truncate(time.Second)) {
			return nil
		}
		return fmt.Errorf("still %v", first)
	})
	code, l, _ := runLogged(t, append(args, "--force", site)...)
	if code != 1 || l.find("push failed", "cert", site, "socket", h2.Addr, "err", `HAProxy answered "Unable to parse OCSP response."`) == nil {
		t.Fatalf("exit %d, want 1 with HAProxy's answer\n%s", code, l)
	}
	if !serves(h1) || serves(h2) {
		t.Fatal("the forced staple should be in h1 only")
	}
	if st := readState(t, state).Certificates[site]; len(st.Pending) != 1 || st.Pending[0] != h2.Addr {
		t.Fatalf("pending pushes %q, want %q", st.Pending, h2.Addr)
	}

	h2.Override("set ssl ocsp-response", "")
	r.Requests.Store(0)
	h1.Log()
	if code, stderr := runStapler(t, append(args, site)...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if !serves(h2) {
		t.Fatal("the pending push did not reach h2")
	}
	if got := slices.DeleteFunc(h1.Log(), func(cmd string) bool { return strings.HasPrefix(cmd, "show ") }); len(got) != 0 {
		t.Errorf("sent to a socket that had the staple: %q", got)
	}
	if n := r.Requests.Load(); n != 0 {
		t.Errorf("%d OCSP requests, want 0", n)
	}
	if st := readState(t, state).Certificates[site]; len(st.Pending) != 0 {
		t.Errorf("pending pushes %q after a successful push", st.Pending)
	}

	// The deploy-hook case: a renewed certificate is stapled before HAProxy reloads, so the
	// running HAProxy still holds the old one and its old staple. That is expected: a
	// warning, exit 0, and the staple waits on disk for the reload.
	leaf, key = ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	code, l, _ = runLogged(t, append(args, site)...)
	if code != 0 || l.find("HAProxy will load this staple when it reloads", "level", "WARN", "cert", site) == nil {
		t.Fatalf("renewed certificate: exit %d, want 0 and a warning\n%s", code, l)
	}
	if l.mentions("no OCSP slot") {
		t.Errorf("speaks of a missing slot while HAProxy has one for the previous certificate:\n%s", l)
	}
	if st := readState(t, state).Certificates[site]; len(st.Pending) != 0 {
		t.Errorf("pending pushes %q for a staple HAProxy reads at its reload", st.Pending)
	}

	// A later run, and HAProxy still runs the old certificate: now that is a problem.
	code, l, _ = runLogged(t, append(args, site)...)
	if code != 1 || l.find("needs reload", "level", "ERROR", "cert", site) == nil {
		t.Fatalf("HAProxy not reloaded: exit %d, want 1 and needs reload\n%s", code, l)
	}
	// reload_command runs once for all of them.
	config := filepath.Join(dir, "reload.toml")
	os.WriteFile(config, []byte(fmt.Sprintf("reload_command = %q\n", "echo reloading | tee -a "+filepath.Join(dir, "reloads"))), 0o644)
	code, l, _ = runLogged(t, append(args, "--config", config, site)...)
	if reloads, _ := os.ReadFile(filepath.Join(dir, "reloads")); code != 0 || string(reloads) != "reloading\n" {
		t.Fatalf("with reload_command: exit %d, reloads %q; want 0 and one\n%s", code, reloads, l)
	}
	if l.find("reload output", "line", "reloading") == nil || l.count("ERROR") > 0 {
		t.Errorf("reload output not logged, or errors that the reload resolves:\n%s", l)
	}
	// A reload that hangs is killed at reload_timeout, and the message says so (not "signal:
	// killed").
	os.WriteFile(config, []byte("reload_command = \"sleep 30\"\nreload_timeout = \"300ms\"\n"), 0o644)
	code, l, _ = runLogged(t, append(args, "--config", config, site)...)
	if code != 1 || l.find("reload failed; staples wait for the next reload", "err", `reload_command "sleep 30" did not finish within 300ms`) == nil {
		t.Errorf("hung reload_command: exit %d, want 1 and the deadline named\n%s", code, l)
	}
}

// TestSyncFreshStaples: the staples fetched in the run are read from disk while HAProxy says
// what it holds; one whose file changed since (another writer) is not sent, and says so,
// and the others are pushed.
func TestSyncFreshStaples(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := pki.NewCA("Fresh Test CA", now)
	dir := t.TempDir()
	f := haproxytest.Start(t, "3.4.7-1", "admin")
	var refs []stapleRef
	for _, name := range []string{"good", "changed"} {
		c := newSyncCase(ca, name, now)
		f.Load(c.path, c.serial, c.certID, true)
		setHeld(f, c.older)
		r := c.ref
		r.File, r.Hash, r.Fresh = filepath.Join(dir, name+".pem.ocsp"), hashBytes(r.DER), true
		onDisk := r.DER
		if name == "changed" {
			onDisk = c.newer // written by someone else after this run wrote its own
		}
		if err := os.WriteFile(r.File, onDisk, 0o644); err != nil {
			t.Fatal(err)
		}
		r.DER = nil // as the run holds it: read when it is sent
		refs = append(refs, r)
	}
	rep := reconcileSockets(context.Background(), []string{f.Addr}, refs, reconcileOptions{Timeout: time.Second, Now: now})[f.Addr]
	if rep.Err != nil {
		t.Fatal(rep.Err)
	}
	if res := rep.Results[refs[0].Path]; res.outcome != pushed || !bytes.Equal(f.Held(refs[0].Path), must(os.ReadFile(refs[0].File))) {
		t.Errorf("good: %+v, HAProxy holds what is on disk: %v", res, bytes.Equal(f.Held(refs[0].Path), must(os.ReadFile(refs[0].File))))
	}
	if res := rep.Results[refs[1].Path]; res.outcome != pushFailed || !strings.Contains(res.why, "changed during the run") {
		t.Errorf("changed: %+v, want a failed push that says the staple changed during the run", res)
	}
	if bytes.Equal(f.Held(refs[1].Path), must(os.ReadFile(refs[1].File))) {
		t.Error("changed: the file another writer put there was sent")
	}
}
