// Package haproxytest is a fake HAProxy runtime API for tests: a unix socket that answers the
// commands stapler sends, with the texts and the version differences that real HAProxy 2.6,
// 3.0, 3.2 and 3.4 have (../shared/haproxy-versions.md). It keeps OCSP slots as HAProxy does:
// in one table by CertID, which certificates attach to; a hot update detaches a certificate
// and leaves its slot behind. Tests that need the truth use a real HAProxy; this one makes
// branches cheap to reach.
package haproxytest

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"stapler/internal/haproxy"
	"stapler/internal/ocspcheck"
)

// Fake is a fake HAProxy process behind a unix stats socket.
type Fake struct {
	Addr string // the socket's path

	ln net.Listener

	mu       sync.Mutex
	version  haproxy.Version
	level    string
	pid      int
	stopping bool
	silent   bool
	certs    map[string]*Cert  // by name
	slots    map[string][]byte // CertID (hex): the response held, nil for none
	tx       *transaction
	log      []string // commands received, payloads folded into their first line
	conns    int
	open     int               // connections being served
	override map[string]string // command prefix: answer
	locked   int               // certificate commands still to refuse as locked; < 0: all
	hangup   map[string]string // command prefix: what to send before closing
	threads  int               // Nbthread, shown when set
	// newFrom: connections from this one on (1 is the first) reach a new process (another
	// pid), as after a reload; 0: never.
	newFrom int
	perConn map[int]int // commands answered, by connection (1 is the first)
}

// Cert is a certificate file the fake HAProxy loaded.
type Cert struct {
	Serial   string // hex
	CertID   string // hex CertID of the certificate and its issuer
	Attached bool   // to the slot of its CertID
}

type transaction struct {
	name string
	ocsp []byte
}

// Start starts a fake HAProxy of the given version ("2.6.12", "3.4.7", ...) whose socket has
// the given level. It stops when the test ends.
func Start(t interface {
	Fatal(...any)
	Cleanup(func())
}, version, level string) *Fake {
	dir, err := os.MkdirTemp("", "hapfake") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &Fake{Addr: filepath.Join(dir, "admin.sock"), version: haproxy.ParseVersion(version), level: level, pid: nextPid(),
		certs: map[string]*Cert{}, slots: map[string][]byte{}}
	if f.ln, err = net.Listen("unix", f.Addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.ln.Close() })
	go func() {
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

// Load makes the fake hold a certificate file. With withSlot, it was loaded with a .ocsp file:
// it has an (empty) slot.
func (f *Fake) Load(name, serial, certID string, withSlot bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.certs[name] = &Cert{Serial: strings.ToLower(serial), CertID: certID, Attached: withSlot}
	if withSlot {
		if _, ok := f.slots[certID]; !ok {
			f.slots[certID] = nil
		}
	}
}

// HotUpdate replaces a certificate as `set ssl cert` + `commit` does: the new one has no slot,
// and the old slot stays in the table.
func (f *Fake) HotUpdate(name, serial, certID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.certs[name] = &Cert{Serial: strings.ToLower(serial), CertID: certID}
}

// Held is the response the fake holds for the certificate in name, nil when none is attached.
func (f *Fake) Held(name string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.certs[name]
	if c == nil || !c.Attached {
		return nil
	}
	return f.slots[c.CertID]
}

// SetStopping makes the fake an old worker after a reload.
func (f *Fake) SetStopping(stopping bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopping = stopping
}

// pids makes each fake a process of its own, as stapler tells HAProxy
// processes apart by pid and start time.
var pids atomic.Int64

func nextPid() int { return 4242 + int(pids.Add(1)) - 1 }

// SetThreads makes `show info` say that the fake runs n threads.
func (f *Fake) SetThreads(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.threads = n
}

// NewProcessFrom makes connection n (1 is the first) and those after it reach another
// process, as after a reload: `show info` shows another pid there.
func (f *Fake) NewProcessFrom(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.newFrom = n
}

// Commands is how many commands connection n (1 is the first) sent.
func (f *Fake) Commands(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.perConn[n]
}

// SetSilent makes the fake accept connections and never answer.
func (f *Fake) SetSilent(silent bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.silent = silent
}

// Lock makes the next n certificate commands (`show ssl cert`, `set`/`commit ssl cert`, `show
// ssl ocsp-response base64 <path>`) find the certificate lock taken, as while another session
// lists the certificates or commits a transaction; n < 0 keeps it taken.
func (f *Fake) Lock(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.locked = n
}

// Override answers every command that starts with prefix with answer (its lines, each ending
// in a newline), instead of what HAProxy would; an empty answer removes the override.
func (f *Fake) Override(prefix, answer string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.override == nil {
		f.override = map[string]string{}
	}
	if answer == "" {
		delete(f.override, prefix)
		return
	}
	f.override[prefix] = answer
}

// Hangup makes the fake send partial and close the connection when a command starts with
// prefix, as a process that dies in the middle of an answer.
func (f *Fake) Hangup(prefix, partial string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hangup == nil {
		f.hangup = map[string]string{}
	}
	f.hangup[prefix] = partial
}

// OpenTransaction leaves a transaction open for name, as another tool would.
func (f *Fake) OpenTransaction(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tx = &transaction{name: name}
}

// Log returns the commands received so far (a payload as its first line) and forgets them.
func (f *Fake) Log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.log
	f.log = nil
	return l
}

