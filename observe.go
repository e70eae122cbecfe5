package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"stapler/internal/ocspcheck"
)

// observation is what a run sees of the world, by I/O only: each certificate file and its
// staple and issuer files as they are, against what the state recorded, and what HAProxy's own
// updaters hold. Nothing is decided here.
type observation struct {
	Files   []*fileObs
	paths   []string // the certificate files the scan found
	Scanned []string // directories read whole: what is gone from them is gone
	Seen    listing  // what the scan saw in them
	ScanErr error
}

// fileObs is one certificate file as observed.
type fileObs struct {
	File  certFile
	Old   *CertState // what the state recorded; nil for a file new to stapler
	Named bool       // named on the command line or in `files`: it must hold a certificate
	// issuerFileStale: its issuer file is one stapler wrote for an earlier certificate, to be
	// replaced: the issuer is not looked for there.
	issuerFileStale bool
	Err             error  // it cannot be read or parsed (names the file)
	NotCert         bool   // it holds no PEM certificate
	Hash            string // of its CERTIFICATE blocks
	CertStat        string // its stat mark
	// Changed: the certificates in it are not those the state recorded (or it is new).
	Changed bool
	// Cert is what stapler read of it: always when Changed, else only when something needed
	// it (then Old describes it too).
	Cert   *certInfo
	Staple diskStaple
	Issuer issuerCheck
	Auto   []autoCopy // what HAProxy's own updaters hold for it

	blocks [][]byte   // its certificate blocks, parsed only when needed
	issued *issuedFor // its issuer and OCSP request, found when needed
}

// diskStaple is the staple file as observed.
type diskStaple struct {
	Missing bool
	Err     error  // it exists but cannot be read (names the file)
	Stat    string // stat mark
	Hash    string
	DER     []byte // read when it is not known to be the staple the state vouches for
	// Resp is its verified response, or Problem why it is not valid, when its bytes are not
	// those of the staple the state vouches for.
	Resp    *ocspcheck.Response
	Problem string
	found   bool // the file was there to stat
}

// issuerCheck is the issuer file as observed: checked whenever it or the certificate changed,
// responder or not, because HAProxy refuses to start with a wrong one.
type issuerCheck struct {
	Checked bool   // checked in this run
	Stat    string // stat mark, "" when there is none
	Err     error  // wrong and not stapler's, or unreadable: HAProxy will not start
	// Write is the issuer to write to the issuer file: in place of a wrong one that stapler
	// wrote for an earlier certificate, or where there is none and the bundle, changed, no
	// longer holds the issuer of the staple on disk. Remove says to remove a wrong one that
	// stapler wrote, the bundle holding the issuer.
	Write  *x509.Certificate
	Remove bool
}

// issuedFor is a certificate's issuer and the OCSP request about it.
type issuedFor struct {
	Issuer *x509.Certificate
	Src    issuerSource
	Req    []byte // DER OCSP request
	CertID []byte // DER CertID: HAProxy's key for the staple
	Err    error
}

// observer holds what observing and executing share: the issuer finder and the response
// checker.
type observer struct {
	finder  *issuerFinder
	checker *ocspcheck.Checker
	// requests makes the OCSP requests, hashing each issuer once.
	requests ocspcheck.Requester
	// issuers are the issuers found in this run, by the issuer part of their CertIDs.
	issuersMu sync.Mutex
	issuers   map[string]*x509.Certificate
	now       time.Time
	seen      listing // what the scan saw: an issuer file missing there is not stat'ed
	// dirs stats the files observeFiles looks at (nil outside it: by path).
	dirs *statDirs
}

// observeFiles observes the certificate files, several at a time: the disk answers faster when
// several wait on it.
func (ob *observer) observeFiles(ctx context.Context, files []*fileObs) {
	ob.dirs = newStatDirs()
	defer func() { ob.dirs.close(); ob.dirs = nil }()
	parallel(len(files), observeJobs, func(i int) { ob.observe(ctx, files[i]) })
}

// parallel calls fn(i) for every i below n, jobs at a time, and returns when all are done.
func parallel(n, jobs int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(jobs, n) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				fn(int(i))
			}
		})
	}
	wg.Wait()
}

// observeJobs is how many certificate files are observed at once.
const observeJobs = 8

