package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/haproxy"
	"stapler/internal/pki"
)

// Integration tests against real HAProxy 2.6 processes on 127.0.0.1 (issue 3). Each one runs
// the built stapler and then checks, with a TLS handshake that asks for a staple (Go's client
// always does), that the staple HAProxy serves is byte-identical to <cert>.ocsp on disk. HAProxy
// reads <cert>.ocsp only when it starts or reloads, so a running HAProxy that serves the new
// bytes proves that they came over the runtime API. The OCSP responder is the in-process one of
// responder_test.go; TestHAProxyOpenSSL covers `openssl ocsp`.

// TestHAProxySockets: a forced refresh reaches a running HAProxy over a unix socket and over a
// TCP stats socket (`stats socket ipv4@127.0.0.1:PORT`, given to stapler as 127.0.0.1:PORT).
func TestHAProxySockets(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		for _, kind := range []string{"unix", "tcp"} {
			t.Run(kind, func(t *testing.T) {
				f := newHAPFixture(t, h)
				site, _ := f.addCert("site.stapler.test")
				stats, sock := f.statsSocket(kind, "admin")

				f.run(0, "--config", f.config("nosocket", nil, ""))
				first := hapReadFile(t, site+".ocsp")
				port := hapFreePort(t)
				f.startHAProxy("haproxy", port, stats, sock)
				f.wantServed(port, site, nil) // HAProxy read it from disk at start-up

				cfg := f.config("stapler", []string{sock}, "")
				f.run(0, "--force", "--config", cfg)
				if bytes.Equal(hapReadFile(t, site+".ocsp"), first) {
					t.Fatal("site.pem.ocsp did not change in the forced run")
				}
				f.wantServed(port, site, first)
				st := readState(t, f.state)
				if p := st.Certificates[site].Pending; len(p) > 0 {
					t.Errorf("pending_push = %q after a successful push", p)
				}
			})
		}
	})
}

// TestHAProxyTwoInstances: with two sockets configured, one run pushes to both HAProxy
// processes, and each serves the new staple.
func TestHAProxyTwoInstances(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, _ := f.addCert("site.stapler.test")
		other, _ := f.addCert("other.stapler.test")
		f.run(0, "--config", f.config("nosocket", nil, ""))
		first := map[string][]byte{site: hapReadFile(t, site+".ocsp"), other: hapReadFile(t, other+".ocsp")}

		statsA, sockA := f.statsSocket("unix", "a")
		statsB, sockB := f.statsSocket("tcp", "b")
		portA, portB := hapFreePort(t), hapFreePort(t)
		f.startHAProxy("haproxy-a", portA, statsA, sockA)
		f.startHAProxy("haproxy-b", portB, statsB, sockB)

		f.run(0, "--force", "--config", f.config("stapler", []string{sockA, sockB}, ""))
		for _, port := range []int{portA, portB} {
			for _, path := range []string{site, other} {
				f.wantServed(port, path, first[path])
			}
		}
	})
}

// TestHAProxyMasterWorker: a master-worker HAProxy (`haproxy -W -S master.sock`) is reached
// through its master CLI, given to stapler as master:<path>. Then the certificate file is
// replaced while HAProxy runs the old one: the first run (the certificate is new, a deploy hook
// reloads) waits for a reload, the second runs reload_command once, and the reloaded HAProxy
// serves the new certificate with its staple.
func TestHAProxyMasterWorker(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, oldLeaf := f.addCert("site.stapler.test")
		f.run(0, "--config", f.config("nosocket", nil, ""))
		first := hapReadFile(t, site+".ocsp")

		master := filepath.Join(f.sockDir, "master.sock")
		sock := "master:" + master
		port := hapFreePort(t)
		cfg := f.haproxyConfig("haproxy", port, "") // no stats socket: the master CLI is the way in
		proc := hapLaunch(t, f.haproxy, sock, filepath.Join(f.dir, "haproxy.log"), "-W", "-db", "-S", master, "-f", cfg)
		f.wantServed(port, site, nil)

		marker := filepath.Join(f.dir, "reloads")
		reload := fmt.Sprintf("reload_command = %q\n", fmt.Sprintf("echo reload >> %s && kill -USR2 %d", marker, proc.cmd.Process.Pid))
		stapler := f.config("stapler", []string{sock}, reload)
		f.run(0, "--force", "--config", stapler)
		f.wantServed(port, site, first)
		if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("reload_command ran although HAProxy took the staple (stat: %v)", err)
		}

		// A renewed certificate in the same file. HAProxy keeps serving the old one until it
		// reloads.
		newLeaf := f.reissue(site)
		l := f.run(0, "--config", stapler)
		if l.find("HAProxy will load this staple when it reloads", "cert", site) == nil {
			t.Errorf("the run after the renewal does not say that HAProxy needs a reload:\n%s", l)
		}
		if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("reload_command ran in the run that found the new certificate (stat: %v)", err)
		}
		if leaf, _ := hapHandshake(t, port, "site.stapler.test", f.ca.Cert); leaf.SerialNumber.Cmp(oldLeaf.SerialNumber) != 0 {
			t.Fatalf("HAProxy presents serial %x before any reload, want the old %x", leaf.SerialNumber, oldLeaf.SerialNumber)
		}

		// Nothing changed since, and HAProxy still runs the old certificate: now it is a problem,
		// and reload_command runs, once.
		l = f.run(0, "--config", stapler)
		if got := string(hapReadFileIfAny(marker)); got != "reload\n" {
			t.Fatalf("reload_command ran %d times, want once\n%s", strings.Count(got, "reload"), l)
		}
		hapWaitFor(t, "the reloaded HAProxy to present the new certificate", 10*time.Second, func() error {
			leaf, _, err := hapTryHandshake(port, "site.stapler.test", f.ca.Cert)
			if err != nil {
				return err
			}
			if leaf.SerialNumber.Cmp(newLeaf.SerialNumber) != 0 {
				return fmt.Errorf("it presents serial %x", leaf.SerialNumber)
			}
			return nil
		})
		f.wantServed(port, site, nil)
		// The master re-executes itself on a reload: wait until its CLI answers again.
		hapWaitFor(t, "the master CLI after the reload", 10*time.Second, func() error {
			_, err := hapTryCLI(sock, "show version")
			return err
		})

		// The reloaded HAProxy serves what is on disk: no further reload.
		f.run(0, "--config", stapler)
		if got := string(hapReadFileIfAny(marker)); got != "reload\n" {
			t.Errorf("reload_command ran again: %q", got)
		}
	})
}

