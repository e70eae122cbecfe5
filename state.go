package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// stateVersion is the version of the state file format this build writes and reads.
const stateVersion = 1

// State is the JSON state file: what stapler knows of each certificate between runs.
type State struct {
	Version      int                   `json:"version"`
	Certificates map[string]*CertState `json:"certificates"`
	// Sockets is what versions before 0.2 recorded of each HAProxy process; read to be dropped.
	Sockets map[string]string `json:"sockets,omitempty"`
}

// CertState is the state of one certificate file, keyed by its path.
type CertState struct {
	Hash       string    `json:"hash"`    // SHA-256 of the certificate file
	Subject    string    `json:"subject"` // first DNS name, else common name
	Serial     string    `json:"serial"`
	Issuer     string    `json:"issuer"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	Responder  string    `json:"responder,omitempty"`   // empty: the certificate names no OCSP responder
	IssuerFile string    `json:"issuer_file,omitempty"` // hash of the <cert>.issuer stapler wrote
	IssuerKey  string    `json:"issuer_key,omitempty"`  // size, mtime and inode of the checked <cert>.issuer
	StapleHash string    `json:"staple_hash,omitempty"`
	StapleKey  string    `json:"staple_key,omitempty"` // size, mtime and inode of that file
	CertID     string    `json:"cert_id,omitempty"`    // hex DER CertID: HAProxy's key for the staple
	Status     string    `json:"status,omitempty"`     // of the staple on disk: good or revoked
	ThisUpdate time.Time `json:"this_update,omitzero"`
	ProducedAt time.Time `json:"produced_at,omitzero"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	NextDue    time.Time `json:"next_due,omitzero"`
	Failures   int       `json:"failures,omitempty"` // consecutive failed refreshes
	// FailingSince is when the first of those failures happened.
	FailingSince time.Time `json:"failing_since,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	LastUpdate   time.Time `json:"last_update,omitzero"` // last successful refresh
	// Updater is "haproxy" when HAProxy's own ocsp-update keeps the staple fresh (stapler then
	// keeps HAProxy's copy on disk), "" when stapler does.
	Updater string `json:"updater,omitempty"`
	// PendingPush lists the HAProxy sockets that did not take the staple on disk.
	PendingPush []string `json:"pending_push,omitempty"`
}

func newState() *State {
	return &State{Version: stateVersion, Certificates: map[string]*CertState{}}
}

// loadState reads the state file. A missing file is an empty state. A file that does not parse
// is moved aside to <path>.corrupt, logged, and replaced by an empty state: every staple is then
// checked again, which is safe (a dry run, with moveAside false, only pretends). A file from a
// newer stapler is an error and is left alone.
func loadState(path string, moveAside bool) (*State, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return newState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &probe); err == nil && probe.Version > stateVersion {
		return nil, fmt.Errorf("%s: written by a newer stapler (state version %d, this one reads %d)", path, probe.Version, stateVersion)
	}
	st := &State{}
	if err := json.Unmarshal(data, st); err != nil || st.Version != stateVersion {
		if err == nil {
			err = fmt.Errorf("no version %d", stateVersion)
		}
		if !moveAside {
			slog.Error("state file is unreadable; a real run would start afresh", "file", path, "err", err)
			return newState(), nil
		}
		aside := path + ".corrupt"
		slog.Error("state file is unreadable; starting afresh", "file", path, "err", err, "kept_as", aside)
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("%s: unreadable (%v) and cannot be moved aside: %w", path, err, rerr)
		}
		return newState(), nil
	}
	if st.Certificates == nil {
		st.Certificates = map[string]*CertState{}
	}
	for path, cs := range st.Certificates {
		if cs == nil {
			delete(st.Certificates, path)
		}
	}
	return st, nil
}

// stateReadable reports whether the state file is missing or one this stapler reads, without
// moving anything aside: `stapler check` says UNKNOWN rather than judge from a damaged file.
func stateReadable(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%s: unreadable state file: %w", path, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("%s: state file of version %d, not %d", path, st.Version, stateVersion)
	}
	return nil
}

// save writes the state atomically, readable by its owner only.
func (st *State) save(path string) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	if _, err := writeFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing state %s: %w", path, err)
	}
	return nil
}

// lockState takes an exclusive lock on <path>.lock so that two runs never interleave, waiting
// for a running one until ctx ends. The kernel drops the lock when the process dies, so a killed
// run leaves no stale lock. unlock releases it.
func lockState(ctx context.Context, path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock: %w", err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", name, err)
		}
		if !logged {
			slog.Info("waiting for another stapler run to finish", "lock", name)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another stapler run holds %s: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}
