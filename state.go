package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	jsonv1 "github.com/go-json-experiment/json/v1"

	"stapler/internal/durable"
)

// stateVersion is the version of the state file format this build writes. It reads version 1
// too, and converts it.
const stateVersion = 2

// State is the JSON state file: what stapler knows of each certificate between runs.
type State struct {
	Version      int                   `json:"version"`
	Certificates map[string]*CertState `json:"certificates"`
}

func newState() *State {
	return &State{Version: stateVersion, Certificates: map[string]*CertState{}}
}

// maxStateBytes bounds the state file: about 1.2 KB per certificate.
const maxStateBytes = 1 << 30

// loadState reads the state file. A missing file is an empty state. A file that does not parse
// is moved aside to <path>.corrupt-<time>, logged, and replaced by an empty state: every
// staple is then checked again, which is safe (a dry run, with moveAside false, only
// pretends). A file from a newer stapler is an error and is left alone.
func loadState(path string, moveAside bool) (*State, error) {
	st, err, readErr := readStateFile(path)
	if errors.Is(readErr, os.ErrNotExist) {
		return newState(), nil
	}
	if readErr != nil {
		return nil, fmt.Errorf("reading state: %w", readErr)
	}
	var newer *newerStateError
	switch {
	case errors.As(err, &newer):
		return nil, fmt.Errorf("%s: %w", path, err)
	case err == nil:
		return st, nil
	case !moveAside:
		slog.Error("state file is unreadable; a real run would start afresh", "file", path, "err", err)
		return newState(), nil
	}
	aside := asideName(path)
	slog.Error("state file is unreadable; starting afresh", "file", path, "err", err, "kept_as", aside)
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("%s: unreadable (%v) and cannot be moved aside: %w", path, err, rerr)
	}
	return newState(), nil
}

// testOnlyDuringLoad, when set, is called while readStateFile has the collector as it reads.
var testOnlyDuringLoad func()

// asideName is a name for a corrupt state file that no earlier one has taken.
func asideName(path string) string {
	base := path + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z")
	name := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			return name
		}
		name = fmt.Sprintf("%s.%d", base, i)
	}
}

type newerStateError struct{ version int }

func (e *newerStateError) Error() string {
	return fmt.Sprintf("written by a newer stapler (state version %d, this one reads %d)", e.version, stateVersion)
}

// readStateFile reads and decodes the state file. readErr is why it cannot be read
// (os.ErrNotExist when there is none), err why what it holds is not a state.
//
// A state in the form encode writes is decoded as it is read, a batch of lines at a time:
// never held whole, it does not double a run's peak memory (at 100,000 certificates it is
// 120 MB). A file in any other form (edited by hand, cut short) is read again whole and
// decoded by parseState.
func readStateFile(path string) (st *State, err, readErr error) {
	// What the state holds stays live to the command's end: collecting while it is read
	// frees little (the read buffers) and marks all that is read so far, cycle after cycle
	// as the heap doubles. Unless the operator tuned the collector (GOGC; GOMEMLIMIT holds
	// either way), it runs a fifth as often meanwhile.
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(400))
	}
	if testOnlyDuringLoad != nil {
		testOnlyDuringLoad()
	}
	f, readErr := openRegular(path, maxStateBytes)
	if readErr != nil {
		return nil, nil, readErr
	}
	defer f.Close()
	entries := 0 // about one per KB: the map is made that large at once, not regrown as it fills
	if fi, err := f.Stat(); err == nil {
		entries = int(min(fi.Size()/1024, 1<<20))
	}
	st, ok, readErr := decodeLinesFrom(io.LimitReader(f, maxStateBytes+1), stateBatchBytes, entries)
	switch {
	case readErr != nil:
		return nil, nil, readErr
	case ok:
		return removeNull(st), nil, nil
	}
	data, readErr := readRegular(path, maxStateBytes)
	if readErr != nil {
		return nil, nil, readErr
	}
	st, err = parseState(data)
	return st, err, nil
}

