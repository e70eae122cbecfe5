package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"time"

	"golang.org/x/crypto/ocsp"
)

// item is one certificate file on its way through a run.
type item struct {
	path   string
	file   certFile // what HAProxy makes of it: its staple and issuer files, its name
	dryRun bool
	dirs   *dirSyncer // fsyncs the directories written to, once, before the state is saved
	old    *CertState // what the state recorded before this run, nil if nothing
	st     *CertState // what it records after

	data       []byte // the certificate file, read once
	bundle     []*x509.Certificate
	staple     []byte // the staple on disk when the run began
	stapleHash string // its hash, stapleMissing if there is none
	reason     string // why the staple is due; dueNotDue if it is not
	adopted    bool   // a valid staple written by someone else was found and kept
	newCert    bool   // the certificate is new or changed: HAProxy may still run another

	err     error // of the refresh
	changed bool  // the refresh wrote a new staple
}

// check reads the certificate file, brings its state entry up to date and decides whether its
// staple is due. It contacts nobody, except to fetch an issuer needed to verify a staple that
// changed on disk or to repair a wrong <cert>.issuer.
func (it *item) check(ctx context.Context, finder *issuerFinder, pol policy, now time.Time, force bool) error {
	var err error
	if it.data, err = readBundle(it.path, maxBundleBytes); err != nil {
		return err
	}
	hash := hashBytes(it.data)
	if it.old != nil && it.old.Hash == hash {
		st := *it.old
		st.PendingPush = slices.Clone(it.old.PendingPush)
		it.st = &st
	} else {
		if err := it.parse(); err != nil {
			return err
		}
		leaf := it.bundle[0]
		it.newCert = true
		it.st = &CertState{
			Hash:      hash,
			Subject:   subjectName(leaf),
			Serial:    fmt.Sprintf("%x", leaf.SerialNumber),
			Issuer:    leaf.Issuer.String(),
			NotBefore: leaf.NotBefore,
			NotAfter:  leaf.NotAfter,
			Responder: responderURL(leaf),
		}
		if it.old != nil {
			it.st.IssuerFile = it.old.IssuerFile
		}
		if err := leafFirst(it.bundle); err != nil {
			return fmt.Errorf("%s: %w", it.path, err)
		}
	}
	// <cert>.issuer is checked when it or the certificate changed: HAProxy will not start with
	// a wrong one, staple or not.
	if fi, err := os.Stat(it.file.Issuer); it.file.Issuer != "" && (err == nil || !errors.Is(err, fs.ErrNotExist)) {
		key := ""
		if err == nil {
			key = fileKey(fi)
		}
		if it.newCert || key == "" || key != it.st.IssuerKey {
			if err := it.parse(); err != nil {
				return err
			}
			if err := it.checkIssuerFile(ctx, finder); err != nil {
				return err
			}
		}
	} else {
		it.st.IssuerKey = ""
	}
	if it.st.Responder == "" || now.After(it.st.NotAfter) || now.Before(it.st.NotBefore) {
		return nil // run reports these
	}
	// The staple's hash, without reading it when the file is the one the state recorded: same
	// size, modification time and inode. A replaced or rewritten file is read and hashed.
	it.stapleHash = stapleMissing
	if fi, err := os.Stat(it.file.Staple); err == nil {
		if key := fileKey(fi); it.old != nil && it.old.Hash == hash && key == it.old.StapleKey && key != "" {
			it.stapleHash = it.old.StapleHash
		} else if staple, err := readRegular(it.file.Staple, maxStapleBytes); err == nil {
			it.staple, it.stapleHash = staple, hashBytes(staple)
			it.st.StapleKey = key
		}
	}
	it.reason = dueReason(now, it.old, hash, it.stapleHash, force)
	if it.reason != dueReplaced {
		return nil
	}
	// Someone else wrote the staple (another tool, a restored backup). Keep it if it is a valid,
	// good response for this certificate; replace it otherwise.
	resp, certID, err := it.verify(ctx, finder, it.staple, now)
	switch {
	case err != nil:
		it.reason = "staple on disk is not valid: " + err.Error()
	case resp.Status != ocsp.Good:
		it.reason = "staple on disk says " + statusName(resp.Status)
	case it.old != nil && it.old.Hash == hash && resp.ThisUpdate.Before(it.old.ThisUpdate):
		// A restored backup, or configuration management with an old copy: never go back.
		it.reason = "staple on disk is older than the last one written"
	default:
		it.st.recordStaple(it.staple, resp, certID)
		it.st.NextDue = pol.afterSuccess(it.path, now, resp.ThisUpdate, resp.NextUpdate)
		it.reason = dueReason(now, it.st, hash, it.stapleHash, false)
		it.adopted = it.reason == dueNotDue
		if it.adopted {
			slog.Info("adopted staple found on disk", "cert", it.path, "next_update", resp.NextUpdate)
		}
	}
	return nil
}

