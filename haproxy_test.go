package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeHAProxy is a runtime API socket that records each command line and answers in
// HAProxy's non-interactive way: the reply, an empty line, then close. With silent set it
// accepts and never answers.
type fakeHAProxy struct {
	addr string
	ln   net.Listener

	mu       sync.Mutex
	reply    string
	silent   bool
	commands []string
}

func startFakeHAProxy(t *testing.T) *fakeHAProxy {
	dir, err := os.MkdirTemp("", "stapler-sock") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &fakeHAProxy{addr: filepath.Join(dir, "admin.sock"), reply: replyUpdated}
	h.ln = must(net.Listen("unix", h.addr))
	t.Cleanup(func() { h.ln.Close() })
	go func() {
		for {
			c, err := h.ln.Accept()
			if err != nil {
				return
			}
			go h.serve(c)
		}
	}()
	return h
}

func (h *fakeHAProxy) serve(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReaderSize(c, 64<<10).ReadString('\n')
	if err != nil {
		return
	}
	h.mu.Lock()
	h.commands = append(h.commands, strings.TrimSuffix(line, "\n"))
	reply, silent := h.reply, h.silent
	h.mu.Unlock()
	if silent {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 1))
		return
	}
	c.Write([]byte(reply + "\n\n"))
}

func (h *fakeHAProxy) set(reply string, silent bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reply, h.silent = reply, silent
}

func (h *fakeHAProxy) takeCommands() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.commands
	h.commands = nil
	return c
}

func TestPushStaple(t *testing.T) {
	h := startFakeHAProxy(t)
	der := []byte("a staple")
	noSlot := replyNoSlot
	tests := []struct {
		name   string
		addr   string
		der    []byte
		reply  string
		silent bool
		err    string
	}{
		{"updated", h.addr, der, replyUpdated, false, ""},
		{"unix@ prefix", "unix@" + h.addr, der, replyUpdated, false, ""},
		{"HAProxy's error is reported", h.addr, der, "Unable to parse OCSP response.", false, `answered "Unable to parse OCSP response."`},
		{"no slot", h.addr, der, noSlot, false, `answered "` + noSlot + `": it loaded this certificate without a .ocsp file`},
		{"no socket", filepath.Join(t.TempDir(), "none.sock"), der, "", false, "HAProxy unreachable"},
		{"never answers", h.addr, der, "", true, "i/o timeout"},
		{"too large for HAProxy's buffer", h.addr, make([]byte, 11600), replyUpdated, false, "too large to push safely"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.set(tt.reply, tt.silent)
			h.takeCommands()
			start := time.Now()
			err := pushStaple(context.Background(), tt.addr, tt.der, 300*time.Millisecond)
			if time.Since(start) > 2*time.Second {
				t.Errorf("push took %v despite its deadline", time.Since(start))
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error containing %q", err, tt.err)
				}
				if strings.Contains(tt.name, "too large") && len(h.takeCommands()) != 0 {
					t.Error("sent an oversized command")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(tt.der)
			if got := h.takeCommands(); len(got) != 1 || got[0] != want {
				t.Errorf("HAProxy received %q, want %q", got, want)
			}
		})
	}
}

// TestRunPushes: each new staple goes to every socket; one that fails leaves the staple on
// disk, exits 1, and is pushed again by the next run although nothing is due.
func TestRunPushes(t *testing.T) {
	now := time.Now()
	ca := newTestCA("Push Test CA", now)
	r := startResponder(ca)
	defer r.Close()
	h1, h2 := startFakeHAProxy(t), startFakeHAProxy(t)
	dir := t.TempDir()
	site := filepath.Join(dir, "site.pem")
	leaf, key := ca.issue(leafSpec{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	state := filepath.Join(dir, "state.json")
	args := []string{"run", "--state", state, "--socket", h1.addr, "--socket", h2.addr}
	pushed := func(h *fakeHAProxy) string {
		staple, err := os.ReadFile(site + ".ocsp")
		if err != nil {
			t.Fatal(err)
		}
		want := "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(staple)
		if got := h.takeCommands(); len(got) != 1 || got[0] != want {
			return "HAProxy did not receive the staple on disk"
		}
		return ""
	}

	if code, stderr := runStapler(t, append(args, site)...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if msg := pushed(h1) + pushed(h2); msg != "" {
		t.Fatal(msg)
	}

	h2.set("OCSP single response: Certificate ID does not match any certificate or issuer.", false)
	code, stderr := runStapler(t, append(args, "--force", site)...)
	if code != 1 || !strings.Contains(stderr, `msg="push failed" cert=`+site+` socket=`+h2.addr) ||
		!strings.Contains(stderr, `Certificate ID does not match any certificate or issuer.`) {
		t.Fatalf("exit %d, want 1 with HAProxy's answer\n%s", code, stderr)
	}
	if msg := pushed(h1) + pushed(h2); msg != "" { // h2 got it, and refused it
		t.Fatal(msg)
	}
	if st := readState(t, state).Certificates[site]; len(st.PendingPush) != 1 || st.PendingPush[0] != h2.addr {
		t.Fatalf("pending pushes %q, want %q", st.PendingPush, h2.addr)
	}

	h2.set(replyUpdated, false)
	r.requests.Store(0)
	if code, stderr := runStapler(t, append(args, site)...); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if msg := pushed(h2); msg != "" {
		t.Fatal(msg)
	}
	if got := h1.takeCommands(); len(got) != 0 {
		t.Errorf("pushed again to a socket that had the staple: %q", got)
	}
	if n := r.requests.Load(); n != 0 {
		t.Errorf("%d OCSP requests, want 0", n)
	}
	if st := readState(t, state).Certificates[site]; len(st.PendingPush) != 0 {
		t.Errorf("pending pushes %q after a successful push", st.PendingPush)
	}

	// The deploy-hook case: a renewed certificate is stapled before HAProxy reloads, so the
	// running HAProxy has no slot for it yet. That is expected: a warning, exit 0, and the
	// staple waits on disk for the reload.
	leaf, key = ca.issue(leafSpec{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	h1.set(replyNoSlot, false)
	h2.set(replyNoSlot, false)
	code, stderr = runStapler(t, append(args, site)...)
	if code != 0 || !strings.Contains(stderr, `level=WARN msg="HAProxy will load this staple when it reloads" cert=`+site) {
		t.Fatalf("renewed certificate: exit %d, want 0 and a warning\n%s", code, stderr)
	}
	if st := readState(t, state).Certificates[site]; len(st.PendingPush) != 0 {
		t.Errorf("pending pushes %q for a staple HAProxy reads at its reload", st.PendingPush)
	}
}