// Conns is how many connections the fake accepted.
func (f *Fake) Conns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// Open is how many connections are open now.
func (f *Fake) Open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open
}

func (f *Fake) serve(c net.Conn) {
	defer c.Close()
	f.mu.Lock()
	f.conns++
	f.open++
	silent, conn := f.silent, f.conns
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.open--
		f.mu.Unlock()
	}()
	if silent {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
	r := bufio.NewReaderSize(c, 64<<10)
	prompt, sev := "", false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		var payload []string
		if strings.HasSuffix(line, " <<") {
			line = strings.TrimSuffix(line, " <<")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l = strings.TrimSuffix(l, "\n"); l == "" {
					break
				}
				payload = append(payload, l)
			}
		}
		if partial, ok := f.hangupFor(line); ok {
			c.Write([]byte(partial))
			return
		}
		var answer string
		switch line {
		case "prompt":
			prompt = "> "
		case "quit":
			return
		case "set severity-output number":
			sev = true
		default:
			answer = f.answer(conn, line, payload, sev)
		}
		if _, err := c.Write([]byte(answer + "\n" + prompt)); err != nil || prompt == "" {
			return
		}
	}
}

func (f *Fake) hangupFor(line string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for prefix, partial := range f.hangup {
		if strings.HasPrefix(line, prefix) {
			return partial, true
		}
	}
	return "", false
}

// answer runs one command and returns its answer, without the empty line that ends it.
func (f *Fake) answer(conn int, line string, payload []string, sev bool) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, line)
	if f.perConn == nil {
		f.perConn = map[int]int{}
	}
	f.perConn[conn]++
	info := func(s string) string {
		if sev {
			return "[6]: " + s + "\n"
		}
		return s + "\n"
	}
	fail := func(s string) string {
		if sev {
			return "[3]: " + s + "\n"
		}
		return s + "\n"
	}
	for prefix, a := range f.override {
		if strings.HasPrefix(line, prefix) {
			return a
		}
	}
	if line == "show info" {
		return f.showInfo(conn)
	}
	if f.locked != 0 && (strings.HasPrefix(line, "show ssl cert") || strings.HasPrefix(line, "set ssl cert") || strings.HasPrefix(line, "commit ssl cert") ||
		strings.HasPrefix(line, "show ssl ocsp-response base64 ")) {
		if f.locked > 0 {
			f.locked--
		}
		return fail("Can't show!\n" + haproxy.ReplyLocked)
	}
	caps := f.version.Caps()
	ocspCmd := strings.Contains(line, "ocsp-response") || strings.Contains(line, "ocsp-updates")
	if ocspCmd && caps.AdminOnlyOCSP && f.level != "admin" {
		return fail(haproxy.ReplyDenied)
	}
	if strings.HasPrefix(line, "show ") {
		return f.show(line, info, fail)
	}
	return f.change(line, payload, info, fail)
}