// checkIssuerFile makes sure that <cert>.issuer, if there is one, signed the certificate:
// HAProxy 2.6 refuses to start with a wrong one, staple or not. A wrong .issuer that stapler
// wrote itself (for an earlier certificate) is replaced by the right issuer, or removed when
// HAProxy finds the issuer in the bundle; one that someone else wrote is reported.
func (it *item) checkIssuerFile(ctx context.Context, finder *issuerFinder) error {
	name := it.file.Issuer
	data, err := readRegular(name, maxStapleBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s cannot be read as HAProxy will try to (%w): correct or remove it", name, err)
	}
	if certs, err := parseBundle(data); err == nil && signed(it.bundle[0], certs[0]) {
		if fi, err := os.Stat(name); err == nil {
			it.st.IssuerKey = fileKey(fi)
		}
		return nil
	}
	if it.st.IssuerFile != hashBytes(data) {
		return fmt.Errorf("%s did not sign the certificate, and HAProxy refuses to start with it: correct or remove it", name)
	}
	issuer, src, err := finder.find(ctx, it.file.Issuer, it.bundle)
	switch {
	case it.dryRun:
		slog.Info("would repair issuer file", "file", name)
		return nil
	case err == nil && src == issuerInBundle:
		if err := os.Remove(name); err != nil {
			return fmt.Errorf("removing outdated %s: %w", name, err)
		}
		it.st.IssuerFile = ""
		slog.Info("removed outdated issuer file; the issuer is in the bundle", "file", name)
		return nil
	case err != nil:
		return fmt.Errorf("%s, written for an earlier certificate, did not sign this one, and HAProxy refuses to start with it: %w", name, err)
	}
	if err := it.writeIssuer(issuer); err != nil {
		return err
	}
	slog.Info("replaced outdated issuer file", "file", name, "source", src)
	return nil
}

// leafFirst rejects a bundle whose first certificate is a CA that issued a later one: HAProxy
// serves the first certificate of a bundle (and refuses one whose key does not match it), so
// stapler must not take a misordered chain's CA for the leaf.
func leafFirst(bundle []*x509.Certificate) error {
	if !bundle[0].IsCA {
		return nil
	}
	for _, c := range bundle[1:] {
		if !c.IsCA && signed(c, bundle[0]) {
			return errors.New("the first certificate is a CA certificate, and a later one is the certificate it issued: HAProxy serves the first certificate of a bundle, so put the leaf first")
		}
	}
	return nil
}

func (it *item) writeIssuer(issuer *x509.Certificate) error {
	data := issuerPEM(issuer)
	if _, err := writeFile(it.file.Issuer, data, 0o644, it.dirs); err != nil {
		return fmt.Errorf("writing issuer: %w", err)
	}
	it.st.IssuerFile = hashBytes(data)
	if fi, err := os.Stat(it.file.Issuer); err == nil {
		it.st.IssuerKey = fileKey(fi)
	}
	return nil
}

// parse parses the certificate file read by check.
func (it *item) parse() error {
	if it.bundle != nil {
		return nil
	}
	var err error
	if it.data == nil { // let go after the check
		if it.data, err = readBundle(it.path, maxBundleBytes); err != nil {
			return err
		}
	}
	it.bundle, err = parseBundle(it.data)
	return err
}

