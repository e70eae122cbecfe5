package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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
	st, ok, _ := decodeLinesFrom(bytes.NewReader(data), batchBytes)
	return st, ok
}
