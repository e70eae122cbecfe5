package haproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAddr(t *testing.T) {
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
		got, err := ParseAddr(tt.in)
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
		{"[6]: OCSP Response updated!\n", ReplyUpdated, false},
		{"[3]: " + ReplyNoSlot + "\n", ReplyNoSlot, true},
		{ReplyUpdated + "\n", ReplyUpdated, false}, // through a master socket: no severity
		{"+ + + [5]: Transaction created for certificate /c/site.pem!\n", "Transaction created for certificate /c/site.pem!", false},
		{"Committing /c/site.pem.\nSuccess!\n", "Committing /c/site.pem.\nSuccess!", false},
		{"[3]: Permission denied\n", ReplyDenied, true},
		{"", "", false},
	}
	for _, tt := range tests {
		a := ParseAnswer([]byte(tt.raw))
		if a.Text != tt.text || (a.Err != nil) != tt.isErr {
			t.Errorf("%q: got %q, %v", tt.raw, a.Text, a.Err)
		}
	}
}

// TestVersionCaps: the one table of what differs between the HAProxy versions stapler
// supports (and one it does not know, which is taken as the newest).
func TestVersionCaps(t *testing.T) {
	tests := []struct {
		version string
		want    Caps
	}{
		{"2.6.12-1+deb12u4", Caps{}},
		{"2.8.5-1ubuntu3", Caps{ByPath: true, OCSPUpdate: true}},
		{"3.0.11-1+deb13u5", Caps{ByPath: true, OCSPUpdate: true}},
		{"3.2.26-1", Caps{ByPath: true, OCSPUpdate: true, WarnsBelowAdmin: true, RejectsShort: true}},
		{"3.4.7-1", Caps{ByPath: true, OCSPUpdate: true, AdminOnlyOCSP: true, RejectsShort: true}},
		{"3.3-dev5", Caps{ByPath: true, OCSPUpdate: true, AdminOnlyOCSP: true, RejectsShort: true}},
		{"garbage", Caps{ByPath: true, OCSPUpdate: true, AdminOnlyOCSP: true, RejectsShort: true}},
	}
	for _, tt := range tests {
		if got := ParseVersion(tt.version).Caps(); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.version, got, tt.want)
		}
	}
}

func TestParseInfo(t *testing.T) {
	info, err := ParseInfo("Name: HAProxy\nVersion: 3.2.26-1\nRelease_date: 2026/10/14\nPid: 77\nStart_time_sec: 1795300000\nStopping: 1\n")
	if err != nil || info.Pid != 77 || info.StartTime != 1795300000 || !info.Stopping || info.Version.Major != 3 || info.Version.Minor != 2 {
		t.Fatalf("got %+v, %v", info, err)
	}
	if info.Mark() != "77@1795300000" {
		t.Errorf("mark %q", info.Mark())
	}
	if _, err := ParseInfo("Unknown command."); err == nil {
		t.Error("no error for an answer without Pid")
	}
}

func TestParseCertInfo(t *testing.T) {
	text := "Filename: /c/a.pem\nStatus: Used\nSerial: 03E8AB\nnotBefore: Nov  1 00:00:00 2026 GMT\nOCSP Response Key: 303B3009\nOption: ocsp-update on\n"
	ci, ok := ParseCertInfo(text)
	if !ok || ci.Serial != "03e8ab" || ci.OCSPKey != "303b3009" || ci.OCSPUpdate != "on" || ci.Filename != "/c/a.pem" {
		t.Errorf("got %+v, %v", ci, ok)
	}
	ci, ok = ParseCertInfo("Filename: /c/a.pem\nSerial: 01\nOCSP Response Key: \n")
	if !ok || ci.OCSPKey != "" {
		t.Errorf("empty key: got %+v, %v", ci, ok)
	}
	if _, ok := ParseCertInfo("Can't display the certificate: Not found or the certificate is a bundle!"); ok {
		t.Error("a certificate from an error")
	}
	if !SameSerial("03e8ab", "3E8AB") || SameSerial("03e8ab", "3e8ac") {
		t.Error("SameSerial")
	}
}