// parseState decodes a state file of version 1 or 2.
func parseState(data []byte) (*State, error) {
	version, err := stateFileVersion(data)
	if err != nil {
		return nil, err
	}
	switch {
	case version > stateVersion:
		return nil, &newerStateError{version}
	case version == 1:
		return parseStateV1(data)
	case version != stateVersion:
		return nil, fmt.Errorf("state version %d is none stapler ever wrote (it writes %d, and reads 1 too)", version, stateVersion)
	}
	st := &State{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, err
	}
	return removeNull(st), nil
}

// share makes strings of the entry that repeat another of its strings (its CertID, its
// staple's; the hash of its staple file, its staple's) or other entries' (issuer, responders,
// status) one string in memory, through shared: 0.3 KB less per certificate.
func (cs *CertState) share(shared map[string]string) *CertState {
	if cs == nil {
		return nil
	}
	one := func(s *string) {
		if v, ok := shared[*s]; ok {
			*s = v
		} else if len(shared) < 1024 {
			shared[*s] = *s
		}
	}
	one(&cs.Issuer)
	for i := range cs.Responders {
		one(&cs.Responders[i])
	}
	if s := cs.Staple; s != nil {
		if cs.CertID == s.CertID {
			cs.CertID = s.CertID
		}
		if cs.DiskHash == s.Hash {
			cs.DiskHash = s.Hash
		}
		one(&s.Status)
		one(&s.Responder)
	}
	return cs
}

// removeNull drops the certificates a hand-edited state gives as null.
func removeNull(st *State) *State {
	if st.Certificates == nil {
		st.Certificates = map[string]*CertState{}
	}
	for path, cs := range st.Certificates {
		if cs == nil {
			delete(st.Certificates, path)
		}
	}
	return st
}

// stateBatchBytes is how much of the state decodeLinesFrom reads before it decodes.
const stateBatchBytes = 1 << 20

// decodeLinesFrom decodes a state in the form encode writes as it reads it, batchBytes of
// lines at a time, each batch on every core; ok is false for any other form (err is only for
// failing to read). A line in exactly the form encode writes is read by fastEntry; any other
// goes to go-json-experiment's v1 package (encoding/json's semantics on the decoder of
// encoding/json/v2, three times faster than encoding/json), which checks it, so what either
// accepts is what json.Unmarshal accepts of the whole (FuzzDecodeState compares them).
// (goccy/go-json decodes three to five times faster than encoding/json, but fuzzing found it
// taking what encoding/json refuses, {"":{""}}, and keeping invalid UTF-8 that encoding/json
// replaces.) entries is a guess of how many certificates it holds, to size the map.
func decodeLinesFrom(r io.Reader, batchBytes, entries int) (st *State, ok bool, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head := fmt.Sprintf("{\"version\":%d,\"certificates\":{\n", stateVersion) // as encode writes it
	if got, err := br.Peek(len(head)); string(got) != head {
		return nil, false, ignoreEOF(err)
	}
	br.Discard(len(head))
	st = &State{Version: stateVersion, Certificates: make(map[string]*CertState, entries)}
	d := lineDecoder{st: st, shared: map[string]string{}}
	comma := true // the line before ended with a comma: another entry follows
	for {
		start := len(d.batch)
		if d.batch, err = appendLine(br, d.batch); err != nil {
			return nil, false, ignoreEOF(err) // no line "}}" at the end: not encode's form
		}
		line := d.batch[start : len(d.batch)-1]
		if string(line) == "}}" { // the end (an entry's line starts with its key)
			if _, err := br.ReadByte(); err != io.EOF || comma || len(st.Certificates)+len(d.starts) == 0 {
				return nil, false, ignoreEOF(err) // an empty state is not in this form
			}
			d.batch = d.batch[:start]
			return st, d.decode(), nil
		}
		if !comma {
			return nil, false, nil
		}
		line, comma = bytes.CutSuffix(line, []byte(","))
		d.starts, d.ends = append(d.starts, start), append(d.ends, start+len(line))
		if len(d.batch) >= batchBytes {
			if !d.decode() {
				return nil, false, nil
			}
		}
	}
}

// ignoreEOF is err, unless it says the input ended.
func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	return err
}

