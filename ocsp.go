package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// maxGETLength: RFC 5019 section 5 sends requests whose encoding is at most 255 bytes by GET.
const maxGETLength = 255

// fetcher asks OCSP responders for responses.
type fetcher struct {
	Client       *http.Client
	MaxBytes     int64
	Override     map[string]string // responder URL in the certificate: URL to use instead
	PerResponder int               // requests in flight to one responder host at most

	mu    sync.Mutex
	slots map[string]chan struct{} // by responder host
}

// fetch sends req to the responder and returns the body of its answer, unvalidated.
func (f *fetcher) fetch(ctx context.Context, responder string, req []byte) ([]byte, error) {
	if o, ok := f.Override[responder]; ok {
		responder = o
	}
	release, err := f.acquire(ctx, responder)
	if err != nil {
		return nil, err
	}
	defer release()
	var hreq *http.Request
	enc := url.QueryEscape(base64.StdEncoding.EncodeToString(req))
	if len(enc) <= maxGETLength {
		hreq, err = http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(responder, "/")+"/"+enc, nil)
	} else {
		hreq, err = http.NewRequestWithContext(ctx, http.MethodPost, responder, bytes.NewReader(req))
		if hreq != nil {
			hreq.Header.Set("Content-Type", "application/ocsp-request")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("responder URL %q: %w", responder, err)
	}
	hreq.Header.Set("Accept", "application/ocsp-response")
	body, err := httpBody(f.Client, hreq, f.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("asking responder %s: %w", responder, err)
	}
	return body, nil
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

// httpBody sends req and returns the body of a 200 answer, refusing one over maxBytes.
func httpBody(client *http.Client, req *http.Request, maxBytes int64) ([]byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL, which for a GET request is long
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // lets the connection be reused
		return nil, fmt.Errorf("answered HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("answered more than %d bytes", maxBytes)
	}
	return body, nil
}
