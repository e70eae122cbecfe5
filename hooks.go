package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// runHook runs an operator's command (the config key names it) with sh -c and env added to
// stapler's environment, and logs its output a line at a time, as msg. At the deadline the command's
// whole process group is killed, so that a child left running cannot hold the run either.
func runHook(ctx context.Context, key, msg, command string, env []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			slog.Info(msg, "line", line)
		}
	}
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%s %q did not finish within %v", key, command, timeout)
	}
	if err != nil {
		return fmt.Errorf("%s %q: %w", key, command, err)
	}
	return nil
}

// runReload runs the operator's reload command once, with a deadline, logging its output.
func runReload(ctx context.Context, command string, timeout time.Duration) error {
	return runHook(ctx, "reload_command", "reload output", command, nil, timeout)
}

// runRevokedHooks runs revoked_command for each certificate whose staple on disk says revoked
// and whose revocation it has not handled yet (a certificate, its serial, is revoked once,
// however many responses say so, whatever revocation time each gives), and records those it
// handled. A command that fails is
// reported and runs again at the next run. It returns how many failed.
func runRevokedHooks(ctx context.Context, opt runOptions, rp runPlan) (failed int) {
	if opt.RevokedCommand == "" {
		return 0
	}
	for _, p := range rp.Certs {
		st := p.Next
		if p.Step == stepError || p.Step == stepSkip || p.Step == stepGone {
			continue // its state is not saved: the hook would run again at every run
		}
		if st == nil || st.Staple == nil || st.Staple.Status != "revoked" || !st.onDisk() || st.RevocationHandled == st.Serial {
			continue
		}
		env := []string{
			"STAPLER_CERT=" + p.Obs.File.Path,
			"STAPLER_SUBJECT=" + st.Subject,
			"STAPLER_SERIAL=" + st.Serial,
			"STAPLER_REVOKED_AT=" + st.Staple.RevokedAt.UTC().Format(time.RFC3339),
			"STAPLER_REASON=" + st.Staple.RevokedReason,
		}
		if err := runHook(ctx, "revoked_command", "revoked_command output", opt.RevokedCommand, env, opt.RevokedTimeout); err != nil {
			slog.Error("revoked_command failed; it runs again at the next run", "cert", p.Obs.File.Path, "err", err)
			failed++
			continue
		}
		p.edit(func(st *CertState) { st.revocationHandled(st.Serial) })
		slog.Info("ran revoked_command", "cert", p.Obs.File.Path, "serial", st.Serial)
	}
	return failed
}