// TestHAProxyCreatesSlot: HAProxy loaded a certificate without a .ocsp file, so it has no OCSP
// slot for it. stapler creates the slot in a `set ssl cert <path>.ocsp` transaction, without a
// reload, and HAProxy staples the response. When the issuer is not in the bundle, HAProxy has
// no issuer for the certificate either (it found no <cert>.issuer at start-up): the slot needs
// the issuer that stapler writes to <cert>.issuer in the same transaction.
func TestHAProxyCreatesSlot(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		for _, tt := range []struct {
			name         string
			issuerInFile bool
		}{{"issuer in bundle", false}, {"issuer file", true}} {
			t.Run(tt.name, func(t *testing.T) {
				f := newHAPFixture(t, h)
				extra := ""
				var site string
				if tt.issuerInFile {
					site = f.addLeafOnly("site.stapler.test")
					issuers := filepath.Join(f.dir, "issuers")
					if err := os.Mkdir(issuers, 0o755); err != nil {
						t.Fatal(err)
					}
					hapWriteFile(t, filepath.Join(issuers, "ca.pem"), pki.CertPEM(f.ca.Cert))
					extra = fmt.Sprintf("issuer_dirs = [%q]\n", issuers)
				} else {
					site, _ = f.addCert("site.stapler.test")
				}
				stats, sock := f.statsSocket("unix", "admin")
				port := hapFreePort(t)
				f.startHAProxy("haproxy", port, stats, sock)
				if _, staple := hapHandshake(t, port, "site.stapler.test", f.ca.Cert); staple != nil {
					t.Fatalf("HAProxy staples %d bytes without a .ocsp file", len(staple))
				}

				cfg := f.config("stapler", []string{sock}, extra)
				l := f.run(0, "--config", cfg)
				if l.find("created OCSP slot without a reload", "cert", site) == nil {
					t.Errorf("no slot creation in the log:\n%s", l)
				}
				if l.count("WARN")+l.count("ERROR") > 0 || l.find("reloaded HAProxy: it reads the staples from disk") != nil {
					t.Errorf("the run speaks of a reload:\n%s", l)
				}
				if _, err := os.Stat(site + ".issuer"); tt.issuerInFile != (err == nil) {
					t.Errorf("site.pem.issuer: stat says %v", err)
				}
				f.wantServed(port, site, nil)

				// The next run finds the slot and the staple in place, and does nothing.
				l = f.run(0, "--config", cfg)
				if l.find("created OCSP slot without a reload") != nil || l.find("HAProxy did not serve the staple on disk; sent it") != nil {
					t.Errorf("the run after the slot was created did more than check:\n%s", l)
				}
				f.wantServed(port, site, nil)
			})
		}
	})
}

// TestHAProxyDriftRepair: a run with nothing due still makes HAProxy serve the staple on disk
// when it does not: (1) HAProxy started with an older .ocsp than stapler wrote later, when no
// socket was configured; (2) a hot `set ssl cert` with the same PEM dropped HAProxy's OCSP slot.
func TestHAProxyDriftRepair(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, _ := f.addCert("site.stapler.test")
		nosocket := f.config("nosocket", nil, "")
		f.resp.SetMode("older") // thisUpdate two hours ago
		f.run(0, "--config", nosocket)
		old := hapReadFile(t, site+".ocsp")

		stats, sock := f.statsSocket("unix", "admin")
		port := hapFreePort(t)
		f.startHAProxy("haproxy", port, stats, sock)
		f.wantServed(port, site, nil)

		// (1) A newer staple, written with no socket to push it to.
		f.resp.SetMode("good") // thisUpdate one hour ago
		f.run(0, "--force", "--config", nosocket)
		if _, got := hapHandshake(t, port, "site.stapler.test", f.ca.Cert); !bytes.Equal(got, old) {
			t.Fatal("HAProxy does not serve the staple it read at start-up")
		}
		cfg := f.config("stapler", []string{sock}, "")
		f.resp.Requests.Store(0)
		l := f.run(0, "--config", cfg)
		if n := f.resp.Requests.Load(); n != 0 {
			t.Errorf("the repair run asked the responder %d times; nothing was due", n)
		}
		if l.find("HAProxy did not serve the staple on disk; sent it", "cert", site) == nil {
			t.Errorf("the repair run does not report the older staple:\n%s", l)
		}
		f.wantServed(port, site, old)

		// (2) A hot certificate update with the very same PEM drops the staple. A TLS
		// connection opened before it keeps the old certificate's OCSP slot alive, so that
		// HAProxy's `show ssl ocsp-response` listing still shows it and `set ssl
		// ocsp-response` answers "updated" into it: only a check by file tells the truth.
		held := hapHoldConnection(t, port, "site.stapler.test", f.ca.Cert)
		hapHotUpdate(t, sock, site)
		if _, got := hapHandshake(t, port, "site.stapler.test", f.ca.Cert); got != nil {
			t.Fatalf("HAProxy still staples %d bytes after a hot set ssl cert; the facts say it drops them", len(got))
		}
		if view := f.status(cfg, site); view.MatchesDisk || view.Slot {
			t.Errorf("after the hot update stapler status says HAProxy serves the staple: %+v", view)
		}
		l = f.run(0, "--config", cfg)
		if n := f.resp.Requests.Load(); n != 0 {
			t.Errorf("the repair runs asked the responder %d times; nothing was due", n)
		}
		if l.find("created OCSP slot without a reload", "cert", site) == nil {
			t.Errorf("the run after the hot update does not recreate the slot:\n%s", l)
		}
		f.wantServed(port, site, nil)
		if view := f.status(cfg, site); !view.MatchesDisk {
			t.Errorf("after the repair stapler status says HAProxy does not serve the staple: %+v", view)
		}
		held.Close()
	})
}

