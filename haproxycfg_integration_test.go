package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"stapler/internal/pki"
	"testing"
	"time"
)

// TestHAProxyConfigDiscovery: with nothing but --haproxy-config, stapler finds every
// certificate a real HAProxy loads (crt-base, a directory, a single file, a crt-list) and its
// stats socket with level admin (beside one with level operator and one without level, which
// HAProxy 3.4 would refuse), and HAProxy serves each new staple, although it started without
// any .ocsp file (the slots are created without a reload).
func TestHAProxyConfigDiscovery(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		haproxy := h.Path
		now := time.Now()
		ca := pki.NewCA("Discovery Test CA", now)
		r := pki.StartResponder(ca)
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
			leaf, key := ca.Issue(pki.Leaf{Name: name, OCSP: []string{r.URL()}}, now)
			writeBundle(filepath.Join(base, file), leaf, key, ca.Cert)
		}
		hapWriteFile(t, filepath.Join(base, "list.txt"), []byte("listed/b.pem [alpn h2,http/1.1] listed.stapler.test\n"))
		port := hapFreePort(t)
		sock := filepath.Join(sockDir, "admin.sock")
		cfg := filepath.Join(base, "haproxy.cfg")
		hapWriteFile(t, cfg, fmt.Appendf(nil, `global
	crt-base %s
	stats socket %[2]s.operator level operator
	stats socket %[2]s level admin
	stats socket %[2]s.default

defaults
	mode http
	timeout connect 5s
	timeout client 10s
	timeout server 10s

frontend fe
	bind 127.0.0.1:%[3]d ssl crt dir/ crt single/c.pem crt-list %[1]s/list.txt
	http-request return status 200
`, base, sock, port))
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
		rep := statusJSON(t, "--haproxy-config", cfg, "--state", filepath.Join(base, "state.json"))
		if len(rep.Certificates) != len(certs) {
			t.Fatalf("stapler status --json: %d certificates, want %d", len(rep.Certificates), len(certs))
		}
		for _, cs := range rep.Certificates {
			if cs.StapleStatus != "good" || len(cs.HAProxy) != 1 || cs.HAProxy[0].Socket != sock || !cs.HAProxy[0].Slot || !cs.HAProxy[0].MatchesDisk {
				t.Errorf("status of %s: %s, HAProxy %+v; want good, served", cs.Path, cs.StapleStatus, cs.HAProxy)
			}
		}
	})
}