func (f *Fake) setOCSP(der []byte, info, fail func(string) string) string {
	// Like HAProxy, which parses the response and never checks its signature.
	resp, err := ocspcheck.ResponseTimes(der)
	if err != nil {
		return fail("Unable to parse OCSP response.")
	}
	id, err := ocspcheck.ResponseCertID(der)
	if err != nil {
		return fail("Unable to parse OCSP response.")
	}
	key := hex.EncodeToString(id)
	if _, ok := f.slots[key]; !ok {
		return fail(haproxy.ReplyNoSlot)
	}
	if f.version.Caps().RejectsShort && time.Until(resp.NextUpdate) < 300*time.Second {
		return fail(haproxy.ReplyTooShort)
	}
	f.slots[key] = der
	return info(haproxy.ReplyUpdated)
}

// unescape undoes haproxy.Arg.
func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// showCerts answers `show ssl cert`: an open transaction, then the files.
func (f *Fake) showCerts() string {
	var b strings.Builder
	if f.tx != nil {
		b.WriteString("# transaction\n*" + f.tx.name + "\n")
	}
	b.WriteString("# filename\n")
	names := make([]string, 0, len(f.certs))
	for name := range f.certs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b.WriteString(name + "\n")
	}
	return b.String()
}

// showCert answers `show ssl cert NAME`.
func (f *Fake) showCert(name string, fail func(string) string) string {
	c := f.certs[name]
	if c == nil {
		return fail("Can't display the certificate: Not found or the certificate is a bundle!")
	}
	key := ""
	if c.Attached {
		key = c.CertID
	}
	s := fmt.Sprintf("Filename: %s\nStatus: Used\nSerial: %s\nOCSP Response Key: %s\n", name, strings.ToUpper(c.Serial), key)
	if f.version.AtLeast(3, 4) {
		s += "Option: ocsp-update off\n"
	}
	return s
}

// showUpdates answers `show ssl ocsp-updates`.
func (f *Fake) showUpdates() string {
	s := "OCSP Certid | Path | Next Update | Last Update | Successes | Failures | Last Update Status | Last Update Status (str)\n"
	return s // no certificate under HAProxy's own updater: those tests run a real HAProxy
}

// show answers the `show` commands.
// showInfo answers `show info` on connection conn: another process's (pid) from NewProcessFrom's
// connection on.
func (f *Fake) showInfo(conn int) string {
	pid, stopping := f.pid, 0
	if f.newFrom > 0 && conn >= f.newFrom {
		pid = f.pid + 1000
	} else if f.stopping {
		stopping = 1
	}
	threads := ""
	if f.threads > 0 {
		threads = fmt.Sprintf("Nbthread: %d\n", f.threads)
	}
	return fmt.Sprintf("Name: HAProxy\nVersion: %s\nPid: %d\nUptime_sec: 100\nStart_time_sec: %d\nStopping: %d\n%s", f.version.Text, pid, 1795300000+pid, stopping, threads)
}