// hapHoldConnection opens a TLS connection to HAProxy and keeps it open until the test ends
// or the caller closes it: HAProxy keeps what the connection uses alive meanwhile.
func hapHoldConnection(t *testing.T, port int, name string, ca *x509.Certificate) *tls.Conn {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// status runs `stapler status --json` with the config and returns what the (first) socket
// serves for the certificate in path.
func (f *hapFixture) status(config, path string) haproxyView {
	f.t.Helper()
	for _, cs := range statusJSON(f.t, "--config", config).Certificates {
		if cs.Path == path && len(cs.HAProxy) > 0 {
			return cs.HAProxy[0]
		}
	}
	f.t.Fatalf("stapler status shows no HAProxy for %s", path)
	return haproxyView{}
}

// TestHAProxyPendingPush: HAProxy is down during a forced run, which writes the staple to disk,
// exits 1 and records the socket in pending_push. HAProxy comes back serving an older staple
// (the one it finds on disk at start-up, swapped in for the occasion); the next run, with
// nothing due, delivers the pending push and clears pending_push.
func TestHAProxyPendingPush(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, _ := f.addCert("site.stapler.test")
		f.run(0, "--config", f.config("nosocket", nil, ""))
		first := hapReadFile(t, site+".ocsp")

		stats, sock := f.statsSocket("unix", "admin")
		port := hapFreePort(t)
		cfgFile := f.haproxyConfig("haproxy", port, stats)
		logFile := filepath.Join(f.dir, "haproxy.log")
		proc := hapLaunch(t, f.haproxy, sock, logFile, "-db", "-f", cfgFile)
		f.wantServed(port, site, nil)
		proc.stop()

		cfg := f.config("stapler", []string{sock}, "")
		l := f.run(1, "--force", "--config", cfg)
		if l.find("HAProxy unreachable; checked again at the next run", "socket", sock) == nil {
			t.Errorf("the run with HAProxy down does not say so:\n%s", l)
		}
		second := hapReadFile(t, site+".ocsp")
		if bytes.Equal(second, first) {
			t.Fatal("site.pem.ocsp did not change in the forced run")
		}
		if p := readState(t, f.state).Certificates[site].Pending; !slices.Equal(p, []string{sock}) {
			t.Fatalf("pending_push = %q, want [%q]", p, sock)
		}

		// HAProxy reads <cert>.ocsp at start-up: start it with the first staple on disk, then put
		// the second back, as stapler left it.
		hapWriteFile(t, site+".ocsp", first)
		hapLaunch(t, f.haproxy, sock, logFile, "-db", "-f", cfgFile)
		hapWriteFile(t, site+".ocsp", second)
		if _, got := hapHandshake(t, port, "site.stapler.test", f.ca.Cert); !bytes.Equal(got, first) {
			t.Fatal("the restarted HAProxy does not serve the first staple")
		}

		f.resp.Requests.Store(0)
		l = f.run(0, "--config", cfg)
		if n := f.resp.Requests.Load(); n != 0 {
			t.Errorf("the run after the failed push asked the responder %d times; nothing was due", n)
		}
		if l.find("delivered the staple an earlier run could not push", "cert", site, "socket", sock) == nil {
			t.Errorf("the staple did not go as the pending push:\n%s", l)
		}
		f.wantServed(port, site, first)
		if p := readState(t, f.state).Certificates[site].Pending; len(p) > 0 {
			t.Errorf("pending_push = %q after the push was delivered", p)
		}
	})
}

// TestHAProxyBatch: a thousand staples in one run go to HAProxy over one connection per HAProxy
// thread (at most four), counted by a TCP proxy in front of HAProxy's TCP stats socket, and
// HAProxy serves each (on 3.x, every one read back by file).
func TestHAProxyBatch(t *testing.T) {
	t.Parallel()
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		// On every branch (4 s each): the batch is spread over HAProxy's threads, which relies
		// on `show info` saying Nbthread and on how each branch refuses reads that meet the
		// certificate lock the other connections take.
		const n = 1000
		f := newHAPFixture(t, h)
		start := time.Now()
		paths := make([]string, n)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := w; i < n; i += 4 {
					paths[i], _ = f.addCert(fmt.Sprintf("site%04d.stapler.test", i))
				}
			})
		}
		wg.Wait()
		t.Logf("minted %d ECDSA P-256 certificates in %v", n, time.Since(start).Round(time.Millisecond))

		start = time.Now()
		f.run(0, "--jobs", "16", "--config", f.config("nosocket", nil, ""))
		t.Logf("first run (fetch and write %d staples, no socket): %v", n, time.Since(start).Round(time.Millisecond))
		first := map[string][]byte{}
		spot := []int{0, 1, 499, 998, n - 1}
		for _, i := range spot {
			first[paths[i]] = hapReadFile(t, paths[i]+".ocsp")
		}

		stats, direct := f.statsSocket("tcp", "admin")
		port := hapFreePort(t)
		start = time.Now()
		f.startHAProxy("haproxy", port, stats, direct)
		t.Logf("HAProxy loaded %d certificates and staples in %v", n, time.Since(start).Round(time.Millisecond))
		proxy := hapCountingProxy(t, direct)

		f.resp.Requests.Store(0)
		start = time.Now()
		l := f.run(0, "--force", "--jobs", "16", "--config", f.config("stapler", []string{proxy.addr}, ""))
		took := time.Since(start)
		info, err := haproxy.ParseInfo(hapCLI(t, direct, "show info")[0].Text)
		if err != nil {
			t.Fatal(err)
		}
		if want := max(1, min(info.Threads, 4)); proxy.conns.Load() != int64(want) {
			t.Errorf("%d connections to HAProxy's stats socket for %d staples, want %d (HAProxy runs %d threads)", proxy.conns.Load(), n, want, info.Threads)
		}
		if got := f.resp.Requests.Load(); got != n {
			t.Errorf("%d OCSP requests, want %d", got, n)
		}
		if l.find("run finished", "refreshed", strconv.Itoa(n)) == nil {
			t.Errorf("the run did not refresh every staple:\n%s", l)
		}
		hapWaitFor(t, "the proxied connection to close", 5*time.Second, func() error {
			if proxy.busy.Load() == 0 {
				return errors.New("still open")
			}
			return nil
		})
		t.Logf("forced run: fetched, wrote and pushed %d staples in %v (%s); the connection to HAProxy lasted %v",
			n, took.Round(time.Millisecond), hapTook(l), time.Duration(proxy.busy.Load()).Round(time.Millisecond))
		for _, i := range spot {
			f.wantServed(port, paths[i], first[paths[i]])
		}
		st := readState(t, f.state)
		for _, p := range paths {
			if pp := st.Certificates[p].Pending; len(pp) > 0 {
				t.Fatalf("%s: pending_push = %q", p, pp)
			}
		}
		if h.Branch == "2.6" {
			return // no response by file to compare
		}
		// Every staple, spread over the connections, is the disk's in HAProxy.
		cmds := make([]string, n)
		for i, p := range paths {
			cmds[i] = "show ssl ocsp-response base64 " + p
		}
		for i, a := range hapCLI(t, direct, cmds...) {
			if der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(a.Text), "")); err != nil || !bytes.Equal(der, hapReadFile(t, paths[i]+".ocsp")) {
				t.Fatalf("%s: HAProxy holds %.80q, not the staple on disk", paths[i], a.Text)
			}
		}
	})
}

