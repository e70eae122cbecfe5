package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// fakeHAProxy is a runtime API socket that speaks HAProxy 2.6's interactive mode well enough
// for stapler: `prompt`, `set severity-output number`, `show info`, `show ssl ocsp-response`
// (no slots), `show ssl cert` (nothing loaded), and `set ssl ocsp-response`, answered with
// reply and recorded. With silent set it accepts and never answers.
type fakeHAProxy struct {
	addr string
	ln   net.Listener

	mu       sync.Mutex
	reply    string
	silent   bool
	commands []string             // set ssl ocsp-response commands received
	slots    map[string]time.Time // CertID key: thisUpdate of the staple HAProxy took
	loaded   map[string]string    // certificate path: serial (hex) HAProxy holds
	conns    int
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
	h.mu.Lock()
	h.conns++
	silent := h.silent
	h.mu.Unlock()
	if silent {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c)
		return
	}
	r := bufio.NewReaderSize(c, 64<<10)
	prompt, sev := "", false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		info := func(text string) string {
			if sev {
				return "[6]: " + text
			}
			return text
		}
		var answer string
		switch {
		case line == "prompt":
			prompt = "> "
		case line == "quit":
			return
		case line == "set severity-output number":
			sev = true
		case line == "show info":
			answer = "Name: HAProxy\nPid: 4242\nUptime_sec: 100\nStart_time_sec: 1795300000\n"
		case line == "show ssl ocsp-response":
			answer = "# Certificate IDs\n"
			h.mu.Lock()
			for k := range h.slots {
				answer += "Certificate ID key : " + k + "\n Certificate ID:\n"
			}
			h.mu.Unlock()
		case strings.HasPrefix(line, "show ssl ocsp-response "):
			h.mu.Lock()
			this, ok := h.slots[strings.TrimPrefix(line, "show ssl ocsp-response ")]
			h.mu.Unlock()
			answer = "Certificate ID does not match any certificate.\n"
			if ok {
				answer = "OCSP Response Data:\n    This Update: " + this.UTC().Format("Jan _2 15:04:05 2006 MST") + "\n"
			}
		case line == "show cli level":
			answer = "admin\n"
		case line == "show ssl cert":
			answer = "# filename\n"
			h.mu.Lock()
			for path := range h.loaded {
				answer += path + "\n"
			}
			h.mu.Unlock()
		case strings.HasPrefix(line, "show ssl cert "):
			h.mu.Lock()
			serial, ok := h.loaded[strings.TrimPrefix(line, "show ssl cert ")]
			h.mu.Unlock()
			answer = "Can't display the certificate: Not found or the certificate is a bundle!\n"
			if ok {
				answer = "Filename: " + strings.TrimPrefix(line, "show ssl cert ") + "\nSerial: " + strings.ToUpper(serial) + "\n"
			}
		case strings.HasPrefix(line, "set ssl ocsp-response "):
			h.mu.Lock()
			h.commands = append(h.commands, line)
			answer = h.reply + "\n"
			if h.reply == replyUpdated {
				answer = info(answer)
				der, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(line, "set ssl ocsp-response "))
				if resp, err := ocsp.ParseResponse(der, nil); err == nil {
					if h.slots == nil {
						h.slots = map[string]time.Time{}
					}
					h.slots[hex.EncodeToString(must(responseCertID(der)))] = resp.ThisUpdate
				}
			} else if sev {
				answer = "[3]: " + answer
			}
			h.mu.Unlock()
		default:
			answer = "Unknown command.\n"
		}
		if _, err := c.Write([]byte(answer + "\n" + prompt)); err != nil || prompt == "" {
			return
		}
	}
}