func TestParseCertList(t *testing.T) {
	l := ParseCertList("# transaction\n*/c/b.pem\n# filename\n/etc/haproxy//certs/a.pem\n/c/b.pem\n")
	if got := l.Name("/etc/haproxy/certs/a.pem"); got != "/etc/haproxy//certs/a.pem" {
		t.Errorf("name %q", got)
	}
	if l.Name("/c/none.pem") != "" || l.Len() != 2 || len(l.Open) != 1 || l.Open[0] != "/c/b.pem" {
		t.Errorf("got %+v", l)
	}
}

func TestParseOCSPUpdates(t *testing.T) {
	text := "OCSP Certid | Path | Next Update | Last Update | Successes | Failures | Last Update Status | Last Update Status (str)\n" +
		"303b3009 | /c/a.pem | 02/Dec/2026:01:19:26 +0000 | 02/Dec/2026:01:19:06 +0000 | 1 | 0 | 1 | Update successful\n" +
		"303b300a | /c/b.pem | 02/Dec/2026:01:19:26 +0000 | 02/Dec/2026:01:19:16 +0000 | 0 | 3 | 4 | OCSP response check failure (OCSP_basic_verify() failed)\n" +
		"303b300b | /c/c.pem | 02/Dec/2026:01:19:26 +0000 | - | 0 | 0 | 0 | Unknown\n"
	u := ParseOCSPUpdates(text)
	if len(u) != 3 {
		t.Fatalf("got %d entries: %+v", len(u), u)
	}
	if u[0].Path != "/c/a.pem" || u[0].Failing() || u[0].LastUpdate.IsZero() || u[0].Successes != 1 {
		t.Errorf("first: %+v", u[0])
	}
	if !u[1].Failing() || u[1].Failures != 3 || !strings.Contains(u[1].StatusText, "OCSP_basic_verify") {
		t.Errorf("second: %+v", u[1])
	}
	if u[2].Failing() || !u[2].LastUpdate.IsZero() {
		t.Errorf("third (never tried): %+v", u[2])
	}
}

func TestParseOCSPText(t *testing.T) {
	text := "OCSP Response Data:\n    Produced At: Nov  2 04:31:40 2026 GMT\n    Cert Status: good\n    This Update: Nov  2 04:31:47 2026 GMT\n    Next Update: Nov  2 05:31:47 2026 GMT\n"
	got, ok := ParseOCSPText(text)
	if !ok || !got.ThisUpdate.Equal(time.Date(2026, 11, 2, 4, 31, 47, 0, time.UTC)) || !got.ProducedAt.Equal(time.Date(2026, 11, 2, 4, 31, 40, 0, time.UTC)) || got.Status != "good" {
		t.Errorf("got %+v, %v", got, ok)
	}
	if _, ok := ParseOCSPText("Certificate ID does not match any certificate."); ok {
		t.Error("a response from an error")
	}
}

func TestParseProcs(t *testing.T) {
	text := "#<PID>          <type>          <reloads>       <uptime>        <version>\n" +
		"100             master          1 [failed: 0]   0d00h01m02s     3.2.26-1\n" +
		"# workers\n" +
		"120             worker          0               0d00h00m10s     3.2.26-1\n" +
		"# old workers\n" +
		"110             worker          1               0d00h01m00s     3.2.26-1\n" +
		"# programs\n"
	procs, err := ParseProcs(text)
	if err != nil || len(procs) != 3 {
		t.Fatalf("got %+v, %v", procs, err)
	}
	if procs[1].Pid != 120 || procs[1].Old || procs[2].Pid != 110 || !procs[2].Old || procs[0].Type != "master" {
		t.Errorf("got %+v", procs)
	}
}

