package haproxycfg

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSocketLevels: of one HAProxy's stats sockets, those with level admin are used when there
// is one (a socket without level is operator's); otherwise all, so that stapler can say what
// each lacks.
func TestSocketLevels(t *testing.T) {
	for _, tt := range []struct {
		name, sockets string
		want          []string
	}{
		{"admin beside operator and default", "stats socket /run/op.sock level operator\nstats socket /run/admin.sock mode 660 level admin\nstats socket /run/default.sock\n",
			[]string{"/run/admin.sock"}},
		{"two admin", "stats socket /run/a.sock level admin\nstats socket 127.0.0.1:9999 level admin expose-fd listeners\n",
			[]string{"/run/a.sock", "127.0.0.1:9999"}},
		{"none admin", "stats socket /run/op.sock level operator\nstats socket /run/user.sock level user\n",
			[]string{"/run/op.sock", "/run/user.sock"}},
		{"level without a value", "stats socket /run/a.sock level\nstats socket /run/b.sock\n",
			[]string{"/run/a.sock", "/run/b.sock"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
			os.WriteFile(cfg, []byte("global\n"+tt.sockets), 0o644)
			hs, err := Read(cfg)
			if err != nil || !slices.Equal(hs.Sockets, tt.want) {
				t.Errorf("sockets %q (%v), want %q", hs.Sockets, err, tt.want)
			}
		})
	}
}

func TestReadHAProxyConfig(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"certs/a.pem", "certs/b.pem", "single.pem", "listed/one.pem", "listed/two.pem", "bundle.pem.rsa", "bundle.pem.ecdsa"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "list.txt"), []byte(`# a crt-list
listed/one.pem [alpn h2] one.test
listed/two.pem
"${CERTS}/three.pem"
`), 0o644)
	cfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(cfg, []byte(`global
	crt-base `+dir+`
	stats socket /run/haproxy/admin.sock mode 660 level admin
	stats socket ipv4@127.0.0.1:9999 level admin
	stats socket *:9998 level admin
	stats socket abns@hidden
	stats socket relative.sock
	stats socket /run//haproxy/../haproxy/admin.sock
	stats socket ipv4@a/b:1
	stats socket ipv4@master:9999 level admin

defaults
	mode http

frontend https # comment
	bind :443 ssl crt certs/ crt single.pem alpn h2
	bind :8443 ssl crt-list `+dir+`/list.txt
	bind :5443 ssl crt-list list.txt
	bind :9443 ssl crt "`+dir+`/bundle.pem"
	bind :7443 ssl crt "${HOME}/x.pem"
.if defined(EXTRA)
	bind :6443 ssl crt missing.pem
.endif

backend app
	server s1 10.0.0.1:443 ssl crt client.pem

global
	ssl-load-extra-files bundle sctl
	ssl-load-extra-files key ocsp
`), 0o644)

	hs, err := Read(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Dir{{Path: filepath.Join(dir, "certs")}}; !slices.Equal(hs.Dirs, want) {
		t.Errorf("dirs %+v, want %+v", hs.Dirs, want)
	}
	wantFiles := []string{"bundle.pem.ecdsa", "bundle.pem.rsa", "listed/one.pem", "listed/two.pem", "single.pem"}
	for i := range wantFiles {
		wantFiles[i] = filepath.Join(dir, wantFiles[i])
	}
	if !slices.Equal(paths(hs.Files), wantFiles) {
		t.Errorf("files %q\nwant %q", paths(hs.Files), wantFiles)
	}
	if want := []string{"/run/haproxy/admin.sock", "127.0.0.1:9998", "127.0.0.1:9999", "ipv4@master:9999"}; !slices.Equal(hs.Sockets, want) {
		t.Errorf("sockets %q, want %q", hs.Sockets, want)
	}
	notes := strings.Join(hs.Notes, "\n")
	for _, want := range []string{
		cfg + ":6: stats socket abns@hidden cannot be reached",
		cfg + ":7: stats socket relative.sock is relative",
		cfg + ":9: stats socket ipv4@a/b:1: not an address stapler can connect to",
		cfg + ":18: crt-list list.txt is relative to HAProxy's working directory",
		cfg + ":20: uses environment variables",
		cfg + `:21: conditional block ".if defined(EXTRA)" is not evaluated`,
		cfg + ":22: certificate " + filepath.Join(dir, "missing.pem") + ": stat",
		filepath.Join(dir, "list.txt") + ":4: uses environment variables",
		cfg + `:29: "ssl-load-extra-files bundle sctl": HAProxy does not read .ocsp files at start-up`,
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "ssl-load-extra-files key ocsp") {
		t.Errorf("ssl-load-extra-files with ocsp was taken for one without:\n%s", notes)
	}
	if strings.Contains(notes, "client.pem") {
		t.Errorf("a backend's client certificate was taken for a served one:\n%s", notes)
	}

	// Without crt-base, relative paths are reported, not guessed.
	os.WriteFile(cfg, []byte("frontend f\n\tbind :443 ssl crt certs/\n"), 0o644)
	hs, err = Read(cfg)
	if err != nil || len(hs.Dirs) != 0 || len(hs.Notes) != 1 || !strings.Contains(hs.Notes[0], "relative to HAProxy's working directory") {
		t.Errorf("relative crt without crt-base: %+v, %v", hs, err)
	}

	// A directory of *.cfg files is read in name order.
	confd := filepath.Join(dir, "conf.d")
	os.Mkdir(confd, 0o755)
	os.WriteFile(filepath.Join(confd, "10-global.cfg"), []byte("global\n\tcrt-base "+dir+"\n"), 0o644)
	os.WriteFile(filepath.Join(confd, "20-fe.cfg"), []byte("frontend f\n\tbind :443 ssl crt single.pem\n"), 0o644)
	os.WriteFile(filepath.Join(confd, "notes.txt"), []byte("frontend f\n\tbind :443 ssl crt nothing.pem\n"), 0o644)
	hs, err = Read(confd)
	if err != nil || !slices.Equal(paths(hs.Files), []string{filepath.Join(dir, "single.pem")}) || len(hs.Notes) != 0 {
		t.Errorf("directory of configs: %+v, %v", hs, err)
	}

	if _, err := Read(filepath.Join(dir, "nope.cfg")); err == nil || !strings.Contains(err.Error(), "nope.cfg") {
		t.Errorf("missing file: %v", err)
	}
}

