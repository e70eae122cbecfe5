package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"stapler/internal/pki"
	"strings"
	"syscall"
	"testing"
	"time"

	"stapler/internal/haproxycfg"
)

func TestScan(t *testing.T) {
	dir := t.TempDir()
	files := []string{"site.pem", "site.pem.ocsp", "site.pem.issuer", "site.pem.key", "site.pem.sctl",
		"bundle.pem.rsa", "bundle.pem.ecdsa", ".hidden.pem", "notes.txt", "old.pem.bak",
		"sub/deep.pem", "sub/skip.bak", ".git/config"}
	for _, f := range files {
		p := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("x"), 0o644)
	}
	os.Symlink("site.pem", filepath.Join(dir, "link.pem"))
	os.Symlink("nowhere.pem", filepath.Join(dir, "dangling.pem"))
	os.Symlink("sub", filepath.Join(dir, "dirlink"))
	single := filepath.Join(t.TempDir(), "single.pem")
	os.WriteFile(single, []byte("x"), 0o644)

	tests := []struct {
		name string
		spec scanSpec
		want []string
	}{
		{"like HAProxy's crt /dir/", scanSpec{Dirs: []string{dir}},
			[]string{"bundle.pem.ecdsa", "bundle.pem.rsa", "link.pem", "notes.txt", "old.pem.bak", "site.pem"}},
		{"exclude", scanSpec{Dirs: []string{dir}, Exclude: []string{"*.bak", "notes.*"}},
			[]string{"bundle.pem.ecdsa", "bundle.pem.rsa", "link.pem", "site.pem"}},
		{"recursive", scanSpec{Dirs: []string{dir}, Recursive: true, Exclude: []string{"*.bak", "notes.*"}},
			[]string{"bundle.pem.ecdsa", "bundle.pem.rsa", "link.pem", "site.pem", "sub/deep.pem"}},
		{"exclude by relative path", scanSpec{Dirs: []string{dir}, Recursive: true, Exclude: []string{"sub/*", "*.bak", "notes.*"}},
			[]string{"bundle.pem.ecdsa", "bundle.pem.rsa", "link.pem", "site.pem"}},
		{"files and duplicates", scanSpec{Dirs: []string{dir}, Files: []string{single, filepath.Join(dir, "site.pem")}, Exclude: []string{"*.bak", "notes.*", "bundle*"}},
			[]string{"link.pem", "site.pem", single}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, _, err := scan(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, w := range tt.want {
				if !filepath.IsAbs(w) {
					w = filepath.Join(dir, w)
				}
				want = append(want, w)
			}
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("got  %q\nwant %q", got, want)
			}
		})
	}
	// A symlink to a certificate directory is read like the directory, and the names keep
	// the link, as HAProxy's do.
	link := filepath.Join(t.TempDir(), "certs")
	os.Symlink(dir, link)
	got, _, _, err := scan(scanSpec{Dirs: []string{link}, Exclude: []string{"*.bak", "notes.*", "bundle*"}})
	if want := []string{filepath.Join(link, "link.pem"), filepath.Join(link, "site.pem")}; err != nil || !slices.Equal(got, want) {
		t.Errorf("symlinked directory: got %q, %v; want %q", got, err, want)
	}
	if _, _, _, err := scan(scanSpec{Dirs: []string{filepath.Join(dir, "missing")}}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing directory: got %v, want an error naming it", err)
	}
}

func TestParseBundle(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Bundle CA", now)
	leaf, key := ca.Issue(pki.Leaf{Name: "a.test"}, now)
	tests := []struct {
		name  string
		data  []byte
		first string
		err   error
	}{
		{"leaf, chain, key", append(pki.CertPEM(leaf, ca.Cert), pki.KeyPEM(key)...), "a.test", nil},
		{"key first", append(pki.KeyPEM(key), pki.CertPEM(leaf, ca.Cert)...), "a.test", nil},
		{"key only", pki.KeyPEM(key), "", errNotCertificate},
		{"empty", nil, "", errNotCertificate},
		{"DER, not PEM", leaf.Raw, "", errNotCertificate},
	}
	for _, tt := range tests {
		certs, err := parseBundle(tt.data)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.err)
			continue
		}
		if tt.first != "" && certs[0].Subject.CommonName != tt.first {
			t.Errorf("%s: first certificate %s", tt.name, certs[0].Subject.CommonName)
		}
	}
	bad := []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	if _, err := parseBundle(bad); err == nil || errors.Is(err, errNotCertificate) {
		t.Errorf("broken certificate block: got %v, want a parse error", err)
	}
}