// hapFixture is one test's world: a CA with its in-process OCSP responder, a certificate
// directory that HAProxy loads with `crt <dir>/` and stapler scans, stapler's state, and a short
// directory for unix sockets.
type hapFixture struct {
	t       *testing.T
	haproxy string // the binary
	branch  string // its branch, "2.6"
	ca      *pki.CA
	resp    *pki.Responder
	dir     string // configs, state, logs
	certs   string
	sockDir string
	state   string
}

func newHAPFixture(t *testing.T, h hapBin) *hapFixture {
	t.Helper()
	f := &hapFixture{t: t, haproxy: h.Path, branch: h.Branch, dir: t.TempDir()}
	f.ca = pki.NewCA("Stapler HAProxy Test CA", time.Now())
	f.resp = pki.StartResponder(f.ca)
	t.Cleanup(f.resp.Close)
	f.certs = filepath.Join(f.dir, "certs")
	if err := os.Mkdir(f.certs, 0o755); err != nil {
		t.Fatal(err)
	}
	// A unix socket path must fit in sun_path (108 bytes); t.TempDir paths can be longer.
	sockDir, err := os.MkdirTemp("", "stp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	f.sockDir = sockDir
	f.state = filepath.Join(f.dir, "state.json")
	return f
}

// addCert issues a leaf for name and writes it, with its CA and key, to <certs>/<name>.pem.
func (f *hapFixture) addCert(name string) (string, *x509.Certificate) {
	path := filepath.Join(f.certs, name+".pem")
	leaf, key := f.ca.Issue(pki.Leaf{Name: name, OCSP: []string{f.resp.URL()}}, time.Now())
	writeBundle(path, leaf, key, f.ca.Cert)
	return path, leaf
}

// addLeafOnly writes a leaf for name and its key, without the CA, to <certs>/<name>.pem.
func (f *hapFixture) addLeafOnly(name string) string {
	path := filepath.Join(f.certs, name+".pem")
	leaf, key := f.ca.Issue(pki.Leaf{Name: name, OCSP: []string{f.resp.URL()}}, time.Now())
	writeBundle(path, leaf, key)
	return path
}

// reissue replaces the certificate in path by a new one for the same name.
func (f *hapFixture) reissue(path string) *x509.Certificate {
	name := strings.TrimSuffix(filepath.Base(path), ".pem")
	leaf, key := f.ca.Issue(pki.Leaf{Name: name, OCSP: []string{f.resp.URL()}}, time.Now())
	writeBundle(path, leaf, key, f.ca.Cert)
	return leaf
}

// statsSocket returns a `stats socket` address for haproxy.cfg and the same socket as stapler
// names it.
func (f *hapFixture) statsSocket(kind, name string) (stats, sock string) {
	if kind == "tcp" {
		port := hapFreePort(f.t)
		return fmt.Sprintf("ipv4@127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", port)
	}
	sock = filepath.Join(f.sockDir, name+".sock")
	return sock, sock
}

// config writes a stapler config file and returns its path.
func (f *hapFixture) config(name string, sockets []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dirs = [%q]\nstate = %q\n", f.certs, f.state)
	if len(sockets) > 0 {
		quoted := make([]string, len(sockets))
		for i, s := range sockets {
			quoted[i] = strconv.Quote(s)
		}
		fmt.Fprintf(&b, "sockets = [%s]\n", strings.Join(quoted, ", "))
	}
	b.WriteString(extra)
	path := filepath.Join(f.dir, name+".toml")
	hapWriteFile(f.t, path, []byte(b.String()))
	return path
}

// run runs `stapler run args...`, fails the test unless it exits with want, and returns its
// standard error.
func (f *hapFixture) run(want int, args ...string) logs {
	f.t.Helper()
	code, l, _ := runLogged(f.t, append([]string{"run"}, args...)...)
	if code != want {
		f.t.Fatalf("stapler run %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, l)
	}
	return l
}

// haproxyConfig writes an haproxy.cfg that serves the certificate directory on 127.0.0.1:port
// with the given admin stats sockets (none for a master-worker HAProxy reached by -S).
func (f *hapFixture) haproxyConfig(name string, port int, stats ...string) string {
	var lines []string
	for _, s := range stats {
		if s != "" {
			lines = append(lines, s+" level admin")
		}
	}
	path := filepath.Join(f.dir, name+".cfg")
	hapWriteFile(f.t, path, hapConfig(port, f.certs, lines...))
	return path
}

// startHAProxy starts a foreground HAProxy with one stats socket and waits for it at sock.
func (f *hapFixture) startHAProxy(name string, port int, stats, sock string) *hapProc {
	cfg := f.haproxyConfig(name, port, stats)
	return hapLaunch(f.t, f.haproxy, sock, filepath.Join(f.dir, name+".log"), "-db", "-f", cfg)
}

// wantServed fails the test unless HAProxy on port staples exactly the bytes of <path>.ocsp
// for the certificate in path. old, if given, is a staple HAProxy had before, named in the
// message when HAProxy still serves it.
func (f *hapFixture) wantServed(port int, path string, old []byte) {
	f.t.Helper()
	name := strings.TrimSuffix(filepath.Base(path), ".pem")
	want := hapReadFile(f.t, path+".ocsp")
	_, got := hapHandshake(f.t, port, name, f.ca.Cert)
	switch {
	case bytes.Equal(got, want):
	case got == nil:
		f.t.Errorf("%s: HAProxy staples nothing, not the %d bytes of %s.ocsp", name, len(want), filepath.Base(path))
	case old != nil && bytes.Equal(got, old):
		f.t.Errorf("%s: HAProxy still staples the old response, not the %d bytes of %s.ocsp", name, len(want), filepath.Base(path))
	default:
		f.t.Errorf("%s: HAProxy staples %d bytes that are not the %d bytes of %s.ocsp", name, len(got), len(want), filepath.Base(path))
	}
}

// hapProc is an HAProxy started by a test, in a process group of its own so that stopping it
// stops a master-worker HAProxy's workers too.
type hapProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
	once   sync.Once
}

// cpu is the CPU time (user and system, all threads) the HAProxy process used so far, from
// /proc/<pid>/stat, whose fields 14 and 15 count clock ticks (100 per second on Linux).
func (h *hapProc) cpu(t testing.TB) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", h.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("HAProxy's CPU time: %v", err)
	}
	// The fields after the command name, in parentheses, start with field 3.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(fields) < 13 {
		t.Fatalf("HAProxy's CPU time: /proc/%d/stat has %d fields after the name", h.cmd.Process.Pid, len(fields))
	}
	utime, uerr := strconv.ParseInt(fields[11], 10, 64)
	stime, serr := strconv.ParseInt(fields[12], 10, 64)
	if uerr != nil || serr != nil {
		t.Fatalf("HAProxy's CPU time: %q %q in /proc/%d/stat", fields[11], fields[12], h.cmd.Process.Pid)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// hapLaunch runs haproxy with args until the test ends or stop is called, and returns once its
// runtime API answers `show version` at ready (a socket as stapler names it). Its output is
// appended to logFile, which the test prints if it fails.
// hapStartWait is how long hapLaunch waits for HAProxy's runtime API; the benchmark's HAProxy
// loads 10,000 certificates first.
var hapStartWait = 15 * time.Second

func hapLaunch(t testing.TB, bin, ready, logFile string, args ...string) *hapProc {
	t.Helper()
	logw, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logw.Close() // the child has its own copy
	p := &hapProc{t: t, cmd: exec.Command(bin, args...), exited: make(chan struct{}), log: logFile}
	p.cmd.Stdout, p.cmd.Stderr = logw, logw
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting haproxy: %v", err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			log, _ := os.ReadFile(logFile)
			t.Logf("%s:\n%s", filepath.Base(logFile), log)
		}
	})
	hapWaitFor(t, "HAProxy's runtime API at "+ready, hapStartWait, func() error {
		select {
		case <-p.exited:
			log, _ := os.ReadFile(logFile)
			t.Fatalf("haproxy exited at start-up (%v):\n%s", p.cmd.ProcessState, log)
		default:
		}
		answers, err := hapTryCLI(ready, "show version")
		if err == nil && haproxy.ParseVersion(answers[0].Text).Major == 0 {
			err = fmt.Errorf("unexpected answer to show version: %q", answers[0].Text)
		}
		return err
	})
	return p
}