// appendLine appends the next line of br to dst, its newline included; at the end of the input
// it returns io.EOF, whatever it appended.
func appendLine(br *bufio.Reader, dst []byte) ([]byte, error) {
	for {
		frag, err := br.ReadSlice('\n')
		dst = append(dst, frag...)
		if err != bufio.ErrBufferFull {
			return dst, err
		}
	}
}

// lineDecoder decodes a state's lines a batch at a time.
type lineDecoder struct {
	st           *State
	batch        []byte // the lines read and not yet decoded
	starts, ends []int  // each line's entry in batch, without its comma
	keys         []string
	certs        []*CertState
	shared       map[string]string // strings that many entries repeat, each held once
}

// decode decodes the batch's lines on every core and adds them to the state in file order (the
// last of a repeated key wins, as in encoding/json), then empties the batch. It reports
// whether every line was a valid entry.
func (d *lineDecoder) decode() bool {
	n := len(d.starts)
	d.keys, d.certs = slices.Grow(d.keys[:0], n)[:n], slices.Grow(d.certs[:0], n)[:n]
	var failed atomic.Bool
	parallel(n, runtime.GOMAXPROCS(0), func(i int) {
		if failed.Load() {
			return
		}
		d.certs[i] = nil
		k, v, split := splitEntry(d.batch[d.starts[i]:d.ends[i]])
		if !split {
			failed.Store(true)
			return
		}
		var fast bool
		if d.keys[i], d.certs[i], fast = fastEntry(k, v, d.shared); !fast {
			if jsonv1.Unmarshal(k, &d.keys[i]) != nil || jsonv1.Unmarshal(v, &d.certs[i]) != nil {
				failed.Store(true)
			}
		}
	})
	if failed.Load() {
		return false
	}
	for i, key := range d.keys {
		d.st.Certificates[key] = d.certs[i].share(d.shared)
	}
	clear(d.certs) // the batch's buffers are used again: hold nothing of it
	d.batch, d.starts, d.ends = d.batch[:0], d.starts[:0], d.ends[:0]
	return true
}

