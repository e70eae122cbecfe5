package haproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrUnreachable marks a socket that could not be talked to at all (refused, timed out,
// closed, not HAProxy), as opposed to an answer that says no.
var ErrUnreachable = errors.New("HAProxy unreachable")

// ErrBadCommand marks a command that stapler refuses to send: a payload with an empty line
// (HAProxy would end the payload there and run the rest as commands), or a command too large
// for HAProxy's buffer.
var ErrBadCommand = errors.New("command not sent")

// MaxCommand is the largest command stapler sends, payload and newlines included. HAProxy 2.6
// with the default tune.bufsize of 16384 answers nothing to a longer line and keeps the
// connection, and one of its ten stats slots, forever; a payload of about 16384 bytes aborted
// 2.6 and is never answered by 3.4 (../shared/haproxy-versions.md §8). 15360 is below every
// version's limit.
const MaxCommand = 15360

// maxAnswer caps one answer: the longest stapler asks for, the list of 100,000 loaded
// certificates, is about 6 MB.
const maxAnswer = 64 << 20

// maxPrompt caps what is read while waiting for the prompt: a peer that sends more is not
// HAProxy.
const maxPrompt = 4 << 10

// Conn is one connection to HAProxy's runtime API in interactive mode (`prompt`), so that any
// number of commands share it. Every exchange has a deadline; Close always closes.
type Conn struct {
	addr    Addr
	nc      net.Conn
	buf     []byte // read but not yet returned
	chunk   []byte // what each read reads into, kept for the next (thousands of answers a run)
	prompt  []byte // "\n" + the prompt: what ends each answer
	timeout time.Duration
	end     time.Time // the caller's deadline, if any: no exchange outlasts it
	// ctx is Dial's, kept so that another connection to the same process ends with this one's.
	ctx context.Context
}

// Dial connects to addr and switches to interactive mode. On a stats socket it also asks for
// numbered severities, so that answers say whether they report success ("[6]: ...") or an
// error ("[3]: ..."); the master CLI has no use for them (each command forwarded to a worker
// runs in a fresh session there). timeout bounds the connection and each answer; ctx's
// deadline bounds everything, and ctx's end closes the connection at once.
func Dial(ctx context.Context, addr Addr, timeout time.Duration) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, addr.Network, addr.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrUnreachable, dialProblem(addr, err, timeout))
	}
	c := &Conn{addr: addr, nc: nc, timeout: timeout, ctx: ctx}
	c.end, _ = ctx.Deadline()
	context.AfterFunc(ctx, func() { nc.Close() })
	// The first answer to `prompt` is the prompt itself: "> ", or "master> ".
	if err := c.write("", []string{"prompt"}); err != nil {
		nc.Close()
		return nil, err
	}
	first, err := c.readUntil([]byte("> "), false, maxPrompt)
	if err != nil {
		nc.Close()
		if len(c.buf) > 0 {
			return nil, fmt.Errorf("%w: %s does not speak HAProxy's CLI: it answered %q", ErrUnreachable, addr.Raw, clip(string(c.buf), 60))
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%w: %s accepted the connection but sent nothing within %v: is it HAProxy's stats socket?", ErrUnreachable, addr.Raw, timeout)
		}
		return nil, err
	}
	p := bytes.TrimLeft(first, "\n")
	if len(p) > 32 || bytes.ContainsAny(p[:len(p)-2], " \n") {
		nc.Close()
		return nil, fmt.Errorf("%w: %s does not speak HAProxy's CLI: it answered %q", ErrUnreachable, addr.Raw, clip(string(first), 60))
	}
	c.prompt = append([]byte("\n"), p...)
	if !addr.Master {
		if _, err := c.Exec("", "set severity-output number"); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// dialProblem says why a connection to addr failed, in terms an operator can act on.
func dialProblem(addr Addr, err error, timeout time.Duration) string {
	if addr.Network == "unix" {
		fi, serr := os.Stat(addr.Address)
		switch {
		case errors.Is(serr, fs.ErrNotExist):
			return fmt.Sprintf("%s does not exist: is HAProxy running, with `stats socket %s` in its global section?", addr.Address, addr.Address)
		case serr == nil && fi.Mode().IsRegular():
			return fmt.Sprintf("%s is a regular file, not a socket: is it the path of HAProxy's stats socket?", addr.Address)
		case serr == nil && fi.Mode()&fs.ModeSocket == 0:
			return fmt.Sprintf("%s is not a socket", addr.Address)
		case errors.Is(err, syscall.EACCES):
			return fmt.Sprintf("permission denied on %s: stapler's user needs write access to it (stats socket ... mode 660 group ...)", addr.Address)
		case errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Sprintf("nothing listens on %s (connection refused): HAProxy stopped, or left a stale socket file", addr.Address)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Sprintf("no connection to %s within %v", addr.Raw, timeout)
	}
	return fmt.Sprintf("connecting to %s: %v", addr.Raw, err)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// deadline is d from now, but never past the caller's deadline.
func (c *Conn) deadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if !c.end.IsZero() && c.end.Before(t) {
		return c.end
	}
	return t
}

// write sends cmds, each after prefix and followed by a newline (and a payload by the empty
// line that ends it), allowing the timeout per thousand commands, since HAProxy takes in a
// batch only as fast as it answers it. It sends them as it goes, without making one text of
// them all (10,000 staples in base64 are 20 MB).
func (c *Conn) write(prefix string, cmds []string) error {
	c.nc.SetWriteDeadline(c.deadline(c.timeout * time.Duration(1+len(cmds)/1000)))
	size := 0
	for _, cmd := range cmds {
		size += len(prefix) + len(cmd) + 2
	}
	w := bufio.NewWriterSize(c.nc, min(size, 64<<10)) // one command: its own size
	for _, cmd := range cmds {
		w.WriteString(prefix)
		w.WriteString(cmd)
		w.WriteByte('\n')
		if strings.Contains(cmd, "\n") {
			w.WriteByte('\n') // the empty line that ends a payload
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("%w: sending to %s: %w", ErrUnreachable, c.addr.Raw, err)
	}
	return nil
}

// readUntil returns what HAProxy sends up to and including end, without end if trim, refusing
// more than limit bytes. The whole answer must arrive within the timeout, so a peer that
// trickles bytes cannot hold a run.
func (c *Conn) readUntil(end []byte, trim bool, limit int) ([]byte, error) {
	out, err := c.next(end, trim, limit)
	return bytes.Clone(out), err
}

// next is readUntil, without the copy: what it returns is valid until the next read.
func (c *Conn) next(end []byte, trim bool, limit int) ([]byte, error) {
	c.nc.SetReadDeadline(c.deadline(c.timeout))
	if c.chunk == nil {
		c.chunk = make([]byte, 64<<10)
	}
	chunk := c.chunk
	from := 0
	for {
		if i := bytes.Index(c.buf[from:], end); i >= 0 {
			i += from
			n := i + len(end)
			out := c.buf[:n:n]
			c.buf = c.buf[n:]
			if trim {
				out = out[:i]
			}
			return out, nil
		}
		if len(c.buf) > limit {
			return nil, fmt.Errorf("%w: %s sent an answer of more than %d bytes", ErrUnreachable, c.addr.Raw, limit)
		}
		from = max(0, len(c.buf)-len(end)+1)
		n, err := c.nc.Read(chunk)
		c.buf = append(c.buf, chunk[:n]...)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, fmt.Errorf("%w: %s did not answer within %v: %w", ErrUnreachable, c.addr.Raw, c.timeout, err)
			}
			return nil, fmt.Errorf("%w: reading the answer of %s: %w", ErrUnreachable, c.addr.Raw, err)
		}
	}
}

// Answer is HAProxy's answer to one command.
type Answer struct {
	Text string
	Err  error // a *CLIError when HAProxy marked the answer as an error
}

// CLIError is an answer HAProxy marked as an error ("[3]: ...").
type CLIError struct{ Text string }

func (e *CLIError) Error() string { return fmt.Sprintf("HAProxy answered %q", e.Text) }

// Exec sends one command, with prefix before it (see ExecAll), and returns HAProxy's answer.
// An answer with an error severity comes back as a *CLIError.
func (c *Conn) Exec(prefix, cmd string) (string, error) {
	answers, err := c.ExecAll(prefix, []string{cmd})
	if err != nil {
		return "", err
	}
	return answers[0].Text, answers[0].Err
}

// ExecAll pipelines commands: it writes them all while reading the answers, so that many
// commands cost one round trip. prefix goes before each command: "@!<pid> " sends it to one
// worker through the master CLI. A command with a payload (see Payload) is sent as one. It
// fails as a whole only when the connection does, or with ErrBadCommand, before sending
// anything, for a command stapler must not send.
func (c *Conn) ExecAll(prefix string, cmds []string) ([]Answer, error) {
	for _, cmd := range cmds {
		if err := CheckCommand(prefix, cmd); err != nil {
			return nil, err
		}
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	werr := make(chan error, 1)
	go func() { werr <- c.write(prefix, cmds) }()
	answers := make([]Answer, 0, len(cmds))
	for range cmds {
		raw, err := c.next(c.prompt, true, maxAnswer) // ParseAnswer copies it
		if err != nil {
			c.nc.Close() // unblocks the writer
			<-werr
			return nil, err
		}
		answers = append(answers, ParseAnswer(raw))
	}
	if err := <-werr; err != nil {
		return nil, err
	}
	return answers, nil
}

// CheckCommand refuses what must never reach HAProxy: a command over MaxCommand, a line break
// in a command without a payload, and an empty line inside a payload (HAProxy ends a payload
// at its first empty line and would run the rest as commands).
func CheckCommand(prefix, cmd string) error {
	if n := len(prefix) + len(cmd) + 2; n > MaxCommand {
		return fmt.Errorf("%w: %d bytes, more than HAProxy takes safely (%d)", ErrBadCommand, n, MaxCommand)
	}
	first, payload, hasPayload := strings.Cut(cmd, "\n")
	switch {
	case !hasPayload && strings.HasSuffix(first, "<<"):
		return fmt.Errorf("%w: %q announces a payload and has none", ErrBadCommand, clip(first, 40))
	case !hasPayload:
		return nil
	case !strings.HasSuffix(first, " <<"):
		return fmt.Errorf("%w: a line break in %q", ErrBadCommand, clip(first, 40))
	case payload == "" || strings.Contains("\n"+payload+"\n", "\n\n"):
		return fmt.Errorf("%w: the payload of %q has an empty line", ErrBadCommand, clip(first, 40))
	}
	return nil
}

// Payload is cmd followed by body as a payload (HAProxy's `<<` syntax): the non-empty lines
// of body. ExecAll adds the empty line that ends it.
func Payload(cmd, body string) string {
	var b strings.Builder
	b.WriteString(cmd + " <<")
	for _, line := range strings.Split(body, "\n") {
		if line = strings.TrimRight(line, "\r"); line != "" {
			b.WriteString("\n" + line)
		}
	}
	return b.String()
}

// ParseAnswer strips the "+ " prompts that follow payload lines and the severity prefix.
func ParseAnswer(raw []byte) Answer {
	t := string(raw)
	for strings.HasPrefix(t, "+ ") {
		t = t[2:]
	}
	t = strings.TrimSpace(t)
	if len(t) >= 5 && t[0] == '[' && t[2] == ']' && t[3] == ':' {
		sev, err := strconv.Atoi(t[1:2])
		t = strings.TrimSpace(t[4:])
		if err == nil && sev <= 3 {
			return Answer{Text: t, Err: &CLIError{t}}
		}
	}
	return Answer{Text: t}
}

// againWait bounds how long again waits for HAProxy to take another connection: one that
// does not answer at once (HAProxy's `stats maxconn` reached) is given up.
const againWait = time.Second

// again opens another connection to the same address, as Dial opened this one.
func (c *Conn) again() (*Conn, error) {
	more, err := Dial(c.ctx, c.addr, min(c.timeout, againWait))
	if err != nil {
		return nil, err
	}
	more.timeout = c.timeout
	return more, nil
}

// Close ends the session: `quit`, a half-close (the master CLI waits for it), then close.
func (c *Conn) Close() {
	c.nc.SetDeadline(c.deadline(c.timeout))
	c.nc.Write([]byte("quit\n"))
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.nc.Close()
}

// argEscaper is Arg's, made once: a Replacer builds its tables at its first use (5 µs, twice
// per certificate in a push).
var argEscaper = strings.NewReplacer(`\`, `\\`, " ", `\ `, "\t", "\\\t", ";", `\;`)

// Arg escapes a word for HAProxy's command line, which splits words on spaces and commands on
// ";", and takes "\" as an escape.
func Arg(s string) string {
	return argEscaper.Replace(s)
}
