package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stapleRef is what one HAProxy should serve for one certificate, as plain values.
type stapleRef struct {
	Path       string // the certificate file, as HAProxy names it
	DER        []byte
	CertID     string // hex DER CertID: HAProxy 2.6's key for the slot
	Serial     string // hex
	ThisUpdate time.Time
	NewCert    bool // new or changed in this run: HAProxy may still run the previous one
	Drift      bool // not a new staple: HAProxy lost or never had the one on disk
}

// outcome is what became of one staple at one HAProxy.
type outcome int

const (
	inSync      outcome = iota // HAProxy already served it
	pushed                     // HAProxy serves it now
	pushFailed                 // HAProxy did not take it: try again next run
	needsReload                // only a reload makes HAProxy serve it
	notLoaded                  // HAProxy has not loaded the certificate at all
)

type result struct {
	outcome outcome
	severe  bool // needsReload that is a problem, not the expected end of a renewal
}

// syncOptions are the settings of syncSocket.
type syncOptions struct {
	Timeout    time.Duration // for connecting and for each answer
	Now        time.Time
	Reloadable bool // reload_command will reload HAProxy when it needs to
}

// socketReport is the outcome of one run's exchange with one HAProxy.
type socketReport struct {
	Mark    string            // HAProxy's process mark, to store; "" when unknown
	Results map[string]result // by certificate path
	Err     error             // the socket failed: what it serves is unknown
}

// syncSocket makes the HAProxy at addr serve the staples in push and checks that it still
// serves those in check, over one connection:
//   - each staple is sent with `set ssl ocsp-response`, all in one pipelined batch;
//   - for a certificate HAProxy has no slot for (loaded without a .ocsp file, or a hot
//     `set ssl cert` dropped it) it creates the slot without a reload, in a `set ssl cert
//     <path>.ocsp` transaction, when HAProxy has loaded this very certificate and the socket is
//     at level admin; otherwise the certificate needs a reload;
//   - the check costs one round trip (`show info`, `show ssl ocsp-response`) when HAProxy runs
//     the same process as at the last check (lastMark) and has a slot for every staple; after a
//     restart or reload it compares the thisUpdate HAProxy serves for each staple with the one on
//     disk, and pushes what is older.
func syncSocket(ctx context.Context, addr socketAddr, push, check []stapleRef, lastMark string, opt syncOptions) socketReport {
	rep := socketReport{Results: map[string]result{}}
	if len(push) == 0 && len(check) == 0 {
		return rep
	}
	// fail records a socket that failed; perCert names each staple it left pending (when the
	// socket failed during the exchange), else one line says how many.
	fail := func(err error, perCert bool) socketReport {
		rep.Err, rep.Mark = err, ""
		n := 0
		for _, r := range push {
			if _, done := rep.Results[r.Path]; !done {
				rep.Results[r.Path] = result{outcome: pushFailed}
				n++
				if perCert {
					slog.Error("push failed", "cert", r.Path, "socket", addr.Raw, "err", err)
				}
			}
		}
		switch {
		case n > 0 && !perCert:
			slog.Error("HAProxy unreachable; staples left for the next run", "socket", addr.Raw, "staples", n, "err", err)
		case n == 0:
			slog.Error("HAProxy unreachable; cannot check what it serves", "socket", addr.Raw, "err", err)
		}
		return rep
	}
	s, err := openCLI(ctx, addr, opt.Timeout)
	if err != nil {
		return fail(err, false)
	}
	defer s.close()
	s.reloadable = opt.Reloadable
	mark, err := s.processMark()
	if err != nil {
		return fail(err, true)
	}
	if push, err = s.drift(push, check, mark == lastMark, &rep); err != nil {
		return fail(err, true)
	}
	if err := s.pushAll(push, &rep); err != nil {
		return fail(err, true)
	}
	rep.Mark = mark // what this process serves has now been compared with the disk
	return rep
}