// observe reads one certificate file, and its issuer and staple files. It parses and verifies
// only what changed since the state recorded it.
func (ob *observer) observe(ctx context.Context, o *fileObs) {
	// An unchanged file (its stat mark as recorded) is not even read. One the state has no
	// mark for is read without a stat first: reading it takes its mark (a first run).
	if ob.unchanged(o) {
		o.Hash, o.CertStat = o.Old.CertHash, o.Old.CertStat
	} else if err := o.read(); err != nil {
		o.Err = err
		return
	}
	if o.NotCert {
		return
	}
	if o.Changed = o.Old == nil || o.Old.CertHash != o.Hash; o.Changed {
		var err error
		if o.Cert, err = readCert(o.blocks, o.Hash); err != nil {
			o.Err = fmt.Errorf("%s: %w", o.File.Path, err)
			return
		}
	}
	ob.checkIssuerFile(ctx, o)
	responders, notBefore, notAfter := o.identity()
	if len(responders) == 0 || ob.now.After(notAfter) || ob.now.Before(notBefore) {
		ob.issuerFileNeeded(ctx, o, false)
		return // not stapled: its staple is not looked at
	}
	ob.observeStaple(ctx, o)
	ob.issuerFileNeeded(ctx, o, true)
	if o.Changed {
		// A new certificate's staple is fetched: its issuer, found now while the bundle is
		// parsed, spares holding thousands of parsed bundles until then. (One found nowhere
		// here is looked for again, through AIA, when it is fetched.)
		ob.findIssuer(ctx, o, false)
	}
}

// unchanged reports whether the certificate file has the stat mark the state recorded with its
// hash.
func (ob *observer) unchanged(o *fileObs) bool {
	if o.Old == nil || o.Old.CertStat == "" || o.Old.CertHash == "" {
		return false
	}
	mark, err := ob.dirs.mark(o.File.Path)
	return err == nil && mark == o.Old.CertStat
}

// vouches reports whether der is the staple the state vouches for, unchanged certificate, and
// the staple file holds it too (that of a steady HAProxy whose own ocsp-update keeps it fresh:
// the copy it holds is the one stapler wrote).
func (o *fileObs) vouches(der []byte) bool {
	old := o.Old
	return !o.Changed && old != nil && old.Staple != nil && o.Staple.Err == nil && !o.Staple.Missing &&
		o.Staple.Hash == old.Staple.Hash && hashBytes(der) == old.Staple.Hash
}

// identity is what is known of the certificate: read in this run, or recorded.
func (o *fileObs) identity() (responders []string, notBefore, notAfter time.Time) {
	if o.Cert != nil {
		return o.Cert.Responders, o.Cert.NotBefore, o.Cert.NotAfter
	}
	return o.Old.Responders, o.Old.NotBefore, o.Old.NotAfter
}

// certReads counts the certificate files read (for the tests: what a run need not read).
var certReads atomic.Int64

// readCertFile reads a certificate file: its certificate blocks, their hash and its stat mark.
func readCertFile(path string) (blocks [][]byte, hash, mark string, err error) {
	certReads.Add(1)
	data, mark, err := readRegularStat(path, maxBundleBytes)
	if err != nil {
		return nil, "", "", err
	}
	blocks, hash = certBlocks(data)
	return blocks, hash, mark, nil
}

// read reads the certificate file, and keeps its certificate blocks and their hash.
func (o *fileObs) read() error {
	blocks, hash, mark, err := readCertFile(o.File.Path)
	if err != nil {
		return err
	}
	o.blocks, o.Hash, o.CertStat = blocks, hash, mark
	o.NotCert = len(o.blocks) == 0
	return nil
}

// bundle parses the certificate blocks, reading the file again if they were not read or were
// dropped (see issuer). The file must still hold the certificates observed: if it changed, what
// was observed of it (its hash and stat mark, which the state records) is left as it was, so
// that the next run reads it.
func (o *fileObs) bundle() ([]*x509.Certificate, error) {
	if o.Cert != nil && o.Cert.Bundle != nil {
		return o.Cert.Bundle, nil
	}
	if o.blocks == nil {
		blocks, hash, _, err := readCertFile(o.File.Path)
		if err != nil {
			return nil, err
		}
		if hash != o.Hash {
			return nil, fmt.Errorf("%s changed during the run", o.File.Path)
		}
		o.blocks = blocks
	}
	c, err := readCert(o.blocks, o.Hash)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.File.Path, err)
	}
	if o.Cert == nil {
		o.Cert = c
	} else {
		o.Cert.Bundle = c.Bundle
	}
	return o.Cert.Bundle, nil
}