// stop kills HAProxy's process group and waits for HAProxy to exit.
func (p *hapProc) stop() {
	p.once.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
}

// hapHandshake does a TLS handshake with HAProxy on port for name, verified against ca, and
// returns the leaf HAProxy presents and the OCSP response it staples, nil when none.
func hapHandshake(t *testing.T, port int, name string, ca *x509.Certificate) (*x509.Certificate, []byte) {
	t.Helper()
	leaf, staple, err := hapTryHandshake(port, name, ca)
	if err != nil {
		t.Fatal(err)
	}
	return leaf, staple
}

func hapTryHandshake(port int, name string, ca *x509.Certificate) (*x509.Certificate, []byte, error) {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return nil, nil, fmt.Errorf("TLS handshake with HAProxy for %s: %w", name, err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if got := st.PeerCertificates[0].Subject.CommonName; got != name {
		return nil, nil, fmt.Errorf("HAProxy presented %q for SNI %q", got, name)
	}
	return st.PeerCertificates[0], st.OCSPResponse, nil
}

// hapConnProxy forwards TCP connections to a target and counts them.
type hapConnProxy struct {
	addr  string
	conns atomic.Int64
	busy  atomic.Int64 // nanoseconds the finished connections were open, in all
}

// hapCountingProxy listens on 127.0.0.1 and forwards each connection to target, half-closes
// included (the runtime API answers the last command after the client's half-close).
func hapCountingProxy(t testing.TB, target string) *hapConnProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hapConnProxy{addr: ln.Addr().String()}
	var mu sync.Mutex
	var open []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			accepted := time.Now()
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			var both sync.WaitGroup
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				dst.(*net.TCPConn).CloseWrite()
			}
			both.Go(func() { pipe(up, c) })
			both.Go(func() { pipe(c, up) })
			wg.Go(func() {
				both.Wait()
				c.Close()
				up.Close()
				p.busy.Add(int64(time.Since(accepted)))
			})
		}
	})
	return p
}

