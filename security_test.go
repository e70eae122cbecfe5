package main

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"stapler/internal/pki"
	"testing"
	"time"
)

// TestKeyMaterialNeverLeaks: stapler reads HAProxy's bundles, which hold private keys, but no
// piece of a key ever appears in what it prints, stores or writes: logs at debug level, status
// in both forms, check, the state file, staples, .issuer files, the AIA cache and the metrics.
func TestKeyMaterialNeverLeaks(t *testing.T) {
	now := time.Now()
	ca := pki.NewCA("Key Test CA", now)
	r := pki.StartResponder(ca)
	defer r.Close()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o755)
	var secrets [][]byte
	for _, name := range []string{"inbundle", "aia"} {
		spec := pki.Leaf{Name: name + ".test", OCSP: []string{r.URL()}}
		chain := []*x509.Certificate{ca.Cert}
		if name == "aia" {
			spec.AIA, chain = []string{r.URL() + "/ca.der"}, nil
		}
		leaf, key := ca.Issue(spec, now)
		writeBundle(filepath.Join(certs, name+".pem"), leaf, key, chain...)
		der := must(x509.MarshalPKCS8PrivateKey(key))
		block, _ := pem.Decode(pki.KeyPEM(key))
		secrets = append(secrets, der, key.D.Bytes(), []byte(base64.StdEncoding.EncodeToString(block.Bytes)[:40]))
	}
	state, metrics := filepath.Join(dir, "state", "state.json"), filepath.Join(dir, "stapler.prom")
	settings := []string{"--dir", certs, "--state", state, "-v"}

	var printed bytes.Buffer
	for _, args := range [][]string{
		append([]string{"run", "--metrics-file", metrics}, settings...),
		append([]string{"run", "--force", "--log-format", "json", "--metrics-file", metrics}, settings...),
		append([]string{"status"}, settings...),
		append([]string{"status", "--json"}, settings...),
		append([]string{"check"}, settings...),
	} {
		res := execStapler(t, 0, nil, nil, args...)
		printed.WriteString(res.stdout + res.stderr)
		if res.code != 0 {
			t.Fatalf("stapler %v: exit %d\n%s", args, res.code, printed.Bytes())
		}
	}
	if !bytes.Contains(printed.Bytes(), []byte("updated staple")) {
		t.Fatalf("the runs did not staple:\n%s", printed.Bytes())
	}

	check := func(what string, data []byte) {
		for _, s := range secrets {
			if bytes.Contains(data, s) {
				t.Errorf("%s holds private key material", what)
			}
		}
	}
	check("the output", printed.Bytes())
	written := 0
	// dir holds everything written: the certificates' directory, the state's and the metrics.
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) == ".pem" {
			return nil // the bundles themselves hold the keys
		}
		data, _ := os.ReadFile(path)
		check(path, data)
		written++
		return nil
	})
	if written < 6 { // state, lock, 2 staples, aia.pem.issuer, cached issuer, metrics
		t.Errorf("only %d files written; the test looked at too little", written)
	}
}
