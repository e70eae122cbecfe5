package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

const (
	// maxCommandLine: HAProxy 2.6 with the default tune.bufsize of 16384 answers nothing to a
	// longer command line and keeps the connection, and one of its ten stats slots, forever.
	maxCommandLine = 15360
	// replyUpdated is HAProxy's answer to a successful `set ssl ocsp-response`.
	replyUpdated = "OCSP Response updated!"
	// replyNoSlot: HAProxy has no OCSP slot whose CertID matches the staple.
	replyNoSlot = "OCSP single response: Certificate ID does not match any certificate or issuer."
)

// errUnreachable marks a socket that could not be talked to at all (refused, timed out,
// closed without an answer), as opposed to an answer that says no.
var errUnreachable = errors.New("HAProxy unreachable")

// noSlotError: HAProxy has no OCSP slot whose CertID matches the staple.
type noSlotError struct{ addr string }

func (e *noSlotError) Error() string {
	return fmt.Sprintf("HAProxy at %s answered %q: it loaded this certificate without a .ocsp file (HAProxy 2.6 makes no OCSP slot then) or runs an older certificate; reload HAProxy once so that it reads the staple", e.addr, replyNoSlot)
}

// socketNetwork tells a unix socket path from a TCP host:port.
func socketNetwork(addr string) (network, address string) {
	if strings.HasPrefix(addr, "unix@") {
		return "unix", strings.TrimPrefix(addr, "unix@")
	}
	if strings.Contains(addr, "/") {
		return "unix", addr
	}
	return "tcp", strings.TrimPrefix(addr, "ipv4@")
}

// pushStaple hands the DER staple to the HAProxy whose runtime API listens at addr, with
// `set ssl ocsp-response`, and checks that HAProxy took it. The whole exchange, connection
// included, ends by timeout, and the connection is always closed.
func pushStaple(ctx context.Context, addr string, der []byte, timeout time.Duration) error {
	cmd := "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(der) + "\n"
	if len(cmd) > maxCommandLine {
		return fmt.Errorf("staple of %d bytes is too large to push safely to HAProxy (command line over %d bytes); it takes effect at the next reload", len(der), maxCommandLine)
	}
	reply, err := haproxyCommand(ctx, addr, cmd, timeout)
	if err != nil {
		return err
	}
	switch reply {
	case replyUpdated:
		return nil
	case replyNoSlot:
		return &noSlotError{addr}
	}
	return fmt.Errorf("HAProxy at %s answered %q", addr, reply)
}

// haproxyCommand sends one command line in HAProxy's non-interactive mode, where HAProxy
// answers and closes, and returns the answer without its trailing blank line.
func haproxyCommand(ctx context.Context, addr, cmd string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	network, address := socketNetwork(addr)
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errUnreachable, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if _, err := io.WriteString(conn, cmd); err != nil {
		return "", fmt.Errorf("%w: sending to %s: %w", errUnreachable, addr, err)
	}
	reply, err := io.ReadAll(io.LimitReader(conn, 1<<20))
	if err != nil {
		return "", fmt.Errorf("%w: reading the answer of %s: %w", errUnreachable, addr, err)
	}
	if len(reply) == 0 {
		return "", fmt.Errorf("%w: %s closed the connection without answering", errUnreachable, addr)
	}
	return strings.TrimSpace(string(reply)), nil
}