// drift adds to push the staples of check that HAProxy lost or serves an older copy of.
// Unless sameProcess, it compares what HAProxy serves for every staple with the disk.
func (s *cliSession) drift(push, check []stapleRef, sameProcess bool, rep *socketReport) ([]stapleRef, error) {
	if len(check) == 0 {
		return push, nil
	}
	keys, err := s.ocspKeys()
	if err != nil {
		return push, err
	}
	var present []stapleRef
	for _, r := range check {
		if keys[r.CertID] {
			rep.Results[r.Path] = result{outcome: inSync}
			present = append(present, r)
			continue
		}
		// No slot: a certificate HAProxy loaded without a .ocsp file, or one a hot `set ssl
		// cert` replaced; not one HAProxy does not load at all.
		if name, err := s.loadedName(r.Path); errors.Is(err, errUnreachable) {
			return push, err
		} else if name == "" && err == nil {
			rep.Results[r.Path] = result{outcome: notLoaded}
			continue
		}
		slog.Debug("HAProxy has no slot for the staple", "cert", r.Path, "socket", s.addr.Raw)
		r.NewCert, r.Drift = false, true
		push = append(push, r)
	}
	if sameProcess || len(present) == 0 {
		return push, nil
	}
	// HAProxy (re)started since the last check: it read its staples from its own disk.
	cmds := make([]string, len(present))
	for i, r := range present {
		cmds[i] = "show ssl ocsp-response " + r.CertID
	}
	answers, err := s.execAll(cmds)
	if err != nil {
		return push, err
	}
	for i, a := range answers {
		r := present[i]
		if served := servedThisUpdate(a.text); served.Before(r.ThisUpdate.Add(-time.Second)) {
			slog.Info("HAProxy serves an older staple than the one on disk", "cert", r.Path, "socket", s.addr.Raw, "served_this_update", served)
			delete(rep.Results, r.Path)
			r.Drift = true
			push = append(push, r)
		}
	}
	return push, nil
}

// pushAll sends the staples in one batch, then deals with those HAProxy has no slot for.
func (s *cliSession) pushAll(push []stapleRef, rep *socketReport) error {
	var cmds []string
	var sent []stapleRef
	for _, r := range push {
		cmd, err := setOCSPCommand(r.DER, s.prefix)
		if err != nil {
			log := slog.Error
			if s.reloadable {
				log = slog.Info
			}
			log("needs reload", "cert", r.Path, "socket", s.addr.Raw, "why", err)
			rep.Results[r.Path] = result{outcome: needsReload, severe: true}
			continue
		}
		cmds = append(cmds, cmd)
		sent = append(sent, r)
	}
	answers, err := s.execAll(cmds)
	if err != nil {
		return err
	}
	for i, a := range answers {
		r := sent[i]
		switch {
		case a.text == replyUpdated:
			rep.Results[r.Path] = result{outcome: pushed}
			slog.Debug("pushed staple", "cert", r.Path, "socket", s.addr.Raw)
		case a.text == replyNoSlot:
			res, err := s.createSlot(r)
			if err != nil {
				return err
			}
			rep.Results[r.Path] = res
		default:
			rep.Results[r.Path] = result{outcome: pushFailed}
			slog.Error("push failed", "cert", r.Path, "socket", s.addr.Raw, "err", fmt.Errorf("HAProxy answered %q", a.text))
		}
	}
	return nil
}

