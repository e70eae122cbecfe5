package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/crypto/ocsp"
	"stapler/internal/ocspcheck"
	"stapler/internal/pki"
)

func TestMain(m *testing.M) {
	testscript.Main(noteSkips{m}, map[string]func(){
		"stapler": func() {
			// STAPLER_TEST_CLOCK moves this process's clock, as a duration such as 13h.
			if s := os.Getenv("STAPLER_TEST_CLOCK"); s != "" {
				d := must(time.ParseDuration(s))
				testOnlyNow = func() time.Time { return time.Now().Add(d) }
			}
			// STAPLER_TEST_WRITE_CHUNK writes the staples in batches of that many certificates
			// (writeChunk), so that a fault case kills runs between batches too.
			if s := os.Getenv("STAPLER_TEST_WRITE_CHUNK"); s != "" {
				writeChunk = must(strconv.Atoi(s))
			}
			// STAPLER_TEST_CHECK_HANG makes the check's work stall, as on a hung file system.
			if os.Getenv("STAPLER_TEST_CHECK_HANG") != "" {
				testOnlyCheckHang = func() { select {} }
			}
			// STAPLER_CPUPROFILE writes a CPU profile of this run, and a heap profile beside it
			// (what was allocated, and what was still held at the end) (for bench/README.md).
			if p := os.Getenv("STAPLER_CPUPROFILE"); p != "" {
				f := must(os.Create(p))
				pprof.StartCPUProfile(f)
				code := stapler(os.Args, os.Stdout, os.Stderr)
				pprof.StopCPUProfile()
				f.Close()
				h := must(os.Create(strings.TrimSuffix(p, ".pprof") + ".heap.pprof"))
				pprof.Lookup("allocs").WriteTo(h, 0)
				h.Close()
				os.Exit(code)
			}
			os.Exit(stapler(os.Args, os.Stdout, os.Stderr))
		},
	})
}

// noteSkips runs the tests, then says which HAProxy branches the real-HAProxy tests skipped
// for want of them: on stdout (shown by go test -v, or go test in a package directory) and on
// the terminal, where `go test ./...` shows nothing of a package that passed.
type noteSkips struct{ m *testing.M }

func (n noteSkips) Run() int {
	code := n.m.Run()
	if note := hapSkippedNote(); note != "" {
		fmt.Println(note)
		if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
			fmt.Fprintln(tty, note)
			tty.Close()
		}
	}
	return code
}

// TestScripts runs the CLI scripts in testdata/script. Each starts with a fresh test PKI in
// $WORK/pki and an OCSP responder for it at $RESPONDER:
//   - site.pem: leaf, issuing CA and key, with an OCSP responder
//   - leaf.pem: leaf and key only; its AIA caIssuers URL serves the CA
//   - noocsp.pem: a certificate without an OCSP responder
//   - expired.pem: an expired certificate with an OCSP responder
//   - elsewhere.pem: a certificate whose responder, http://ocsp.stapler.invalid, does not exist
//   - muststaple.pem: a Must-Staple certificate (RFC 7633) with an OCSP responder
//   - muststaple-noocsp.pem: a Must-Staple certificate without one
//   - ca.pem: the CA
//
// Extra commands: `exit CODE COMMAND ARGS...` runs a command like exec and asserts its exit
// status; `responder MODE` switches the responder's answers (see pki.Modes);
// `normalize FILE` writes the last command's stdout to FILE with what changes from run to run
// (times, durations, serials, $WORK, $RESPONDER) replaced, for golden files
// (STAPLER_UPDATE_GOLDEN=1 go test -run TestScripts rewrites them); `expandenv FILE` replaces $VARIABLES in FILE; `requests N` asserts how many OCSP requests it answered since the last check;
// `ocspstatus FILE STATUS` asserts the status in a DER OCSP response file.
func TestScripts(t *testing.T) {
	skipProcesses(t)
	testscript.Run(t, testscript.Params{
		Dir:           "testdata/script",
		UpdateScripts: os.Getenv("STAPLER_UPDATE_GOLDEN") != "",
		Setup:         setupPKI,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"responder": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: responder MODE")
				}
				ts.Value("responder").(*pki.Responder).SetMode(args[0])
			},
			"exit": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) < 2 {
					ts.Fatalf("usage: exit CODE COMMAND [ARGS...]")
				}
				want := must(strconv.Atoi(args[0]))
				err := ts.Exec(args[1], args[2:]...)
				got := 0
				if ee, ok := err.(*exec.ExitError); ok {
					got = ee.ExitCode()
				} else if err != nil {
					ts.Fatalf("%v", err)
				}
				if got != want {
					ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
				}
			},
			"normalize": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: normalize FILE")
				}
				out := ts.ReadFile("stdout")
				out = strings.ReplaceAll(out, ts.Getenv("WORK"), "$WORK")
				out = strings.ReplaceAll(out, ts.Getenv("RESPONDER"), "$RESPONDER")
				for _, r := range normalizations {
					out = r.re.ReplaceAllString(out, r.with)
				}
				ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(out), 0o644))
			},
			"expandenv": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: expandenv FILE")
				}
				ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(os.Expand(ts.ReadFile(args[0]), ts.Getenv)), 0o644))
			},
			"requests": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: requests N")
				}
				want := must(strconv.Atoi(args[0]))
				if got := ts.Value("responder").(*pki.Responder).Requests.Swap(0); got != int64(want) {
					ts.Fatalf("responder answered %d OCSP requests, want %d", got, want)
				}
			},
			"ocspstatus": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 2 {
					ts.Fatalf("usage: ocspstatus FILE good|revoked|unknown")
				}
				der, err := os.ReadFile(ts.MkAbs(args[0]))
				ts.Check(err)
				resp, err := ocsp.ParseResponse(der, ts.Value("ca").(*pki.CA).Cert)
				ts.Check(err)
				if got := ocspcheck.StatusName(resp.Status); got != args[1] {
					ts.Fatalf("%s: status %s, want %s", args[0], got, args[1])
				}
			},
		},
	})
}

