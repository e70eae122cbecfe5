package main

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/pki"
)

// TestFleetCache: three load balancers, each with its own stapler, state and copy of the same
// 50 certificates, reach `openssl ocsp` through one real HTTP cache configured as the README's
// fleet recipe says: nginx with contrib/nginx/ocsp-cache-location.conf ([responder_override]
// to it), Squid with contrib/squid/ocsp-cache-rules.conf (proxy). The responder answers 50
// requests, not 150; every host holds valid, identical staples, due at the same time; once the
// cache's max-age has passed, the next round costs 50 again. With the cache stopped, a host
// asks the responder itself only with cache_fallback.
func TestFleetCache(t *testing.T) {
	skipProcesses(t)
	t.Run("nginx", func(t *testing.T) {
		t.Parallel()
		bin := hapLookTool(t, "nginx", "/usr/sbin/nginx")
		testFleet(t, func(responder string) (*cacheProc, string) {
			c := startNginxCache(t, bin, responder)
			return c, fmt.Sprintf("[responder_override]\n%q = %q\n", responder, c.url)
		})
	})
	t.Run("squid", func(t *testing.T) {
		t.Parallel()
		bin := hapLookTool(t, "squid", "/usr/sbin/squid")
		testFleet(t, func(string) (*cacheProc, string) {
			c := startSquidCache(t, bin)
			return c, fmt.Sprintf("proxy = %q\n", c.url)
		})
	})
}

// testFleet runs the fleet test through the cache that start starts in front of responder;
// start also returns the lines of stapler.toml that send requests through it.
func testFleet(t *testing.T, start func(responder string) (*cacheProc, string)) {
	const certs, hosts, maxAge = 50, 3, 4 * time.Second
	ca := pki.NewCA("Fleet CA", time.Now())
	r := startOpenSSLResponder(t, ca, nil, nil)
	r.MaxAge = maxAge
	dir := t.TempDir()
	var names []string
	var leaves []*x509.Certificate
	bundles := map[string][]byte{}
	for i := range certs {
		leaf, key := ca.Issue(pki.Leaf{Name: fmt.Sprintf("site%02d.fleet.test", i), OCSP: []string{r.URL}}, time.Now())
		r.Valid(leaf)
		name := fmt.Sprintf("site%02d.pem", i)
		names, leaves, bundles[name] = append(names, name), append(leaves, leaf), pki.Bundle(leaf, key, ca.Cert)
	}
	cache, through := start(r.URL)
	var configs []string
	for h := range hosts {
		hostDir := filepath.Join(dir, fmt.Sprintf("lb%d", h))
		os.MkdirAll(filepath.Join(hostDir, "certs"), 0o755)
		for name, b := range bundles {
			hapWriteFile(t, filepath.Join(hostDir, "certs", name), b)
		}
		config := filepath.Join(hostDir, "stapler.toml")
		hapWriteFile(t, config, fmt.Appendf(nil, "dirs = [%q]\nstate = %q\n%s",
			filepath.Join(hostDir, "certs"), filepath.Join(hostDir, "state.json"), through))
		configs = append(configs, config)
	}
	round := func(what, clock string, args ...string) {
		t.Helper()
		var wg sync.WaitGroup
		for _, config := range configs {
			wg.Go(func() {
				res := execStapler(t, 0, nil, []string{"STAPLER_TEST_CLOCK=" + clock}, append([]string{"run", "--config", config}, args...)...)
				if res.code != 0 {
					t.Errorf("%s, %s: exit %d\n%s", what, config, res.code, res.stderr)
				}
			})
		}
		wg.Wait()
	}

	round("first round", "")
	cached := time.Now() // every answer is in the cache by now
	if got := r.Requests.Swap(0); got != certs {
		t.Errorf("first round: the responder answered %d requests for %d certificates on %d hosts, want %d", got, certs, hosts, certs)
	}
	for i, name := range names {
		first := hapReadFile(t, filepath.Join(dir, "lb0", "certs", name+".ocsp"))
		resp, err := ocsp.ParseResponseForCert(first, leaves[i], ca.Cert)
		if err != nil || resp.Status != ocsp.Good {
			t.Fatalf("%s: %v", name, err)
		}
		for h := 1; h < hosts; h++ {
			if got := hapReadFile(t, filepath.Join(dir, fmt.Sprintf("lb%d", h), "certs", name+".ocsp")); !bytes.Equal(got, first) {
				t.Errorf("%s: lb%d staples other bytes than lb0", name, h)
			}
		}
	}
	// Each certificate falls due at the same time on every host (the spread is the
	// certificate's, not the host's), and the certificates at different times.
	dues := map[time.Time]bool{}
	var states []*State
	for h := range hosts {
		states = append(states, readState(t, filepath.Join(dir, fmt.Sprintf("lb%d", h), "state.json")))
	}
	for _, name := range names {
		first := states[0].Certificates[filepath.Join(dir, "lb0", "certs", name)]
		if first == nil || first.NextDue.IsZero() {
			t.Fatalf("lb0: no next_due for %s", name)
		}
		dues[first.NextDue] = true
		for h := 1; h < hosts; h++ {
			st := states[h].Certificates[filepath.Join(dir, fmt.Sprintf("lb%d", h), "certs", name)]
			if st == nil {
				t.Fatalf("lb%d: no state for %s", h, name)
			}
			if !st.NextDue.Equal(first.NextDue) {
				t.Errorf("%s: lb%d is due at %v, lb0 at %v", name, h, st.NextDue, first.NextDue)
			}
		}
	}
	if len(dues) < certs/2 {
		t.Errorf("%d certificates fall due at only %d distinct times", certs, len(dues))
	}

	// Once the cache's max-age has passed, and the staples are due (their one-hour window
	// half gone), the next round asks the responder once per certificate again.
	time.Sleep(time.Until(cached.Add(maxAge + time.Second)))
	round("second round", "35m")
	if got := r.Requests.Swap(0); got != certs {
		t.Errorf("second round: the responder answered %d requests, want %d", got, certs)
	}

	// The cache is down: without cache_fallback a host fails and the responder hears nothing;
	// with it, the host asks the responder itself and says so once.
	cache.stop()
	res := execStapler(t, 0, nil, nil, "run", "--force", "--log-format", "json", "--config", configs[0])
	l := parseLogs(res.stderr)
	if res.code != 1 || r.Requests.Swap(0) != 0 || !l.mentions("through the cache at "+cache.url) || !l.mentions("cache_fallback is off") {
		t.Errorf("cache down, no fallback: exit %d; want 1, no request, and the cache named\n%s", res.code, l)
	}
	withFallback := filepath.Join(dir, "lb1", "fallback.toml")
	hapWriteFile(t, withFallback, append([]byte("cache_fallback = true\n"), hapReadFile(t, configs[1])...))
	res = execStapler(t, 0, nil, nil, "run", "--force", "--log-format", "json", "--config", withFallback)
	l = parseLogs(res.stderr)
	if res.code != 0 || r.Requests.Swap(0) != certs {
		t.Errorf("cache down, fallback: exit %d; want 0 and %d requests to the responder\n%s", res.code, certs, l)
	}
	if n := countLines(l, "OCSP cache failed; asking the responders directly for the rest of this run (cache_fallback)"); n != 1 {
		t.Errorf("%d warnings about the cache, want one\n%s", n, l)
	}
}