// createSlot gives HAProxy an OCSP slot for a certificate it loaded without a .ocsp file, in a
// `set ssl cert <path>.ocsp` transaction, then sends the staple again to prove the slot. An
// error means the connection failed.
func (s *cliSession) createSlot(r stapleRef) (result, error) {
	reload := func(severe bool, why string) result {
		switch {
		case !severe:
			slog.Warn("HAProxy will load this staple when it reloads", "cert", r.Path, "socket", s.addr.Raw, "why", why)
		case s.reloadable:
			slog.Info("needs reload", "cert", r.Path, "socket", s.addr.Raw, "why", why)
		default:
			slog.Error("needs reload", "cert", r.Path, "socket", s.addr.Raw, "why", why)
		}
		return result{outcome: needsReload, severe: severe}
	}
	name, err := s.loadedName(r.Path)
	switch {
	case errors.Is(err, errUnreachable):
		return result{}, err
	case err != nil:
		return reload(true, err.Error()+" (creating an OCSP slot without a reload needs a socket with level admin)"), nil
	case name == "":
		log := slog.Warn
		if r.Drift {
			log = slog.Debug // a certificate this HAProxy does not serve
		}
		log("HAProxy has not loaded this certificate; it staples it from disk when it loads it", "cert", r.Path, "socket", s.addr.Raw)
		return result{outcome: notLoaded}, nil
	}
	level, err := s.cliLevel()
	if err != nil {
		return result{}, err
	}
	if level != "admin" {
		return reload(true, "HAProxy has no OCSP slot for this certificate, and creating one without a reload needs a socket with level admin, not "+level), nil
	}
	info, err := s.exec("show ssl cert " + cliArg(name))
	if errors.Is(err, errUnreachable) {
		return result{}, err
	}
	serial := fieldValue(info, "Serial")
	switch {
	case err != nil || serial == "":
		return reload(true, fmt.Sprintf("HAProxy answered %q to show ssl cert", firstLine(info))), nil
	case !sameSerial(serial, r.Serial):
		return reload(!r.NewCert, "HAProxy runs another certificate from this file (serial "+strings.ToLower(serial)+")"), nil
	}
	// The transaction replaces the certificate's extra files in HAProxy's memory: the issuer
	// goes too when it is not in the bundle, or HAProxy cannot compute the CertID and fails the
	// commit. (A hot `set ssl cert` dropped HAProxy's copy of <cert>.issuer as well.) Each step
	// must name this certificate: HAProxy 2.6 adds to whatever transaction is open, even
	// another certificate's, so stapler commits only its own.
	steps := []string{withPayload("set ssl cert "+cliArg(name+".ocsp"), base64Lines(r.DER))}
	if issuer, err := readRegular(issuerName(r.Path), maxStapleBytes); err == nil {
		steps = append(steps, withPayload("set ssl cert "+cliArg(name+".issuer"), string(issuer)))
	}
	for i, step := range steps {
		if len(s.prefix)+len(step)+1 > maxCommandLine {
			return reload(true, "the staple is too large to send to HAProxy safely in a transaction"), nil
		}
		text, err := s.exec(step)
		if errors.Is(err, errUnreachable) {
			return result{}, err
		}
		want := "Transaction updated for certificate " + name + "!"
		if i == 0 {
			want = "Transaction created for certificate " + name + "!"
		}
		if text != want {
			if i > 0 {
				s.exec("abort ssl cert " + cliArg(name))
			}
			slog.Error("push failed", "cert", r.Path, "socket", s.addr.Raw, "err", fmt.Errorf("creating an OCSP slot: HAProxy answered %q", text))
			return result{outcome: pushFailed}, nil
		}
	}
	text, err := s.exec("commit ssl cert " + cliArg(name))
	if errors.Is(err, errUnreachable) {
		return result{}, err
	}
	if !strings.HasSuffix(text, "Success!") {
		s.exec("abort ssl cert " + cliArg(name))
		slog.Error("push failed", "cert", r.Path, "socket", s.addr.Raw, "err", fmt.Errorf("creating an OCSP slot: HAProxy answered %q to the commit", text))
		return result{outcome: pushFailed}, nil
	}
	cmd, _ := setOCSPCommand(r.DER, s.prefix) // its size was checked
	if text, err := s.exec(cmd); errors.Is(err, errUnreachable) {
		return result{}, err
	} else if text != replyUpdated {
		slog.Error("push failed", "cert", r.Path, "socket", s.addr.Raw, "err", fmt.Errorf("after creating an OCSP slot HAProxy answered %q", text))
		return result{outcome: pushFailed}, nil
	}
	slog.Info("created OCSP slot without a reload", "cert", r.Path, "socket", s.addr.Raw)
	return result{outcome: pushed}, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// syncAll runs syncSocket for each socket in turn, never at once: several sockets may lead to
// one HAProxy, whose certificate transactions would then collide.
func syncAll(ctx context.Context, sockets []string, push, check map[string][]stapleRef, marks map[string]string, opt syncOptions) map[string]socketReport {
	reports := make(map[string]socketReport, len(sockets))
	for _, raw := range sockets {
		addr, err := parseSocketAddr(raw) // checked by validate
		if err != nil {
			reports[raw] = socketReport{Err: err, Results: map[string]result{}}
			slog.Error("cannot use socket", "socket", raw, "err", err)
			continue
		}
		reports[raw] = syncSocket(ctx, addr, push[raw], check[raw], marks[raw], opt)
	}
	return reports
}

// runReload runs the operator's reload command once, with a deadline, logging its output. At
// the deadline the command's whole process group is killed, so that a child left running
// cannot hold the run either.
func runReload(ctx context.Context, command string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			slog.Info("reload output", "line", line)
		}
	}
	if err != nil {
		return fmt.Errorf("reload_command %q: %w", command, err)
	}
	return nil
}