// issuer finds the certificate's issuer and makes the OCSP request about it, once.
func (ob *observer) issuer(ctx context.Context, o *fileObs) *issuedFor {
	return ob.findIssuer(ctx, o, true)
}

// findIssuer is issuer; without aia it looks on this machine only, and returns nil (leaving
// the search to issuer) when the issuer is not there.
func (ob *observer) findIssuer(ctx context.Context, o *fileObs, aia bool) *issuedFor {
	if o.issued != nil {
		return o.issued
	}
	if iss := ob.recordedIssuer(o); iss != nil {
		o.issued = iss
		return iss
	}
	bundle, err := o.bundle()
	if err != nil {
		o.issued = &issuedFor{Err: err}
		return o.issued
	}
	issuerFile := o.File.Issuer
	if o.issuerFileStale {
		issuerFile = ""
	}
	iss := &issuedFor{}
	iss.Issuer, iss.Src, iss.Err = ob.finder.find(ctx, issuerFile, bundle, aia)
	if !aia && iss.Issuer == nil {
		return nil
	}
	if iss.Err == nil {
		iss.Req, iss.CertID, iss.Err = ob.requests.Request(bundle[0], iss.Issuer)
	}
	if iss.Err == nil {
		ob.rememberIssuer(iss)
	}
	o.issued = iss
	// The request and the (shared) issuer are all that is needed of the bundle from now on:
	// with thousands of certificates due, it would be most of the memory a run holds.
	if o.Cert != nil {
		o.Cert.Bundle = nil
	}
	o.blocks = nil
	return iss
}

// rememberIssuer notes an issuer found in this run under the issuer part of its CertIDs, for
// recordedIssuer.
func (ob *observer) rememberIssuer(iss *issuedFor) {
	part, _, err := ocspcheck.SplitCertID(iss.CertID)
	if err != nil {
		return
	}
	ob.issuersMu.Lock()
	defer ob.issuersMu.Unlock()
	if ob.issuers == nil {
		ob.issuers = map[string]*x509.Certificate{}
	}
	if _, ok := ob.issuers[string(part)]; !ok {
		ob.issuers[string(part)] = iss.Issuer
	}
}

// recordedIssuer makes the request of a certificate whose file is unchanged and holds its
// issuer from what the state recorded, without reading the file: its CertID, whose serial
// must be the recorded certificate's, and the issuer that another certificate's file gave in
// this run under the same issuer hashes. Nil when that does not hold: the file is then read.
func (ob *observer) recordedIssuer(o *fileObs) *issuedFor {
	old := o.Old
	if o.Changed || o.Cert != nil || o.blocks != nil || old == nil || !old.IssuerInBundle || old.CertID == "" {
		return nil
	}
	certID, err := hex.DecodeString(old.CertID)
	if err != nil {
		return nil
	}
	part, serial, err := ocspcheck.SplitCertID(certID)
	if err != nil || fmt.Sprintf("%x", serial) != old.Serial {
		return nil
	}
	ob.issuersMu.Lock()
	issuer := ob.issuers[string(part)]
	ob.issuersMu.Unlock()
	if issuer == nil {
		return nil
	}
	req, err := ocspcheck.RequestFor(certID)
	if err != nil {
		return nil
	}
	return &issuedFor{Issuer: issuer, Src: issuerInBundle, Req: req, CertID: certID}
}

// verify checks a response about the certificate as a fetched one is checked.
func (ob *observer) verify(ctx context.Context, o *fileObs, der []byte) (*ocspcheck.Response, error) {
	iss := ob.issuer(ctx, o)
	if iss.Err != nil {
		return nil, iss.Err
	}
	resp, err := ob.checker.Check(der, iss.CertID, iss.Issuer, ob.now)
	if err == nil {
		err = tooSoon(resp, ob.now)
	}
	return resp, err
}

// observeStaple looks at the staple file: without reading it when its stat mark is the one
// recorded for the staple the state vouches for; else reading, hashing and, when its bytes are
// not that staple's, verifying it.
func (ob *observer) observeStaple(ctx context.Context, o *fileObs) {
	s := &o.Staple
	mark, err := ob.dirs.mark(o.File.Staple)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.Missing = true
		return
	case err != nil:
		s.Err = err
		return
	}
	s.found = true
	old := o.Old
	if !o.Changed && old.onDisk() && mark == old.DiskStat && mark != "" {
		s.Stat, s.Hash = mark, old.DiskHash
		return
	}
	if s.DER, s.Stat, s.Err = readRegularStat(o.File.Staple, maxStapleBytes); s.Err != nil {
		return
	}
	s.Hash = hashBytes(s.DER)
	if !o.Changed && old.Staple != nil && s.Hash == old.Staple.Hash {
		return // the staple stapler vouches for, touched
	}
	if s.Resp, err = ob.verify(ctx, o, s.DER); err != nil {
		s.Resp, s.Problem = nil, err.Error()
	}
}

