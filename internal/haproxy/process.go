package haproxy

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Process is one HAProxy process reached through a connection: the process behind a stats
// socket, or one worker behind the master CLI (its commands prefixed "@!<pid> ").
type Process struct {
	conn   *Conn
	prefix string
	Info   Info
	Caps   Caps
	Level  string // "admin", "operator" or "user"
	// Old is a worker the master lists as old: stopping after a reload. It still serves the
	// connections it had, so it gets staples too, but what it holds is not judged.
	Old bool
	// Certs lists the certificate files the process loaded.
	Certs CertList
	// Updates are the certificates HAProxy's own ocsp-update keeps fresh (2.8+), by cleaned
	// path.
	Updates map[string]OCSPUpdate
	// txFree: no certificate transaction was open when stapler last looked, and none of its
	// own failed since.
	txFree bool
	// Err says why stapler cannot read what this process serves (3.4 below level admin); the
	// process is otherwise usable.
	Err error
	// more are further connections to this process (proven by its identity), for spreading
	// large batches over HAProxy's threads; moreTried says they were looked for.
	more      []*Conn
	moreTried bool
}

// ErrNeedsAdmin: the socket's level is too low for what stapler must do.
var ErrNeedsAdmin = errors.New("needs a socket with level admin")

// Session is one connection and the processes behind it.
type Session struct {
	conn  *Conn
	Procs []*Process
}

// Open connects to addr and learns what stapler needs of each process behind it: its
// identity (`show info`), level, version, loaded certificates and, where HAProxy has its own
// updater, what it keeps fresh. A connection that reaches a stopping worker (one opened just
// before a reload took over) is closed and opened again, until timeout. Behind the master CLI
// the processes are the workers of `show proc`, old ones included.
func Open(ctx context.Context, addr Addr, timeout time.Duration) (*Session, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := Dial(ctx, addr, timeout)
		if err != nil {
			return nil, err
		}
		s := &Session{conn: c}
		if addr.Master {
			err = s.workers(ctx, timeout)
		} else {
			s.Procs = []*Process{{conn: c}}
		}
		var procs []*Process
		for _, p := range s.Procs {
			if err != nil {
				break
			}
			switch lerr := p.learn(); {
			case lerr != nil && p.Old:
				p.conn.Close() // an old worker that left meanwhile
			case lerr != nil:
				err = lerr
			default:
				procs = append(procs, p)
			}
		}
		s.Procs = procs
		if err != nil {
			s.Close()
		}
		switch {
		case errors.Is(err, errWorkerNotReady) && time.Now().Before(deadline):
			// A worker the master lists that does not take commands yet: a reload in progress.
		case err != nil:
			return nil, err
		case addr.Master || !s.Procs[0].Info.Stopping:
			return s, nil
		case time.Now().After(deadline):
			c.Close()
			return nil, fmt.Errorf("%w: %s keeps reaching a stopping HAProxy process (pid %d): a reload is not finishing", ErrUnreachable, addr.Raw, s.Procs[0].Info.Pid)
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
}

// Close closes the connection, those of old workers, and those opened to spread batches.
func (s *Session) Close() {
	for _, p := range s.Procs {
		if p.conn != s.conn {
			p.conn.Close()
		}
		for _, c := range p.more {
			c.Close()
		}
	}
	s.conn.Close()
}

// Current is the processes whose state counts: all but old workers.
func (s *Session) Current() []*Process {
	var out []*Process
	for _, p := range s.Procs {
		if !p.Old {
			out = append(out, p)
		}
	}
	return out
}

// workers lists the workers behind a master CLI. An old worker can exit at any moment, and
// the master then drops every command queued after one for it (2.6 also closes the
// connection): each old worker gets a connection of its own, so that it cannot take the
// current worker's exchange down with it.
func (s *Session) workers(ctx context.Context, timeout time.Duration) error {
	text, err := s.conn.Exec("", "show proc")
	if err != nil {
		return err
	}
	procs, err := ParseProcs(text)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, s.conn.addr.Raw, err)
	}
	for _, p := range procs {
		if p.Type != "worker" {
			continue
		}
		c := s.conn
		if p.Old {
			if c, err = Dial(ctx, s.conn.addr, timeout); err != nil {
				continue // gone, or going: not the current worker's problem
			}
		}
		s.Procs = append(s.Procs, &Process{conn: c, prefix: "@!" + strconv.Itoa(p.Pid) + " ", Old: p.Old})
	}
	if len(s.Procs) == 0 {
		return fmt.Errorf("%w: the master at %s lists no worker", ErrUnreachable, s.conn.addr.Raw)
	}
	return nil
}

