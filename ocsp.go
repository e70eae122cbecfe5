package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxGETLength: RFC 5019 section 5 sends requests whose encoding is at most 255 bytes by GET.
const maxGETLength = 255

// fetcher asks OCSP responders for responses.
type fetcher struct {
	Client       *http.Client
	MaxBytes     int64
	Override     map[string]string // responder URL in the certificate: URL to use instead
	PerResponder int               // requests in flight to one responder host at most
	// Proxy names the HTTP proxy Client uses for a URL ("" for none): with Override, the
	// cache in front of the responders. Direct, when not nil, is the client that asks the
	// responder itself when that cache is down (cache_fallback).
	Proxy  func(*url.URL) string
	Direct *http.Client

	mu       sync.Mutex
	slots    map[string]chan struct{} // by responder host
	fellBack map[string]bool          // caches found down in this run: said once
}

// statusError is an HTTP answer other than 200 (or 304 to a conditional request).
type statusError struct{ status string }

func (e *statusError) Error() string { return "answered HTTP " + e.status }

// transportError is a request that got no HTTP answer at all: no connection, or none read.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// cacheDown reports whether an error of a request through a cache says the cache itself is
// unreachable or broken: no answer at all (a request timeout included), or a gateway error.
// The end of the run (its deadline, a signal) is not.
func cacheDown(ctx context.Context, err error) bool {
	var se *statusError
	var te *transportError
	switch {
	case ctx.Err() != nil:
		return false
	case errors.As(err, &se):
		return strings.HasPrefix(se.status, "502") || strings.HasPrefix(se.status, "503") || strings.HasPrefix(se.status, "504")
	}
	return errors.As(err, &te)
}

// answer is what a responder sent back: the body of a 200 answer, unvalidated, or word that
// the response named in the conditional request has not changed; and what its HTTP headers
// say about caching.
type answer struct {
	Body        []byte
	NotModified bool   // 304: the response the conditional request named still stands
	ContentType string // of a 200 answer
	// CacheUntil is when the HTTP cache in front of the responder (a CDN), or the responder,
	// may have a newer answer: Cache-Control max-age, else Expires, less Age. Zero when the
	// headers say nothing or forbid caching.
	CacheUntil time.Time
	// ETag and LastModified name the answer for a later conditional request.
	ETag, LastModified string
}

// conditional names the response a client holds, for If-None-Match and If-Modified-Since.
type conditional struct{ ETag, LastModified string }

// fetch sends req to the responder and returns its answer; cond, when not nil, makes the
// request conditional. Requests go by GET when short enough, so that HTTP caches work. A
// request through a cache ([responder_override] to it, or proxy) that finds the cache down goes
// to the responder itself when Direct is set (cache_fallback), with a warning once per cache.
func (f *fetcher) fetch(ctx context.Context, responder string, req []byte, cond *conditional, now time.Time) (*answer, error) {
	target, cache := responder, ""
	if o, ok := f.Override[responder]; ok {
		target, cache = o, o
	}
	if u, err := url.Parse(target); err == nil && f.Proxy != nil {
		cache = cmp.Or(f.Proxy(u), cache)
	}
	f.mu.Lock()
	down := cache != "" && f.Direct != nil && f.fellBack[cache]
	f.mu.Unlock()
	if down {
		// Found down earlier in this run: not waited for again.
		return f.direct(ctx, responder, cache, req, cond, now)
	}
	a, err := f.ask(ctx, f.Client, target, req, cond, now)
	switch {
	case err == nil:
		return a, nil
	case cache == "" || !cacheDown(ctx, err):
		return nil, fmt.Errorf("asking responder %s: %w", target, err)
	case f.Direct == nil:
		return nil, fmt.Errorf("asking responder %s through the cache at %s: %w (cache_fallback is off: stapler does not go round the cache)", responder, cache, err)
	}
	f.mu.Lock()
	first := !f.fellBack[cache]
	if f.fellBack == nil {
		f.fellBack = map[string]bool{}
	}
	f.fellBack[cache] = true
	f.mu.Unlock()
	if first {
		slog.Warn("OCSP cache failed; asking the responders directly for the rest of this run (cache_fallback)", "cache", cache, "err", err)
	}
	return f.direct(ctx, responder, cache, req, cond, now)
}