// TestFindIssuer: the issuer is the certificate that signed the leaf, looked for in the
// bundle, then <cert>.issuer, then issuer_dirs, then AIA, and never chosen by position.
func TestFindIssuer(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Real CA", now)
	decoy := pki.NewCA("Real CA", now) // same name, other key
	aiaHits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		aiaHits++
		w.Write(ca.Cert.Raw)
	}))
	defer srv.Close()
	leaf, _ := ca.Issue(pki.Leaf{Name: "a.test", AIA: []string{srv.URL + "/ca.der"}}, now)
	noAIA, _ := ca.Issue(pki.Leaf{Name: "b.test"}, now)

	issuerDir := t.TempDir()
	os.WriteFile(filepath.Join(issuerDir, "decoy.pem"), pki.CertPEM(decoy.Cert), 0o644)
	os.WriteFile(filepath.Join(issuerDir, "ca.pem"), pki.CertPEM(ca.Cert), 0o644)

	tests := []struct {
		name       string
		bundle     []*x509.Certificate
		issuerFile []byte
		dirs       []string
		fetch      bool
		want       issuerSource
		err        error
	}{
		{"in the bundle, after a decoy", []*x509.Certificate{leaf, decoy.Cert, ca.Cert}, nil, nil, false, issuerInBundle, nil},
		{".issuer file", []*x509.Certificate{leaf}, pki.CertPEM(ca.Cert), nil, false, issuerFromFile, nil},
		{"wrong .issuer, found in issuer_dirs", []*x509.Certificate{leaf}, pki.CertPEM(decoy.Cert), []string{issuerDir}, false, issuerFromDir, nil},
		{"AIA", []*x509.Certificate{leaf}, nil, nil, true, issuerFromAIA, nil},
		{"nowhere", []*x509.Certificate{noAIA}, pki.CertPEM(decoy.Cert), nil, true, 0, errIssuerNotFound},
		{"AIA not allowed", []*x509.Certificate{leaf}, nil, nil, false, 0, errIssuerNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "site.pem")
			if tt.issuerFile != nil {
				os.WriteFile(path+".issuer", tt.issuerFile, 0o644)
			}
			f := &issuerFinder{Dirs: tt.dirs, CacheDir: filepath.Join(dir, "cache"), MaxBytes: 1 << 16}
			if tt.fetch {
				f.Client = srv.Client()
			}
			// Looking on this machine only (observe) finds the same, but for AIA, and asks
			// nothing of it.
			hits := aiaHits
			got, src, err := f.find(context.Background(), issuerName(path), tt.bundle, false)
			switch local := tt.want != issuerFromAIA; {
			case aiaHits != hits:
				t.Fatalf("looking on this machine only fetched from AIA")
			case local && (!errors.Is(err, tt.err) || src != tt.want):
				t.Fatalf("on this machine only: %v from %v, want %v from %v", err, src, tt.err, tt.want)
			case !local && (!errors.Is(err, errIssuerNotFound) || got != nil):
				t.Fatalf("on this machine only: found %v (%v), want it left for AIA", got, err)
			}
			got, src, err = f.find(context.Background(), issuerName(path), tt.bundle, true)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if src != tt.want || !got.Equal(ca.Cert) {
				t.Fatalf("found %q from %v, want the real CA from %v", got.Subject, src, tt.want)
			}
		})
	}

	// A fetched issuer is cached: the next finder does not fetch it again.
	cache := filepath.Join(t.TempDir(), "cache")
	aiaHits = 0
	for i, want := range []issuerSource{issuerFromAIA, issuerFromDir} {
		f := &issuerFinder{CacheDir: cache, Client: srv.Client(), MaxBytes: 1 << 16}
		if _, src, err := f.find(context.Background(), issuerName(filepath.Join(t.TempDir(), "x.pem")), []*x509.Certificate{leaf}, true); err != nil || src != want {
			t.Fatalf("find %d: %v from %v, want %v", i, err, src, want)
		}
	}
	if aiaHits != 1 {
		t.Errorf("AIA URL fetched %d times, want 1", aiaHits)
	}

	// An issuer found in a bundle is remembered: when the bundle loses it, it is still found.
	f := &issuerFinder{CacheDir: filepath.Join(t.TempDir(), "cache"), MaxBytes: 1 << 16}
	if _, src, err := f.find(context.Background(), issuerName(filepath.Join(t.TempDir(), "y.pem")), []*x509.Certificate{noAIA, ca.Cert}, true); err != nil || src != issuerInBundle {
		t.Fatalf("bundle: %v from %v", err, src)
	}
	f = &issuerFinder{CacheDir: f.CacheDir, MaxBytes: 1 << 16}
	if c, src, err := f.find(context.Background(), issuerName(filepath.Join(t.TempDir(), "y.pem")), []*x509.Certificate{noAIA}, true); err != nil || src != issuerFromDir || !c.Equal(ca.Cert) {
		t.Fatalf("bundle without its issuer: %v from %v", err, src)
	}
}