// TestCacheConfigs: the fleet recipe's complete configurations, as an operator installs them
// from contrib/, are accepted by Debian's nginx (nginx -t) and Squid (squid -k parse).
func TestCacheConfigs(t *testing.T) {
	skipProcesses(t)
	t.Run("nginx", func(t *testing.T) {
		bin := hapLookTool(t, "nginx", "/usr/sbin/nginx")
		dir := t.TempDir() // as /etc/nginx: conf.d/ and snippets/
		os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
		os.MkdirAll(filepath.Join(dir, "snippets"), 0o755)
		hapWriteFile(t, filepath.Join(dir, "snippets", "ocsp-cache-location.conf"), hapReadFile(t, "contrib/nginx/ocsp-cache-location.conf"))
		site := strings.ReplaceAll(string(hapReadFile(t, "contrib/nginx/ocsp-cache.conf")), "/var/cache/nginx/ocsp", filepath.Join(dir, "cache"))
		hapWriteFile(t, filepath.Join(dir, "conf.d", "ocsp-cache.conf"), []byte(site))
		hapWriteFile(t, filepath.Join(dir, "nginx.conf"), fmt.Appendf(nil, "pid %[1]s/nginx.pid;\nevents {}\nhttp {\n    include %[1]s/conf.d/*.conf;\n}\n", dir))
		out, err := exec.Command(bin, "-t", "-p", dir+"/", "-e", filepath.Join(dir, "error.log"), "-c", filepath.Join(dir, "nginx.conf")).CombinedOutput()
		if err != nil {
			t.Errorf("nginx -t: %v\n%s", err, out)
		}
	})
	t.Run("squid", func(t *testing.T) {
		bin := hapLookTool(t, "squid", "/usr/sbin/squid")
		dir := t.TempDir() // as /etc/squid
		hapWriteFile(t, filepath.Join(dir, "ocsp-cache-rules.conf"), hapReadFile(t, "contrib/squid/ocsp-cache-rules.conf"))
		conf := strings.ReplaceAll(string(hapReadFile(t, "contrib/squid/ocsp-cache.conf")), "/etc/squid/", dir+"/")
		if !strings.Contains(conf, "include "+dir+"/ocsp-cache-rules.conf") {
			t.Fatalf("contrib/squid/ocsp-cache.conf does not include /etc/squid/ocsp-cache-rules.conf")
		}
		hapWriteFile(t, filepath.Join(dir, "squid.conf"), []byte(conf))
		out, err := exec.Command(bin, "-k", "parse", "-f", filepath.Join(dir, "squid.conf")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Processing: collapsed_forwarding on") {
			t.Errorf("squid -k parse: %v\n%s", err, out)
		}
	})
}

