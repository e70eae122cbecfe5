package main

// Fuzz targets for the parsers of input stapler does not control: certificate bundles, OCSP
// responses, the state file, HAProxy's runtime API answers, haproxy.cfg and socket addresses.
// `go test` runs each target's seeds (f.Add and testdata/fuzz/<Name>) as a test; explore with
//
//	go test -run '^$' -fuzz '^FuzzParseBundle$' -fuzztime 30s -fuzzminimizetime 3s .
//
// A short run without -fuzzminimizetime spends most of its time minimizing each new input
// (up to 60 s apiece) rather than fuzzing. Every iteration stays in memory or a temporary
// directory: no network, no sleeping.

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"stapler/internal/pki"
)

// quietLogs discards slog output while a fuzz target or test runs: damaged inputs are logged
// on purpose, millions of times. It changes the process's default logger: a test that calls
// it must not run in parallel.
func quietLogs(tb testing.TB) {
	old := slog.Default()
	slog.SetDefault(slog.New(slog.DiscardHandler))
	tb.Cleanup(func() { slog.SetDefault(old) })
}

// FuzzParseBundle: parseBundle never panics, and returns exactly the CERTIFICATE blocks of
// the PEM in file order, the first being the leaf, or an error, never a partial list.
func FuzzParseBundle(f *testing.F) {
	now := time.Now()
	ca := pki.NewCA("Fuzz Bundle CA", now)
	inter := ca.Subordinate("Fuzz Bundle Intermediate", now)
	leaf, key := inter.Issue(pki.Leaf{Name: "fuzz.test", OCSP: []string{"http://ocsp.test"}, AIA: []string{"http://ca.test/i.der"}}, now)
	bundle := append(pki.CertPEM(leaf, inter.Cert, ca.Cert), pki.KeyPEM(key)...)
	f.Add(bundle)                                                    // HAProxy's order: leaf, chain, key
	f.Add(append(pki.KeyPEM(key), pki.CertPEM(leaf, inter.Cert)...)) // key first
	f.Add(pki.CertPEM(ca.Cert, inter.Cert, leaf))                    // chain in the wrong order
	f.Add(pki.KeyPEM(key))                                           // key only
	f.Add([]byte{})
	f.Add(leaf.Raw) // DER instead of PEM
	f.Add(bytes.ReplaceAll(bundle, []byte("\n"), []byte("\r\n")))
	f.Add(bundle[:len(bundle)/2]) // truncated
	f.Add(append([]byte("subject=CN = fuzz.test\nissuer=CN = Fuzz Bundle Intermediate\n"), bundle...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}))
	f.Add(append(pki.CertPEM(leaf), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw[:len(leaf.Raw)-1]})...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "TRUSTED CERTIFICATE", Bytes: leaf.Raw}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: leaf.Raw}))
	f.Add(append(pki.CertPEM(leaf), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{0x30, 0}})...))

	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseBundle(data)

		// The CERTIFICATE blocks, as encoding/pem finds them.
		var blocks [][]byte
		for rest := data; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				blocks = append(blocks, b.Bytes)
			}
		}
		var parseErr error
		for _, b := range blocks {
			if _, err := x509.ParseCertificate(b); err != nil {
				parseErr = err
				break
			}
		}
		switch {
		case err != nil && certs != nil:
			t.Fatalf("returned %d certificates and an error: %v", len(certs), err)
		case err == nil && len(certs) == 0:
			t.Fatal("returned no certificate and no error")
		case len(blocks) == 0:
			if !errors.Is(err, errNotCertificate) {
				t.Fatalf("no CERTIFICATE block: err %v, want errNotCertificate", err)
			}
		case parseErr != nil:
			if err == nil {
				t.Fatalf("accepted a bundle with an unparsable certificate (%v)", parseErr)
			}
		case err != nil:
			t.Fatalf("rejected a bundle whose %d certificates all parse: %v", len(blocks), err)
		case len(certs) != len(blocks):
			t.Fatalf("returned %d certificates for %d CERTIFICATE blocks", len(certs), len(blocks))
		default:
			for i, c := range certs {
				if !bytes.Equal(c.Raw, blocks[i]) {
					t.Fatalf("certificate %d is not CERTIFICATE block %d of the file", i+1, i+1)
				}
			}
		}
	})
}

