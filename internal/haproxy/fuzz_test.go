package haproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// transcripts are what HAProxy sends on its runtime API in interactive mode.
var transcripts = []string{
	"> \n> [6]: OCSP Response updated!\n\n> ",
	"master> \nmaster> OCSP Response updated!\n\nmaster> ",
	"> \n> [3]: " + ReplyNoSlot + "\n\n> ",
	"> \n> Name: HAProxy\nVersion: 2.6.12\nPid: 4242\nUptime_sec: 100\n\n> ",
	"> \n> OCSP Response Data:\n    Cert Status: good\n    This Update: Nov  2 04:31:47 2026 GMT\n    Next Update: Nov  2 05:31:47 2026 GMT\n\n> ",
	"> \n> + + + [5]: Transaction created for certificate /c/site.pem!\n\n> ",
	"> \n> Unknown command.\n\n> \n> \n> ",
	"> \n> [3]: OCSP single response: Certificate ID does not match",
	"",
	"\n",
	">",
	"\n> \n>",
	"> [3]",
	"[9]: x\n\n> ",
}

// FuzzAnswer: whatever HAProxy's side of the runtime API sends, ParseAnswer and every parser
// of answers never panic, and a connection answers every command or fails with
// ErrUnreachable, promptly, once the peer has closed.
func FuzzAnswer(f *testing.F) {
	for i, s := range transcripts {
		f.Add([]byte(s), uint16(i))
	}
	cmds := []string{"show info", "show ssl cert", "set ssl ocsp-response MAo="}

	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		a := ParseAnswer(data)
		if a.Text != strings.TrimSpace(a.Text) {
			t.Errorf("answer %q is not trimmed", a.Text)
		}
		if a.Err != nil {
			var cerr *CLIError
			if !errors.As(a.Err, &cerr) || cerr.Text != a.Text {
				t.Errorf("error %v is not the CLIError of the answer %q", a.Err, a.Text)
			}
		}
		text := string(data)
		if o, ok := ParseOCSPText(text); ok && !strings.Contains(text, "This Update:") || ok && o.ThisUpdate.IsZero() {
			t.Errorf("a response from an answer without one: %+v", o)
		}
		if info, err := ParseInfo(text); err == nil && !strings.Contains(text, "Pid:") {
			t.Errorf("process %+v from an answer without Pid", info)
		}
		ParseCertInfo(text)
		ParseCertList(text)
		for _, u := range ParseOCSPUpdates(text) {
			if u.Path == "" || u.CertID == "" {
				t.Errorf("update without path or CertID: %+v", u)
			}
		}
		ParseProcs(text)

		// A connection to a peer that sends data, whatever it was asked, then closes.
		client, peer := net.Pipe()
		c := &Conn{addr: Addr{Raw: "fuzz"}, nc: client, timeout: 100 * time.Millisecond}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); io.Copy(io.Discard, peer) }()
		go func() {
			defer wg.Done()
			defer peer.Close()
			k := int(split) % (len(data) + 1) // in two writes, which may split a prompt
			if _, err := peer.Write(data[:k]); err == nil {
				peer.Write(data[k:])
			}
		}()
		var answers []Answer
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			var first []byte
			if first, err = c.readUntil([]byte("> "), false, maxPrompt); err != nil {
				return
			}
			c.prompt = append([]byte("\n"), bytes.TrimLeft(first, "\n")...) // as Dial does
			answers, err = c.ExecAll("", cmds)
		}()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Fatalf("connection still reading a second after the peer sent %d bytes and closed", len(data))
		}
		client.Close()
		wg.Wait()
		switch {
		case err != nil && !errors.Is(err, ErrUnreachable):
			t.Errorf("connection failed with %v, not ErrUnreachable", err)
		case err == nil && len(answers) != len(cmds):
			t.Errorf("%d answers to %d commands", len(answers), len(cmds))
		}
	})
}

// FuzzParseAddr: ParseAddr never panics, and an address it takes can be dialled: a unix path
// or a TCP host:port.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"/run/haproxy/admin.sock", "unix@/run/haproxy/admin.sock", "unix@admin.sock",
		"127.0.0.1:9999", "ipv4@127.0.0.1:9999", "[::1]:9999", "ipv6@[::1]:9999", "*:9999", ":9999",
		"master:/run/haproxy-master.sock", "master:127.0.0.1:9998", "master:", "localhost", "", "unix@",
		"ipv4@", "[::1]", "host:", "abns@x", "fd@3", "master:master:/x", "ipv6@:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddr(s)
		if err != nil {
			return
		}
		if a.Raw != s || a.Master != strings.HasPrefix(s, "master:") {
			t.Errorf("%q: raw %q, master %v", s, a.Raw, a.Master)
		}
		switch a.Network {
		case "unix":
			if a.Address == "" {
				t.Errorf("%q: empty unix path", s)
			}
		case "tcp":
			host, port, err := net.SplitHostPort(a.Address)
			if err != nil || host == "" || port == "" {
				t.Errorf("%q: TCP address %q is not host:port (%v)", s, a.Address, err)
			}
		default:
			t.Errorf("%q: network %q", s, a.Network)
		}
	})
}
