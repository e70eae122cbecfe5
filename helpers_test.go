package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

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
// exit status, its log lines and its standard output.
func runLogged(t *testing.T, args ...string) (int, logs, string) {
	t.Helper()
	res := execStapler(t, 0, nil, nil, jsonLogArgs(args)...)
	checkLogKeys(t, res.stderr)
	return res.code, parseLogs(res.stderr), res.stdout
}

// checkLogKeys fails the test for a JSON log line that has a key twice (an attribute named
// like slog's own time, level or msg): a reader keeps only one of them.
func checkLogKeys(t testing.TB, stderr string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		dec := json.NewDecoder(strings.NewReader(line))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			continue // not JSON
		}
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			key := tok.(string)
			if seen[key] {
				t.Errorf("log line with two %q keys: %s", key, line)
			}
			seen[key] = true
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				break
			}
		}
	}
}

// jsonLogArgs puts --log-format json after the command in args.
func jsonLogArgs(args []string) []string {
	return append([]string{args[0], "--log-format", "json"}, args[1:]...)
}

// parseLogs reads a JSON log. A line that is not JSON (a panic, say) comes back with only
// "msg" set.
func parseLogs(stderr string) logs {
	var out logs
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if line == "" {
			continue
		}
		l := logLine{}
		if json.Unmarshal([]byte(line), &l) != nil {
			l = logLine{"msg": line}
		}
		out = append(out, l)
	}
	return out
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

// mentions reports whether s appears anywhere in the lines, attributes included.
func (ls logs) mentions(s string) bool {
	return strings.Contains(ls.String(), s)
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

// statusJSON runs `stapler status --json` with args and returns its report.
func statusJSON(t testing.TB, args ...string) statusReport {
	t.Helper()
	res := execStapler(t, 0, nil, nil, append([]string{"status", "--json"}, args...)...)
	var rep statusReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("stapler status --json %s: exit %d, %v\n%s%s", strings.Join(args, " "), res.code, err, res.stdout, res.stderr)
	}
	return rep
}

// procResult is what one run of the built stapler did.
type procResult struct {
	code           int // -1 when it could not run
	stdout, stderr string
	took           time.Duration
	killed         bool // still running at its deadline
}

// execStapler runs the built stapler (put on PATH by TestMain) with args: the one way the tests
// run it. wrap, when given, is a command that runs it (`sh -c 'ulimit ...' sh`); env is added
// to an environment without STAPLER_CONFIG or the test clock; a run still going at deadline is
// killed (0: no deadline).
func execStapler(t testing.TB, deadline time.Duration, wrap, env []string, args ...string) procResult {
	t.Helper()
	skipProcesses(t)
	ctx := context.Background()
	if deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, deadline)
		defer cancel()
	}
	name, argv := "stapler", args
	if len(wrap) > 0 {
		name, argv = wrap[0], append(append(slices.Clone(wrap[1:]), "stapler"), args...)
	}
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.Env = append(os.Environ(), "STAPLER_CONFIG=", "STAPLER_TEST_CLOCK=")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	res := procResult{took: time.Since(start), killed: ctx.Err() != nil, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Errorf("running stapler: %v", err)
		res.code = -1
	}
	return res
}
