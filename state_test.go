package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

func TestStateRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.json")
	st, err := loadState(path, true)
	if err != nil || len(st.Certificates) != 0 {
		t.Fatalf("missing state: %v, %v", st, err)
	}
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st.Certificates["/c/site.pem"] = &CertState{CertHash: "h", Serial: "1f", Responders: []string{"http://ocsp.test"},
		Staple:   &Staple{Hash: "s", Status: "good", ThisUpdate: now, NextUpdate: now.Add(time.Hour), SignerNotAfter: now.Add(time.Minute)},
		DiskHash: "s", NextDue: now, Failures: 2, LastError: "boom", Pending: []string{"/run/haproxy.sock"}}
	if err := st.save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, %v; want 0600", fi.Mode(), err)
	}
	back, err := loadState(path, true)
	if err != nil {
		t.Fatal(err)
	}
	got := back.Certificates["/c/site.pem"]
	if got == nil || !reflect.DeepEqual(got, st.Certificates["/c/site.pem"]) {
		t.Fatalf("got %+v, want %+v", got, st.Certificates["/c/site.pem"])
	}
}

func TestStateDamaged(t *testing.T) {
	tests := []struct {
		name, content string
		err           string // empty: starts afresh, old file kept aside
	}{
		{"truncated", `{"version": 2, "certificates": {"/a": {"ha`, ""},
		{"truncated version 1", `{"version": 1, "certificates": {"/a": {"ha`, ""},
		{"not JSON", "\x00\x01garbage", ""},
		{"empty", "", ""},
		{"old version", `{"version": 0}`, ""},
		{"no version", `{"certificates": {"/c/a.pem": {"hash": "ab"}}}`, ""},
		{"future version", `{"version": 99, "certificates": {}}`, "written by a newer stapler"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			os.WriteFile(path, []byte(tt.content), 0o600)
			if tt.name != "future version" {
				// A dry run neither moves the file nor fails.
				if st, err := loadState(path, false); err != nil || len(st.Certificates) != 0 {
					t.Fatalf("dry run: %v, %v", st, err)
				}
				if _, err := os.Stat(path); err != nil {
					t.Fatalf("dry run moved the state: %v", err)
				}
			}
			st, err := loadState(path, true)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), path) {
					t.Fatalf("got %v, want an error naming the file and containing %q", err, tt.err)
				}
				if data, _ := os.ReadFile(path); string(data) != tt.content {
					t.Fatal("state written by a newer stapler was changed")
				}
				return
			}
			if err != nil || len(st.Certificates) != 0 {
				t.Fatalf("got %v, %v; want a fresh state", st, err)
			}
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("damaged state kept aside as %q, want one file", aside)
			}
			if data, _ := os.ReadFile(aside[0]); string(data) != tt.content {
				t.Fatalf("damaged state not kept aside")
			}
			// A second damaged state does not overwrite the first one kept aside.
			os.WriteFile(path, []byte("again"), 0o600)
			if _, err := loadState(path, true); err != nil {
				t.Fatal(err)
			}
			if again, _ := filepath.Glob(path + ".corrupt-*"); len(again) != 2 {
				t.Errorf("after a second damaged state: %q, want two files kept aside", again)
			}
		})
	}
}

func TestLockState(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.json")
	unlock, err := lockState(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := lockState(ctx, path); err == nil || !strings.Contains(err.Error(), "another stapler run holds") {
		t.Fatalf("second lock: got %v, want it to wait and give up", err)
	}
	unlock()
	unlock2, err := lockState(context.Background(), path)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

// TestStateVersion1: a state written before the redesign is read and converted: the same
// certificate keeps its staple, schedule, failures and pending pushes (no refetch after an
// upgrade), and the next save writes version 2.
func TestStateVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	v1 := `{"version": 1, "certificates": {"/c/site.pem": {"hash": "whole-file", "subject": "site.test", "serial": "1f",
		"issuer": "CN=CA", "not_before": "2026-01-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z",
		"responder": "http://ocsp.test", "issuer_file": "ih", "issuer_key": "1:2:3", "staple_hash": "sh", "staple_key": "4:5:6",
		"cert_id": "3049", "status": "good", "this_update": "2026-11-01T00:00:00Z", "next_update": "2026-11-05T00:00:00Z",
		"next_due": "2026-11-03T00:00:00Z", "failures": 1, "last_error": "boom", "pending_push": ["/s"]}},
		"sockets": {"/s": "1@2"}}`
	os.WriteFile(path, []byte(v1), 0o600)
	st, err := loadState(path, true)
	if err != nil {
		t.Fatal(err)
	}
	got := st.Certificates["/c/site.pem"]
	want := &CertState{Subject: "site.test", Serial: "1f", Issuer: "CN=CA",
		NotBefore: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		Responders: []string{"http://ocsp.test"}, IssuerWritten: "ih", IssuerStat: "1:2:3", DiskStat: "4:5:6", DiskHash: "sh",
		Staple: &Staple{Hash: "sh", CertID: "3049", Status: "good", ThisUpdate: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
			NextUpdate: time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC)},
		NextDue: time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC), Failures: 1, LastError: "boom", Pending: []string{"/s"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("converted:\n got %+v\nwant %+v", got, want)
	}
	if err := st.save(path); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); must(stateFileVersion(data)) != 2 {
		t.Errorf("saved state is not version 2:\n%s", data)
	}
}