// TestHAProxyNaming: staples and issuers go where HAProxy reads them, as discovery finds in
// haproxy.cfg: with ssl-load-extra-del-ext, site.crt's are site.ocsp and site.issuer (site.pem
// keeps site.pem.ocsp); on 3.0+, the ocsp and issuer files a crt-store entry or a crt-list
// line names, under the name HAProxy gives a crt-store entry ("@store/alias"). Each HAProxy
// starts from those files and takes a forced refresh at run time, seen in TLS handshakes.
func TestHAProxyNaming(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		issue := func(path, name string, chain bool) {
			leaf, key := f.ca.Issue(pki.Leaf{Name: name, OCSP: []string{f.resp.URL()}}, time.Now())
			if chain {
				writeBundle(path, leaf, key, f.ca.Cert)
			} else {
				writeBundle(path, leaf, key)
			}
		}
		issue(filepath.Join(f.certs, "site.crt"), "crt.stapler.test", false) // HAProxy needs site.issuer
		issue(filepath.Join(f.certs, "other.pem"), "pem.stapler.test", true)
		issuers := filepath.Join(f.dir, "issuers")
		os.Mkdir(issuers, 0o755)
		hapWriteFile(t, filepath.Join(issuers, "ca.pem"), pki.CertPEM(f.ca.Cert))

		binds := "crt " + f.certs + "/"
		served := map[string]string{"crt.stapler.test": filepath.Join(f.certs, "site.ocsp"), "pem.stapler.test": filepath.Join(f.certs, "other.pem.ocsp")}
		stores := ""
		if h.Branch != "2.6" { // crt-store and crt-list files: 3.0+
			store := filepath.Join(f.dir, "store")
			os.Mkdir(store, 0o755)
			issue(filepath.Join(store, "s.pem"), "store.stapler.test", false)
			issue(filepath.Join(store, "x.pem"), "list.stapler.test", false)
			hapWriteFile(t, filepath.Join(store, "ca.pem"), pki.CertPEM(f.ca.Cert)) // the operator's issuer file
			hapWriteFile(t, filepath.Join(f.dir, "list.txt"), []byte(filepath.Join(store, "x.pem")+" [ocsp "+filepath.Join(store, "x.der")+" issuer "+filepath.Join(store, "ca.pem")+"] list.stapler.test\n"))
			stores = "\ncrt-store web\n\tcrt-base " + store + "\n\tload crt \"s.pem\" ocsp \"s.der\" issuer \"ca.pem\" alias \"site\"\n"
			binds += ` crt "@web/site" crt-list ` + filepath.Join(f.dir, "list.txt")
			served["store.stapler.test"] = filepath.Join(store, "s.der")
			served["list.stapler.test"] = filepath.Join(store, "x.der")
		}
		stats, sock := f.statsSocket("unix", "admin")
		port := hapFreePort(t)
		cfg := filepath.Join(f.dir, "haproxy.cfg")
		hapWriteFile(t, cfg, fmt.Appendf(nil, "global\n\tssl-load-extra-del-ext\n\tstats socket %s level admin\n%s\ndefaults\n\tmode http\n\ttimeout connect 5s\n\ttimeout client 10s\n\ttimeout server 10s\n\nfrontend fe\n\tbind 127.0.0.1:%d ssl %s\n\thttp-request return status 200\n",
			stats, stores, port, binds))
		stapler := filepath.Join(f.dir, "stapler.toml")
		hapWriteFile(t, stapler, fmt.Appendf(nil, "haproxy_configs = [%q]\nissuer_dirs = [%q]\nstate = %q\n", cfg, issuers, f.state))

		// Before HAProxy starts (a crt-store ocsp file that is missing stops it): every staple,
		// and site.crt's issuer, where HAProxy reads them, and nothing where it does not.
		f.run(1, "--config", stapler) // the discovered socket is down
		for _, p := range served {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("no staple where HAProxy reads it: %v", err)
			}
		}
		for _, p := range []string{"site.crt.ocsp", "site.crt.issuer"} {
			if _, err := os.Stat(filepath.Join(f.certs, p)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s written, which HAProxy does not read (stat: %v)", p, err)
			}
		}
		if got := hapReadFile(t, filepath.Join(f.certs, "site.issuer")); !bytes.Equal(got, pki.CertPEM(f.ca.Cert)) {
			t.Errorf("site.issuer is not the issuer:\n%s", got)
		}
		if h.Branch != "2.6" {
			if got := hapReadFile(t, filepath.Join(f.dir, "store", "ca.pem")); !bytes.Equal(got, pki.CertPEM(f.ca.Cert)) {
				t.Error("the operator's issuer file changed")
			}
		}

		first := map[string][]byte{}
		hapLaunch(t, h.Path, sock, filepath.Join(f.dir, "haproxy.log"), "-db", "-f", cfg)
		for name, p := range served {
			first[name] = hapReadFile(t, p)
			if _, got := hapHandshake(t, port, name, f.ca.Cert); !bytes.Equal(got, first[name]) {
				t.Errorf("%s: HAProxy staples %d bytes at start-up, not the %d of %s", name, len(got), len(first[name]), p)
			}
		}
		f.run(0, "--force", "--config", stapler)
		for name, p := range served {
			disk := hapReadFile(t, p)
			if bytes.Equal(disk, first[name]) {
				t.Errorf("%s did not change in the forced run", p)
			}
			if _, got := hapHandshake(t, port, name, f.ca.Cert); !bytes.Equal(got, disk) {
				t.Errorf("%s: HAProxy staples %d bytes after the forced run, not the %d of %s", name, len(got), len(disk), p)
			}
		}
	})
}
