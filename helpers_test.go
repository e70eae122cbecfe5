package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"stapler/internal/pki"
)

// must returns v, and panics on err: for test setup that cannot fail.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// writeBundle writes an HAProxy PEM bundle (leaf, chain, key) to path, or panics.
func writeBundle(path string, leaf *x509.Certificate, key *ecdsa.PrivateKey, chain ...*x509.Certificate) {
	if err := pki.WriteBundle(path, leaf, key, chain...); err != nil {
		panic(err)
	}
}

// logLine is one line of stapler's log in JSON (--log-format json).
type logLine map[string]any

// logs is what a run logged.
type logs []logLine

// runLogged runs the built stapler with --log-format json after the command, and returns its
// exit status, its log lines and its standard output. Lines that are not JSON (a fatal
// "stapler: error:" line) come back with only "msg" set.
func runLogged(t *testing.T, args ...string) (int, logs, string) {
	t.Helper()
	skipProcesses(t)
	cmdArgs := append([]string{args[0], "--log-format", "json"}, args[1:]...)
	cmd := exec.Command("stapler", cmdArgs...)
	cmd.Env = append(os.Environ(), "STAPLER_CONFIG=", "STAPLER_TEST_CLOCK=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running stapler: %v", err)
	}
	var out logs
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if line == "" {
			continue
		}
		l := logLine{}
		if json.Unmarshal([]byte(line), &l) != nil {
			l = logLine{"msg": line}
		}
		out = append(out, l)
	}
	return code, out, stdout.String()
}

// find returns the first line with msg whose attributes include kv (key, value, ...), nil if
// none.
func (ls logs) find(msg string, kv ...string) logLine {
	for _, l := range ls {
		if l["msg"] != msg {
			continue
		}
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(l[kv[i]]) != kv[i+1] {
				ok = false
			}
		}
		if ok {
			return l
		}
	}
	return nil
}

// count is how many lines have level.
func (ls logs) count(level string) int {
	n := 0
	for _, l := range ls {
		if l["level"] == level {
			n++
		}
	}
	return n
}

func (ls logs) String() string {
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintln(&b, l)
	}
	return b.String()
}

// skipProcesses skips a test that runs processes (the built stapler, HAProxy, openssl) under
// -short: CI runs the in-process tests with -race and -short, then every test without.
func skipProcesses(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs processes: not under -short (go test ./... runs it)")
	}
}
