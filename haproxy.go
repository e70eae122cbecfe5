package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HAProxy's runtime API, as HAProxy 2.6 speaks it (../shared/haproxy-ocsp-facts.md).

const (
	// maxCommandLine: HAProxy 2.6 with the default tune.bufsize of 16384 answers nothing to a
	// longer command line and keeps the connection, and one of its ten stats slots, forever; a
	// payload near 16384 bytes can abort the process. stapler stays well below.
	maxCommandLine = 15360
	// replyUpdated is HAProxy's answer to a successful `set ssl ocsp-response`.
	replyUpdated = "OCSP Response updated!"
	// replyNoSlot: HAProxy has no OCSP slot whose CertID matches the staple.
	replyNoSlot = "OCSP single response: Certificate ID does not match any certificate or issuer."
)

// errUnreachable marks a socket that could not be talked to at all (refused, timed out,
// closed without an answer), as opposed to an answer that says no.
var errUnreachable = errors.New("HAProxy unreachable")

// socketAddr is a runtime API address: a unix socket path ("/run/haproxy/admin.sock",
// "unix@/path"), a TCP address ("127.0.0.1:9999", "ipv4@127.0.0.1:9999", "[::1]:9999",
// "ipv6@[::1]:9999"), either behind "master:" for the master CLI of `haproxy -W -S`, whose
// commands stapler sends to the current worker with the "@1 " prefix.
type socketAddr struct {
	Raw     string
	Network string // "unix" or "tcp"
	Address string
	Master  bool
}

func parseSocketAddr(s string) (socketAddr, error) {
	a := socketAddr{Raw: s}
	rest, master := strings.CutPrefix(s, "master:")
	a.Master = master
	switch {
	case strings.HasPrefix(rest, "unix@"):
		a.Network, a.Address = "unix", strings.TrimPrefix(rest, "unix@")
	case strings.HasPrefix(rest, "ipv4@"), strings.HasPrefix(rest, "ipv6@"):
		a.Network, a.Address = "tcp", rest[len("ipv4@"):]
	case strings.Contains(rest, "/"):
		a.Network, a.Address = "unix", rest
	default:
		a.Network, a.Address = "tcp", rest
	}
	if a.Address == "" {
		return a, fmt.Errorf("socket %q: no address", s)
	}
	if a.Network == "tcp" {
		host, port, err := net.SplitHostPort(a.Address)
		if err != nil || port == "" || strings.ContainsAny(host, "@/") {
			return a, fmt.Errorf("socket %q: want a unix socket path or host:port", s)
		}
		if host == "" || host == "*" {
			a.Address = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return a, nil
}

// cliSession is one connection to HAProxy's runtime API in interactive mode (`prompt`), so
// that any number of commands share it. Every exchange has a deadline; close always closes.
type cliSession struct {
	addr    socketAddr
	conn    net.Conn
	buf     []byte // read but not yet returned
	prompt  []byte // "\n" + the prompt: what ends each answer
	prefix  string // "@1 " on a master socket
	timeout time.Duration
	end     time.Time         // the caller's deadline, if any: no exchange outlasts it
	level   string            // of `show cli level`, once asked
	loaded  map[string]string // cleaned path: HAProxy's name, of `show ssl cert`, once asked

	reloadable bool // a reload will follow when a staple needs one
}

// openCLI connects, switches to interactive mode and asks for numbered severities, so that
// answers say whether they report success ("[6]: ...") or an error ("[3]: ...").
func openCLI(ctx context.Context, addr socketAddr, timeout time.Duration) (*cliSession, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, addr.Network, addr.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUnreachable, err)
	}
	s := &cliSession{addr: addr, conn: conn, timeout: timeout}
	s.end, _ = ctx.Deadline()
	// A signal ends the run at once, not at the next deadline. (close closes again: harmless.)
	context.AfterFunc(ctx, func() { conn.Close() })
	if addr.Master {
		s.prefix = "@1 "
	}
	// The first answer to `prompt` is the prompt itself: "> ", or "master> ".
	if err := s.write("prompt\n", 1); err != nil {
		conn.Close()
		return nil, err
	}
	first, err := s.readUntil([]byte("> "), false)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s.prompt = append([]byte("\n"), bytes.TrimLeft(first, "\n")...)
	if _, err := s.exec("set severity-output number"); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// deadline is d from now, but never past the caller's deadline.
func (s *cliSession) deadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if !s.end.IsZero() && s.end.Before(t) {
		return s.end
	}
	return t
}

