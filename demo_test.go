package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runDemo runs the built `stapler demo` (put on PATH by TestMain) and returns its exit status,
// standard output and standard error.
func runDemo(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	res := execStapler(t, 0, nil, nil, append([]string{"demo"}, args...)...)
	return res.code, res.stdout, res.stderr
}

// demoDir is the temporary directory the demo names on its first line.
func demoDir(t *testing.T, stdout string) string {
	t.Helper()
	m := regexp.MustCompile(`everything happens in (\S+),`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("the demo does not name its directory:\n%s", stdout)
	}
	return m[1]
}

// TestDemo runs `stapler demo` with a real HAProxy, as a first-time user would, and checks
// that it ends in time, says that HAProxy staples exactly what stapler wrote, and cleans up.
func TestDemo(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		start := time.Now()
		code, stdout, stderr := runDemo(t, "--haproxy", h.Path)
		took := time.Since(start)
		if code != 0 {
			t.Fatalf("stapler demo exited with status %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		t.Logf("stapler demo took %v", took)
		for _, want := range []string{
			`(?m)^2\. Started HAProxy \S+, serving certs/`,
			`(?m)^\s+shop\.demo\.test\s+stapled a good response, byte-identical to certs/shop\.pem\.ocsp$`,
			`(?m)^\s+api\.demo\.test\s+stapled a good response, byte-identical to certs/api\.pem\.ocsp$`,
			`(?m)^\s+legacy\.demo\.test\s+stapled nothing, as it should`,
			`(?m)^\s+revoked\.demo\.test\s+stapled a revoked response, byte-identical to certs/revoked\.pem\.ocsp$`,
			`(?m)^revoked\.pem\s.*\srevoked\s.*\sok\s`, // the status table
			`(?m)^Everything behaved as it should`,
		} {
			if !regexp.MustCompile(want).MatchString(stdout) {
				t.Errorf("stdout does not match %s:\n%s", want, stdout)
			}
		}
		if strings.Contains(stdout, "UNEXPECTED") {
			t.Errorf("stdout reports something unexpected:\n%s", stdout)
		}

		// stapler's own log: slots created without a reload, and the revocation as the one error.
		if n := strings.Count(stderr, `msg="created OCSP slot without a reload"`); n != 3 {
			t.Errorf("stderr reports %d OCSP slots created, want 3:\n%s", n, stderr)
		}
		for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
			if !strings.Contains(line, "level=INFO") && !strings.Contains(line, `level=ERROR msg="certificate is revoked" cert=`) {
				t.Errorf("unexpected line on stderr: %s", line)
			}
		}

		if _, err := os.Stat(demoDir(t, stdout)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the demo directory is still there (stat: %v)", err)
		}
	})
}

// TestDemoNoHAProxy: with HAProxy left out, the demo says so, stops at the files on disk and
// exits 0; --keep keeps them.
func TestDemoNoHAProxy(t *testing.T) {
	code, stdout, stderr := runDemo(t, "--no-haproxy", "--keep")
	if code != 0 {
		t.Fatalf("stapler demo --no-haproxy exited with status %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	dir := demoDir(t, stdout)
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, want := range []string{
		"HAProxy is left out (--no-haproxy), so this demo stops at the files on disk.",
		"shop.pem.ocsp: a good staple",
		"revoked.pem.ocsp: a revoked staple",
		"Kept " + dir,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "TLS handshake") || strings.Contains(stdout, "UNEXPECTED") {
		t.Errorf("stdout:\n%s", stdout)
	}
	for _, f := range []string{"certs/shop.pem.ocsp", "certs/api.pem.ocsp", "certs/api.pem.issuer", "certs/revoked.pem.ocsp", "state.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("kept directory: %v", err)
		}
	}
	for _, f := range []string{"certs/legacy.pem.ocsp", "certs/shop.pem.issuer"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("kept directory holds %s (stat: %v)", f, err)
		}
	}
	// The closing hint runs as printed: stapler from PATH here (go run . after go run).
	m := regexp.MustCompile(`(?m)^   stapler (status --config /dev/null --dir \S+ --state \S+)$`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no 'stapler status' hint:\n%s", stdout)
	}
	if res := execStapler(t, 0, nil, nil, strings.Fields(m[1])...); res.code != 0 || !strings.Contains(res.stdout, "shop.pem") {
		t.Errorf("the hint %q: exit %d\n%s%s", m[1], res.code, res.stdout, res.stderr)
	}
}

// TestDemoHAProxyMissing: without HAProxy installed the demo says so plainly and still
// succeeds. Run in-process, since the demo would find the HAProxy of this machine.
func TestDemoHAProxyMissing(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var out bytes.Buffer
	if err := demo(context.Background(), &out, demoOptions{}); err != nil {
		t.Fatalf("demo: %v\n%s", err, &out)
	}
	const want = "haproxy is not installed, so this demo stops at the files on disk; apt-get install haproxy to see the rest"
	if !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, &out)
	}
}

func TestDemoArgs(t *testing.T) {
	if code, _, stderr := runDemo(t, "extra"); code != exitUsage || !strings.Contains(stderr, `stapler: error: demo takes no arguments, not "extra"`) {
		t.Errorf("stapler demo extra: exit %d, want %d\n%s", code, exitUsage, stderr)
	}
}