func (h *fakeHAProxy) load(path, serial string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.loaded == nil {
		h.loaded = map[string]string{}
	}
	h.loaded[path] = serial
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

func TestParseSocketAddr(t *testing.T) {
	tests := []struct {
		in, network, address string
		master               bool
		err                  bool
	}{
		{"/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock", false, false},
		{"unix@/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock", false, false},
		{"unix@admin.sock", "unix", "admin.sock", false, false},
		{"127.0.0.1:9999", "tcp", "127.0.0.1:9999", false, false},
		{"ipv4@127.0.0.1:9999", "tcp", "127.0.0.1:9999", false, false},
		{"[::1]:9999", "tcp", "[::1]:9999", false, false},
		{"ipv6@[::1]:9999", "tcp", "[::1]:9999", false, false},
		{"*:9999", "tcp", "127.0.0.1:9999", false, false},
		{"master:/run/haproxy-master.sock", "unix", "/run/haproxy-master.sock", true, false},
		{"master:127.0.0.1:9998", "tcp", "127.0.0.1:9998", true, false},
		{"localhost", "", "", false, true},
		{"", "", "", false, true},
		{"unix@", "", "", false, true},
	}
	for _, tt := range tests {
		got, err := parseSocketAddr(tt.in)
		if tt.err {
			if err == nil {
				t.Errorf("%q: got %+v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got.Network != tt.network || got.Address != tt.address || got.Master != tt.master {
			t.Errorf("%q: got %+v, %v", tt.in, got, err)
		}
	}
}

func TestParseAnswer(t *testing.T) {
	tests := []struct {
		raw, text string
		isErr     bool
	}{
		{"[6]: OCSP Response updated!\n", replyUpdated, false},
		{"[3]: " + replyNoSlot + "\n", replyNoSlot, true},
		{replyUpdated + "\n", replyUpdated, false}, // through a master socket: no severity
		{"+ + + [5]: Transaction created for certificate /c/site.pem!\n", "Transaction created for certificate /c/site.pem!", false},
		{"Committing /c/site.pem.\nSuccess!\n", "Committing /c/site.pem.\nSuccess!", false},
		{"", "", false},
	}
	for _, tt := range tests {
		a := parseAnswer([]byte(tt.raw))
		if a.text != tt.text || (a.err != nil) != tt.isErr {
			t.Errorf("%q: got %q, %v", tt.raw, a.text, a.err)
		}
	}
}

func TestServedThisUpdate(t *testing.T) {
	text := "OCSP Response Data:\n    Cert Status: good\n    This Update: Nov  2 04:31:47 2026 GMT\n    Next Update: Nov  2 05:31:47 2026 GMT\n"
	want := time.Date(2026, 11, 2, 4, 31, 47, 0, time.UTC)
	if got := servedThisUpdate(text); !got.Equal(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := servedThisUpdate("Certificate ID does not match any certificate."); !got.IsZero() {
		t.Errorf("no response: got %v", got)
	}
}

func TestSyncSocket(t *testing.T) {
	h := startFakeHAProxy(t)
	addr := must(parseSocketAddr(h.addr))
	refs := []stapleRef{{Path: "/c/a.pem", DER: []byte("staple a"), CertID: "aa"}, {Path: "/c/b.pem", DER: []byte("staple b"), CertID: "bb"}}
	tests := []struct {
		name   string
		addr   socketAddr
		refs   []stapleRef
		reply  string
		silent bool
		want   outcome
	}{
		{"updated", addr, refs, replyUpdated, false, pushed},
		{"HAProxy says no", addr, refs, "OCSP single response: certificate status is unknown.", false, pushFailed},
		{"no slot, certificate not loaded", addr, refs, replyNoSlot, false, notLoaded},
		{"never answers", addr, refs, "", true, pushFailed},
		{"no socket", socketAddr{Raw: "none", Network: "unix", Address: filepath.Join(t.TempDir(), "none.sock")}, refs, "", false, pushFailed},
		{"too large for HAProxy's buffer", addr, []stapleRef{{Path: "/c/big.pem", DER: make([]byte, 11600)}}, replyUpdated, false, needsReload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.set(tt.reply, tt.silent)
			h.takeCommands()
			start := time.Now()
			rep := syncSocket(context.Background(), tt.addr, tt.refs, nil, "", syncOptions{Timeout: 300 * time.Millisecond, Now: time.Now()})
			if time.Since(start) > 2*time.Second {
				t.Errorf("took %v despite its deadlines", time.Since(start))
			}
			for _, r := range tt.refs {
				if got := rep.Results[r.Path].outcome; got != tt.want {
					t.Errorf("%s: outcome %d, want %d", r.Path, got, tt.want)
				}
			}
			if tt.want == pushed {
				got := h.takeCommands()
				if len(got) != len(tt.refs) {
					t.Fatalf("HAProxy received %d commands, want %d", len(got), len(tt.refs))
				}
				for i, r := range tt.refs {
					if want := "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(r.DER); got[i] != want {
						t.Errorf("command %d: %q, want %q", i, got[i], want)
					}
				}
			}
			if tt.name == "too large for HAProxy's buffer" && len(h.takeCommands()) != 0 {
				t.Error("sent an oversized command")
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

	h2.set("Unable to parse OCSP response.", false)
	code, stderr := runStapler(t, append(args, "--force", site)...)
	if code != 1 || !strings.Contains(stderr, `msg="push failed" cert=`+site+` socket=`+h2.addr) ||
		!strings.Contains(stderr, `HAProxy answered \"Unable to parse OCSP response.\"`) {
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
	// running HAProxy still holds the old one and has no slot for the new staple. That is
	// expected: a warning, exit 0, and the staple waits on disk for the reload.
	oldSerial := fmt.Sprintf("%x", leaf.SerialNumber)
	leaf, key = ca.issue(leafSpec{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(site, leaf, key, ca.Cert)
	for _, h := range []*fakeHAProxy{h1, h2} {
		h.set(replyNoSlot, false)
		h.load(site, oldSerial)
	}
	code, stderr = runStapler(t, append(args, site)...)
	if code != 0 || !strings.Contains(stderr, `level=WARN msg="HAProxy will load this staple when it reloads" cert=`+site) {
		t.Fatalf("renewed certificate: exit %d, want 0 and a warning\n%s", code, stderr)
	}
	if st := readState(t, state).Certificates[site]; len(st.PendingPush) != 0 {
		t.Errorf("pending pushes %q for a staple HAProxy reads at its reload", st.PendingPush)
	}

	// A later run, and HAProxy still runs the old certificate: now that is a problem.
	code, stderr = runStapler(t, append(args, site)...)
	if code != 1 || !strings.Contains(stderr, `level=ERROR msg="needs reload" cert=`+site) {
		t.Fatalf("HAProxy not reloaded: exit %d, want 1 and needs reload\n%s", code, stderr)
	}
	// reload_command runs once for all of them.
	config := filepath.Join(dir, "reload.toml")
	os.WriteFile(config, []byte(fmt.Sprintf("reload_command = %q\n", "echo reloading | tee -a "+filepath.Join(dir, "reloads"))), 0o644)
	code, stderr = runStapler(t, append(args, "--config", config, site)...)
	if reloads, _ := os.ReadFile(filepath.Join(dir, "reloads")); code != 0 || string(reloads) != "reloading\n" {
		t.Fatalf("with reload_command: exit %d, reloads %q; want 0 and one\n%s", code, reloads, stderr)
	}
	if !strings.Contains(stderr, `msg="reload output" line=reloading`) || strings.Contains(stderr, "level=ERROR") {
		t.Errorf("reload output not logged, or errors that the reload resolves:\n%s", stderr)
	}
}

// TestSessionTricklingPeer: an answer must arrive whole within socket_timeout; a peer that
// sends a byte now and then cannot hold a run.
func TestSessionTricklingPeer(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		r := bufio.NewReader(server)
		r.ReadString('\n') // prompt
		server.Write([]byte("\n> "))
		r.ReadString('\n') // set severity-output number
		server.Write([]byte("\n> "))
		r.ReadString('\n') // the command
		for range 100 {
			if _, err := server.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond) // the fault under test: a trickle
		}
	}()
	s := &cliSession{addr: socketAddr{Raw: "pipe"}, conn: client, timeout: 300 * time.Millisecond}
	if err := s.write("prompt\n", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.readUntil([]byte("> "), false); err != nil {
		t.Fatal(err)
	}
	s.prompt = []byte("\n> ")
	if _, err := s.exec("set severity-output number"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := s.exec("show info")
	if !errors.Is(err, errUnreachable) || time.Since(start) > 2*time.Second {
		t.Fatalf("after %v: %v; want errUnreachable within the timeout", time.Since(start), err)
	}
}
