package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestHAProxyConfigDiscovery: with nothing but --haproxy-config, stapler finds every
// certificate a real HAProxy 2.6 loads (crt-base, a directory, a single file, a crt-list) and
// its stats socket, and HAProxy serves each new staple, although it started without any .ocsp
// file (the slots are created without a reload).
func TestHAProxyConfigDiscovery(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		haproxy := h.Path
		now := time.Now()
		ca := newTestCA("Discovery Test CA", now)
		r := startResponder(ca)
		defer r.Close()

		base := t.TempDir()
		sockDir, err := os.MkdirTemp("", "stp")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sockDir) })
		certs := map[string]string{ // DNS name: file under crt-base
			"dir.stapler.test":    "dir/a.pem",
			"single.stapler.test": "single/c.pem",
			"listed.stapler.test": "listed/b.pem",
		}
		for name, file := range certs {
			os.MkdirAll(filepath.Join(base, filepath.Dir(file)), 0o755)
			leaf, key := ca.issue(leafSpec{Name: name, OCSP: []string{r.URL()}}, now)
			writeBundle(filepath.Join(base, file), leaf, key, ca.Cert)
		}
		hapWriteFile(t, filepath.Join(base, "list.txt"), []byte("listed/b.pem [alpn h2,http/1.1] listed.stapler.test\n"))
		port := hapFreePort(t)
		sock := filepath.Join(sockDir, "admin.sock")
		cfg := filepath.Join(base, "haproxy.cfg")
		hapWriteFile(t, cfg, fmt.Appendf(nil, `global
	crt-base %s
	stats socket %s level admin

defaults
	mode http
	timeout connect 5s
	timeout client 10s
	timeout server 10s

frontend fe
	bind 127.0.0.1:%d ssl crt dir/ crt single/c.pem crt-list %s/list.txt
	http-request return status 200
`, base, sock, port, base))
		hapStart(t, haproxy, cfg, sock, base)

		code, stderr := runStapler(t, "run", "--haproxy-config", cfg, "--state", filepath.Join(base, "state.json"))
		if code != 0 {
			t.Fatalf("stapler run exited %d:\n%s", code, stderr)
		}
		t.Logf("stapler:\n%s", stderr)
		for name, file := range certs {
			disk := hapReadFile(t, filepath.Join(base, file)+".ocsp")
			if got := hapStaple(t, port, name, ca.Cert); !bytes.Equal(got, disk) {
				t.Errorf("%s: HAProxy staples %d bytes, not the %d on disk", name, len(got), len(disk))
			}
		}

		// stapler status sees the same: every staple good and served.
		out, err := exec.Command("stapler", "status", "--json", "--haproxy-config", cfg, "--state", filepath.Join(base, "state.json")).Output()
		if err != nil {
			t.Fatalf("stapler status: %v", err)
		}
		var rep statusReport
		if err := json.Unmarshal(out, &rep); err != nil || len(rep.Certificates) != len(certs) {
			t.Fatalf("stapler status --json: %v\n%s", err, out)
		}
		for _, cs := range rep.Certificates {
			if cs.StapleStatus != "good" || len(cs.HAProxy) != 1 || cs.HAProxy[0].Socket != sock || !cs.HAProxy[0].Slot || !cs.HAProxy[0].MatchesDisk {
				t.Errorf("status of %s: %s, HAProxy %+v; want good, served", cs.Path, cs.StapleStatus, cs.HAProxy)
			}
		}
	})
}