// TestStateManyLines: a state of thousands of lines is decoded line by line as encoding/json
// decodes it whole, a key repeated at the end winning, and a state whose last line is broken
// is read whole (and found broken) rather than half-taken.
func TestStateManyLines(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st := newState()
	for i := range 4000 {
		st.Certificates[fmt.Sprintf("/c/site%05d.pem", i)] = &CertState{CertHash: strings.Repeat("ab", 32), Subject: fmt.Sprintf("site%d.test", i),
			Serial: "1f", NotAfter: now, Responders: []string{"http://ocsp.test"}, Failures: i,
			Staple: &Staple{Hash: strings.Repeat("cd", 32), Status: "good", ThisUpdate: now, NextUpdate: now.Add(time.Hour)}}
	}
	var b bytes.Buffer
	if err := st.encode(&b); err != nil {
		t.Fatal(err)
	}
	data := b.Bytes()
	// The first certificate again, last: the later line wins.
	tail := []byte("}}\n")
	again := []byte(",\n\"/c/site00000.pem\":{\"failures\":7}\n")
	data = append(append(bytes.Clone(data[:len(data)-len(tail)-1]), again...), tail...)
	var want State
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	// In one batch, and in batches of a few lines.
	for _, batch := range []int{len(data), 1000} {
		got, ok := decodeLines(data, batch)
		if !ok {
			t.Fatalf("batches of %d bytes: the line decoder refused a state in stapler's own form", batch)
		}
		if len(got.Certificates) != 4000 || got.Certificates["/c/site00000.pem"].Failures != 7 || !reflect.DeepEqual(got.Certificates, want.Certificates) {
			t.Fatalf("batches of %d bytes: decoded %d certificates (the repeated one: %+v), not what encoding/json decodes", batch, len(got.Certificates), got.Certificates["/c/site00000.pem"])
		}
		if a, b := got.Certificates["/c/site00001.pem"], got.Certificates["/c/site03999.pem"]; unsafe.StringData(a.Responders[0]) != unsafe.StringData(b.Responders[0]) {
			t.Errorf("batches of %d bytes: the responder URL that every entry repeats is not held once", batch)
		}
	}

	broken := append(bytes.Clone(data[:len(data)-len(tail)-2]), "x\n}}\n"...)
	if _, ok := decodeLines(broken, stateBatchBytes); ok {
		t.Fatal("the line decoder took a state whose last line is broken")
	}
	path := filepath.Join(t.TempDir(), "state.json")
	if err := os.WriteFile(path, broken, 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := loadState(path, true)
	if err != nil || len(back.Certificates) != 0 {
		t.Fatalf("a broken state gave %d certificates, %v; want none (moved aside)", len(back.Certificates), err)
	}
	if aside, _ := filepath.Glob(path + ".corrupt-*"); len(aside) != 1 {
		t.Fatalf("the broken state was not moved aside: %v", aside)
	}
}

// decodeLines is decodeLinesFrom on data, in batches of batchBytes.
func decodeLines(data []byte, batchBytes int) (*State, bool) {
	st, ok, _ := decodeLinesFrom(bytes.NewReader(data), batchBytes, 0)
	return st, ok
}

// fullCertState is a CertState with every field set, none to its zero value (checked), in
// forms encode writes: times with and without fractions, in UTC and at an offset.
func fullCertState(t testing.TB) *CertState {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	east := time.FixedZone("", 2*3600)
	cs := &CertState{CertHash: strings.Repeat("ab", 32), CertStat: "1545:1796214796293655314:10215473", Subject: "site.test", Serial: "3ed",
		Issuer: "CN=Bench CA 0,O=stapler", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
		Responders: []string{"http://ocsp.test", "http://ocsp2.test/é"}, MustStaple: true, IssuerWritten: strings.Repeat("12", 32),
		IssuerStat: "683:1:2", CertID: "303b3009", IssuerInBundle: true,
		Staple: &Staple{Hash: strings.Repeat("cd", 32), CertID: "303b3009", Status: "revoked", ThisUpdate: now.Add(-time.Minute),
			NextUpdate: now.Add(time.Hour).In(east), ProducedAt: now.Add(-30 * time.Second), RevokedAt: now.Add(-time.Hour),
			RevokedReason: "keyCompromise", SignerNotAfter: now.Add(30 * 24 * time.Hour), Responder: "http://ocsp.test",
			ETag: "W/1234", LastModified: "Sun, 01 Nov 2026 12:00:00 GMT"},
		DiskStat: "683:1796214811269655964:10512197", DiskHash: strings.Repeat("cd", 32), DiskProblem: "not a response",
		NextDue: now.Add(123456789 * time.Nanosecond), Failures: -3, FailingSince: now.Add(-2 * time.Hour), LastError: "timeout",
		LastUpdate: now.Add(-time.Millisecond), Updater: "haproxy", Pending: []string{"/run/a.sock"}, Reload: []string{"/run/b.sock"},
		RevocationHandled: "3ed"}
	for _, v := range []reflect.Value{reflect.ValueOf(*cs), reflect.ValueOf(*cs.Staple)} {
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Fatalf("fullCertState leaves %s.%s zero", v.Type().Name(), v.Type().Field(i).Name)
			}
		}
	}
	return cs
}

