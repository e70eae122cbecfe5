package haproxycfg

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"stapler/internal/haproxy"
)

// FuzzHAProxyConfig: splitCfgLine and readHAProxyConfig never panic on any configuration, and
// every certificate path they return is absolute and clean, every socket one stapler can parse.
// "@DIR@" in the input stands for a directory of certificates, crt-lists and bundles.
func FuzzHAProxyConfig(f *testing.F) {
	dir := f.TempDir()
	for _, name := range []string{"certs/a.pem", "certs/b.pem", "single.pem", "bundle.pem.rsa", "bundle.pem.ecdsa", "listed/one.pem"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	work := f.TempDir() // the configuration under test, rewritten by each iteration
	os.Mkdir(filepath.Join(work, "conf.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "list.txt"), []byte("# a crt-list\nlisted/one.pem [alpn h2] one.test\n"+dir+"/single.pem\n\"${CERTS}/three.pem\"\n../escape.pem\n"), 0o644)
	f.Add("global\n\tcrt-base @DIR@\n\tstats socket /run/haproxy/admin.sock mode 660 level admin\n"+
		"\tstats socket ipv4@0.0.0.0:9999 level operator\n\tstats socket *:9998\n\tstats socket abns@hidden\n"+
		"\tstats socket relative.sock\n\tstats socket unix@/run/haproxy/other.sock\n\tstats socket ipv6@[::]:9997\n"+
		"defaults\n\tmode http\nfrontend https # comment\n\tbind :443 ssl crt certs/ crt single.pem alpn h2\n"+
		"\tbind :8443 ssl crt-list @DIR@/list.txt\n\tbind :5443 ssl crt-list list.txt\n\tbind :9443 ssl crt \"@DIR@/bundle.pem\"\n"+
		"\tbind :7443 ssl crt \"${HOME}/x.pem\"\n.if defined(EXTRA)\n\tbind :6443 ssl crt missing.pem\n.endif\n"+
		"crt-store\nlisten l\n\tbind :1 ssl crt '/a b/c.pem' crt /x/../y//z.pem crt ../../etc crt-list\n"+
		"backend app\n\tserver s1 10.0.0.1:443 ssl crt client.pem\n", false)
	f.Add("frontend f\n\tbind :443 ssl crt certs/\n", false)
	f.Add("global\n\tcrt-base @DIR@\nfrontend f\n\tbind :443 ssl crt single.pem\n", true)
	f.Add("global\n crt-base rel\nlisten x\n bind :1 ssl crt a\\ b.pem crt \"q\\\"x\" #c\n", false)
	f.Add("", false)
	f.Add("\x00\t\"\\", false)

	f.Fuzz(func(t *testing.T, text string, asDir bool) {
		text = strings.ReplaceAll(text, "@DIR@", dir)
		for line := range strings.Lines(text) {
			words, env := SplitLine(line)
			if env && !strings.Contains(line, "$") {
				t.Fatalf("%q: env without a $", line)
			}
			if !strings.ContainsAny(line, "\"'\\#") {
				want := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
				if !slices.Equal(words, want) {
					t.Fatalf("%q: words %q, want %q", line, words, want)
				}
			}
			// A crt-list is read to its end: keep the fuzzer's certificate paths away from
			// devices and FIFOs (other paths, as Debian's `log /dev/log`, are never opened).
			for i, w := range words {
				c := filepath.Clean(w)
				device := strings.HasPrefix(c, "/dev") || strings.HasPrefix(c, "/proc") || strings.HasPrefix(c, "/sys")
				if device && i > 0 && (strings.Contains(words[i-1], "crt") || slices.Contains([]string{"ocsp", "issuer", "key", "load"}, words[i-1])) {
					t.Skip("names a device as a certificate file")
				}
			}
		}

		cfg, arg := filepath.Join(work, "haproxy.cfg"), filepath.Join(work, "haproxy.cfg")
		if asDir {
			cfg, arg = filepath.Join(work, "conf.d", "10-fuzz.cfg"), filepath.Join(work, "conf.d")
		}
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		hs, err := Read(arg)
		if err != nil {
			if !strings.Contains(err.Error(), cfg) {
				t.Fatalf("error %q does not name %s", err, cfg)
			}
			return
		}
		var dirs []string
		for _, d := range hs.Dirs {
			dirs = append(dirs, d.Path)
		}
		files := paths(hs.Files)
		for _, list := range [][]string{dirs, files} {
			for _, p := range list {
				if !filepath.IsAbs(p) || filepath.Clean(p) != p {
					t.Errorf("certificate path %q is not absolute and clean", p)
				}
			}
		}
		for _, f := range hs.Files {
			if f.Name == "" || f.Staple == "" || !filepath.IsAbs(f.Staple) {
				t.Errorf("file %+v: no name, or no absolute staple file", f)
			}
		}
		for _, list := range [][]string{dirs, files, hs.Sockets} {
			if !slices.IsSorted(list) || len(slices.Compact(slices.Clone(list))) != len(list) {
				t.Errorf("%q is not sorted and free of duplicates", list)
			}
		}
		for _, s := range hs.Sockets {
			a, err := haproxy.ParseAddr(s)
			switch {
			case err != nil:
				t.Errorf("socket %q does not parse: %v", s, err)
			case a.Master:
				t.Errorf("socket %q reads as a master socket", s)
			case a.Network == "unix" && (!filepath.IsAbs(a.Address) || filepath.Clean(a.Address) != a.Address):
				t.Errorf("unix socket %q is not absolute and clean", s)
			}
		}
		for _, n := range hs.Notes {
			if !strings.HasPrefix(n, "/") || !strings.Contains(n, ": ") {
				t.Errorf("note %q does not start with file:line", n)
			}
		}
	})
}
