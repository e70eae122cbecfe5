package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
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
			got, err := f.fetch(context.Background(), tt.responder, tt.req, nil, time.Now())
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error containing %q", err, tt.err)
				}
				return
			}
			if err != nil || string(got.Body) != "answer" {
				t.Fatalf("got %+v, %v", got, err)
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
			if _, err := f.fetch(context.Background(), srv.URL, []byte{1}, nil, time.Now()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most != 3 {
		t.Errorf("%d requests in flight at most, want 3", most)
	}
}

// TestCacheUntil: when an answer stops being fresh for HTTP caches (RFC 9111 section 4.2).
func TestCacheUntil(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	date := now.Add(-10 * time.Minute).Format(http.TimeFormat)
	for _, tt := range []struct {
		name   string
		header http.Header
		want   time.Duration // after now; 0: no word
	}{
		{"nothing", http.Header{}, 0},
		{"max-age", http.Header{"Cache-Control": {"public, max-age=3600"}}, time.Hour},
		{"max-age less Age", http.Header{"Cache-Control": {"max-age=3600"}, "Age": {"600"}}, 50 * time.Minute},
		{"Age past max-age", http.Header{"Cache-Control": {"max-age=3600"}, "Age": {"4000"}}, 0},
		{"max-age over Expires", http.Header{"Cache-Control": {"max-age=60"}, "Expires": {now.Add(time.Hour).Format(http.TimeFormat)}}, time.Minute},
		{"Expires less Date", http.Header{"Expires": {now.Add(time.Hour).Format(http.TimeFormat)}, "Date": {date}}, 70 * time.Minute},
		{"Expires without Date", http.Header{"Expires": {now.Add(time.Hour).Format(http.TimeFormat)}}, time.Hour},
		{"invalid Expires", http.Header{"Expires": {"0"}}, 0},
		{"no-cache", http.Header{"Cache-Control": {"no-cache, max-age=3600"}}, 0},
		{"no-store", http.Header{"Cache-Control": {"max-age=3600", "no-store"}}, 0},
	} {
		got := cacheUntil(tt.header, now)
		if want := now.Add(tt.want); tt.want == 0 && !got.IsZero() || tt.want != 0 && !got.Equal(want) {
			t.Errorf("%s: %v, want %v after now", tt.name, got.Sub(now), tt.want)
		}
	}
}

// TestFetchConditional: a request naming the held answer by ETag and Last-Modified; the
// server's 304 is "not modified", its headers kept.
func TestFetchConditional(t *testing.T) {
	var ifNoneMatch, ifModifiedSince string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ifNoneMatch, ifModifiedSince = r.Header.Get("If-None-Match"), r.Header.Get("If-Modified-Since")
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("ETag", `"v1"`)
		if ifNoneMatch == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Write([]byte("answer"))
	}))
	defer srv.Close()
	f := &fetcher{Client: srv.Client(), MaxBytes: 4096}
	now := time.Now()
	a, err := f.fetch(context.Background(), srv.URL, []byte{1}, nil, now)
	if err != nil || a.NotModified || string(a.Body) != "answer" || a.ETag != `"v1"` || !a.CacheUntil.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("unconditional: %+v, %v", a, err)
	}
	if ifNoneMatch != "" || ifModifiedSince != "" {
		t.Errorf("an unconditional request sent If-None-Match %q, If-Modified-Since %q", ifNoneMatch, ifModifiedSince)
	}
	lm := now.UTC().Format(http.TimeFormat)
	a, err = f.fetch(context.Background(), srv.URL, []byte{1}, &conditional{ETag: `"v1"`, LastModified: lm}, now)
	if err != nil || !a.NotModified || a.Body != nil || !a.CacheUntil.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("conditional: %+v, %v", a, err)
	}
	if ifModifiedSince != lm {
		t.Errorf("If-Modified-Since %q, want %q", ifModifiedSince, lm)
	}
	// A 304 to a request that named nothing is an error, not a staple.
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotModified) })
	if _, err := f.fetch(context.Background(), srv.URL, []byte{1}, nil, now); err == nil || !strings.Contains(err.Error(), "answered HTTP 304") {
		t.Errorf("unconditional 304: %v", err)
	}
}

// TestFetchCacheTimeout: a cache that takes connections and never answers is down too: with
// cache_fallback the request times out and goes to the responder, and later requests of the run
// go there at once, without waiting for the cache again.
func TestFetchCacheTimeout(t *testing.T) {
	responder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("from the responder")) }))
	defer responder.Close()
	var asked atomic.Int32
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		<-release
	}))
	defer hung.Close()
	defer close(release)
	f := newFetcher(Config{MaxResponseBytes: 4096, Jobs: 8, ResponderJobs: 8, CacheFallback: true,
		ResponderOverride: map[string]string{responder.URL: hung.URL}},
		// The timeout covers the request round the cache too: room for a loaded machine (-race).
		&http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: time.Second})
	for i := range 3 {
		a, err := f.fetch(context.Background(), responder.URL, []byte{byte(i)}, nil, time.Now())
		if err != nil || string(a.Body) != "from the responder" {
			t.Fatalf("request %d: %v; want the responder's answer", i, err)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the cache that timed out was asked %d times, want once", n)
	}
	// The run's own end is not the cache's fault: no fallback then.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g := newFetcher(Config{MaxResponseBytes: 4096, Jobs: 8, ResponderJobs: 8, CacheFallback: true,
		ResponderOverride: map[string]string{responder.URL: hung.URL}}, &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()})
	if _, err := g.fetch(ctx, responder.URL, []byte{1}, nil, time.Now()); err == nil || g.fellBack[hung.URL] {
		t.Errorf("a run that ended: %v, fell back %v; want an error and no fallback", err, g.fellBack[hung.URL])
	}
}

// TestFetchCacheFallback: a request through a cache that is down (no connection, or a gateway
// error) goes to the responder itself only with cache_fallback; any other answer of the cache
// stands.
func TestFetchCacheFallback(t *testing.T) {
	responder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("from the responder")) }))
	defer responder.Close()
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad gateway", http.StatusBadGateway) }))
	defer gateway.Close()
	missing := httptest.NewServer(http.NotFoundHandler())
	defer missing.Close()
	closed := "http://" + faultClosedAddr(t)
	for _, tt := range []struct {
		name, cache string
		fallback    bool
		want        string // the body, or an error containing this
	}{
		{"cache down, no fallback", closed, false, "through the cache at " + closed + ": dial tcp"},
		{"cache down, fallback", closed, true, "from the responder"},
		{"bad gateway, fallback", gateway.URL, true, "from the responder"},
		{"bad gateway, no fallback", gateway.URL, false, "cache_fallback is off"},
		{"the cache answers 404: it stands", missing.URL, true, "answered HTTP 404"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFetcher(Config{MaxResponseBytes: 4096, Jobs: 8, ResponderJobs: 8, CacheFallback: tt.fallback,
				ResponderOverride: map[string]string{responder.URL: tt.cache}}, &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()})
			a, err := f.fetch(context.Background(), responder.URL, []byte{1}, nil, time.Now())
			switch {
			case err != nil && !strings.Contains(err.Error(), tt.want):
				t.Errorf("error %v, want one containing %q", err, tt.want)
			case err == nil && string(a.Body) != tt.want:
				t.Errorf("got %q, want %q", a.Body, tt.want)
			}
		})
	}
}