// checkIssuerFile checks the issuer file when it or the certificate changed: HAProxy refuses
// to start with one that did not sign the certificate, staple or not. A wrong one that stapler
// wrote itself (for an earlier certificate) is to be replaced by the right issuer, or removed
// when the bundle holds the issuer; one the configuration names, or someone else wrote, is an
// error.
func (ob *observer) checkIssuerFile(ctx context.Context, o *fileObs) {
	name := o.File.Issuer
	if name == "" {
		return
	}
	c := &o.Issuer
	if listed, found := ob.seen.has(name); listed && !found {
		return // not there when the directory was read, a moment ago
	}
	mark, err := ob.dirs.mark(name)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	c.Stat = mark
	if !o.Changed && err == nil && c.Stat == o.Old.IssuerStat && c.Stat != "" {
		return
	}
	c.Checked = true
	data, err := readRegular(name, maxStapleBytes)
	if err != nil {
		c.Err = fmt.Errorf("%s cannot be read as HAProxy will try to (%w): correct or remove it", name, err)
		return
	}
	bundle, err := o.bundle()
	if err != nil {
		c.Err = err
		return
	}
	if certs, err := parseBundle(data); err == nil && signed(bundle[0], certs[0]) {
		return
	}
	switch {
	case o.File.IssuerGiven:
		c.Err = fmt.Errorf("%s, named by %s, did not sign the certificate, and HAProxy refuses to start with it: correct it", name, o.File.Where)
		return
	case o.Old == nil || o.Old.IssuerWritten != hashBytes(data):
		c.Err = fmt.Errorf("%s did not sign the certificate, and HAProxy refuses to start with it: correct or remove it", name)
		return
	}
	o.issuerFileStale = true // stapler's own, for an earlier certificate: not looked in
	iss := ob.issuer(ctx, o)
	switch {
	case iss.Err != nil:
		c.Err = fmt.Errorf("%s, written for an earlier certificate, did not sign this one, and HAProxy refuses to start with it: %w", name, iss.Err)
	case iss.Src == issuerInBundle:
		c.Remove = true
	default:
		c.Write = iss.Issuer
	}
}

// issuerFileNeeded plans the issuer file of a certificate whose file changed and whose bundle
// no longer holds the issuer, while a staple file exists: HAProxy would refuse to start.
// stapleLooked: observeStaple ran, and its stat says whether one is there; else (a certificate
// not stapled) the file is stat'ed here, when the rest calls for it.
func (ob *observer) issuerFileNeeded(ctx context.Context, o *fileObs, stapleLooked bool) {
	if !o.Changed || o.File.Issuer == "" || o.Issuer.Stat != "" || o.Issuer.Err != nil {
		return
	}
	there := o.Staple.found
	if !stapleLooked {
		_, err := ob.dirs.mark(o.File.Staple)
		there = err == nil
	}
	if !there {
		return
	}
	if iss := ob.issuer(ctx, o); iss.Err == nil && (iss.Src == issuerFromDir || iss.Src == issuerFromAIA) {
		o.Issuer.Write = iss.Issuer
	}
}

// observeHAProxyCopies verifies what HAProxy's own updaters hold for the files they keep
// fresh, several files at a time (a signature each: 0.18 ms on one core of this project's
// machine, BenchmarkObserveHAProxyCopies).
func (ob *observer) observeHAProxyCopies(ctx context.Context, files []*fileObs, copies map[string][]autoCopy) {
	parallel(len(files), observeJobs, func(i int) {
		o := files[i]
		for _, c := range copies[o.File.Path] {
			switch {
			case c.DER == nil:
			case o.vouches(c.DER):
				// As the staple file is when it holds these bytes: only what time changes
				// is checked again.
				if c.Err = o.Old.Staple.recheck(ob.now); c.Err == nil {
					c.Vouched = o.Old.Staple
				}
			default:
				c.Resp, c.Err = ob.verify(ctx, o, c.DER)
			}
			o.Auto = append(o.Auto, c)
		}
	})
}
