package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"stapler/internal/haproxycfg"
)

// extraSuffixes are the files HAProxy reads beside a certificate in a `crt /dir/` directory
// and never loads as certificates.
var extraSuffixes = []string{".ocsp", ".issuer", ".key", ".sctl"}

// listing is what a scan saw in the directories it read whole, by directory: the names of the
// regular files there that begin with "." (temporary files) and of the entries that end in
// ".issuer". An issuer file missing from a listed directory's set was not there when it was
// read.
type listing map[string]map[string]bool

// has reports whether path's directory was read and whether path was in it.
func (l listing) has(path string) (listed, found bool) {
	names, ok := l[filepath.Dir(path)]
	return ok, names[filepath.Base(path)]
}

// scanSpec says where to look for certificates.
type scanSpec struct {
	Dirs      []string
	Files     []string
	Recursive bool
	Exclude   []string
}

// scan lists the certificate files to consider, sorted and without duplicates, and the
// directories it read whole, the way HAProxy reads `crt /dir/`: every regular file or symlink to one, except dotfiles and the
// extras in extraSuffixes. A directory that cannot be read is an error naming it; the other
// directories are still listed. Paths keep the name HAProxy uses (a symlink is not resolved),
// because HAProxy looks for the staple beside that name.
func scan(spec scanSpec) (paths, scanned []string, seen listing, err error) {
	var errs []error
	seen = listing{}
	for _, f := range spec.Files {
		paths = append(paths, filepath.Clean(f))
	}
	// visit takes one entry of a directory the walk read; names is that directory's listing
	// in seen (nil when it could not be read whole).
	var visit func(top, dir string, names map[string]bool, d fs.DirEntry)
	// walk reads dir, unsorted (os.ReadDir sorts, and sorting 200,000 entries through their
	// interface was a quarter of a run's scan: paths are sorted once, at the end).
	walk := func(top, dir string) error {
		f, err := os.Open(dir) // a symlinked directory given in dirs is followed
		var entries []fs.DirEntry
		if err == nil {
			entries, err = f.ReadDir(-1)
			f.Close()
		}
		var names map[string]bool
		if err == nil {
			names = map[string]bool{} // what it lists is known
			seen[dir] = names
		}
		for _, d := range entries { // what was read of a directory that failed midway too
			visit(top, dir, names, d)
		}
		return err
	}
	visit = func(top, dir string, names map[string]bool, d fs.DirEntry) {
		name := d.Name()
		if d.IsDir() {
			if spec.Recursive && !strings.HasPrefix(name, ".") {
				if err := walk(top, joinName(dir, name)); err != nil {
					errs = append(errs, err)
				}
			}
			return
		}
		// Temporary files (regular ones only: RemoveListedTemps), and issuer files of any
		// kind (a FIFO or a dangling symlink there is an error to report).
		if names != nil && (strings.HasPrefix(name, ".") && d.Type().IsRegular() || strings.HasSuffix(name, ".issuer")) {
			names[name] = true
		}
		if strings.HasPrefix(name, ".") || isExtra(name) {
			return
		}
		path := joinName(dir, name)
		if excluded(spec.Exclude, top, path) {
			return
		}
		if !d.Type().IsRegular() {
			// A symlink counts when it points at a regular file; other kinds never do.
			fi, err := os.Stat(path)
			if err != nil || !fi.Mode().IsRegular() {
				slog.Debug("skipping file that is not a regular file", "file", path)
				return
			}
		}
		paths = append(paths, path)
	}
	for _, dir := range spec.Dirs {
		dir = filepath.Clean(dir)
		before := len(errs)
		if err := walk(dir, dir); err != nil {
			errs = append(errs, err)
		}
		if len(errs) == before {
			scanned = append(scanned, dir)
		}
	}
	return slices.Compact(sortPaths(paths)), scanned, seen, errors.Join(errs...)
}