// errWorkerNotReady: the master lists a worker that does not take commands (yet).
var errWorkerNotReady = errors.New("worker not ready")

// learn reads the process's identity, level, certificates and own updates: two round trips.
func (p *Process) learn() error {
	text, err := p.exec("show info")
	if err != nil {
		return err
	}
	if strings.HasPrefix(text, "Can't find the target PID") {
		return fmt.Errorf("%w: %w: %s: %s", ErrUnreachable, errWorkerNotReady, p.conn.addr.Raw, text)
	}
	if p.Info, err = ParseInfo(text); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, p.conn.addr.Raw, err)
	}
	p.Caps = p.Info.Version.Caps()
	cmds := []string{"show cli level", "show ssl cert"}
	if p.Caps.OCSPUpdate {
		cmds = append(cmds, "show ssl ocsp-updates")
	}
	answers, err := p.execAll(cmds)
	if err != nil {
		return err
	}
	p.Level = answers[0].Text
	if p.prefix != "" && p.Level == "" {
		p.Level = "admin" // the master CLI forwards at level admin (2.6 answers nothing)
	}
	switch {
	case answers[1].Err == nil && strings.Contains(answers[1].Text, "# filename"):
		p.Certs = ParseCertList(answers[1].Text)
	default:
		// Level user: every HAProxy answers "Can't allocate memory!" (checked on 2.6, 3.0, 3.4).
		p.Err = fmt.Errorf("%s: HAProxy does not list its certificates at this socket's level %s (`show ssl cert` answered %q): %w (stats socket ... level admin)",
			p.Where(), cmp.Or(p.Level, "unknown"), strings.TrimSpace(answers[1].Text), ErrNeedsAdmin)
	}
	p.Updates = map[string]OCSPUpdate{}
	if len(answers) > 2 {
		if IsDenied(answers[2].Text) && p.Err == nil {
			p.Err = fmt.Errorf("%s: HAProxy %s refuses every OCSP command below level admin, and this socket has level %s: %w (stats socket ... level admin)", p.Where(), p.Info.Version, p.Level, ErrNeedsAdmin)
		}
		for _, u := range ParseOCSPUpdates(answers[2].Text) {
			p.Updates[filepath.Clean(u.Path)] = u
		}
	}
	return nil
}

// Where names the process for messages: the socket, and the worker behind a master CLI.
func (p *Process) Where() string {
	if p.prefix != "" {
		return fmt.Sprintf("%s (worker %d)", p.conn.addr.Raw, p.Info.Pid)
	}
	return p.conn.addr.Raw
}

// Socket is the address this process was reached by, as configured.
func (p *Process) Socket() string { return p.conn.addr.Raw }

func (p *Process) exec(cmd string) (string, error) {
	answers, err := p.execAll([]string{cmd})
	if err != nil {
		return "", err
	}
	return answers[0].Text, answers[0].Err
}

// ReplyLocked is how HAProxy refuses a certificate command (`show ssl cert`, `show ssl
// ocsp-response <path>`, `set`/`commit ssl cert`, ...) while another session holds the
// certificate lock: a `show ssl cert` of another socket, a transaction, HAProxy's own updater.
// The command did nothing.
const ReplyLocked = "Operations on certificates are currently locked!"

// lockedTries is how many times a command refused with ReplyLocked is sent again, after
// 10, 20, ... ms (a little over 2 s in all).
const lockedTries = 20