// TestNaming: a file named by a discovered configuration is what it says; a file in a
// discovered directory follows that directory's settings; any other file follows
// extra_del_ext.
func TestNaming(t *testing.T) {
	n := naming{
		DelExt: false,
		Dirs:   map[string]haproxycfg.Dir{"/d": {Path: "/d", DelExt: true, Auto: true}},
		Files:  map[string]certFile{"/x/s.pem": {Path: "/x/s.pem", Name: "@web/s", Staple: "/x/s.der"}},
	}
	tests := []struct {
		path, name, staple, issuer string
		auto                       bool
	}{
		{"/x/s.pem", "@web/s", "/x/s.der", "", false},
		{"/d/site.crt", "/d/site.crt", "/d/site.ocsp", "/d/site.issuer", true},
		{"/d/sub/site.crt", "/d/sub/site.crt", "/d/sub/site.ocsp", "/d/sub/site.issuer", true}, // recursive
		{"/e/site.crt", "/e/site.crt", "/e/site.crt.ocsp", "/e/site.crt.issuer", false},
	}
	for _, tt := range tests {
		f := n.file(tt.path)
		if f.Name != tt.name || f.Staple != tt.staple || f.Issuer != tt.issuer || f.Auto != tt.auto {
			t.Errorf("%s: %+v", tt.path, f)
		}
	}
	n.DelExt = true
	if f := n.file("/e/site.crt"); f.Staple != "/e/site.ocsp" {
		t.Errorf("extra_del_ext: %+v", f)
	}
}

// TestIssuedBy: in a bundle the issuer is the certificate HAProxy would take (subject and key
// identifier), without a signature check; without key identifiers, by signature.
func TestIssuedBy(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Real CA", now)
	decoy := pki.NewCA("Real CA", now) // same name, other key (and key identifier)
	other := pki.NewCA("Other CA", now)
	leaf, _ := ca.Issue(pki.Leaf{Name: "a.test"}, now)
	noAKI := *leaf
	noAKI.AuthorityKeyId = nil
	renamed := *ca.Cert // the right key identifier under another name
	renamed.RawSubject = other.Cert.RawSubject
	for _, tt := range []struct {
		name    string
		leaf, c *x509.Certificate
		want    bool
	}{
		{"the issuer", leaf, ca.Cert, true},
		{"same name, other key", leaf, decoy.Cert, false},
		{"right key identifier, other name", leaf, &renamed, false},
		{"no authority key identifier: the signature decides", &noAKI, ca.Cert, true},
		{"no authority key identifier, same name, other key", &noAKI, decoy.Cert, false},
	} {
		if got := issuedBy(tt.leaf, tt.c); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestScanListing: the scan remembers the temporary files and the issuer files it saw (an
// issuer file of any kind: a FIFO there is a problem to report, not a file to ignore), so that
// a run reads no directory twice and stats no issuer file that is not there.
func TestScanListing(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a.pem", "a.pem.ocsp", "b.pem", ".a.pem.ocsp.tmp-42"} {
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "b.pem.issuer"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("/nonexistent", filepath.Join(dir, ".dangling"))
	_, _, seen, err := scan(scanSpec{Dirs: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name          string
		listed, found bool
	}{
		{"b.pem.issuer", true, true},
		{"a.pem.issuer", true, false},
		{".a.pem.ocsp.tmp-42", true, true},
		{".dangling", true, false}, // not a regular file: never removed as a temporary file
	} {
		if listed, found := seen.has(filepath.Join(dir, tt.name)); listed != tt.listed || found != tt.found {
			t.Errorf("%s: listed %v, found %v; want %v, %v", tt.name, listed, found, tt.listed, tt.found)
		}
	}
	if listed, _ := seen.has("/elsewhere/c.pem.issuer"); listed {
		t.Error("a directory the scan did not read counts as listed")
	}
}

// TestJoinName: joinName is filepath.Join for the clean directories the scan walks and the
// names listed in them.
func TestJoinName(t *testing.T) {
	for _, dir := range []string{"/", ".", "..", "a", "a/b", "/a", "/a/b", "../a", "/etc/ssl/private"} {
		if dir != filepath.Clean(dir) {
			t.Fatalf("%q is not clean", dir)
		}
		for _, name := range []string{"site.pem", ".site.pem.ocsp.tmp-1", "a b", "...", "x..pem"} {
			if got, want := joinName(dir, name), filepath.Join(dir, name); got != want {
				t.Errorf("joinName(%q, %q) = %q, want %q", dir, name, got, want)
			}
		}
	}
}

// TestSortPaths: sortPaths sorts as slices.Sort does, on any number of cores, parts of any
// size.
func TestSortPaths(t *testing.T) {
	defer func(old int) { minParallelSort = old }(minParallelSort)
	minParallelSort = 2
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	rnd := rand.New(rand.NewPCG(3, 4))
	for _, procs := range []int{1, 2, 3, 8} {
		runtime.GOMAXPROCS(procs)
		for _, n := range []int{0, 1, 2, 3, 7, 100, 1001} {
			paths := make([]string, n)
			for i := range paths {
				paths[i] = fmt.Sprintf("/etc/ssl/site%d.pem", rnd.IntN(n/2+1)) // with repeats
			}
			want := slices.Sorted(slices.Values(paths))
			if got := sortPaths(slices.Clone(paths)); !slices.Equal(got, want) {
				t.Errorf("GOMAXPROCS %d, %d paths: not sorted as slices.Sort sorts", procs, n)
			}
		}
	}
}