// verify checks a staple as validateResponse does and returns it with the CertID HAProxy
// knows it by.
func (it *item) verify(ctx context.Context, finder *issuerFinder, staple []byte, now time.Time) (*ocsp.Response, []byte, error) {
	if err := it.parse(); err != nil {
		return nil, nil, err
	}
	issuer, _, err := finder.find(ctx, it.file.Issuer, it.bundle)
	if err != nil {
		return nil, nil, err
	}
	req, err := newRequest(it.bundle[0], issuer)
	if err != nil {
		return nil, nil, err
	}
	resp, err := validateResponse(staple, req, it.bundle[0], issuer, now)
	if err != nil {
		return nil, nil, err
	}
	certID, err := requestCertID(req)
	return resp, certID, err
}

// refresh fetches, validates and writes a new staple. Nothing touches disk until the response
// has passed validation, so a failure leaves the last good staple as it was. It writes
// <cert>.issuer before <cert>.ocsp when HAProxy could not otherwise find the issuer: HAProxy
// 2.6 refuses to start with a .ocsp whose issuer it cannot find. A response that is the staple
// on disk, or older than it, changes nothing.
func (it *item) refresh(ctx context.Context, f *fetcher, finder *issuerFinder, now time.Time) error {
	if err := it.parse(); err != nil {
		return err
	}
	leaf := it.bundle[0]
	issuer, src, err := finder.find(ctx, it.file.Issuer, it.bundle)
	if err != nil {
		return err
	}
	req, err := newRequest(leaf, issuer)
	if err != nil {
		return err
	}
	der, err := f.fetch(ctx, it.st.Responder, req)
	if err != nil {
		return err
	}
	resp, err := validateResponse(der, req, leaf, issuer, now)
	if err != nil {
		return err
	}
	certID, err := requestCertID(req)
	if err != nil {
		return err
	}
	// The staple on disk is still the one the state vouches for: keep it unless this is newer.
	current := it.stapleHash != stapleMissing && it.stapleHash == it.st.StapleHash && it.st.hasValidStaple(now)
	if current && (hashBytes(der) == it.st.StapleHash ||
		statusName(resp.Status) == it.st.Status && resp.NextUpdate.Before(it.st.NextUpdate)) {
		it.st.succeeded()
		return nil
	}
	return it.store(der, resp, certID, issuer, src, now)
}

// store writes a validated staple to disk and records it: <cert>.issuer first when HAProxy
// could not otherwise find the issuer, then <cert>.ocsp.
func (it *item) store(der []byte, resp *ocsp.Response, certID []byte, issuer *x509.Certificate, src issuerSource, now time.Time) error {
	if src == issuerFromDir || src == issuerFromAIA {
		// HAProxy finds the issuer neither in the bundle nor in the issuer file: without one,
		// a staple file would stop HAProxy from starting.
		_, statErr := os.Stat(it.file.Issuer)
		switch {
		case it.file.Issuer == "":
			return fmt.Errorf("the bundle lacks the issuer and the crt-store entry %s (%s) names no issuer file, so HAProxy could not use a staple: add issuer \"FILE\" to its load line", it.file.Name, it.file.Where)
		case it.file.IssuerGiven && statErr == nil:
			return fmt.Errorf("%s, named by %s, did not sign the certificate: correct it", it.file.Issuer, it.file.Where)
		}
		if err := it.writeIssuer(issuer); err != nil {
			return err
		}
	}
	if _, err := writeFile(it.file.Staple, der, 0o644, it.dirs); err != nil {
		return fmt.Errorf("writing staple: %w", err)
	}
	if fi, err := os.Stat(it.file.Staple); err == nil {
		it.st.StapleKey = fileKey(fi)
	}
	it.st.recordStaple(der, resp, certID)
	it.st.LastUpdate = now
	it.staple, it.stapleHash, it.changed = der, it.st.StapleHash, true
	return nil
}