// execAll pipelines cmds to the process, sending again those HAProxy refused because the
// certificate lock was taken. A lock that outlasts the retries is an ErrUnreachable error:
// nothing can be read of the process meanwhile.
func (p *Process) execAll(cmds []string) ([]Answer, error) {
	answers, err := p.conn.ExecAll(p.prefix, cmds)
	return p.retryLocked(cmds, answers, err)
}

// spreadMin is the smallest batch execSpread spreads over several connections: below it, the
// connections cost more than they save.
const spreadMin = 500

// maxConns is the most connections a batch is spread over.
const maxConns = 4

// execSpread is execAll for commands that do not depend on one another (reads, and `set ssl
// ocsp-response` of distinct responses): a large batch is spread over one connection per
// HAProxy thread (up to maxConns), each thread taking one. On two threads, HAProxy 3.4 takes
// 10,000 `set ssl ocsp-response` in 0.35 s instead of 0.65 s.
//
// Every connection must reach this very process: a connection opened during a reload reaches
// the new one, which must not be told (or asked) what this one is. So each new connection
// must show this process's identity (pid and start time), and not be stopping; one that does
// not is closed, and the batch goes on the connections that do. (Each connection stays with
// the process that accepted it: Recheck, after the exchange, sees a reload for all of them.)
// Not behind a master CLI, whose workers each serve one forwarded command at a time.
//
// Reads by file take HAProxy's certificate lock for a moment (a trylock: `show ssl
// ocsp-response <path>` on 3.x, `show ssl cert <path>` on 2.6), so two connections read at
// once meet it: 10 to 16 % of a batch of 1,000 on 2.6, 3.0, 3.2 and 3.4, refused as locked and
// sent again by retryLocked on the first connection. `set ssl ocsp-response` takes no such
// lock.
func (p *Process) execSpread(cmds []string) ([]Answer, error) {
	if len(cmds) < spreadMin || p.prefix != "" || p.Info.Threads < 2 {
		return p.execAll(cmds)
	}
	if !p.moreTried {
		p.moreTried = true
		for range min(p.Info.Threads, maxConns) - 1 {
			c, err := p.conn.again()
			if err != nil {
				break
			}
			text, err := c.Exec("", "show info")
			info, perr := ParseInfo(text)
			if err != nil || perr != nil || info.Mark() != p.Info.Mark() || info.Stopping {
				c.Close()
				break
			}
			p.more = append(p.more, c)
		}
	}
	conns := append([]*Conn{p.conn}, p.more...)
	answers := make([][]Answer, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		from, to := i*len(cmds)/len(conns), (i+1)*len(cmds)/len(conns)
		wg.Go(func() { answers[i], errs[i] = c.ExecAll(p.prefix, cmds[from:to]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p.retryLocked(cmds, slices.Concat(answers...), nil)
}

// retryLocked sends again, on the process's first connection, the commands of cmds that
// HAProxy refused because the certificate lock was taken (see execAll).
func (p *Process) retryLocked(cmds []string, answers []Answer, err error) ([]Answer, error) {
	for try := 1; err == nil; try++ {
		var again []int
		for i, a := range answers {
			if strings.Contains(a.Text, ReplyLocked) {
				again = append(again, i)
			}
		}
		if len(again) == 0 {
			break
		}
		if try > lockedTries {
			return nil, fmt.Errorf("%w: %s: HAProxy kept its certificates locked for over 2 s (another session's transaction or listing)", ErrUnreachable, p.Where())
		}
		select {
		case <-p.conn.ctx.Done(): // the run is stopping: no more waiting on the lock
			return nil, fmt.Errorf("%w: %s: stopped while HAProxy kept its certificates locked: %w", ErrUnreachable, p.Where(), context.Cause(p.conn.ctx))
		case <-time.After(time.Duration(try) * 10 * time.Millisecond):
		}
		retry := make([]string, len(again))
		for k, i := range again {
			retry[k] = cmds[i]
		}
		more, rerr := p.conn.ExecAll(p.prefix, retry)
		if rerr != nil {
			return nil, rerr
		}
		for k, i := range again {
			answers[i] = more[k]
		}
	}
	return answers, err
}

// Held is what a process holds for one certificate file.
type Held struct {
	// Name is HAProxy's name for the file; "" when the process has not loaded it.
	Name string
	// Slot: the certificate the file currently runs is attached to an OCSP slot.
	Slot bool
	// Key is the hex CertID of that slot when HAProxy says it (2.6: `show ssl cert`), "" when
	// it does not.
	Key string
	// DER is the response the slot holds, exactly (2.8+). Nil for an empty slot, on 2.6, and
	// for a response too large for HAProxy to show in base64.
	DER []byte
	// Text is the response the slot holds, in the text form 2.6 (and 3.x for a large one)
	// shows; TextOK is false when there is none.
	Text   OCSPText
	TextOK bool
	// Serial is the serial of the certificate the file runs, when stapler had to ask.
	Serial string
	// Err says why stapler could not tell.
	Err error
}

// Held reads, for each certificate file, what the process holds for the certificate that file
// currently runs, never through the `show ssl ocsp-response` listing (see Caps.ByPath).
// certIDs are the hex CertIDs stapler expects for the files (2.6 looks responses up by key).
// Files the process has not loaded get a Held with an empty Name. One or two round trips; an
// error means the connection failed.
func (p *Process) Held(paths, certIDs []string) ([]Held, error) {
	out := make([]Held, len(paths))
	if p.Err != nil {
		for i := range out {
			out[i].Err = p.Err
		}
		return out, nil
	}
	var cmds []string
	var idx []int // index in paths of each group of commands
	for i, path := range paths {
		out[i].Name = p.Certs.Name(path)
		if out[i].Name == "" {
			continue
		}
		if p.Caps.ByPath {
			cmds = append(cmds, "show ssl ocsp-response base64 "+Arg(out[i].Name))
		} else {
			cmds = append(cmds, "show ssl cert "+Arg(out[i].Name), "show ssl ocsp-response "+certIDs[i])
		}
		idx = append(idx, i)
	}
	answers, err := p.execSpread(cmds)
	if err != nil {
		return nil, err
	}
	if !p.Caps.ByPath {
		for k, i := range idx {
			heldByKey(&out[i], answers[2*k], answers[2*k+1], certIDs[i])
		}
		return out, nil
	}
	var noSlot, empty []int
	for k, i := range idx {
		switch p.heldByPath(&out[i], answers[k]) {
		case "no slot":
			noSlot = append(noSlot, i)
		case "empty":
			empty = append(empty, i)
		}
	}
	return out, p.heldMore(out, noSlot, empty)
}

// heldByPath reads the answer of 3.x to `show ssl ocsp-response base64 <path>`; it says "no
// slot" or "empty" when it cannot tell all.
func (p *Process) heldByPath(h *Held, a Answer) string {
	switch {
	case IsDenied(a.Text):
		h.Err = fmt.Errorf("%s: HAProxy refused `show ssl ocsp-response`: %w", p.Where(), ErrNeedsAdmin)
	case a.Text == "":
		// A slot without a response, or one whose base64 does not fit HAProxy's output buffer
		// (a response over about 12 KB: 3.x then answers nothing at all).
		h.Slot = true
		return "empty"
	case strings.Contains(a.Text, "expects a valid certid or certificate path") || strings.Contains(a.Text, "does not match any certificate"):
		return "no slot"
	default:
		// The decoder skips line breaks; other spaces it refuses, and only then are they
		// taken out (splitting every answer into fields cost 6 us each).
		der, err := base64.StdEncoding.DecodeString(a.Text)
		if err != nil {
			der, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(a.Text), ""))
		}
		if err != nil {
			h.Err = fmt.Errorf("%s: unexpected answer to show ssl ocsp-response base64: %q", p.Where(), clip(a.Text, 60))
			break
		}
		h.Slot, h.DER = true, der
	}
	return ""
}

// heldByKey reads the answers of 2.6 to `show ssl cert <path>` and `show ssl ocsp-response
// <key>`.
func heldByKey(h *Held, cert, resp Answer, certID string) {
	ci, certOK := ParseCertInfo(cert.Text)
	h.Serial, h.Key = ci.Serial, ci.OCSPKey
	h.Text, h.TextOK = ParseOCSPText(resp.Text)
	switch {
	case certOK && ci.OCSPKey == certID:
		h.Slot = true
	case certOK && ci.OCSPKey != "":
		h.Slot = true // attached to another CertID: another certificate runs from the file
		h.TextOK = false
	case certOK:
		// No slot attached to the certificate the file runs. A response may still be held
		// under the expected CertID: an orphan of a hot `set ssl cert` that an old connection
		// or another file keeps alive, which clients of this file never get. (2.6 also shows
		// no key for a certificate whose start-up .ocsp was unparsable; creating the slot anew
		// is right in both cases.)
		h.TextOK = false
	default:
		// Below level operator 2.6 will not show the certificate: the response held under the
		// expected CertID is all there is to go by.
		h.Slot = h.TextOK || strings.TrimSpace(resp.Text) == ""
	}
}

// heldMore asks, in one round trip, the serial of the certificates that files run without a
// slot, and for empty answers the response in text form (which HAProxy writes out whatever its
// size) and the slot's key.
func (p *Process) heldMore(out []Held, noSlot, empty []int) error {
	if len(noSlot)+len(empty) == 0 {
		return nil
	}
	var cmds []string
	for _, i := range noSlot {
		cmds = append(cmds, "show ssl cert "+Arg(out[i].Name))
	}
	for _, i := range empty {
		cmds = append(cmds, "show ssl cert "+Arg(out[i].Name), "show ssl ocsp-response "+Arg(out[i].Name))
	}
	answers, err := p.execAll(cmds)
	if err != nil {
		return err
	}
	for k, i := range noSlot {
		ci, _ := ParseCertInfo(answers[k].Text)
		out[i].Serial = ci.Serial
	}
	for k, i := range empty {
		ci, _ := ParseCertInfo(answers[len(noSlot)+2*k].Text)
		out[i].Serial, out[i].Key = ci.Serial, ci.OCSPKey
		out[i].Text, out[i].TextOK = ParseOCSPText(answers[len(noSlot)+2*k+1].Text)
	}
	return nil
}

// SetOCSP sends each response with `set ssl ocsp-response`, in one batch, and returns
// HAProxy's answers: ReplyUpdated, ReplyNoSlot, ReplyTooShort, or another refusal. A response
// too large to send is answered with an ErrBadCommand error of its own.
func (p *Process) SetOCSP(ders [][]byte) ([]Answer, error) {
	out := make([]Answer, len(ders))
	var cmds []string
	var idx []int
	for i, der := range ders {
		cmd := "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(der)
		if err := CheckCommand(p.prefix, cmd); err != nil {
			out[i] = Answer{Err: fmt.Errorf("a staple of %d bytes is too large to send to HAProxy safely (%w); HAProxy reads it from disk at its next reload", len(der), err)}
			continue
		}
		cmds = append(cmds, cmd)
		idx = append(idx, i)
	}
	answers, err := p.execSpread(cmds)
	if err != nil {
		return nil, err
	}
	for k, i := range idx {
		out[i] = answers[k]
	}
	return out, nil
}

// CertInfo reads `show ssl cert <name>`; ok is false when HAProxy does not show it (not loaded,
// or a level too low to see it).
func (p *Process) CertInfo(name string) (ci CertInfo, ok bool, err error) {
	text, err := p.exec("show ssl cert " + Arg(name))
	if errors.Is(err, ErrUnreachable) {
		return CertInfo{}, false, err
	}
	ci, ok = ParseCertInfo(text)
	return ci, ok, nil
}

// ErrTransactionOpen: someone else left a certificate transaction open on this HAProxy;
// stapler does not touch it (HAProxy 2.6 would add stapler's files to it).
var ErrTransactionOpen = errors.New("another certificate transaction is open")

// CreateSlot attaches an OCSP slot, holding der, to the certificate HAProxy runs from the
// file it names name, without a reload: a `set ssl cert <name>.ocsp` transaction, with the
// issuer (PEM) when HAProxy cannot find it in the bundle, committed. HAProxy 2.6 adds to
// whatever transaction is open, so an open one (someone else's) is left alone and reported.
// It returns nil once HAProxy committed, an error with HAProxy's words otherwise, and an
// ErrUnreachable error when the connection failed.
func (p *Process) CreateSlot(name string, der, issuerPEM []byte) error {
	if p.Level != "admin" {
		return fmt.Errorf("creating an OCSP slot without a reload %w, not %s", ErrNeedsAdmin, p.Level)
	}
	if !p.txFree {
		// Read once per run, not once per slot (quadratic with thousands of certificates);
		// a transaction someone opens later makes HAProxy refuse stapler's, said below.
		list, err := p.exec("show ssl cert")
		if err != nil {
			return err
		}
		if open := ParseCertList(list).Open; len(open) > 0 {
			return fmt.Errorf("%w (for %s): stapler leaves it alone; commit or abort it, or reload HAProxy", ErrTransactionOpen, strings.Join(open, ", "))
		}
		p.txFree = true
	}
	b64 := base64.StdEncoding.EncodeToString(der)
	var lines strings.Builder
	for len(b64) > 0 {
		n := min(64, len(b64))
		lines.WriteString(b64[:n] + "\n")
		b64 = b64[n:]
	}
	steps := []string{Payload("set ssl cert "+Arg(name+".ocsp"), lines.String())}
	if issuerPEM != nil {
		steps = append(steps, Payload("set ssl cert "+Arg(name+".issuer"), string(issuerPEM)))
	}
	for _, step := range steps {
		if err := CheckCommand(p.prefix, step); err != nil {
			return fmt.Errorf("the staple is too large to send to HAProxy safely in a transaction: %w", err)
		}
	}
	for i, step := range steps {
		text, err := p.exec(step)
		if errors.Is(err, ErrUnreachable) {
			return err
		}
		want := "Transaction updated for certificate " + name + "!"
		if i == 0 {
			want = "Transaction created for certificate " + name + "!"
		}
		if text != want {
			if i > 0 {
				p.exec("abort ssl cert " + Arg(name))
			}
			p.txFree = false
			return fmt.Errorf("HAProxy answered %q to set ssl cert", text)
		}
	}
	text, err := p.exec("commit ssl cert " + Arg(name))
	if errors.Is(err, ErrUnreachable) {
		return err
	}
	// 3.0+ put loading warnings before "Success!" ("Loading: Unable to parse OCSP response.
	// Content will be ignored."): the slot then exists but holds nothing.
	if !strings.HasSuffix(text, "Success!") || strings.Contains(text, "Content will be ignored") {
		if !strings.HasSuffix(text, "Success!") {
			p.exec("abort ssl cert " + Arg(name))
			p.txFree = false
		}
		return fmt.Errorf("HAProxy answered %q to commit ssl cert", text)
	}
	return nil
}

// Recheck asks the process for its identity again, after an exchange: a process that changed
// or started stopping meanwhile (a reload) did not keep what it was told.
func (p *Process) Recheck() error {
	text, err := p.exec("show info")
	if err != nil {
		return err
	}
	info, err := ParseInfo(text)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, p.Where(), err)
	case info.Mark() != p.Info.Mark():
		return fmt.Errorf("%w: %s: HAProxy was replaced during the exchange (pid %d, now %d): what it was told is lost", ErrUnreachable, p.Where(), p.Info.Pid, info.Pid)
	case info.Stopping && !p.Old:
		return fmt.Errorf("%w: %s: HAProxy reloaded during the exchange: what it was told went to the old process", ErrUnreachable, p.Where())
	}
	return nil
}
