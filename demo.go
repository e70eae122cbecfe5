package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/haproxy"
	"stapler/internal/ocspcheck"
	"stapler/internal/pki"
)

// `stapler demo`: the whole job on a throw-away PKI, OCSP responder and HAProxy, all on
// 127.0.0.1 and in one temporary directory.

// lookHAProxy finds HAProxy on PATH, else where Debian installs it (/usr/sbin is not on an
// ordinary user's PATH); "" when it is not installed.
func lookHAProxy() string {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	const debian = "/usr/sbin/haproxy"
	if fi, err := os.Stat(debian); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return debian
	}
	return ""
}

// demoOptions are the settings of demo.
type demoOptions struct {
	HAProxy   string // HAProxy's binary; "" runs the demo without HAProxy
	NoHAProxy bool   // HAProxy is left out on request (--no-haproxy), not for lack of one
	Keep      bool   // keep the directory
}

// demoCert is one of the demo's certificates, and what should become of it.
type demoCert struct {
	File    string // in certs/
	Name    string // its DNS name
	About   string
	OCSP    bool // names the demo responder
	Chain   bool // the CA certificate is in the bundle
	Revoked bool
	leaf    *x509.Certificate
}

// want is the staple status the demo expects: good, revoked, or none without a responder.
func (dc demoCert) want() string {
	switch {
	case !dc.OCSP:
		return "none"
	case dc.Revoked:
		return "revoked"
	}
	return "good"
}

// demoReport tells the demo's story and collects what did not go as expected.
type demoReport struct {
	w        io.Writer
	problems []string
}

func (r *demoReport) say(format string, args ...any) { fmt.Fprintf(r.w, format+"\n", args...) }

func (r *demoReport) unexpected(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	r.problems = append(r.problems, p)
	r.say("   UNEXPECTED: %s", p)
}

// demo runs the demo, telling the story on w. It returns an error when anything did not
// behave as it should.
func demo(ctx context.Context, w io.Writer, opt demoOptions) (err error) {
	start := time.Now()
	r := &demoReport{w: w}
	dir, err := os.MkdirTemp("", "stapler-demo") // short: a unix socket path must fit 108 bytes
	if err != nil {
		return err
	}
	d := &demoWorld{dir: dir, certsDir: filepath.Join(dir, "certs"), issuersDir: filepath.Join(dir, "issuers")}
	if opt.Keep {
		r.say("stapler demo: everything happens in %s, kept at the end (--keep).\n", dir)
	} else {
		r.say("stapler demo: everything happens in %s, removed at the end.\n", dir)
	}
	defer func() { err = errors.Join(err, d.finish(r, opt.Keep)) }()
	stop, err := d.makePKI(r)
	if err != nil {
		return err
	}
	defer stop()
	if err := d.startHAProxy(ctx, r, opt); err != nil {
		return err
	}
	if d.hap != nil {
		defer d.hap.stop()
	}
	if err := d.run(ctx, r, w); err != nil {
		return err
	}
	if d.hap != nil {
		r.say("5. TLS handshakes with HAProxy, as a browser makes them (SNI, verified against the demo CA):")
		for _, dc := range d.certs {
			r.checkHandshake(ctx, d.hap.addr, dc, d.ca.Cert, d.certsDir)
		}
		if len(r.problems) == 0 {
			r.say("   HAProxy was never reloaded: those staples reached it over the runtime API alone.")
		}
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	if len(r.problems) > 0 {
		if d.hap != nil {
			if log, err := os.ReadFile(d.hap.log); err == nil && len(log) > 0 {
				r.say("\nHAProxy's output:\n%s", bytes.TrimSpace(log))
			}
		}
		if len(r.problems) == 1 {
			return fmt.Errorf("the demo did not go as it should: %s", r.problems[0])
		}
		return fmt.Errorf("the demo did not go as it should: %s; and %d more problems, marked UNEXPECTED above", r.problems[0], len(r.problems)-1)
	}
	r.say("\nEverything behaved as it should, in %v. Next: 'stapler run --help'.", time.Since(start).Round(10*time.Millisecond))
	return nil
}

// demoWorld is what the demo makes: a directory with certificates, a CA with its responder,
// and perhaps an HAProxy.
type demoWorld struct {
	dir, certsDir, issuersDir string
	ca                        *pki.CA
	certs                     []demoCert
	hap                       *demoHAProxy
}

// makePKI makes the CA, the certificates and the OCSP responder (whose address goes into the
// certificates, so it listens first). stop stops the responder.
func (d *demoWorld) makePKI(r *demoReport) (stop func(), err error) {
	for _, dir := range []string{d.certsDir, d.issuersDir} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting the OCSP responder: %w", err)
	}
	responder := "http://" + ln.Addr().String()
	d.ca = pki.NewCA("stapler demo CA", time.Now())
	d.certs = []demoCert{
		{File: "shop.pem", Name: "shop.demo.test", About: "certificate, CA certificate and key", OCSP: true, Chain: true},
		{File: "api.pem", Name: "api.demo.test", About: "certificate and key only; the CA is in issuers/", OCSP: true},
		{File: "legacy.pem", Name: "legacy.demo.test", About: "names no OCSP responder", Chain: true},
		{File: "revoked.pem", Name: "revoked.demo.test", About: "revoked: the responder says so", OCSP: true, Chain: true, Revoked: true},
	}
	for i := range d.certs {
		if err := issueDemo(d.ca, &d.certs[i], responder, d.certsDir, time.Now()); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(d.issuersDir, "demo-ca.pem"), pki.CertPEM(d.ca.Cert), 0o644); err != nil {
		ln.Close()
		return nil, err
	}
	resp := pki.ServeResponder(d.ca, ln)
	for _, dc := range d.certs {
		if dc.Revoked {
			resp.Revoke(dc.leaf.SerialNumber)
		}
	}
	r.say("1. Made a demo CA, an OCSP responder on %s and four certificates:", responder)
	for _, dc := range d.certs {
		r.say("     %-18s %-18s %s", "certs/"+dc.File, dc.Name, dc.About)
	}
	return resp.Close, nil
}