func TestCheckCommand(t *testing.T) {
	tests := []struct {
		cmd string
		ok  bool
	}{
		{"show info", true},
		{Payload("set ssl cert /c/a.pem.issuer", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"), true},
		{"set ssl cert /c/a.pem.issuer <<\nAAAA\n\nshow info", false}, // an empty line would end the payload early
		{"show info\nshow version", false},
		{"set ssl ocsp-response <<", false}, // a payload of nothing
		{"set ssl ocsp-response " + strings.Repeat("A", MaxCommand), false},
	}
	for _, tt := range tests {
		if err := CheckCommand("", tt.cmd); (err == nil) != tt.ok {
			t.Errorf("%.60q: %v, want ok %v", tt.cmd, err, tt.ok)
		} else if err != nil && !errors.Is(err, ErrBadCommand) {
			t.Errorf("%.60q: %v is not ErrBadCommand", tt.cmd, err)
		}
	}
	if p := Payload("set ssl cert x.issuer", "A\n\r\nB\n"); p != "set ssl cert x.issuer <<\nA\nB" {
		t.Errorf("payload %q", p)
	}
}

// TestTricklingPeer: an answer must arrive whole within the timeout; a peer that sends a byte
// now and then cannot hold a run.
func TestTricklingPeer(t *testing.T) {
	addr := serveUnix(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		r.ReadString('\n') // prompt
		c.Write([]byte("\n> "))
		r.ReadString('\n') // set severity-output number
		c.Write([]byte("\n> "))
		r.ReadString('\n') // the command
		for range 100 {
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond) // the fault under test: a trickle
		}
	})
	c, err := Dial(context.Background(), addr, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Exec("", "show info")
	if !errors.Is(err, ErrUnreachable) || time.Since(start) > 2*time.Second {
		t.Fatalf("after %v: %v; want ErrUnreachable within the timeout", time.Since(start), err)
	}
}

// TestDialSaysWhy: a socket that cannot be HAProxy's says what it is instead.
func TestDialSaysWhy(t *testing.T) {
	dir := shortDir(t)
	file := filepath.Join(dir, "file.sock")
	os.WriteFile(file, nil, 0o644)
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	quiet := serveUnix(t, func(c net.Conn) { time.Sleep(2 * time.Second) })
	tests := []struct {
		addr string
		want string
	}{
		{filepath.Join(dir, "none.sock"), "does not exist"},
		{file, "is a regular file, not a socket"},
		{strings.TrimPrefix(web.URL, "http://"), "does not speak HAProxy's CLI"},
		{quiet.Raw, "sent nothing within"},
	}
	for _, tt := range tests {
		addr, err := ParseAddr(tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Dial(context.Background(), addr, 300*time.Millisecond)
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want ErrUnreachable saying %q", tt.addr, err, tt.want)
		}
	}
}

func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "hap") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveUnix serves each connection to a new unix socket with serve.
func serveUnix(t *testing.T, serve func(net.Conn)) Addr {
	path := filepath.Join(shortDir(t), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return Addr{Raw: path, Network: "unix", Address: path}
}

// TestHeldByPath: the base64 of a response reads the same on one line, broken into lines, or
// with spaces; what is not base64 is an error, not a response.
func TestHeldByPath(t *testing.T) {
	der := bytes.Repeat([]byte{0x30, 0x82, 0xff, 0x01}, 100)
	b64 := base64.StdEncoding.EncodeToString(der)
	p := &Process{conn: &Conn{addr: Addr{Raw: "/run/haproxy.sock"}}}
	for _, text := range []string{b64, b64[:64] + "\n" + b64[64:128] + "\r\n" + b64[128:], b64[:10] + " " + b64[10:] + "\t"} {
		var h Held
		if got := p.heldByPath(&h, Answer{Text: text}); got != "" || h.Err != nil || !h.Slot || !bytes.Equal(h.DER, der) {
			t.Errorf("%q: %q, %+v", clip(text, 20), got, h)
		}
	}
	var h Held
	if p.heldByPath(&h, Answer{Text: "not base64!"}); h.Err == nil || h.DER != nil {
		t.Errorf("not base64: %+v", h)
	}
}