// splitEntry splits `"key":value` at the colon after the key, a JSON string.
func splitEntry(line []byte) (key, value []byte, ok bool) {
	if len(line) < 3 || line[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(line); i++ {
		switch line[i] {
		case '\\':
			i++ // the escaped character
		case '"':
			if i+1 < len(line) && line[i+1] == ':' {
				return line[:i+1], line[i+2:], true
			}
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// stateFileVersion reads the version of a state file: from its first key, where stapler writes
// it, without decoding the rest; else from the whole file.
func stateFileVersion(data []byte) (int, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var version int
	if t, err := dec.Token(); err == nil && t == json.Delim('{') {
		if t, err := dec.Token(); err == nil && t == "version" && dec.Decode(&version) == nil {
			return version, nil
		}
	}
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return 0, err
	}
	return probe.Version, nil
}

// parseStateV1 converts a version 1 state. Its certificate hash covered the whole file (keys
// included), so the first run reads each certificate again; the same certificate keeps its
// staple, schedule and failures.
func parseStateV1(data []byte) (*State, error) {
	var v1 struct {
		Certificates map[string]*struct {
			Subject      string    `json:"subject"`
			Serial       string    `json:"serial"`
			Issuer       string    `json:"issuer"`
			NotBefore    time.Time `json:"not_before"`
			NotAfter     time.Time `json:"not_after"`
			Responder    string    `json:"responder"`
			IssuerFile   string    `json:"issuer_file"`
			IssuerKey    string    `json:"issuer_key"`
			StapleHash   string    `json:"staple_hash"`
			StapleKey    string    `json:"staple_key"`
			CertID       string    `json:"cert_id"`
			Status       string    `json:"status"`
			ThisUpdate   time.Time `json:"this_update"`
			ProducedAt   time.Time `json:"produced_at"`
			NextUpdate   time.Time `json:"next_update"`
			RevokedAt    time.Time `json:"revoked_at"`
			NextDue      time.Time `json:"next_due"`
			Failures     int       `json:"failures"`
			FailingSince time.Time `json:"failing_since"`
			LastError    string    `json:"last_error"`
			LastUpdate   time.Time `json:"last_update"`
			Updater      string    `json:"updater"`
			PendingPush  []string  `json:"pending_push"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(data, &v1); err != nil {
		return nil, err
	}
	st := newState()
	for path, c := range v1.Certificates {
		if c == nil {
			continue
		}
		cs := &CertState{
			Subject: c.Subject, Serial: c.Serial, Issuer: c.Issuer, NotBefore: c.NotBefore, NotAfter: c.NotAfter,
			IssuerWritten: c.IssuerFile, IssuerStat: c.IssuerKey, DiskStat: c.StapleKey, DiskHash: c.StapleHash,
			NextDue: c.NextDue, Failures: c.Failures, FailingSince: c.FailingSince, LastError: c.LastError,
			LastUpdate: c.LastUpdate, Updater: c.Updater, Pending: c.PendingPush,
		}
		if c.Responder != "" {
			cs.Responders = []string{c.Responder}
		}
		if c.StapleHash != "" && c.CertID != "" {
			cs.Staple = &Staple{Hash: c.StapleHash, CertID: c.CertID, Status: c.Status, ThisUpdate: c.ThisUpdate,
				NextUpdate: c.NextUpdate, ProducedAt: c.ProducedAt, RevokedAt: c.RevokedAt}
		}
		st.Certificates[path] = cs
	}
	return st, nil
}

// readStateStrict reads the state file for check: a missing file is an empty state, and one
// this stapler cannot read is an error (never moved aside, never logged).
func readStateStrict(path string) (*State, error) {
	st, err, readErr := readStateFile(path)
	if errors.Is(readErr, os.ErrNotExist) {
		return newState(), nil
	}
	if readErr != nil {
		return nil, readErr
	}
	if err != nil {
		return nil, fmt.Errorf("%s: unreadable state file: %w", path, err)
	}
	return st, nil
}

// save writes the state durably, readable by its owner only; a file that exists keeps its
// owner and mode.
func (st *State) save(path string) error {
	st.Version = stateVersion
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	err := durable.WriteStream(path, 0o600, func(w io.Writer) error { return st.encode(w) })
	if err != nil {
		if errors.Is(err, durable.ErrOwner) {
			slog.Warn("state file written with another owner than it had; a run as another user may not read it", "err", err)
			return nil
		}
		return fmt.Errorf("writing state: %w", err)
	}
	return nil
}

// encode writes the state as JSON with one line per certificate, in path order: grep finds a
// certificate's whole entry, `jq . state.json` shows it indented, and it is written straight
// into the file (one entry's text in memory at a time) three times faster than indented JSON
// (0.04 s against 0.15 s at 10,000 certificates).
func (st *State) encode(w io.Writer) error {
	if _, err := fmt.Fprintf(w, "{\"version\":%d,\"certificates\":{", st.Version); err != nil {
		return err
	}
	// The entries are encoded encodeChunk at a time, two chunks per core at once (json.Marshal
	// was 0.15 s of a 0.25 s save at 10,000 certificates), and written in order.
	paths := sortPaths(slices.Collect(maps.Keys(st.Certificates)))
	bufs := make([][]byte, 2*runtime.GOMAXPROCS(0))
	errs := make([]error, len(bufs))
	for start := 0; start < len(paths); start += len(bufs) * encodeChunk {
		parallel(len(bufs), len(bufs)/2, func(k int) {
			buf, from := bufs[k][:0], start+k*encodeChunk
			for i := from; i < min(from+encodeChunk, len(paths)); i++ {
				key, err := json.Marshal(paths[i])
				if err == nil {
					var entry []byte
					entry, err = json.Marshal(st.Certificates[paths[i]])
					if i > 0 {
						buf = append(buf, ',')
					}
					buf = append(append(append(append(buf, '\n'), key...), ':'), entry...)
				}
				if err != nil {
					errs[k] = err
					break
				}
			}
			bufs[k] = buf
		})
		if err := errors.Join(errs...); err != nil {
			return err
		}
		for _, b := range bufs {
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
	}
	_, err := io.WriteString(w, "\n}}\n")
	return err
}

// encodeChunk is how many entries encode encodes in one piece.
var encodeChunk = 256

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