// hapTryCLI sends commands to the runtime API at sock (as stapler names sockets) over one
// connection, as an operator would with socat.
func hapTryCLI(sock string, cmds ...string) ([]haproxy.Answer, error) {
	addr, err := haproxy.ParseAddr(sock)
	if err != nil {
		return nil, err
	}
	c, err := haproxy.Dial(context.Background(), addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	prefix := ""
	if addr.Master {
		prefix = "@1 "
	}
	return c.ExecAll(prefix, cmds)
}

// hapCLI is hapTryCLI that fails the test when the connection does.
func hapCLI(t testing.TB, sock string, cmds ...string) []haproxy.Answer {
	t.Helper()
	answers, err := hapTryCLI(sock, cmds...)
	if err != nil {
		t.Fatal(err)
	}
	return answers
}

// hapHotUpdate replaces the certificate in path at run time with the same PEM, as ACME
// clients that use `set ssl cert` do: HAProxy drops the certificate's staple.
func hapHotUpdate(t testing.TB, sock, path string) {
	t.Helper()
	answers := hapCLI(t, sock, haproxy.Payload("set ssl cert "+haproxy.Arg(path), string(hapReadFile(t, path))), "commit ssl cert "+haproxy.Arg(path))
	if !strings.Contains(answers[0].Text, "Transaction created") || !strings.Contains(answers[1].Text, "Success!") {
		t.Fatalf("hot set ssl cert: HAProxy answered %q, then %q", answers[0].Text, answers[1].Text)
	}
}

func hapReadFileIfAny(path string) []byte {
	data, _ := os.ReadFile(path)
	return data
}

// hapTook is how long the run says it took.
func hapTook(l logs) string {
	if sum := l.find("run finished"); sum != nil {
		return fmt.Sprintf("stapler says %vs", sum["seconds"])
	}
	return "no summary line"
}

// TestHAProxyAwkwardSetups: file names HAProxy's command line must have escaped, two sockets
// that lead to one HAProxy, a socket below level admin, and a socket that is down when there
// is nothing to push.
func TestHAProxyAwkwardSetups(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		t.Run("file name with a space and a semicolon", func(t *testing.T) {
			f := newHAPFixture(t, h)
			site := filepath.Join(f.certs, "my site;1.pem")
			leaf, key := f.ca.Issue(pki.Leaf{Name: "odd.stapler.test", OCSP: []string{f.resp.URL()}}, time.Now())
			writeBundle(site, leaf, key, f.ca.Cert)
			stats, sock := f.statsSocket("unix", "admin")
			port := hapFreePort(t)
			f.startHAProxy("haproxy", port, stats, sock)
			l := f.run(0, "--config", f.config("stapler", []string{sock}, ""))
			if l.find("created OCSP slot without a reload") == nil {
				t.Errorf("no slot created:\n%s", l)
			}
			want := hapReadFile(t, site+".ocsp")
			if _, got := hapHandshake(t, port, "odd.stapler.test", f.ca.Cert); !bytes.Equal(got, want) {
				t.Errorf("HAProxy staples %d bytes, not the %d on disk", len(got), len(want))
			}
		})

		t.Run("two sockets to one HAProxy", func(t *testing.T) {
			f := newHAPFixture(t, h)
			var sites []string
			for _, name := range []string{"a", "b", "c", "d"} {
				site, _ := f.addCert(name + ".stapler.test")
				sites = append(sites, site)
			}
			unixStats, unixSock := f.statsSocket("unix", "admin")
			tcpStats, tcpSock := f.statsSocket("tcp", "")
			port := hapFreePort(t)
			cfg := f.haproxyConfig("haproxy", port, unixStats, tcpStats)
			hapLaunch(t, f.haproxy, unixSock, filepath.Join(f.dir, "haproxy.log"), "-db", "-f", cfg)
			l := f.run(0, "--config", f.config("stapler", []string{unixSock, tcpSock}, ""))
			if l.count("ERROR") > 0 || l.mentions("locked") {
				t.Errorf("errors with two sockets to one HAProxy:\n%s", l)
			}
			for _, site := range sites {
				f.wantServed(port, site, nil)
			}
		})

		t.Run("operator level", func(t *testing.T) {
			f := newHAPFixture(t, h)
			site, _ := f.addCert("site.stapler.test")
			_, sock := f.statsSocket("unix", "operator")
			port := hapFreePort(t)
			cfg := filepath.Join(f.dir, "haproxy.cfg")
			hapWriteFile(t, cfg, hapConfig(port, f.certs, sock+" level operator"))
			hapLaunch(t, f.haproxy, sock, filepath.Join(f.dir, "haproxy.log"), "-db", "-f", cfg)
			cfgFile := f.config("stapler", []string{sock}, "")
			if h.Branch == "3.4" {
				// HAProxy 3.4 refuses every OCSP command below level admin: one error that
				// names the socket and the fix, and no reload can help.
				l := f.run(1, "--config", cfgFile)
				if n := l.count("ERROR"); n != 1 || !l.mentions("stats socket ... level admin") || !l.mentions(sock) {
					t.Errorf("want one error naming the socket and the fix:\n%s", l)
				}
				return
			}
			// HAProxy loaded the certificate without a .ocsp file, and the socket may not create
			// the slot: only a reload helps. On the run that finds the certificate that is
			// expected (a deploy hook reloads next): a warning. Later it is an error.
			l := f.run(0, "--config", cfgFile)
			if l.find("HAProxy will load this staple when it reloads", "level", "WARN", "cert", site) == nil {
				t.Errorf("no warning about the reload:\n%s", l)
			}
			l = f.run(1, "--config", cfgFile)
			if !l.mentions("needs reload: HAProxy has no OCSP slot for these certificates, and creating one without a reload needs a socket with level admin") ||
				l.count("ERROR") != 1 {
				t.Errorf("want one needs reload error:\n%s", l)
			}
			if st := readState(t, f.state).Certificates[site]; len(st.Pending) != 1 {
				t.Errorf("pending pushes %q, want the socket (for status and check)", st.Pending)
			}
			// With reload_command, the reload is run, and the run succeeds.
			marker := filepath.Join(f.dir, "reloaded")
			l = f.run(0, "--config", f.config("reload", []string{sock}, fmt.Sprintf("reload_command = %q\n", "touch "+marker)))
			if _, err := os.Stat(marker); err != nil {
				t.Errorf("reload_command did not run:\n%s", l)
			}
		})

		t.Run("socket down with nothing to push", func(t *testing.T) {
			f := newHAPFixture(t, h)
			f.addCert("site.stapler.test")
			f.run(0, "--config", f.config("first", nil, ""))
			l := f.run(1, "--config", f.config("down", []string{filepath.Join(f.sockDir, "nobody.sock")}, ""))
			if l.find("HAProxy unreachable; checked again at the next run") == nil {
				t.Errorf("no error about the socket:\n%s", l)
			}
		})
	})
}

// ownUpdater starts HAProxy with one certificate under its own ocsp-update (launchOwnUpdater)
// and waits for its first update. It returns the certificate file, the admin socket, the HTTPS
// port and the response HAProxy holds.
func (f *hapFixture) ownUpdater() (site, sock string, port int, held []byte) {
	t := f.t
	t.Helper()
	site, sock, port = f.launchOwnUpdater()
	hapWaitFor(t, "HAProxy's own first OCSP update", 10*time.Second, func() error {
		a := hapCLI(t, sock, "show ssl ocsp-response base64 "+site)
		der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(a[0].Text), ""))
		if err != nil || len(der) == 0 {
			return fmt.Errorf("HAProxy holds %q", a[0].Text)
		}
		held = der
		return nil
	})
	return site, sock, port, held
}

// launchOwnUpdater starts HAProxy with one certificate under its own ocsp-update
// (`[ocsp-update on]` in a crt-list, 3.0+), and returns the certificate file, the admin socket
// and the HTTPS port.
func (f *hapFixture) launchOwnUpdater() (site, sock string, port int) {
	t := f.t
	t.Helper()
	site, _ = f.addCert("site.stapler.test")
	stats, sock := f.statsSocket("unix", "admin")
	port = hapFreePort(t)
	list := filepath.Join(f.dir, "list.txt")
	hapWriteFile(t, list, []byte(site+" [ocsp-update on]\n"))
	cfg := filepath.Join(f.dir, "haproxy.cfg")
	hapWriteFile(t, cfg, bytes.Replace(hapConfig(port, f.certs, stats+" level admin"),
		[]byte("ssl crt "+f.certs+"/"), []byte("ssl crt-list "+list), 1))
	hapLaunch(t, f.haproxy, sock, filepath.Join(f.dir, "haproxy.log"), "-db", "-f", cfg)
	return site, sock, port
}