// TestFastEntry: the decoder without reflection takes every field of a state's line as encode
// writes it, and gives what encoding/json gives; what it does not take, it leaves to the
// general decoder.
func TestFastEntry(t *testing.T) {
	st := newState()
	st.Certificates["/c/é site.pem"] = fullCertState(t)
	st.Certificates["/c/bare.pem"] = &CertState{}
	var b bytes.Buffer
	if err := st.encode(&b); err != nil {
		t.Fatal(err)
	}
	var want State
	if err := json.Unmarshal(b.Bytes(), &want); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	for _, line := range lines[1 : len(lines)-2] {
		k, v, _ := splitEntry([]byte(strings.TrimSuffix(line, ",")))
		path, cs, ok := fastEntry(k, v, nil)
		if !ok {
			t.Fatalf("the fast decoder refused a line encode wrote: %s", line)
		}
		if !reflect.DeepEqual(cs, want.Certificates[path]) {
			t.Errorf("%s: the fast decoder gave\n%#v\nencoding/json\n%#v", path, cs, want.Certificates[path])
		}
	}
	// Strings the entries share come from the map: the staple's CertID and hash are the
	// entry's; the issuer and URLs the map's.
	shared := map[string]string{}
	for _, s := range []string{"CN=Bench CA 0,O=stapler", "http://ocsp.test", "revoked"} {
		shared[strings.Clone(s)] = strings.Clone(s)
	}
	line := []byte(strings.TrimSuffix(lines[2], ","))
	if !strings.Contains(lines[2], "é site") {
		line = []byte(strings.TrimSuffix(lines[1], ","))
	}
	k, v, _ := splitEntry(line)
	_, cs, ok := fastEntry(k, v, shared)
	same := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }
	if !ok || !same(cs.Issuer, shared[cs.Issuer]) || !same(cs.Responders[0], shared["http://ocsp.test"]) || same(cs.Responders[1], shared["http://ocsp.test"]) ||
		!same(cs.Staple.Status, shared["revoked"]) || !same(cs.Staple.CertID, cs.CertID) || !same(cs.DiskHash, cs.Staple.Hash) {
		t.Errorf("the fast decoder did not share what it could: %+v", cs)
	}

	// What it leaves to the general decoder.
	for _, value := range []string{
		`{"subject":"a\"b"}`, `{"subject":"a\u0001"}`, "{\"subject\":\"\x01\"}", "{\"subject\":\"\xff\"}", `{"subject": "a"}`,
		`{"Subject":"a"}`, `{"subject":"a","subject":"b"}`, `{"subject":null}`, `{"staple":null}`, `{"unknown":1}`,
		`{"failures":1.0}`, `{"failures":1e1}`, `{"failures":01}`, `{"failures":-}`, `{"failures":99999999999999999999}`,
		`{"must_staple":1}`, `{"responders":["a",null]}`, `{"responders":["a",]}`, `{"not_after":"2026-11-01"}`,
		`{"subject":"a",}`, `{"subject":"a"}x`, `{"staple":{"hash":"a","hash":"b"}}`, `{"staple":{"HASH":"a"}}`,
	} {
		if _, _, ok := fastEntry([]byte(`"/a"`), []byte(value), nil); ok {
			t.Errorf("the fast decoder took %s", value)
		}
	}
	if _, _, ok := fastEntry([]byte(`"/a\u00e9"`), []byte(`{}`), nil); ok {
		t.Errorf("the fast decoder took a path with an escape")
	}
}

