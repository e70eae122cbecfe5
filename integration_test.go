package main

import (
	"bytes"
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
	"stapler/internal/pki"
)

// TestHAProxyOpenSSL runs stapler against the peers users have: Debian's `openssl ocsp` as the
// responder and a real HAProxy 2.6, all on 127.0.0.1. It checks that the files stapler writes
// let HAProxy start (`haproxy -c`, no OCSP warnings), that HAProxy staples them, and that a
// forced refresh reaches a running HAProxy over the runtime API: HAProxy never re-reads
// <cert>.ocsp, so a handshake that gets the new bytes proves the push.
func TestHAProxyOpenSSL(t *testing.T) {
	t.Parallel()
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		haproxy := h.Path
		openssl := hapLookTool(t, "openssl")

		now := time.Now()
		pkiDir, certs, issuers, stateDir := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
		// A unix socket path must fit in sun_path (108 bytes); t.TempDir paths can be longer.
		sockDir, err := os.MkdirTemp("", "stapler-hap")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sockDir) })
		sock := filepath.Join(sockDir, "admin.sock")

		// The responder's address goes into the leaves, so it listens before they are issued.
		ca := pki.NewCA("Stapler HAProxy Test CA", now)
		signer, signerKey := ca.Delegate(true, now.Add(-time.Hour), now.Add(24*time.Hour))
		r := startOpenSSLResponder(t, ca, signer, signerKey)
		siteLeaf, siteKey := ca.Issue(pki.Leaf{Name: "site.stapler.test", OCSP: []string{r.URL}}, now)
		leafLeaf, leafKey := ca.Issue(pki.Leaf{Name: "leaf.stapler.test", OCSP: []string{r.URL}}, now)
		r.Valid(siteLeaf)
		r.Valid(leafLeaf)

		caFile := filepath.Join(pkiDir, "ca.pem")
		hapWriteFile(t, caFile, pki.CertPEM(ca.Cert))
		hapWriteFile(t, filepath.Join(issuers, "ca.pem"), pki.CertPEM(ca.Cert))
		site, leaf := filepath.Join(certs, "site.pem"), filepath.Join(certs, "leaf.pem")
		writeBundle(site, siteLeaf, siteKey, ca.Cert) // HAProxy finds the issuer in the bundle
		writeBundle(leaf, leafLeaf, leafKey)          // stapler must write leaf.pem.issuer

		// Two configurations with one state file: before HAProxy runs there is no socket to push
		// to (a configured socket nobody listens on would fail the run, as it should).
		config := fmt.Sprintf("dirs = [%q]\nissuer_dirs = [%q]\nstate = %q\n", certs, issuers, filepath.Join(stateDir, "state.json"))
		cfgNoSocket, cfg := filepath.Join(stateDir, "nosocket.toml"), filepath.Join(stateDir, "stapler.toml")
		hapWriteFile(t, cfgNoSocket, []byte(config))
		hapWriteFile(t, cfg, fmt.Appendf([]byte(config), "sockets = [%q]\n", sock))

		// 1. Before HAProxy starts: stapler writes both staples and the issuer HAProxy could not
		// find on its own.
		if code, stderr := runStapler(t, "run", "--config", cfgNoSocket); code != 0 {
			t.Fatalf("first stapler run exited with status %d:\n%s", code, stderr)
		}
		if got := r.Requests.Swap(0); got != 2 {
			t.Errorf("first run: openssl answered %d OCSP requests, want 2", got)
		}
		first := map[string][]byte{site: hapReadFile(t, site+".ocsp"), leaf: hapReadFile(t, leaf+".ocsp")}
		if got := hapReadFile(t, leaf+".issuer"); !bytes.Equal(got, pki.CertPEM(ca.Cert)) {
			t.Errorf("leaf.pem.issuer is not the CA certificate:\n%s", got)
		}
		if _, err := os.Stat(site + ".issuer"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("site.pem.issuer exists (stat: %v); its issuer is in the bundle", err)
		}

		// 2. Never break HAProxy: the directory as stapler left it is a valid configuration, and
		// HAProxy parses every staple without complaint.
		port := hapFreePort(t)
		hapCfg := filepath.Join(stateDir, "haproxy.cfg")
		hapWriteFile(t, hapCfg, hapConfig(port, certs, sock+" level admin"))
		out, err := exec.Command(haproxy, "-c", "-f", hapCfg).CombinedOutput()
		if err != nil {
			t.Fatalf("haproxy -c rejects the directory stapler wrote: %v\n%s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(line), "ocsp") {
				t.Errorf("haproxy -c warns about OCSP: %s", line)
			}
		}

		// 3. Start HAProxy in the foreground and wait for its runtime API.
		hapStart(t, haproxy, hapCfg, sock, stateDir)
		for _, c := range []struct{ name, path string }{{"site.stapler.test", site}, {"leaf.stapler.test", leaf}} {
			if got := hapStaple(t, port, c.name, ca.Cert); !bytes.Equal(got, first[c.path]) {
				t.Errorf("%s: HAProxy staples %d bytes at start-up, not the %d bytes of %s.ocsp", c.name, len(got), len(first[c.path]), filepath.Base(c.path))
			}
		}

		// openssl's responses carry producedAt and thisUpdate to the second. Wait for the next
		// second so that the forced refresh cannot repeat them: its bytes must differ.
		hapWaitFor(t, "the clock to pass the first staples' producedAt", 3*time.Second, func() error {
			for path, der := range first {
				resp, err := ocsp.ParseResponse(der, ca.Cert)
				if err != nil {
					t.Fatalf("%s.ocsp: %v", filepath.Base(path), err)
				}
				if !time.Now().Truncate(time.Second).After(resp.ProducedAt) {
					return fmt.Errorf("still %s", resp.ProducedAt.Format(time.RFC3339))
				}
			}
			return nil
		})

		// 4. A forced refresh while HAProxy runs: new files, pushed over the runtime API.
		if code, stderr := runStapler(t, "run", "--force", "--config", cfg); code != 0 {
			t.Fatalf("forced stapler run exited with status %d:\n%s", code, stderr)
		}
		if got := r.Requests.Swap(0); got != 2 {
			t.Errorf("forced run: openssl answered %d OCSP requests, want 2", got)
		}
		for _, c := range []struct{ name, path string }{{"site.stapler.test", site}, {"leaf.stapler.test", leaf}} {
			der := hapReadFile(t, c.path+".ocsp")
			if bytes.Equal(der, first[c.path]) {
				t.Errorf("%s.ocsp did not change in the forced run", filepath.Base(c.path))
			}
			if got := hapStaple(t, port, c.name, ca.Cert); !bytes.Equal(got, der) {
				t.Errorf("%s: HAProxy staples %d bytes (start-up staple: %v), not the %d new bytes of %s.ocsp: the push did not take",
					c.name, len(got), bytes.Equal(got, first[c.path]), len(der), filepath.Base(c.path))
			}
		}

		// 5. openssl itself verifies the staples on disk, signature and chain included.
		for _, c := range []struct{ path, issuer string }{{site, caFile}, {leaf, leaf + ".issuer"}} {
			out, err := exec.Command(openssl, "ocsp", "-respin", c.path+".ocsp", "-issuer", c.issuer,
				"-cert", c.path, "-CAfile", caFile, "-no_nonce").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Response verify OK") || !strings.Contains(string(out), c.path+": good") {
				t.Errorf("openssl does not verify %s.ocsp as good: %v\n%s", filepath.Base(c.path), err, out)
			}
		}
	})
}