// keptByHAProxy decides for a certificate that HAProxy's own ocsp-update keeps fresh (copies
// are what each HAProxy holds for it). While HAProxy's copy is good (it verifies, HAProxy's
// updater is not failing, and it is not past its renewal point) stapler asks no responder, and
// keeps that copy in <cert>.ocsp when it is newer than the disk's, so that every restart and
// reload of HAProxy, which keeps what it fetches in memory only, starts from it. It returns
// false when stapler must fetch as for any certificate.
func (it *item) keptByHAProxy(ctx context.Context, finder *issuerFinder, pol policy, copies []autoCopy, now time.Time) (bool, error) {
	it.st.Updater = "haproxy"
	var best *ocsp.Response
	var bestDER []byte
	for _, c := range copies {
		if c.Update.Failing() {
			slog.Info("HAProxy's ocsp-update is failing; stapler fetches the staple itself", "cert", it.path, "socket", c.Socket, "haproxy_says", c.Update.StatusText)
			return false, nil
		}
		if c.DER == nil {
			continue
		}
		resp, _, err := it.verify(ctx, finder, c.DER, now)
		if err != nil {
			slog.Warn("HAProxy holds a staple that stapler cannot verify", "cert", it.path, "socket", c.Socket, "err", err)
			continue
		}
		if best == nil || compareResponses(resp.ThisUpdate, resp.ProducedAt, best.ThisUpdate, best.ProducedAt) > 0 {
			best, bestDER = resp, c.DER
		}
	}
	if best == nil || !now.Before(pol.renewalPoint(it.path, best.ThisUpdate, best.NextUpdate)) {
		return false, nil
	}
	onDisk := it.stapleHash != stapleMissing && it.stapleHash == it.st.StapleHash && it.st.hasValidStaple(now)
	if !onDisk || compareResponses(best.ThisUpdate, best.ProducedAt, it.st.ThisUpdate, it.st.ProducedAt) > 0 {
		if it.dryRun {
			slog.Info("would keep HAProxy's own staple on disk", "cert", it.path, "this_update", best.ThisUpdate)
		} else {
			issuer, src, err := finder.find(ctx, it.file.Issuer, it.bundle)
			if err != nil {
				return false, err
			}
			req, err := newRequest(it.bundle[0], issuer)
			if err != nil {
				return false, err
			}
			certID, err := requestCertID(req)
			if err != nil {
				return false, err
			}
			if err := it.store(bestDER, best, certID, issuer, src, now); err != nil {
				return false, err
			}
			slog.Info("kept HAProxy's own staple on disk", "cert", it.path, "this_update", best.ThisUpdate, "next_update", best.NextUpdate)
		}
	}
	it.st.NextDue = pol.afterSuccess(it.path, now, it.st.ThisUpdate, it.st.NextUpdate)
	it.reason = dueNotDue
	return true, nil
}

// ref is the staple HAProxy should serve for the item: the one on disk, if it is the valid
// one the state vouches for.
func (it *item) ref(now time.Time) (stapleRef, bool) {
	st := it.st
	if st == nil || st.Responder == "" || st.CertID == "" || it.stapleHash != st.StapleHash || !st.hasValidStaple(now) {
		return stapleRef{}, false
	}
	if it.staple == nil {
		staple, err := readRegular(it.file.Staple, maxStapleBytes)
		if err != nil || hashBytes(staple) != st.StapleHash {
			return stapleRef{}, false
		}
		it.staple = staple
	}
	return stapleRef{Path: it.path, DER: it.staple, CertID: st.CertID, Serial: st.Serial, ThisUpdate: st.ThisUpdate,
		ProducedAt: st.ProducedAt, Status: st.Status, NextUpdate: st.NextUpdate, Fresh: it.changed, NewCert: it.newCert, IssuerFile: it.file.Issuer, Name: it.file.Name}, true
}

// hasValidStaple reports whether the staple recorded as on disk is still worth stapling at now.
func (st *CertState) hasValidStaple(now time.Time) bool {
	return st.StapleHash != "" && st.NextUpdate.After(now.Add(minValidity))
}

// recordStaple notes a valid staple now on disk.
func (st *CertState) recordStaple(der []byte, resp *ocsp.Response, certID []byte) {
	st.StapleHash = hashBytes(der)
	st.CertID = hex.EncodeToString(certID)
	st.Status = statusName(resp.Status)
	st.ThisUpdate = resp.ThisUpdate
	st.ProducedAt = resp.ProducedAt
	st.NextUpdate = resp.NextUpdate
	st.RevokedAt = resp.RevokedAt
	st.succeeded()
}

// succeeded clears the record of failures.
func (st *CertState) succeeded() {
	st.Failures, st.FailingSince, st.LastError = 0, time.Time{}, ""
}

// failed records a failure at now.
func (st *CertState) failed(err error, now time.Time) {
	if st.Failures == 0 {
		st.FailingSince = now
	}
	st.Failures++
	st.LastError = err.Error()
}