// write sends text holding n commands, allowing socket_timeout per thousand commands, since
// HAProxy takes in a batch only as fast as it answers it.
func (s *cliSession) write(text string, n int) error {
	s.conn.SetWriteDeadline(s.deadline(s.timeout * time.Duration(1+n/1000)))
	if _, err := s.conn.Write([]byte(text)); err != nil {
		return fmt.Errorf("%w: sending to %s: %w", errUnreachable, s.addr.Raw, err)
	}
	return nil
}

// maxAnswer caps one answer: the list of 10,000 OCSP slots is about 4 MB.
const maxAnswer = 64 << 20

// readUntil returns what HAProxy sends up to and including end, without end if trim. The whole
// answer must arrive within socket_timeout, so a peer that trickles bytes cannot hold a run.
func (s *cliSession) readUntil(end []byte, trim bool) ([]byte, error) {
	s.conn.SetReadDeadline(s.deadline(s.timeout))
	chunk := make([]byte, 64<<10)
	from := 0
	for {
		if i := bytes.Index(s.buf[from:], end); i >= 0 {
			i += from
			n := i + len(end)
			out := bytes.Clone(s.buf[:n])
			s.buf = s.buf[n:]
			if trim {
				out = out[:i]
			}
			return out, nil
		}
		if len(s.buf) > maxAnswer {
			return nil, fmt.Errorf("%w: %s sent an answer of more than %d bytes", errUnreachable, s.addr.Raw, maxAnswer)
		}
		from = max(0, len(s.buf)-len(end)+1)
		n, err := s.conn.Read(chunk)
		s.buf = append(s.buf, chunk[:n]...)
		if err != nil {
			return nil, fmt.Errorf("%w: reading the answer of %s: %w", errUnreachable, s.addr.Raw, err)
		}
	}
}

// exec sends one command and returns HAProxy's answer. An answer with an error severity
// ("[3]: ...") comes back as a *cliError. Through a master socket HAProxy 2.6 gives no
// severities: callers compare answers with the texts they expect.
func (s *cliSession) exec(cmd string) (string, error) {
	answers, err := s.execAll([]string{cmd})
	if err != nil {
		return "", err
	}
	return answers[0].text, answers[0].err
}

type answer struct {
	text string
	err  error // a *cliError when HAProxy reported an error
}

// cliError is an answer HAProxy marked as an error.
type cliError struct{ text string }

func (e *cliError) Error() string { return fmt.Sprintf("HAProxy answered %q", e.text) }

// execAll pipelines commands: it writes them all while reading the answers, so that many
// commands cost one round trip. It fails as a whole only when the connection does.
func (s *cliSession) execAll(cmds []string) ([]answer, error) {
	var text strings.Builder
	for _, c := range cmds {
		text.WriteString(s.prefix)
		text.WriteString(c)
		text.WriteByte('\n')
	}
	werr := make(chan error, 1)
	go func() { werr <- s.write(text.String(), len(cmds)) }()
	answers := make([]answer, 0, len(cmds))
	for range cmds {
		raw, err := s.readUntil(s.prompt, true)
		if err != nil {
			s.conn.Close() // unblocks the writer
			<-werr
			return nil, err
		}
		answers = append(answers, parseAnswer(raw))
	}
	if err := <-werr; err != nil {
		return nil, err
	}
	return answers, nil
}

// parseAnswer strips the "+ " prompts that follow payload lines and the severity prefix.
func parseAnswer(raw []byte) answer {
	t := string(raw)
	for strings.HasPrefix(t, "+ ") {
		t = t[2:]
	}
	t = strings.TrimSpace(t)
	if len(t) >= 5 && t[0] == '[' && t[2] == ']' && t[3] == ':' {
		sev, err := strconv.Atoi(t[1:2])
		t = strings.TrimSpace(t[4:])
		if err == nil && sev <= 3 {
			return answer{text: t, err: &cliError{t}}
		}
	}
	return answer{text: t}
}

// withPayload is a command followed by a payload (HAProxy's `<<` syntax): the lines of text,
// then an empty line.
func withPayload(cmd, text string) string {
	return cmd + " <<\n" + strings.TrimRight(text, "\n") + "\n" // execAll adds the empty line
}

// base64Lines is der in base64, in lines of 64 characters.
func base64Lines(der []byte) string {
	enc := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	for len(enc) > 0 {
		n := min(64, len(enc))
		b.WriteString(enc[:n] + "\n")
		enc = enc[n:]
	}
	return b.String()
}