var normalizations = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "TIME"},
	{regexp.MustCompile(`"time_left_seconds": \d+`), `"time_left_seconds": SECONDS`},
	{regexp.MustCompile(`"serial": "[0-9a-f]+"`), `"serial": "SERIAL"`},
	{regexp.MustCompile(`\b(\d+d\d+h|\d+h\d+m|\d+m)( +)`), "DUR$2"},
	{regexp.MustCompile(`(\S) {2,}`), "$1  "}, // table columns, whose widths follow the durations
}

func setupPKI(env *testscript.Env) error {
	now := time.Now()
	ca := pki.NewCA("Stapler Test CA", now)
	r := pki.StartResponder(ca)
	env.Defer(r.Close)
	env.Values["responder"] = r
	env.Values["ca"] = ca
	env.Setenv("RESPONDER", r.URL())
	env.Setenv("STAPLER_CONFIG", "")
	env.Setenv("CONTRIB", must(filepath.Abs("contrib")))

	dir := filepath.Join(env.WorkDir, "pki")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	leaf, key := ca.Issue(pki.Leaf{Name: "site.test", OCSP: []string{r.URL()}}, now)
	writeBundle(filepath.Join(dir, "site.pem"), leaf, key, ca.Cert)
	leaf, key = ca.Issue(pki.Leaf{Name: "leaf.test", OCSP: []string{r.URL()}, AIA: []string{r.URL() + "/ca.der"}}, now)
	writeBundle(filepath.Join(dir, "leaf.pem"), leaf, key)
	leaf, key = ca.Issue(pki.Leaf{Name: "noocsp.test"}, now)
	writeBundle(filepath.Join(dir, "noocsp.pem"), leaf, key, ca.Cert)
	leaf, key = ca.Issue(pki.Leaf{Name: "expired.test", OCSP: []string{r.URL()}, NotBefore: now.Add(-90 * 24 * time.Hour), NotAfter: now.Add(-time.Hour)}, now)
	writeBundle(filepath.Join(dir, "expired.pem"), leaf, key, ca.Cert)
	leaf, key = ca.Issue(pki.Leaf{Name: "elsewhere.test", OCSP: []string{"http://ocsp.stapler.invalid"}}, now)
	writeBundle(filepath.Join(dir, "elsewhere.pem"), leaf, key, ca.Cert)
	leaf, key = ca.Issue(pki.Leaf{Name: "muststaple.test", OCSP: []string{r.URL()}, MustStaple: true}, now)
	writeBundle(filepath.Join(dir, "muststaple.pem"), leaf, key, ca.Cert)
	leaf, key = ca.Issue(pki.Leaf{Name: "muststaple-noocsp.test", MustStaple: true}, now)
	writeBundle(filepath.Join(dir, "muststaple-noocsp.pem"), leaf, key, ca.Cert)
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pki.CertPEM(ca.Cert), 0o644); err != nil {
		return fmt.Errorf("writing CA: %w", err)
	}
	return nil
}