// TestHAProxyOwnUpdater: a certificate under HAProxy's own ocsp-update (2.8+: `[ocsp-update
// on]` in a crt-list) is HAProxy's to keep fresh, but HAProxy keeps what it fetches in memory
// only. With HAProxy's copy good, stapler asks no responder (here: the responder is down), keeps
// HAProxy's copy in <cert>.ocsp so that a restart starts from it, exits 0, and status says
// that HAProxy is the updater.
func TestHAProxyOwnUpdater(t *testing.T) {
	forEachHAProxyFrom(t, "3.0", func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, sock, port, held := f.ownUpdater()
		if _, err := os.Stat(site + ".ocsp"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s.ocsp exists before stapler ran (stat: %v): HAProxy writes nothing to disk", site, err)
		}

		f.resp.SetMode("down")
		f.resp.Requests.Store(0)
		stapler := f.config("stapler", []string{sock}, "")
		l := f.run(0, "--config", stapler)
		if l.find("kept HAProxy's own staple on disk", "cert", site) == nil {
			t.Errorf("no word of keeping HAProxy's staple:\n%s", l)
		}
		if l.find("run finished", "checked", "1", "up_to_date", "1", "failed", "0") == nil {
			t.Errorf("the kept copy is not counted once, as up to date:\n%s", l)
		}
		if got := hapReadFile(t, site+".ocsp"); !bytes.Equal(got, held) {
			t.Errorf("%s.ocsp holds %d bytes, not the %d HAProxy fetched", site, len(got), len(held))
		}
		f.wantServed(port, site, nil)
		if view := f.status(stapler, site); !view.MatchesDisk {
			t.Errorf("status: HAProxy does not serve the staple on disk: %+v", view)
		}
		updater := "no entry"
		for _, cs := range statusJSON(t, "--config", stapler).Certificates {
			if cs.Path == site {
				updater = cs.Updater
			}
		}
		if updater != "haproxy" {
			t.Errorf("status --json: the updater of %s is %q, want haproxy", site, updater)
		}

		// The next run has nothing to do.
		l = f.run(0, "--config", stapler)
		if l.find("kept HAProxy's own staple on disk") != nil || l.count("ERROR") > 0 {
			t.Errorf("the second run did more than look:\n%s", l)
		}
	})
}

// TestHAProxyOwnUpdaterRevoked: a revoked response that HAProxy's own ocsp-update fetched is
// kept on disk like any other, and the run says the certificate is revoked and exits 1.
func TestHAProxyOwnUpdaterRevoked(t *testing.T) {
	forEachHAProxyFrom(t, "3.0", func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		f.resp.SetMode("revoked")
		site, sock, _, held := f.ownUpdater()
		if resp, err := ocsp.ParseResponse(held, nil); err != nil || resp.Status != ocsp.Revoked {
			t.Fatalf("HAProxy holds a response that is not revoked: %v", err)
		}
		f.resp.SetMode("down")
		l := f.run(1, "--config", f.config("stapler", []string{sock}, ""))
		if l.find("kept HAProxy's own staple on disk", "cert", site) == nil || l.find("certificate is revoked", "cert", site) == nil {
			t.Errorf("no word of keeping HAProxy's revoked staple:\n%s", l)
		}
		if got := hapReadFile(t, site+".ocsp"); !bytes.Equal(got, held) {
			t.Errorf("%s.ocsp holds %d bytes, not the %d HAProxy fetched", site, len(got), len(held))
		}
		if s := l.find("run finished"); s == nil || s["revoked"] != float64(1) {
			t.Errorf("the summary does not count the revoked certificate:\n%s", l)
		}
	})
}

// TestHAProxyOwnUpdaterFailing: HAProxy's own ocsp-update verifies a response with the bundle
// alone, so a delegated responder certificate makes every update fail (OCSP_basic_verify).
// stapler, which verifies delegated responders, then fetches and pushes the staple itself.
func TestHAProxyOwnUpdaterFailing(t *testing.T) {
	forEachHAProxyFrom(t, "3.0", func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		// An issuing CA under a root that the bundle lacks, as public CAs have: HAProxy can
		// then verify the delegated responder certificate against nothing it trusts.
		f.ca = pki.NewCA("Stapler Test Root", time.Now()).Subordinate("Stapler Issuing CA", time.Now())
		f.resp = pki.StartResponder(f.ca)
		t.Cleanup(f.resp.Close)
		f.resp.SetMode("delegated")
		site, sock, port := f.launchOwnUpdater()
		hapWaitFor(t, "HAProxy's own first OCSP update to fail", 10*time.Second, func() error {
			u := haproxy.ParseOCSPUpdates(hapCLI(t, sock, "show ssl ocsp-updates")[0].Text)
			if len(u) != 1 || !u[0].Failing() {
				return fmt.Errorf("HAProxy's updates: %+v", u)
			}
			return nil
		})
		l := f.run(0, "--config", f.config("stapler", []string{sock}, ""))
		if l.find("HAProxy's ocsp-update is failing; stapler fetches the staple itself", "cert", site) == nil {
			t.Errorf("no word of HAProxy's failing updater:\n%s", l)
		}
		f.wantServed(port, site, nil)
	})
}

// TestHAProxyMasterReload: during a reload, the old worker lives on while it has connections.
// Through the master CLI a run gives the staple to every worker `show proc` lists, the new one
// (which serves new handshakes) and the old one (which keeps its connections), each on a
// connection of its own so that the old worker's exit cannot cut the exchange.
func TestHAProxyMasterReload(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, _ := f.addCert("site.stapler.test")
		f.run(0, "--config", f.config("nosocket", nil, ""))
		first := hapReadFile(t, site+".ocsp")

		master := filepath.Join(f.sockDir, "master.sock")
		sock := "master:" + master
		port := hapFreePort(t)
		cfg := f.haproxyConfig("haproxy", port, "")
		proc := hapLaunch(t, f.haproxy, sock, filepath.Join(f.dir, "haproxy.log"), "-W", "-db", "-S", master, "-f", cfg)
		f.wantServed(port, site, nil)

		held := hapHoldConnection(t, port, "site.stapler.test", f.ca.Cert)
		var old haproxy.Proc
		syscall.Kill(proc.cmd.Process.Pid, syscall.SIGUSR2) // reload
		hapWaitFor(t, "an old worker after a reload", 10*time.Second, func() error {
			c, err := haproxy.Dial(context.Background(), mustAddr(sock), time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			text, err := c.Exec("", "show proc")
			if err != nil {
				return err
			}
			procs, err := haproxy.ParseProcs(text)
			if err != nil {
				return err
			}
			for _, p := range procs {
				if p.Old {
					old = p
				}
			}
			if old.Pid == 0 || len(procs) < 3 {
				return fmt.Errorf("show proc:\n%s", text)
			}
			return nil
		})

		f.run(0, "--force", "--config", f.config("stapler", []string{sock}, ""))
		disk := hapReadFile(t, site+".ocsp")
		if bytes.Equal(disk, first) {
			t.Fatal("site.pem.ocsp did not change in the forced run")
		}
		f.wantServed(port, site, first) // the new worker
		// The old worker, asked through the master CLI, holds the new staple too.
		c, err := haproxy.Dial(context.Background(), mustAddr(sock), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		resp := must(ocsp.ParseResponse(disk, nil))
		prefix := fmt.Sprintf("@!%d ", old.Pid)
		if h.Branch == "2.6" {
			text, err := c.Exec(prefix, "show ssl ocsp-response "+certIDHex(must(parseBundle(hapReadFile(t, site)))[0], f.ca.Cert))
			got, ok := haproxy.ParseOCSPText(text)
			if err != nil || !ok || !got.ThisUpdate.Equal(resp.ThisUpdate.Truncate(time.Second)) {
				t.Errorf("the old worker holds %+v (%v), not the staple of thisUpdate %v", got, err, resp.ThisUpdate)
			}
		} else {
			text, err := c.Exec(prefix, "show ssl ocsp-response base64 "+site)
			if got, _ := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(text), "")); err != nil || !bytes.Equal(got, disk) {
				t.Errorf("the old worker holds %d bytes (%v), not the %d of the new staple", len(got), err, len(disk))
			}
		}
		held.Close()
	})
}

