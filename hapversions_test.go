package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"stapler/internal/haproxy"
)

// The real-HAProxy tests run on every HAProxy branch stapler supports: Debian 12's 2.6 (the
// system's haproxy in CI) and 3.0, 3.2 and 3.4, which .ci/haproxy-versions.sh installs from
// Debian's packages into $STAPLER_HAPROXY_DIR/<branch> (default ~/.cache/stapler-haproxy),
// beside the system's. Under CI every branch must be there; elsewhere a missing one skips its
// tests, loudly, and TestMain says which at the end.

// hapBranches are the HAProxy branches stapler supports, oldest first.
var hapBranches = []string{"2.6", "3.0", "3.2", "3.4"}

// hapBin is one HAProxy binary the tests run.
type hapBin struct {
	Branch string // "2.6"
	Path   string
}

var (
	hapOnce  sync.Once
	hapFound map[string]hapBin // by branch
)

// hapDir is where .ci/haproxy-versions.sh installs HAProxy branches for the tests.
func hapDir() string {
	if d := os.Getenv("STAPLER_HAPROXY_DIR"); d != "" {
		return d
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(cache, "stapler-haproxy")
}

// findHAProxies looks for each branch: the system's haproxy for its own branch, and
// <hapDir>/<branch>/bin/haproxy.
func findHAProxies() map[string]hapBin {
	hapOnce.Do(func() {
		hapFound = map[string]hapBin{}
		candidates := []string{}
		if p, err := exec.LookPath("haproxy"); err == nil {
			candidates = append(candidates, p)
		}
		candidates = append(candidates, "/usr/sbin/haproxy")
		for _, b := range hapBranches {
			candidates = append(candidates, filepath.Join(hapDir(), b, "bin", "haproxy"))
		}
		for _, p := range candidates {
			out, err := exec.Command(p, "-v").Output()
			if err != nil {
				continue
			}
			first, _, _ := strings.Cut(string(out), "\n")
			v := haproxy.ParseVersion(strings.TrimPrefix(first, "HAProxy version "))
			branch := fmt.Sprintf("%d.%d", v.Major, v.Minor)
			if _, dup := hapFound[branch]; !dup && v.Major > 0 {
				hapFound[branch] = hapBin{Branch: branch, Path: p}
			}
		}
	})
	return hapFound
}

var (
	hapMissingMu sync.Mutex
	hapMissing   = map[string]bool{}
)

// hapVersions returns the HAProxy binaries to test on, one per supported branch. Under CI a
// missing branch fails the test; elsewhere its tests skip, and TestMain names it at the end.
func hapVersions(t testing.TB) []hapBin {
	t.Helper()
	skipProcesses(t)
	found := findHAProxies()
	var out []hapBin
	var missing []string
	for _, b := range hapBranches {
		if h, ok := found[b]; ok {
			out = append(out, h)
		} else {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("!!! HAProxy %s not found (system haproxy, or %s/<branch>/bin/haproxy): install with .ci/haproxy-versions.sh BRANCH %s/BRANCH !!!",
			strings.Join(missing, ", "), hapDir(), hapDir())
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Log(msg)
		hapMissingMu.Lock()
		for _, b := range missing {
			hapMissing[b] = true
		}
		hapMissingMu.Unlock()
	}
	if len(out) == 0 {
		t.Skip("no HAProxy at all")
	}
	return out
}

// forEachHAProxy runs test once per HAProxy branch, as subtests named "haproxy-<branch>".
func forEachHAProxy(t *testing.T, test func(t *testing.T, h hapBin)) {
	for _, h := range hapVersions(t) {
		t.Run("haproxy-"+h.Branch, func(t *testing.T) { test(t, h) })
	}
}

// forEachHAProxyFrom is forEachHAProxy for the branches from min on (features 2.6 lacks).
func forEachHAProxyFrom(t *testing.T, min string, test func(t *testing.T, h hapBin)) {
	for _, h := range hapVersions(t) {
		if slices.Index(hapBranches, h.Branch) >= slices.Index(hapBranches, min) {
			t.Run("haproxy-"+h.Branch, func(t *testing.T) { test(t, h) })
		}
	}
}

// hapSkippedNote is the line TestMain prints when HAProxy branches were missing, so that a
// passing `go test ./...` does not pass for having tested them.
func hapSkippedNote() string {
	hapMissingMu.Lock()
	defer hapMissingMu.Unlock()
	if len(hapMissing) == 0 {
		return ""
	}
	var b []string
	for _, br := range hapBranches {
		if hapMissing[br] {
			b = append(b, br)
		}
	}
	return fmt.Sprintf("stapler: NOTE: the real-HAProxy tests did not run on HAProxy %s (not installed; see README, Tests)", strings.Join(b, ", "))
}