func TestSplitCfgLine(t *testing.T) {
	tests := []struct {
		line  string
		words []string
		env   bool
	}{
		{"  bind :443 ssl crt /a/b.pem  # comment", []string{"bind", ":443", "ssl", "crt", "/a/b.pem"}, false},
		{`bind :443 ssl crt "/a dir/b.pem"`, []string{"bind", ":443", "ssl", "crt", "/a dir/b.pem"}, false},
		{`bind :443 ssl crt '/a#b/$x.pem'`, []string{"bind", ":443", "ssl", "crt", "/a#b/$x.pem"}, false},
		{`bind :443 ssl crt /a\ b.pem`, []string{"bind", ":443", "ssl", "crt", "/a b.pem"}, false},
		{`bind :443 ssl crt "${CERTS}/b.pem"`, []string{"bind", ":443", "ssl", "crt", "${CERTS}/b.pem"}, true},
		{"# only a comment", nil, false},
	}
	for _, tt := range tests {
		words, env := SplitLine(tt.line)
		if !slices.Equal(words, tt.words) || env != tt.env {
			t.Errorf("%q: got %q, %v", tt.line, words, env)
		}
	}
}

// TestReadNaming: what the reader learns of each certificate file, as HAProxy would:
// ssl-load-extra-del-ext drops ".crt" only, crt-list options and crt-store entries name their
// staple and issuer files, and ocsp-update comes from the crt-list, the crt-store or the global
// mode (where a crt-list or crt-store says off, off).
func TestReadNaming(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"certs/site.crt", "listed/x.pem", "listed/y.pem", "listed/z.crt", "store/s.pem", "store/t.pem"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "list.txt"), []byte("listed/x.pem [ocsp listed/x.der issuer listed/ca.pem ocsp-update on] x.test\nlisted/y.pem [ocsp-update off]\nlisted/z.crt\n"), 0o644)
	cfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(cfg, []byte(`global
	crt-base `+dir+`
	ssl-load-extra-del-ext
	ocsp-update.mode on

crt-store web
	crt-base `+dir+`/store
	load crt "s.pem" ocsp "s.der" issuer "ca.pem" alias "site"
	load crt "t.pem" ocsp-update off

frontend https
	bind :443 ssl crt certs/ crt-list `+dir+`/list.txt crt "@web/site"
`), 0o644)
	hs, err := Read(cfg)
	if err != nil {
		t.Fatal(err)
	}
	j := func(p string) string { return filepath.Join(dir, p) }
	if want := []Dir{{Path: j("certs"), DelExt: true, Auto: true}}; !slices.Equal(hs.Dirs, want) {
		t.Errorf("dirs %+v, want %+v", hs.Dirs, want)
	}
	want := []File{
		{Path: j("listed/x.pem"), Name: j("listed/x.pem"), Staple: j("listed/x.der"), Issuer: j("listed/ca.pem"), IssuerGiven: true, Auto: true},
		{Path: j("listed/y.pem"), Name: j("listed/y.pem"), Staple: j("listed/y.pem.ocsp"), Issuer: j("listed/y.pem.issuer")},
		{Path: j("listed/z.crt"), Name: j("listed/z.crt"), Staple: j("listed/z.ocsp"), Issuer: j("listed/z.issuer"), Auto: true},
		{Path: j("store/s.pem"), Name: "@web/site", Staple: j("store/s.der"), Issuer: j("store/ca.pem"), IssuerGiven: true, Auto: true},
		{Path: j("store/t.pem"), Name: "@web/t.pem", Staple: j("store/t.pem.ocsp")},
	}
	got := slices.Clone(hs.Files)
	for i := range got {
		got[i].Where = ""
	}
	if !slices.Equal(got, want) {
		t.Errorf("files:\n got %+v\nwant %+v", got, want)
	}
	// The crt-store entry without an ocsp file is noted: HAProxy starts without a staple.
	if !slices.ContainsFunc(hs.Notes, func(n string) bool { return strings.Contains(n, "@web/t.pem names no ocsp file") }) {
		t.Errorf("no note about the crt-store entry without ocsp: %q", hs.Notes)
	}
	if f := DefaultFile("/c/site.crt", true); f.Staple != "/c/site.ocsp" || f.Issuer != "/c/site.issuer" {
		t.Errorf("del-ext: %+v", f)
	}
	if f := DefaultFile("/c/a.b.crt", true); f.Staple != "/c/a.b.ocsp" {
		t.Errorf("del-ext, dots: %+v", f)
	}
	if f := DefaultFile("/c/site.pem", true); f.Staple != "/c/site.pem.ocsp" {
		t.Errorf("del-ext on .pem: %+v", f)
	}
}

func paths(files []File) []string {
	var out []string
	for _, f := range files {
		out = append(out, f.Path)
	}
	return out
}