// joinName is filepath.Join(dir, name) for a clean dir and a name listed in it, without
// cleaning the result again (filepath.Join was a tenth of a scan's CPU).
func joinName(dir, name string) string {
	switch {
	case dir == ".":
		return name
	case strings.HasSuffix(dir, "/"): // the root
		return dir + name
	}
	return dir + "/" + name
}

func isExtra(name string) bool {
	for _, s := range extraSuffixes {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// excluded reports whether path (found under dir) matches an exclude glob, by base name or by
// its path relative to dir.
func excluded(globs []string, dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		rel = path
	}
	for _, g := range globs {
		if ok, _ := filepath.Match(g, filepath.Base(path)); ok {
			return true
		}
		if ok, _ := filepath.Match(g, rel); ok {
			return true
		}
	}
	return false
}

// stapleName is where HAProxy looks for the staple of the certificate at path, by default.
func stapleName(path string) string { return path + ".ocsp" }

// issuerName is where HAProxy looks for the issuer of the certificate at path when the bundle
// does not hold it, by default.
func issuerName(path string) string { return path + ".issuer" }

// certFile is a certificate file and what HAProxy's configuration makes of it.
type certFile = haproxycfg.File

// naming answers, for every command, what HAProxy's configuration makes of a certificate
// file (certFile): what discovery found in haproxy.cfg, else HAProxy's defaults.
type naming struct {
	DelExt bool                      // extra_del_ext: for files neither listed nor in a discovered directory
	Dirs   map[string]haproxycfg.Dir // directories of `crt /dir/` lines in discovered configurations
	Files  map[string]certFile       // files named by discovered configurations (crt, crt-list, crt-store)
}

// file is what HAProxy makes of the certificate file at path.
func (n naming) file(path string) certFile {
	if f, ok := n.Files[path]; ok {
		return f
	}
	// The nearest discovered directory above it, if any (without one, nothing to look for:
	// walking up every path cost 10 filepath.Dir calls per certificate).
	for dir := filepath.Dir(path); len(n.Dirs) > 0; {
		if d, ok := n.Dirs[dir]; ok {
			f := haproxycfg.DefaultFile(path, d.DelExt)
			f.Auto = d.Auto
			return f
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return haproxycfg.DefaultFile(path, n.DelExt)
}

// sortPaths sorts paths on every core: parts sorted apart, then merged. It returns the sorted
// slice, which may not be paths'. (Sorting 100,000 paths took 60 to 80 ms of a run with
// nothing due, on one core.)
func sortPaths(paths []string) []string {
	parts := runtime.GOMAXPROCS(0)
	if parts < 2 || len(paths) < minParallelSort {
		slices.Sort(paths)
		return paths
	}
	size := (len(paths) + parts - 1) / parts
	var runs [][]string
	for lo := 0; lo < len(paths); lo += size {
		runs = append(runs, paths[lo:min(lo+size, len(paths))])
	}
	parallel(len(runs), parts, func(i int) { slices.Sort(runs[i]) })
	for len(runs) > 1 {
		merged := make([][]string, (len(runs)+1)/2)
		parallel(len(merged), parts, func(i int) {
			if 2*i+1 == len(runs) {
				merged[i] = runs[2*i]
				return
			}
			a, b := runs[2*i], runs[2*i+1]
			m := make([]string, 0, len(a)+len(b))
			for len(a) > 0 && len(b) > 0 {
				if b[0] < a[0] {
					m, b = append(m, b[0]), b[1:]
				} else {
					m, a = append(m, a[0]), a[1:]
				}
			}
			merged[i] = append(append(m, a...), b...)
		})
		runs = merged
	}
	return runs[0]
}

// minParallelSort is the fewest paths sortPaths sorts on more than one core.
var minParallelSort = 16384 // a variable for TestSortPaths

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// errNotCertificate marks a file that holds no PEM certificate: not ours to handle.
var errNotCertificate = errors.New("no PEM certificate in file")