// startHAProxy starts HAProxy before any staple exists: it has no OCSP slots.
func (d *demoWorld) startHAProxy(ctx context.Context, r *demoReport, opt demoOptions) (err error) {
	switch {
	case opt.HAProxy != "":
		if d.hap, err = startDemoHAProxy(ctx, opt.HAProxy, d.dir, d.certsDir); err != nil {
			return err
		}
		r.say("2. Started HAProxy %s, serving certs/ on %s with a stats socket at", d.hap.version, d.hap.addr)
		r.say("   level admin. No .ocsp file exists yet, so it has no OCSP slot and staples nothing.")
	case opt.NoHAProxy:
		r.say("2. HAProxy is left out (--no-haproxy), so this demo stops at the files on disk.")
	default:
		r.say("2. haproxy is not installed, so this demo stops at the files on disk; apt-get install haproxy to see the rest.")
	}
	return nil
}

// run runs the real `stapler run`, then shows what `stapler status` says.
func (d *demoWorld) run(ctx context.Context, r *demoReport, w io.Writer) error {
	cfg := defaultConfig()
	cfg.Dirs, cfg.IssuerDirs, cfg.State = []string{d.certsDir}, []string{d.issuersDir}, filepath.Join(d.dir, "state.json")
	if d.hap != nil {
		cfg.Sockets = []string{d.hap.sock}
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("demo settings: %w", err)
	}
	opts := runOptions{Config: cfg}
	r.say("3. Ran 'stapler run' with these settings (its log is on stderr):")
	r.say("     dirs = [%s]\n     issuer_dirs = [%s]", strconv.Quote(d.certsDir), strconv.Quote(d.issuersDir))
	if d.hap != nil {
		r.say("     sockets = [%s]", strconv.Quote(d.hap.sock))
	}
	r.say("     state = %s", strconv.Quote(cfg.State))
	sum, err := run(ctx, opts, time.Now())
	if err != nil {
		return fmt.Errorf("stapler run: %w", err)
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	r.explainRun(sum, d.certs, d.ca.Cert, d.certsDir, d.hap != nil)

	r.say("4. 'stapler status' says:")
	now := time.Now()
	listed := startScan(opts)
	state, err := loadState(opts.State, false)
	if err != nil {
		return fmt.Errorf("stapler status: %w", err)
	}
	rep, err := collectStatus(ctx, opts, state, listed, now)
	if err != nil {
		return fmt.Errorf("stapler status: %w", err)
	}
	if err := writeStatusTable(w, rep, now); err != nil {
		return err
	}
	r.checkStatus(rep, d.certs, d.certsDir, d.hap != nil)
	return nil
}

// finish removes the demo directory, or says how to look at it.
// selfCommand is how the person who ran stapler runs it again: "go run ." when go run built it
// (its binary is in a temporary directory that is already gone), "stapler" when that is the
// stapler on PATH, else the path it was run by.
func selfCommand() string {
	self, err := os.Executable()
	if err != nil {
		return "stapler"
	}
	if strings.Contains(self, string(filepath.Separator)+"go-build") {
		return "go run ."
	}
	if onPath, err := exec.LookPath("stapler"); err == nil {
		if a, b := orEmpty(filepath.EvalSymlinks(onPath)), orEmpty(filepath.EvalSymlinks(self)); a == b {
			return "stapler"
		}
	}
	return self
}

// orEmpty is a value, or "" when it came with an error.
func orEmpty(s string, err error) string {
	if err != nil {
		return ""
	}
	return s
}

func (d *demoWorld) finish(r *demoReport, keep bool) error {
	if !keep {
		if err := os.RemoveAll(d.dir); err != nil {
			return fmt.Errorf("removing the demo directory: %w", err)
		}
		return nil
	}
	r.say("\nKept %s; the responder and HAProxy have stopped. To look:", d.dir)
	r.say("   ls -l %s %s", d.dir, d.certsDir)
	r.say("   openssl ocsp -respin %s -resp_text -noverify", stapleName(filepath.Join(d.certsDir, "shop.pem")))
	r.say("   %s status --config /dev/null --dir %s --state %s", selfCommand(), d.certsDir, filepath.Join(d.dir, "state.json"))
	if d.hap != nil {
		r.say("   cat %s %s", filepath.Join(d.dir, "haproxy.cfg"), d.hap.log)
	}
	return nil
}

// explainRun says what the run did with each certificate, checking it against what the
// demo expects.
func (r *demoReport) explainRun(sum summary, certs []demoCert, ca *x509.Certificate, certsDir string, withHAProxy bool) {
	counts := sum
	counts.Phases = nil
	if want := (summary{Checked: 4, Refreshed: 3, NoResponder: 1, Revoked: 1}); !reflect.DeepEqual(counts, want) {
		r.unexpected("the run counted %+v, want %+v", counts, want)
	}
	exit := exitOK
	if !sum.ok() {
		exit = exitFailed
	}
	r.say("   What happened:")
	now := time.Now()
	for _, dc := range certs {
		path := filepath.Join(certsDir, dc.File)
		der, err := os.ReadFile(stapleName(path))
		switch {
		case dc.want() == "none" && errors.Is(err, os.ErrNotExist):
			r.say("   - %s names no OCSP responder, so there is nothing to staple: skipped quietly,", dc.File)
			r.say("     as is normal (Let's Encrypt certificates have no responder since 2025).")
			continue
		case dc.want() == "none":
			r.unexpected("%s has a staple, but names no responder", dc.File)
			continue
		case err != nil:
			r.unexpected("%s: no staple: %v", dc.File, err)
			continue
		}
		resp, err := ocsp.ParseResponseForCert(der, dc.leaf, ca)
		if err != nil {
			r.unexpected("%s.ocsp: %v", dc.File, err)
			continue
		}
		if got := ocspcheck.StatusName(resp.Status); got != dc.want() {
			r.unexpected("%s.ocsp says %s, want %s", dc.File, got, dc.want())
			continue
		}
		if dc.Revoked {
			r.say("   - %s.ocsp: a revoked staple, signed by the CA. stapler serves it like any other", dc.File)
			r.say("     (hiding a revocation helps nobody) but logs an error, and the run's exit status is %d,", exit)
			r.say("     as in production, until the certificate is replaced.")
			if exit != exitFailed {
				r.unexpected("the run's exit status is %d, want %d for a revoked certificate", exit, exitFailed)
			}
			continue
		}
		r.say("   - %s.ocsp: a good staple, signed by the CA, valid for %s more.", dc.File, shortDuration(resp.NextUpdate.Sub(now)))
		issuer, err := os.ReadFile(issuerName(path))
		switch {
		case !dc.Chain && (err != nil || !bytes.Equal(issuer, issuerPEM(ca))):
			r.unexpected("%s.issuer is not the demo CA (%v)", dc.File, err)
		case !dc.Chain:
			r.say("     stapler also wrote %s.issuer, from issuers/: HAProxy needs the issuer of a", dc.File)
			r.say("     certificate that has a .ocsp file, and %s holds none.", dc.File)
		case err == nil:
			r.unexpected("%s.issuer was written, but the CA is in the bundle", dc.File)
		}
	}
	if withHAProxy && sum.PushFailed == 0 && sum.NeedsReload == 0 {
		r.say("   - HAProxy, which had no OCSP slot, got each staple over its runtime API: stapler")
		r.say("     created the slots without a reload.")
	}
}

// checkStatus checks the status report against what the demo expects.
func (r *demoReport) checkStatus(rep *statusReport, certs []demoCert, certsDir string, withHAProxy bool) {
	for _, dc := range certs {
		var cs *certStatus
		for i := range rep.Certificates {
			if rep.Certificates[i].Path == filepath.Join(certsDir, dc.File) {
				cs = &rep.Certificates[i]
			}
		}
		want, hapWant := dc.want(), "ok"
		if want == "none" {
			want, hapWant = "no_responder", "-"
		}
		if !withHAProxy {
			hapWant = "-"
		}
		switch {
		case cs == nil:
			r.unexpected("'stapler status' does not list %s", dc.File)
		case cs.StapleStatus != want || haproxySummary(cs.HAProxy) != hapWant:
			r.unexpected("'stapler status' says %s: staple %s, HAProxy %s; want %s, %s", dc.File, cs.StapleStatus, haproxySummary(cs.HAProxy), want, hapWant)
		}
	}
}

// checkHandshake connects to HAProxy for dc's name and says what HAProxy stapled.
func (r *demoReport) checkHandshake(ctx context.Context, addr string, dc demoCert, ca *x509.Certificate, certsDir string) {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{ServerName: dc.Name, RootCAs: roots}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		r.unexpected("TLS handshake for %s: %v", dc.Name, err)
		return
	}
	defer conn.Close()
	st := conn.(*tls.Conn).ConnectionState()
	if got := subjectName(st.PeerCertificates[0]); got != dc.Name {
		r.unexpected("HAProxy presented %s for %s", got, dc.Name)
		return
	}
	staple := st.OCSPResponse
	if len(staple) == 0 {
		if dc.want() == "none" {
			r.say("     %-18s stapled nothing, as it should: the certificate has no responder", dc.Name)
			return
		}
		r.say("     %-18s stapled nothing", dc.Name)
		r.unexpected("HAProxy stapled nothing for %s", dc.Name)
		return
	}
	resp, err := ocsp.ParseResponseForCert(staple, st.PeerCertificates[0], ca)
	if err != nil {
		r.unexpected("HAProxy's staple for %s: %v", dc.Name, err)
		return
	}
	onDisk, _ := os.ReadFile(stapleName(filepath.Join(certsDir, dc.File)))
	same := "byte-identical to"
	if !bytes.Equal(staple, onDisk) {
		same = "NOT the same as"
	}
	got := ocspcheck.StatusName(resp.Status)
	r.say("     %-18s stapled a %s response, %s certs/%s.ocsp", dc.Name, got, same, dc.File)
	switch {
	case got != dc.want():
		r.unexpected("HAProxy stapled a %s response for %s, want %s", got, dc.Name, dc.want())
	case !bytes.Equal(staple, onDisk):
		r.unexpected("HAProxy's staple for %s differs from %s.ocsp", dc.Name, dc.File)
	}
}

