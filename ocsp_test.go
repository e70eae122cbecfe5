package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFetchMethod(t *testing.T) {
	var method, body, contentType string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method, contentType = r.Method, r.Header.Get("Content-Type")
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		switch r.URL.Query().Get("x") {
		case "404":
			http.NotFound(w, r)
		case "big":
			w.Write(bytes.Repeat([]byte("x"), 5000))
		default:
			w.Write([]byte("answer"))
		}
	}))
	defer srv.Close()
	f := &fetcher{Client: srv.Client(), MaxBytes: 4096, Override: map[string]string{"http://ocsp.example.com": srv.URL}}
	tests := []struct {
		name, responder string
		req             []byte
		method, err     string
	}{
		{"short request by GET", srv.URL, bytes.Repeat([]byte{1}, 100), "GET", ""},
		{"long request by POST", srv.URL, bytes.Repeat([]byte{1}, 300), "POST", ""},
		{"override", "http://ocsp.example.com", bytes.Repeat([]byte{1}, 100), "GET", ""},
		{"HTTP status", srv.URL + "/?x=404", bytes.Repeat([]byte{1}, 300), "POST", "answered HTTP 404"},
		{"size cap", srv.URL + "/?x=big", bytes.Repeat([]byte{1}, 300), "POST", "more than 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := f.fetch(context.Background(), tt.responder, tt.req)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error containing %q", err, tt.err)
				}
				return
			}
			if err != nil || string(got) != "answer" {
				t.Fatalf("got %q, %v", got, err)
			}
			if method != tt.method {
				t.Errorf("method %s, want %s", method, tt.method)
			}
			if method == "POST" && (body != string(tt.req) || contentType != "application/ocsp-request") {
				t.Errorf("POST body %d bytes, content type %q", len(body), contentType)
			}
		})
	}
}

// TestFetchPerResponderLimit: however many jobs run, at most PerResponder requests are in
// flight to one responder host.
func TestFetchPerResponderLimit(t *testing.T) {
	var mu sync.Mutex
	inFlight, most := 0, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a responder's latency, so that requests overlap
		mu.Lock()
		inFlight--
		mu.Unlock()
		w.Write([]byte("answer"))
	}))
	defer srv.Close()
	f := &fetcher{Client: srv.Client(), MaxBytes: 4096, PerResponder: 3}
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			if _, err := f.fetch(context.Background(), srv.URL, []byte{1}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most != 3 {
		t.Errorf("%d requests in flight at most, want 3", most)
	}
}
