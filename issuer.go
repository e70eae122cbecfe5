package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"stapler/internal/durable"
)

// issuerSource says where an issuer was found. HAProxy finds it itself in the bundle and in
// <cert>.issuer; from any other source stapler must write <cert>.issuer.
type issuerSource int

const (
	issuerInBundle issuerSource = iota
	issuerFromFile
	issuerFromDir
	issuerFromAIA
)

func (s issuerSource) String() string {
	return [...]string{"bundle", ".issuer file", "issuer directory", "AIA caIssuers"}[s]
}

// errIssuerNotFound means no source holds the certificate that signed the leaf.
var errIssuerNotFound = errors.New("issuer certificate not found")

// issuerFinder finds the certificate that signed a leaf, never by position: in the bundle, as
// HAProxy finds it there (see issuedBy); then, by signature, in <cert>.issuer, in the
// configured issuer directories, among the issuers it verified before, then at the leaf's AIA
// caIssuers URL (fetched once, then cached). No system trust store is involved, so private CAs
// work.
type issuerFinder struct {
	Dirs     []string
	CacheDir string       // where fetched and verified issuers are kept
	Client   *http.Client // nil: never fetch
	ReadOnly bool         // never write to CacheDir (a dry run)
	MaxBytes int64

	once    sync.Once
	fromDir []*x509.Certificate
	mu      sync.Mutex // serialises fetches so a URL is fetched once per run

	cacheOnce sync.Once
	cacheMu   sync.Mutex
	cached    map[string]*x509.Certificate // by hash of the DER: issuers in CacheDir

	internMu sync.Mutex
	interned map[string]*x509.Certificate // by DER: the issuers found in this run
}

// find returns the issuer of leaf (the first certificate of the bundle) and its source;
// issuerFile is where HAProxy looks for it ("" for nowhere). Thousands of certificates share
// a few issuers: each is returned as one shared value, so that the bundles it came from need
// not stay in memory.
func (f *issuerFinder) find(ctx context.Context, issuerFile string, bundle []*x509.Certificate, aia bool) (*x509.Certificate, issuerSource, error) {
	c, src, err := f.search(ctx, issuerFile, bundle, aia)
	if c == nil {
		return c, src, err
	}
	f.internMu.Lock()
	defer f.internMu.Unlock()
	if f.interned == nil {
		f.interned = map[string]*x509.Certificate{}
	}
	if same, ok := f.interned[string(c.Raw)]; ok {
		return same, src, err
	}
	f.interned[string(c.Raw)] = c
	return c, src, err
}

// search finds the issuer of leaf, for find; without aia, only on this machine.
func (f *issuerFinder) search(ctx context.Context, issuerFile string, bundle []*x509.Certificate, aia bool) (*x509.Certificate, issuerSource, error) {
	leaf := bundle[0]
	for _, c := range bundle[1:] {
		if issuedBy(leaf, c) {
			f.remember(c)
			return c, issuerInBundle, nil
		}
	}
	if data, err := readRegular(issuerFile, maxStapleBytes); issuerFile != "" && err == nil {
		certs, err := parseBundle(data)
		switch {
		case err != nil:
			slog.Warn("ignoring unreadable issuer file", "file", issuerFile, "err", err)
		case signed(leaf, certs[0]):
			f.remember(certs[0])
			return certs[0], issuerFromFile, nil
		default:
			slog.Warn("ignoring issuer file that did not sign the certificate", "file", issuerFile)
		}
	}
	f.once.Do(f.loadDirs)
	for _, c := range f.fromDir {
		if signed(leaf, c) {
			return c, issuerFromDir, nil
		}
	}
	// An issuer stapler verified before: a bundle that lost its chain keeps its staple, and
	// HAProxy its start, because stapler writes <cert>.issuer from here.
	f.cacheOnce.Do(f.loadCache)
	f.cacheMu.Lock()
	for _, c := range f.cached {
		if signed(leaf, c) {
			f.cacheMu.Unlock()
			return c, issuerFromDir, nil
		}
	}
	f.cacheMu.Unlock()
	if !aia {
		return nil, 0, errIssuerNotFound
	}
	var errs []error
	for _, u := range leaf.IssuingCertificateURL {
		c, err := f.aia(ctx, u, leaf)
		if err == nil {
			return c, issuerFromAIA, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	where := fmt.Errorf("%w in the bundle, %s or issuer_dirs", errIssuerNotFound, cmp.Or(filepath.Base(issuerFile), "an issuer file"))
	if len(errs) == 0 {
		return nil, 0, fmt.Errorf("%w, and the certificate names no AIA caIssuers URL", where)
	}
	return nil, 0, fmt.Errorf("%w; from AIA: %w", where, errors.Join(errs...))
}

func signed(leaf, issuer *x509.Certificate) bool {
	return leaf.CheckSignatureFrom(issuer) == nil
}

// issuedBy reports whether the bundle certificate c is the leaf's issuer as HAProxy (OpenSSL's
// X509_check_issued) finds it in a chain: its subject is the leaf's issuer and its subject key
// identifier the leaf's authority key identifier; by signature when either identifier is
// missing. That costs no signature verification per certificate, and the OCSP response, signed
// for a CertID made of this issuer's name and key, confirms it cryptographically. Issuers
// found outside the bundle, which stapler writes to <cert>.issuer, are always verified by
// signature: HAProxy refuses to start with a .issuer that did not sign the certificate.
func issuedBy(leaf, c *x509.Certificate) bool {
	if len(leaf.AuthorityKeyId) == 0 || len(c.SubjectKeyId) == 0 {
		return signed(leaf, c)
	}
	return bytes.Equal(leaf.AuthorityKeyId, c.SubjectKeyId) && bytes.Equal(leaf.RawIssuer, c.RawSubject)
}

func (f *issuerFinder) loadDirs() {
	for _, dir := range f.Dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			slog.Warn("cannot read issuer directory", "dir", dir, "err", err)
			continue
		}
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			data, err := readRegular(p, maxBundleBytes)
			if err != nil {
				continue
			}
			certs, err := parseBundle(data)
			if err != nil {
				slog.Debug("skipping file in issuer directory", "file", p, "err", err)
				continue
			}
			f.fromDir = append(f.fromDir, certs...)
		}
	}
}