func (f *Fake) show(line string, info, fail func(string) string) string {
	caps := f.version.Caps()
	arg := func(prefix string) string { return unescape(strings.TrimPrefix(line, prefix)) }
	switch {
	case line == "show cli level":
		return info(f.level)
	case line == "show ssl cert" && f.level != "user":
		return f.showCerts()
	case strings.HasPrefix(line, "show ssl cert ") && f.level != "user":
		return f.showCert(arg("show ssl cert "), fail)
	case strings.HasPrefix(line, "show ssl cert"):
		return fail("Can't allocate memory!")
	case line == "show ssl ocsp-updates":
		if !caps.OCSPUpdate {
			return fail("Unknown command: 'show ssl ocsp-updates'")
		}
		return f.showUpdates()
	case strings.HasPrefix(line, "show ssl ocsp-response base64 "):
		if !caps.ByPath {
			return fail("Certificate ID does not match any certificate.")
		}
		c := f.certs[arg("show ssl ocsp-response base64 ")]
		if c == nil || !c.Attached {
			return fail("'show ssl ocsp-response' expects a valid certid or certificate path.")
		}
		if der := f.slots[c.CertID]; der != nil {
			return base64.StdEncoding.EncodeToString(der) + "\n"
		}
		return ""
	case strings.HasPrefix(line, "show ssl ocsp-response "):
		der, ok := f.slots[strings.TrimPrefix(line, "show ssl ocsp-response ")]
		if !ok {
			if caps.ByPath {
				return fail("Certificate ID or path does not match any certificate.")
			}
			return fail("Certificate ID does not match any certificate.")
		}
		if der == nil {
			return ""
		}
		resp, err := ocspcheck.ResponseTimes(der)
		if err != nil {
			return ""
		}
		const layout = "Jan _2 15:04:05 2006 GMT"
		return fmt.Sprintf("OCSP Response Data:\n    Produced At: %s\n    Cert Status: good\n    This Update: %s\n    Next Update: %s\n",
			resp.ProducedAt.UTC().Format(layout), resp.ThisUpdate.UTC().Format(layout), resp.NextUpdate.UTC().Format(layout))
	}
	return fail("Unknown command: '" + line + "'")
}

// change answers the commands that change what the fake holds.
func (f *Fake) change(line string, payload []string, info, fail func(string) string) string {
	arg := func(prefix string) string { return unescape(strings.TrimPrefix(line, prefix)) }
	switch {
	case strings.HasPrefix(line, "set ssl ocsp-response"):
		b64 := strings.TrimSpace(strings.TrimPrefix(line, "set ssl ocsp-response"))
		if payload != nil {
			b64 = strings.Join(payload, "")
		}
		der, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return fail("'set ssl ocsp-response' received invalid base64 encoded response.")
		}
		return f.setOCSP(der, info, fail)
	case strings.HasPrefix(line, "set ssl cert "):
		if f.level != "admin" {
			return fail(haproxy.ReplyDenied)
		}
		file := arg("set ssl cert ")
		name := strings.TrimSuffix(strings.TrimSuffix(file, ".ocsp"), ".issuer")
		if f.certs[name] == nil {
			return fail("Can't replace a certificate which is not referenced by the configuration!")
		}
		created := f.tx == nil
		if f.tx == nil {
			f.tx = &transaction{name: name}
		}
		// HAProxy 2.6 adds to the open transaction, whatever certificate it is for.
		if strings.HasSuffix(file, ".ocsp") {
			der, err := base64.StdEncoding.DecodeString(strings.Join(payload, ""))
			if err != nil {
				return fail("'set ssl cert' received invalid base64 encoded response.")
			}
			f.tx.ocsp = der
		}
		if created {
			return info("Transaction created for certificate " + f.tx.name + "!")
		}
		return info("Transaction updated for certificate " + f.tx.name + "!")
	case strings.HasPrefix(line, "commit ssl cert "):
		name := arg("commit ssl cert ")
		if f.tx == nil || f.tx.name != name {
			return fail("No ongoing transaction!")
		}
		c := f.certs[name]
		c.Attached = true
		f.slots[c.CertID] = f.tx.ocsp
		f.tx = nil
		return info("Committing " + name + ".\nSuccess!")
	case strings.HasPrefix(line, "abort ssl cert "):
		f.tx = nil
		return info("Transaction aborted for certificate!")
	}
	return fail("Unknown command: '" + line + "'")
}