// direct asks the responder itself, round the cache that failed.
func (f *fetcher) direct(ctx context.Context, responder, cache string, req []byte, cond *conditional, now time.Time) (*answer, error) {
	a, err := f.ask(ctx, f.Direct, responder, req, cond, now)
	if err != nil {
		return nil, fmt.Errorf("asking responder %s directly (after the cache at %s failed): %w", responder, cache, err)
	}
	return a, nil
}

// ask sends one OCSP request to url with client.
func (f *fetcher) ask(ctx context.Context, client *http.Client, target string, req []byte, cond *conditional, now time.Time) (*answer, error) {
	release, err := f.acquire(ctx, target)
	if err != nil {
		return nil, err
	}
	defer release()
	var hreq *http.Request
	enc := url.QueryEscape(base64.StdEncoding.EncodeToString(req))
	if len(enc) <= maxGETLength {
		hreq, err = http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(target, "/")+"/"+enc, nil)
	} else {
		hreq, err = http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(req))
		if hreq != nil {
			hreq.Header.Set("Content-Type", "application/ocsp-request")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("responder URL %q: %w", target, err)
	}
	hreq.Header.Set("Accept", "application/ocsp-response")
	if cond != nil && cond.ETag != "" {
		hreq.Header.Set("If-None-Match", cond.ETag)
	}
	if cond != nil && cond.LastModified != "" {
		hreq.Header.Set("If-Modified-Since", cond.LastModified)
	}
	return httpAnswer(client, hreq, f.MaxBytes, cond != nil, now)
}

// acquire waits for one of the PerResponder slots of the responder's host.
func (f *fetcher) acquire(ctx context.Context, responder string) (release func(), err error) {
	if f.PerResponder <= 0 {
		return func() {}, nil
	}
	host := responder
	if u, err := url.Parse(responder); err == nil {
		host = u.Host
	}
	f.mu.Lock()
	if f.slots == nil {
		f.slots = map[string]chan struct{}{}
	}
	slot, ok := f.slots[host]
	if !ok {
		slot = make(chan struct{}, f.PerResponder)
		f.slots[host] = slot
	}
	f.mu.Unlock()
	select {
	case slot <- struct{}{}:
		return func() { <-slot }, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// httpAnswer sends req and reads the answer: a 200 whose body is at most maxBytes, or, for a
// conditional request, a 304.
func httpAnswer(client *http.Client, req *http.Request, maxBytes int64, conditional bool, now time.Time) (*answer, error) {
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL, which for a GET request is long
		}
		return nil, &transportError{err}
	}
	defer resp.Body.Close()
	a := &answer{CacheUntil: cacheUntil(resp.Header, now), ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	switch {
	case resp.StatusCode == http.StatusNotModified && conditional:
		a.NotModified = true
		return a, nil
	case resp.StatusCode != http.StatusOK:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // lets the connection be reused
		return nil, &statusError{resp.Status}
	}
	a.ContentType = resp.Header.Get("Content-Type")
	a.Body, err = io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if int64(len(a.Body)) > maxBytes {
		return nil, fmt.Errorf("answered more than %d bytes", maxBytes)
	}
	return a, nil
}

// httpBody sends req and returns the body of a 200 answer, refusing one over maxBytes.
func httpBody(client *http.Client, req *http.Request, maxBytes int64) ([]byte, error) {
	a, err := httpAnswer(client, req, maxBytes, false, time.Time{})
	if err != nil {
		return nil, err
	}
	return a.Body, nil
}

// cacheUntil is when an HTTP answer received at now stops being fresh for caches (RFC 9111
// section 4.2): its freshness lifetime (max-age, else Expires less Date) less its Age. Zero
// when the headers give no lifetime, or say no-store or no-cache.
func cacheUntil(h http.Header, now time.Time) time.Time {
	lifetime, known := time.Duration(0), false
	for _, d := range strings.Split(strings.Join(h.Values("Cache-Control"), ","), ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return time.Time{}
		case "max-age":
			if n, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && n >= 0 {
				lifetime, known = time.Duration(n)*time.Second, true
			}
		}
	}
	if !known {
		expires, err := http.ParseTime(h.Get("Expires"))
		if err != nil {
			return time.Time{}
		}
		date, err := http.ParseTime(h.Get("Date"))
		if err != nil {
			date = now
		}
		lifetime = expires.Sub(date)
	}
	if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); err == nil && age > 0 {
		lifetime -= time.Duration(age) * time.Second
	}
	if lifetime <= 0 {
		return time.Time{}
	}
	return now.Add(lifetime)
}