// loadCache reads the issuers kept in CacheDir.
func (f *issuerFinder) loadCache() {
	f.cached = map[string]*x509.Certificate{}
	entries, _ := os.ReadDir(f.CacheDir)
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".der" {
			continue
		}
		der, err := readRegular(filepath.Join(f.CacheDir, e.Name()), maxBundleBytes)
		if err != nil {
			continue
		}
		if c, err := x509.ParseCertificate(der); err == nil {
			f.cached[hashBytes(c.Raw)] = c
		}
	}
}

// remember keeps an issuer that verifiably signed a certificate, for the day its bundle
// loses it.
func (f *issuerFinder) remember(c *x509.Certificate) {
	f.cacheOnce.Do(f.loadCache)
	f.cacheMu.Lock()
	defer f.cacheMu.Unlock()
	h := hashBytes(c.Raw)
	if f.cached[h] != nil || f.ReadOnly || f.CacheDir == "" {
		return
	}
	f.cached[h] = c
	if err := os.MkdirAll(f.CacheDir, 0o755); err == nil {
		if _, err := durable.WriteFile(filepath.Join(f.CacheDir, "seen-"+h[:32]+".der"), c.Raw, 0o644); err != nil {
			slog.Warn("cannot keep issuer", "dir", f.CacheDir, "err", err)
		}
	}
}

// errNotCached is returned instead of fetching when the finder may not use the network.
var errNotCached = errors.New("not cached and fetching is off")

// aia returns the certificate at a caIssuers URL if it signed leaf, from the cache or fetched
// and then cached. It understands DER and PEM, not PKCS#7 bundles.
func (f *issuerFinder) aia(ctx context.Context, u string, leaf *x509.Certificate) (*x509.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sum := sha256.Sum256([]byte(u))
	cached := filepath.Join(f.CacheDir, hex.EncodeToString(sum[:16])+".der")
	if der, err := os.ReadFile(cached); err == nil {
		if c, err := x509.ParseCertificate(der); err == nil && signed(leaf, c) {
			return c, nil
		}
	}
	if f.Client == nil {
		return nil, errNotCached
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	body, err := httpBody(f.Client, req, f.MaxBytes)
	if err != nil {
		return nil, err
	}
	var c *x509.Certificate
	if certs, err := parseBundle(body); err == nil {
		c = certs[0]
	} else if c, err = x509.ParseCertificate(body); err != nil {
		return nil, fmt.Errorf("not a DER or PEM certificate: %w", err)
	}
	if !signed(leaf, c) {
		return nil, fmt.Errorf("%q did not sign the certificate", c.Subject)
	}
	if err := os.MkdirAll(f.CacheDir, 0o755); err != nil {
		return nil, err
	}
	if _, err := durable.WriteFile(cached, c.Raw, 0o644); err != nil {
		return nil, fmt.Errorf("caching issuer: %w", err)
	}
	return c, nil
}

// issuerPEM is what stapler writes to <cert>.issuer.
func issuerPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