// FuzzLoadState: loadState never panics on any state file. It either refuses a newer file,
// naming it and leaving it alone, or returns a usable state; a file it cannot use is kept,
// byte for byte, as <path>.corrupt-<time>. What it returns saves, and reads back the same.
func FuzzLoadState(f *testing.F) {
	quietLogs(f)
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st := newState()
	st.Certificates["/etc/haproxy/certs/site.pem"] = &CertState{CertHash: "ab", CertStat: "1:2:3", Subject: "site.test", Serial: "1f",
		Issuer: "CN=CA", NotBefore: now, NotAfter: now.Add(time.Hour), Responders: []string{"http://ocsp.test"},
		Staple:   &Staple{Hash: "cd", Status: "good", CertID: "3049", ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
		DiskStat: "4:5:6", DiskHash: "cd", NextDue: now, Failures: 2,
		FailingSince: now, LastError: "boom", LastUpdate: now, Pending: []string{"/run/haproxy/admin.sock"}}
	saved := append(must(json.MarshalIndent(st, "", "  ")), '\n')
	f.Add(saved)
	f.Add(saved[:len(saved)/2]) // truncated by a crash
	f.Add([]byte{})
	f.Add([]byte("\x00\x01garbage"))
	f.Add([]byte(`{"version": 0}`))
	f.Add([]byte(`{"version": 2, "certificates": {}}`))
	f.Add([]byte(`{"version": 2, "certificates": 5}`))
	f.Add([]byte(`{"version": 3, "certificates": {}}`))
	f.Add([]byte(`{"version": "1"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version": 1, "certificates": {"/a.pem": null}}`))
	f.Add([]byte(`{"version": 1, "certificates": {"/a.pem": {"this_update": "2026-11-01T12:00:00+23:59"}}}`))
	f.Add([]byte(`{"version": 1, "certificates": {"/a.pem": {"hash": "ab", "serial": "1f", "responder": "http://ocsp.test", "staple_hash": "cd", "cert_id": "3049", "status": "good", "pending_push": ["/s"]}}, "sockets": {"/s": "1@2"}}`))

	path := filepath.Join(f.TempDir(), "state.json") // rewritten by each iteration
	asides := func() []string { a, _ := filepath.Glob(path + ".corrupt-*"); return a }
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, a := range asides() {
			os.Remove(a)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := loadState(path, true)
		onDisk, rerr := os.ReadFile(path)
		var kept []byte
		aerr := os.ErrNotExist
		aside := path + ".corrupt-*"
		if a := asides(); len(a) == 1 {
			aside = a[0]
			kept, aerr = os.ReadFile(aside)
		} else if len(a) > 1 {
			t.Fatalf("moved aside more than once: %q", a)
		}
		if err != nil {
			if st != nil {
				t.Fatalf("returned a state and an error: %v", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			if rerr != nil || !bytes.Equal(onDisk, data) || aerr == nil {
				t.Fatalf("refused the file (%v) but did not leave it alone", err)
			}
			return
		}
		if st == nil || st.Certificates == nil || st.Version != stateVersion {
			t.Fatalf("unusable state %+v", st)
		}
		switch {
		case aerr == nil:
			if !bytes.Equal(kept, data) {
				t.Fatalf("%s holds %q, not the original %q", aside, kept, data)
			}
			if rerr == nil {
				t.Fatal("moved the file aside, and it is still there")
			}
			if len(st.Certificates) != 0 {
				t.Fatalf("moved the file aside, yet returned its content %+v", st)
			}
		case rerr != nil || !bytes.Equal(onDisk, data):
			t.Fatalf("changed the state file without keeping it aside (%v)", rerr)
		case !json.Valid(data):
			t.Fatal("took a file that is not JSON and did not move it aside")
		}

		if len(st.Certificates) == 0 {
			return // saving an empty state needs no fuzzing, and each save costs two fsyncs
		}
		if err := st.save(path); err != nil {
			t.Fatalf("state it loaded cannot be saved: %v", err)
		}
		back, err := loadState(path, true)
		if err != nil {
			t.Fatalf("reading back what was saved: %v", err)
		}
		if len(asides()) > 0 && aerr != nil {
			t.Fatal("what was saved was moved aside when read back")
		}
		if got, want := must(json.Marshal(back)), must(json.Marshal(st)); !bytes.Equal(got, want) {
			t.Fatalf("read back %s\nsaved %s", got, want)
		}
	})
}

// FuzzDecodeState: the state decoder's fast path (one certificate a line, decoded on every
// core) accepts only what encoding/json accepts of the whole file, and gives the same state.
func FuzzDecodeState(f *testing.F) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	st := newState()
	for i, path := range []string{"/c/a.pem", "/c/\"quoted\"\\b.pem", "/c/é\u2028.pem"} {
		st.Certificates[path] = &CertState{Subject: "site.test", Serial: "1f", NotAfter: now, Failures: i,
			Staple: &Staple{Hash: "cd", Status: "good", NextUpdate: now}, Pending: []string{"/s"}}
	}
	st.Certificates["/c/full.pem"] = fullCertState(f) // every field, for the decoder without reflection
	var b bytes.Buffer
	if err := st.encode(&b); err != nil {
		f.Fatal(err)
	}
	good := b.Bytes()
	if _, ok := decodeLines(good, stateBatchBytes); !ok {
		f.Fatal("the fast path refuses the state encode writes: the fuzzing would compare nothing")
	}
	f.Add(good)
	f.Add([]byte("{\"version\":2,\"certificates\":{\n\"/a\":null\n}}\n"))
	f.Add([]byte("{\"version\":2,\"certificates\":{\n\"/a\":{\"failures\":1},\n\"/a\":{\"failures\":2}\n}}\n"))
	f.Add([]byte("{\"version\":2,\"certificates\":{\n\"/a\":{},\n\"/b\":{}x\n}}\n"))
	f.Add([]byte("{\"version\":2,\"certificates\":{\n\"/a\":{}\n,\"/b\":{}\n}}\n"))
	f.Add([]byte("{\"version\":2,\"certificates\":{\n\"\xff\":{\"subject\":\"\xfe\"}\n}}\n"))
	f.Add([]byte("{\"version\":2,\"certificates\":{\n\"/a\" :{}\n}}\n"))
	f.Add([]byte("{\"version\":2,\"certificates\":{\n}}\n"))
	// Where a decoder could part from encoding/json: names in another case, unknown and
	// repeated names, numbers in other forms, times with offsets or fractions, escapes, nulls.
	for _, line := range []string{
		`{"CERT_HASH":"ab","Subject":"x","subject":"y","unknown":[1,{"a":null}]}`,
		`{"failures":1e1}`, `{"failures":-0}`, `{"failures":1.0}`, `{"failures":"1"}`, `{"failures":9223372036854775808}`,
		`{"not_after":"2026-11-01T12:00:00+01:00","not_before":"2026-11-01T12:00:00.123456789Z"}`,
		`{"not_after":"2026-11-01t12:00:00z"}`, `{"not_after":"2026-11-01T12:00:00+24:00"}`, `{"not_after":null,"staple":null}`,
		`{"subject":"\u00e9\ud83d\ude00\ud800","responders":["a",null],"pending_push":null}`,
		`{"must_staple":"true"}`, `{"must_staple":1}`, `{"staple":{"hash":"a","HASH":"b"}}`, `{"responders":{}}`,
	} {
		f.Add([]byte("{\"version\":2,\"certificates\":{\n\"/a\":" + line + "\n}}\n"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeLines(data, 64) // a few lines a batch
		if !ok {
			return
		}
		var want State
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("the fast path took what encoding/json refuses (%v):\n%q", err, data)
		}
		if want.Certificates == nil {
			want.Certificates = map[string]*CertState{}
		}
		if fast.Version != want.Version || !reflect.DeepEqual(fast.Certificates, want.Certificates) {
			t.Fatalf("the fast path decoded\n%#v\nencoding/json\n%#v\nfrom %q", fast, want, data)
		}
	})
}