func countLines(l logs, msg string) int {
	n := 0
	for _, line := range l {
		if line["msg"] == msg {
			n++
		}
	}
	return n
}

// cacheProc is an HTTP cache (nginx, Squid) running on 127.0.0.1 for a test.
type cacheProc struct {
	url  string
	proc *exec.Cmd
	done chan struct{}
}

// startNginxCache starts nginx in the foreground, as one process, with the fleet recipe's
// location directives (contrib/nginx/ocsp-cache-location.conf) in front of upstream, and
// returns once it answers.
func startNginxCache(t *testing.T, bin, upstream string) *cacheProc {
	t.Helper()
	dir := t.TempDir()
	snippet, err := filepath.Abs("contrib/nginx/ocsp-cache-location.conf")
	if err != nil {
		t.Fatal(err)
	}
	port := hapFreePort(t)
	conf := filepath.Join(dir, "nginx.conf")
	hapWriteFile(t, conf, fmt.Appendf(nil, `daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 256; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    proxy_cache_path %[1]s/cache levels=1:2 keys_zone=ocsp:1m max_size=64m inactive=1h use_temp_path=off;
    server {
        listen 127.0.0.1:%[2]d;
        location / {
            set $responder %[3]s;
            proxy_pass http://$responder;
            include %[4]s;
        }
    }
}
`, dir, port, strings.TrimPrefix(upstream, "http://"), snippet))
	logs := []string{filepath.Join(dir, "error.log"), filepath.Join(dir, "access.log")}
	return launchCache(t, "nginx", port, logs, bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
}

// startSquidCache starts Squid in the foreground as a forward proxy with the fleet recipe's
// caching rules (contrib/squid/ocsp-cache-rules.conf), memory only, and returns once it
// answers. Run as root, Squid works as its cache_effective_user, proxy: its directory is one
// that user can reach.
func startSquidCache(t *testing.T, bin string) *cacheProc {
	t.Helper()
	rules, err := filepath.Abs("contrib/squid/ocsp-cache-rules.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "stapler-squid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	port := hapFreePort(t)
	conf := filepath.Join(dir, "squid.conf")
	hapWriteFile(t, conf, fmt.Appendf(nil, `http_port 127.0.0.1:%[2]d
visible_hostname stapler-test
acl fleet src 127.0.0.1/32
http_access allow fleet
http_access deny all
cache_mem 16 MB
pid_filename %[1]s/squid.pid
cache_log stdio:%[1]s/cache.log
access_log stdio:%[1]s/access.log
cache_store_log none
coredump_dir %[1]s
netdb_filename none
shutdown_lifetime 0 seconds
include %[3]s
`, dir, port, rules))
	logs := []string{filepath.Join(dir, "cache.log"), filepath.Join(dir, "access.log")}
	return launchCache(t, "squid", port, logs, bin, "-N", "-f", conf)
}

// launchCache runs a cache listening on 127.0.0.1:port until the test ends, and returns once
// it accepts connections. Its logs (its own, then its access log: which request it answered
// how) are shown if the test fails.
func launchCache(t *testing.T, name string, port int, logs []string, bin string, args ...string) *cacheProc {
	t.Helper()
	n := &cacheProc{url: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan struct{})}
	n.proc = exec.Command(bin, args...)
	n.proc.Stdout, n.proc.Stderr = os.Stderr, os.Stderr
	if err := n.proc.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.proc.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			for _, log := range logs {
				t.Logf("%s:\n%s", log, hapReadFileIfAny(log))
			}
		}
	})
	hapWaitFor(t, name+" at "+n.url, 20*time.Second, func() error {
		select {
		case <-n.done:
			t.Fatalf("%s exited:\n%s", name, hapReadFileIfAny(logs[0]))
		default:
		}
		c, err := (&net.Dialer{}).Dial("tcp", strings.TrimPrefix(n.url, "http://"))
		if err == nil {
			c.Close()
		}
		return err
	})
	return n
}

func (n *cacheProc) stop() {
	select {
	case <-n.done:
		return
	default:
	}
	n.proc.Process.Kill()
	<-n.done
}