// issueDemo makes dc's certificate under ca and writes its HAProxy bundle (certificate, the
// CA when dc.Chain, key) to certsDir.
func issueDemo(ca *pki.CA, dc *demoCert, responder, certsDir string, now time.Time) error {
	spec := pki.Leaf{Name: dc.Name}
	if dc.OCSP {
		spec.OCSP = []string{responder}
	}
	leaf, key := ca.Issue(spec, now)
	dc.leaf = leaf
	var chain []*x509.Certificate
	if dc.Chain {
		chain = append(chain, ca.Cert)
	}
	return pki.WriteBundle(filepath.Join(certsDir, dc.File), leaf, key, chain...)
}

// demoHAProxy is an HAProxy in the foreground (-db), serving the demo's certificates.
type demoHAProxy struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	addr    string // its TLS listener
	sock    string // its stats socket, at level admin
	log     string // its output
	version string
}

// startDemoHAProxy writes an HAProxy configuration for certsDir into dir, starts HAProxy and
// returns once its runtime API answers.
func startDemoHAProxy(ctx context.Context, bin, dir, certsDir string) (*demoHAProxy, error) {
	// A port that was free a moment ago: HAProxy cannot tell which port it got for port 0.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &demoHAProxy{addr: ln.Addr().String(), sock: filepath.Join(dir, "admin.sock"), log: filepath.Join(dir, "haproxy.log"), exited: make(chan struct{})}
	ln.Close()
	if len(h.sock) >= 108 {
		return nil, fmt.Errorf("%s: too long for a unix socket path (108 bytes); set TMPDIR to a shorter directory", h.sock)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	conf := fmt.Sprintf(`global
	stats socket %s level admin
	stats timeout 10s

defaults
	mode http
	timeout connect 5s
	timeout client 10s
	timeout server 10s

frontend demo
	bind %s ssl crt %s/
	http-request return status 200
`, h.sock, h.addr, certsDir)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	logw, err := os.Create(h.log)
	if err != nil {
		return nil, err
	}
	defer logw.Close() // HAProxy has its own copy
	h.cmd = exec.Command(bin, "-db", "-f", cfg)
	h.cmd.Stdout, h.cmd.Stderr = logw, logw
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting HAProxy: %w", err)
	}
	go func() { h.cmd.Wait(); close(h.exited) }()

	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-h.exited:
			out, _ := os.ReadFile(h.log)
			return nil, fmt.Errorf("HAProxy exited at start-up (%v):\n%s", h.cmd.ProcessState, bytes.TrimSpace(out))
		default:
		}
		if h.version, err = haproxyVersion(ctx, h.sock); err == nil {
			return h, nil
		}
		switch {
		case ctx.Err() != nil:
			h.stop()
			return nil, errors.New("interrupted")
		case time.Now().After(deadline):
			h.stop()
			out, _ := os.ReadFile(h.log)
			return nil, fmt.Errorf("HAProxy's runtime API did not answer within 10s: %w\n%s", err, bytes.TrimSpace(out))
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

func haproxyVersion(ctx context.Context, sock string) (string, error) {
	c, err := haproxy.Dial(ctx, haproxy.Addr{Raw: sock, Network: "unix", Address: sock}, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Exec("", "show version")
}

// stop kills HAProxy and waits for it.
func (h *demoHAProxy) stop() {
	h.cmd.Process.Kill()
	<-h.exited
}