// close ends the session: `quit`, a half-close (the master CLI waits for it), then close.
func (s *cliSession) close() {
	s.conn.SetDeadline(s.deadline(s.timeout))
	s.conn.Write([]byte("quit\n"))
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	s.conn.Close()
}

// setOCSPCommand is the `set ssl ocsp-response` command for a staple, or an error when it
// would come too near HAProxy's buffer limit.
func setOCSPCommand(der []byte, prefix string) (string, error) {
	cmd := "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(der)
	if len(prefix)+len(cmd)+1 > maxCommandLine {
		return "", fmt.Errorf("staple of %d bytes is too large to send to HAProxy safely (a command line over %d bytes can hang its runtime API); HAProxy reads it from disk at its next reload", len(der), maxCommandLine)
	}
	return cmd, nil
}

// cliLevel is the socket's access level: "admin", "operator" or "user".
func (s *cliSession) cliLevel() (string, error) {
	if s.level == "" {
		level, err := s.exec("show cli level")
		if err != nil {
			return "", err
		}
		s.level = level
	}
	return s.level, nil
}

// processMark identifies the HAProxy process behind a socket: its pid and start time. A new
// mark means HAProxy restarted or reloaded and read its staples from disk again.
func (s *cliSession) processMark() (string, error) {
	info, err := s.exec("show info")
	if err != nil {
		return "", err
	}
	pid, start := fieldValue(info, "Pid"), fieldValue(info, "Start_time_sec")
	if pid == "" || start == "" {
		return "", fmt.Errorf("HAProxy at %s: no Pid and Start_time_sec in its answer to show info", s.addr.Raw)
	}
	return pid + "@" + start, nil
}

// fieldValue is the value of "Name: value" in HAProxy's text, "" when absent.
func fieldValue(text, name string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// ocspKeys lists the CertID keys (hex) of HAProxy's OCSP slots.
func (s *cliSession) ocspKeys() (map[string]bool, error) {
	list, err := s.exec("show ssl ocsp-response")
	if err != nil {
		return nil, err
	}
	keys := map[string]bool{}
	for _, line := range strings.Split(list, "\n") {
		if k, ok := strings.CutPrefix(line, "Certificate ID key : "); ok {
			keys[strings.ToLower(strings.TrimSpace(k))] = true
		}
	}
	return keys, nil
}

// servedThisUpdate reads the thisUpdate from HAProxy's text form of the response in a slot
// (`show ssl ocsp-response <key>`), zero when there is none.
func servedThisUpdate(text string) time.Time {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "This Update: "); ok {
			if t, err := time.Parse("Jan _2 15:04:05 2006 MST", strings.TrimSpace(v)); err == nil {
				return t
			}
		}
	}
	return time.Time{}
}

// loadedName is the name under which HAProxy holds the certificate file path, from one
// `show ssl cert` listing per session; "" when HAProxy has not loaded it. HAProxy keeps paths
// as its configuration spells them ("/etc/haproxy//certs/a.pem" with a crt-base ending in
// "/"), so they are compared cleaned.
func (s *cliSession) loadedName(path string) (string, error) {
	if s.loaded == nil {
		list, err := s.exec("show ssl cert")
		if err != nil {
			var cerr *cliError
			if errors.As(err, &cerr) {
				err = fmt.Errorf("%w: %w", errCannotList, err)
			}
			return "", err
		}
		s.loaded = map[string]string{}
		for _, line := range strings.Split(list, "\n") {
			if name := strings.TrimPrefix(strings.TrimSpace(line), "*"); name != "" && !strings.HasPrefix(name, "#") {
				s.loaded[filepath.Clean(name)] = name
			}
		}
	}
	return s.loaded[filepath.Clean(path)], nil
}

// errCannotList: HAProxy did not say which certificates it loaded (a socket below level
// admin, or certificate operations locked).
var errCannotList = errors.New("cannot list HAProxy's certificates")

// cliArg escapes a path for HAProxy's command line, which splits words on spaces and commands
// on ";", and takes "\" as an escape.
func cliArg(path string) string {
	r := strings.NewReplacer(`\`, `\\`, " ", `\ `, "\t", "\\\t", ";", `\;`)
	return r.Replace(path)
}

// sameSerial compares hex serials as HAProxy and stapler write them.
func sameSerial(a, b string) bool {
	return strings.TrimLeft(strings.ToLower(a), "0") == strings.TrimLeft(strings.ToLower(b), "0")
}