// TestHAProxyLargeStaple (issue 10, bug 5): a staple too large for HAProxy's runtime API
// reaches HAProxy when it starts from disk, and from then on HAProxy serves it: runs exit 0 and
// speak of no reload (they did, for ever, when only pushes counted).
func TestHAProxyLargeStaple(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		f.resp.SetMode("huge")
		site, _ := f.addCert("site.stapler.test")
		f.run(0, "--config", f.config("nosocket", nil, ""))
		if n := len(hapReadFile(t, site+".ocsp")); n < 12<<10 {
			t.Fatalf("the staple has %d bytes, want more than 12 KB", n)
		}
		stats, sock := f.statsSocket("unix", "admin")
		port := hapFreePort(t)
		f.startHAProxy("haproxy", port, stats, sock)
		f.wantServed(port, site, nil)
		cfg := f.config("stapler", []string{sock}, "")
		for i := range 2 {
			code, l, _ := runLogged(t, "run", "--config", cfg)
			if code != 0 || l.find("needs reload") != nil {
				t.Errorf("run %d with HAProxy serving the large staple: exit %d\n%s", i+1, code, l)
			}
		}
		if view := f.status(cfg, site); !view.MatchesDisk {
			t.Errorf("status: %+v", view)
		}
	})
}

// TestHAProxyIssuerBlankLine (issue 10, bug 7): an operator's <cert>.issuer holding the issuer,
// an empty line and another certificate goes to HAProxy re-encoded, without the empty line
// that would end the payload early and run the rest as commands: both certificates get their
// OCSP slot, and every answer on the connection stays with its command.
func TestHAProxyIssuerBlankLine(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		var sites []string
		for _, name := range []string{"a.stapler.test", "b.stapler.test"} {
			site := f.addLeafOnly(name)
			other := pki.NewCA("Another CA", time.Now())
			hapWriteFile(t, site+".issuer", append(append(pki.CertPEM(f.ca.Cert), '\n', '\n'), pki.CertPEM(other.Cert)...))
			sites = append(sites, site)
		}
		stats, sock := f.statsSocket("unix", "admin")
		port := hapFreePort(t)
		f.startHAProxy("haproxy", port, stats, sock) // no .ocsp yet: no slots
		code, l, _ := runLogged(t, "run", "--config", f.config("stapler", []string{sock}, ""))
		if code != 0 {
			t.Errorf("exit %d\n%s", code, l)
		}
		for _, site := range sites {
			if l.find("created OCSP slot without a reload", "cert", site) == nil {
				t.Errorf("%s: no slot created\n%s", site, l)
			}
			f.wantServed(port, site, nil)
		}
	})
}

// TestHAProxyNewerUnverifiedResponse: HAProxy takes a response by `set ssl ocsp-response`
// without checking its signature (as the fake HAProxy does), also in a pipelined batch larger
// than one write. A newer response whose embedded signer did not sign it is then replaced by
// the staple on disk where HAProxy shows the response's bytes (3.x); 2.6 shows only its text,
// whose signature stapler cannot check, so it is kept there as newer.
func TestHAProxyNewerUnverifiedResponse(t *testing.T) {
	forEachHAProxy(t, func(t *testing.T, h hapBin) {
		f := newHAPFixture(t, h)
		site, leaf := f.addCert("site.stapler.test")
		stats, sock := f.statsSocket("unix", "admin")
		f.run(0, "--config", f.config("nosocket", nil, ""))
		disk := hapReadFile(t, site+".ocsp")
		port := hapFreePort(t)
		f.startHAProxy("haproxy", port, stats, sock)

		now := time.Now()
		signer, _ := f.ca.Delegate(true, now.Add(-time.Hour), now.Add(48*time.Hour))
		_, otherKey := f.ca.Delegate(true, now.Add(-time.Hour), now.Add(48*time.Hour))
		forged := f.ca.Respond(leaf.SerialNumber, ocsp.Good, now.Add(-time.Minute), now.Add(25*time.Hour), signer, otherKey)
		if _, err := ocsp.ParseResponse(forged, nil); err == nil {
			t.Fatal("the forged response passes x/crypto/ocsp's check")
		}
		c, err := haproxy.Dial(context.Background(), mustAddr(sock), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cmds := make([]string, 200) // about 180 KB: more than one write of the pipelined batch
		for i := range cmds {
			cmds[i] = "set ssl ocsp-response " + base64.StdEncoding.EncodeToString(forged)
		}
		answers, err := c.ExecAll("", cmds)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, a := range answers {
			if a.Text != haproxy.ReplyUpdated {
				t.Fatalf("push %d of the forged response: HAProxy answered %q", i, a.Text)
			}
		}

		f.run(0, "--config", f.config("stapler", []string{sock}, ""))
		_, got := hapHandshake(t, port, "site.stapler.test", f.ca.Cert)
		switch want := disk; {
		case h.Branch == "2.6" && !bytes.Equal(got, forged):
			t.Errorf("2.6: HAProxy staples %d bytes, not the newer response it was given (stapler sees only its text)", len(got))
		case h.Branch != "2.6" && !bytes.Equal(got, want):
			t.Errorf("HAProxy staples %d bytes, not the %d bytes of site.pem.ocsp that replace the badly signed newer response", len(got), len(want))
		}
	})
}