// TestStateEncodeChunks: encoded on every core, a few entries at a time, the state is the text
// of one json.Marshal per entry in path order, one entry per line, whatever the size of the
// pieces.
func TestStateEncodeChunks(t *testing.T) {
	st := newState()
	for i := range 50 {
		cs := fullCertState(t)
		cs.Failures = i
		st.Certificates[fmt.Sprintf("/c/<site&%02d>\u2028.pem", i)] = cs
	}
	want := []byte("{\"version\":2,\"certificates\":{")
	for i, path := range slices.Sorted(maps.Keys(st.Certificates)) {
		if i > 0 {
			want = append(want, ',')
		}
		want = append(append(append(append(want, '\n'), must(json.Marshal(path))...), ':'), must(json.Marshal(st.Certificates[path]))...)
	}
	want = append(want, "\n}}\n"...)
	defer func(old int) { encodeChunk = old }(encodeChunk)
	for _, chunk := range []int{1, 3, 7, 50, 1 << 20} {
		encodeChunk = chunk
		var b bytes.Buffer
		if err := st.encode(&b); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Bytes(), want) {
			t.Errorf("%d entries a piece: encode wrote\n%s\nwant\n%s", chunk, b.Bytes(), want)
		}
	}
	encodeChunk = 3
	empty := newState()
	var b bytes.Buffer
	if err := empty.encode(&b); err != nil || b.String() != "{\"version\":2,\"certificates\":{\n}}\n" {
		t.Errorf("empty state: %q, %v", b.String(), err)
	}
}

// TestLoadStateCollector: reading the state (loadState for run and status, readStateStrict
// for check) leaves the collector as it found it, and leaves it alone when the operator set
// GOGC.
func TestLoadStateCollector(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	if err := (&State{Certificates: map[string]*CertState{"/etc/ssl/site.pem": fullCertState(t)}}).save(path); err != nil {
		t.Fatal(err)
	}
	defer debug.SetGCPercent(debug.SetGCPercent(137))
	var during int
	testOnlyDuringLoad = func() { during = debug.SetGCPercent(-1); debug.SetGCPercent(during) }
	defer func() { testOnlyDuringLoad = nil }()
	for _, gogc := range []string{"", "137"} {
		t.Setenv("GOGC", gogc)
		if gogc == "" {
			os.Unsetenv("GOGC")
		}
		for name, read := range map[string]func(string) (*State, error){
			"loadState":       func(p string) (*State, error) { return loadState(p, false) },
			"readStateStrict": readStateStrict,
		} {
			during = 0
			st, err := read(path)
			if err != nil || len(st.Certificates) != 1 {
				t.Fatalf("%s, GOGC %q: %v, %v", name, gogc, st, err)
			}
			if want := map[string]int{"": 400, "137": 137}[gogc]; during != want {
				t.Errorf("%s, GOGC %q: the collector ran at %d while the state was read, want %d", name, gogc, during, want)
			}
			if got := debug.SetGCPercent(137); got != 137 {
				t.Errorf("%s, GOGC %q: afterwards %d, want 137 as before", name, gogc, got)
			}
		}
	}
}