// hapLookTool finds a program the test needs: on PATH, else at one of the fallback paths
// (Debian puts haproxy in /usr/sbin, which an ordinary user's PATH lacks). Without it the
// test fails loudly in CI, where it must run, and skips loudly elsewhere.
func hapLookTool(t testing.TB, name string, fallbacks ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range fallbacks {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	pkg := cmp.Or(map[string]string{"man": "man-db", "setpriv": "util-linux"}[name], name) // Debian's package
	cannotRun(t, fmt.Sprintf("%s not found on PATH: this integration test cannot run (apt-get install %s; .ci/run installs it)", name, pkg))
	return ""
}

// cannotRun says why a test cannot run here: it fails under CI (CI set), where it must run,
// and skips loudly elsewhere.
func cannotRun(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal("!!! " + why + ", and CI must run this test !!!")
	}
	t.Skip("!!! " + why + " !!!")
}

// hapStart runs HAProxy in the foreground until the test ends, and returns once its runtime
// API answers at sock. Its output goes to dir/haproxy.log, shown if anything goes wrong.
func hapStart(t *testing.T, haproxy, cfg, sock, dir string) {
	t.Helper()
	hapLaunch(t, haproxy, sock, filepath.Join(dir, "haproxy.log"), "-db", "-f", cfg)
}

// hapStaple does a TLS handshake with HAProxy for the certificate of name, verified against
// ca, and returns the OCSP response stapled to it. Go's client always asks for a staple.
func hapStaple(t *testing.T, port int, name string, ca *x509.Certificate) []byte {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS handshake with HAProxy for %s: %v", name, err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if got := st.PeerCertificates[0].Subject.CommonName; got != name {
		t.Fatalf("HAProxy presented %q for SNI %q", got, name)
	}
	if len(st.OCSPResponse) == 0 {
		t.Fatalf("HAProxy stapled nothing for %s", name)
	}
	return st.OCSPResponse
}

// hapWaitFor polls check until it returns nil, failing the test with its last error after
// timeout.
func hapWaitFor(t testing.TB, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %v", timeout, what, err)
		}
		<-tick.C
	}
}

// hapFreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func hapFreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func hapWriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func hapReadFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// hapConfig is an haproxy.cfg that serves the certificate directory certs on 127.0.0.1:port,
// with a `stats socket` line for each of stats (an address and its options).
func hapConfig(port int, certs string, stats ...string) []byte {
	var global strings.Builder
	for _, s := range stats {
		fmt.Fprintf(&global, "\tstats socket %s\n", s)
	}
	return fmt.Appendf(nil, `global
%s	stats timeout 10s

defaults
	mode http
	timeout connect 5s
	timeout client 10s
	timeout server 10s

frontend fe
	bind 127.0.0.1:%d ssl crt %s/
	http-request return status 200
`, global.String(), port, certs)
}
