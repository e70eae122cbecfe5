package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestStatDirsMark: a stat through a directory's descriptor gives the mark and the error that
// os.Stat gives by path: for a file, a symlink to one, a file replaced since the directory was
// opened, a missing file, and a directory that cannot be opened.
func TestStatDirsMark(t *testing.T) {
	dir := t.TempDir()
	file, link := filepath.Join(dir, "site.pem"), filepath.Join(dir, "link.pem")
	os.WriteFile(file, []byte("x"), 0o644)
	os.Symlink("site.pem", link)
	d := newStatDirs()
	defer d.close()
	check := func(what, path string) {
		t.Helper()
		mark, err := d.mark(path)
		wantMark, wantErr := byPathMark(path)
		if mark != wantMark || errText(err) != errText(wantErr) {
			t.Errorf("%s: mark %q, error %v; os.Stat gives %q, %v", what, mark, err, wantMark, wantErr)
		}
	}
	check("a file", file)
	check("a symlink", link)
	os.WriteFile(file+".new", []byte("xy"), 0o644)
	os.Rename(file+".new", file)
	check("a file replaced", file)
	check("a missing file", filepath.Join(dir, "missing.pem"))
	check("in a missing directory", filepath.Join(dir, "nowhere", "site.pem"))
	if len(d.fds) != 2 || d.fds[dir] < 0 || d.fds[filepath.Join(dir, "nowhere")] != -1 {
		t.Errorf("descriptors %v: want the directory's, and -1 for the missing one", d.fds)
	}
	// The directory is the path up to its last slash, resolved as the kernel resolves it: a
	// ".." after a symlinked directory leads out of the link's target, as for os.Stat.
	os.MkdirAll(filepath.Join(dir, "real", "inner"), 0o755)
	os.WriteFile(filepath.Join(dir, "real", "site.pem"), []byte("xyz"), 0o644)
	os.Symlink(filepath.Join("real", "inner"), filepath.Join(dir, "linked"))
	check("past a symlinked directory's ..", filepath.Join(dir, "linked")+"/../site.pem")
	check("with a dot", dir+"/./site.pem")
	check("a directory, with its slash", dir+"/real/")
	t.Chdir(dir)
	check("a relative path", "site.pem")
	check("a relative path in a directory", "real/site.pem")
	d.close()
	// Many at once, each directory opened once.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for _, p := range []string{file, link, filepath.Join(dir, "real", "site.pem")} {
				if mark, err := d.mark(p); err != nil || mark != must(byPathMark(p)) {
					t.Errorf("%s, concurrently: %q, %v", p, mark, err)
				}
			}
		})
	}
	wg.Wait()
	d.close()
	// Past maxStatDirs directories, stats go by path, and nothing more is held open.
	for i := range maxStatDirs {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i))
		os.Mkdir(sub, 0o755)
		os.WriteFile(filepath.Join(sub, "site.pem"), []byte("x"), 0o644)
		check("a file in one of many directories", filepath.Join(sub, "site.pem"))
	}
	if len(d.fds) != maxStatDirs {
		t.Errorf("%d directories held, want at most %d", len(d.fds), maxStatDirs)
	}
	var none *statDirs
	if mark, err := none.mark(file); err != nil || mark != must(byPathMark(file)) {
		t.Errorf("without descriptors: %q, %v", mark, err)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// byPathMark is the stat mark by os.Stat, as stapler took it before statDirs.
func byPathMark(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	return statMark(fi), nil
}
