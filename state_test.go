package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestStateRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.json")
	st, err := loadState(path, true)
	if err != nil || len(st.Certificates) != 0 {
		t.Fatalf("missing state: %v, %v", st, err)
	}
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st.Certificates["/c/site.pem"] = &CertState{Hash: "h", Serial: "1f", Responder: "http://ocsp.test", Status: "good",
		ThisUpdate: now, NextUpdate: now.Add(time.Hour), NextDue: now, Failures: 2, LastError: "boom", PendingPush: []string{"/run/haproxy.sock"}}
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
		{"truncated", `{"version": 1, "certificates": {"/a": {"ha`, ""},
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
			if data, _ := os.ReadFile(path + ".corrupt"); string(data) != tt.content {
				t.Fatalf("damaged state not kept aside")
			}
		})
	}
}

func TestLockState(t *testing.T) {
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
