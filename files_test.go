package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
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

// TestReadRegularStat: what readRegularStat reads and refuses, with the mark os.Stat gives and
// errors that name the file. A FIFO is refused without blocking on it.
func TestReadRegularStat(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "site.pem")
	content := bytes.Repeat([]byte("0123456789abcdef"), 1000) // more than one read's first guess
	os.WriteFile(file, content, 0o644)
	os.Symlink("site.pem", filepath.Join(dir, "link.pem"))
	os.WriteFile(filepath.Join(dir, "empty.pem"), nil, 0o644)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	for _, c := range []struct {
		name    string
		max     int64
		want    []byte
		wantErr string // a regexp
	}{
		{"site.pem", 1 << 20, content, ""},
		{"site.pem", int64(len(content)), content, ""},
		{"link.pem", 1 << 20, content, ""},
		{"empty.pem", 1 << 20, []byte{}, ""},
		{"site.pem", int64(len(content)) - 1, nil, `^/.*/site\.pem is larger than it should be \(16000 bytes, at most 15999\)$`},
		{"fifo.pem", 1 << 20, nil, `^/.*/fifo\.pem is not a regular file$`},
		{"sub", 1 << 20, nil, `^/.*/sub is not a regular file$`},
		{"missing.pem", 1 << 20, nil, `^open /.*/missing\.pem: no such file or directory$`},
		// A file with more than its stat says (as /proc's files, which say 0 bytes): read to
		// its end, within the limit.
		{"/proc/self/limits", 100, nil, `^/proc/self/limits is larger than it should be \(more than 100 bytes\)$`},
	} {
		path := filepath.Join(dir, c.name)
		if filepath.IsAbs(c.name) {
			path = c.name
		}
		data, mark, err := readRegularStat(path, c.max)
		if c.wantErr != "" {
			if err == nil || !regexp.MustCompile(c.wantErr).MatchString(err.Error()) {
				t.Errorf("%s (at most %d bytes): error %v, want %s", c.name, c.max, err, c.wantErr)
			}
			if c.name == "missing.pem" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s: %v is not fs.ErrNotExist", c.name, err)
			}
			continue
		}
		wantMark, _ := byPathMark(path)
		if err != nil || !bytes.Equal(data, c.want) || mark != wantMark {
			t.Errorf("%s (at most %d bytes): %d bytes, mark %q, error %v; want %d bytes, mark %q", c.name, c.max, len(data), mark, err, len(c.want), wantMark)
		}
	}
	// Read whole, in more than one read, although its stat says 0 bytes.
	data, _, err := readRegularStat("/proc/self/limits", 1<<20)
	if err != nil || !bytes.HasPrefix(data, []byte("Limit")) || !bytes.Contains(data, []byte("Max open files")) {
		t.Errorf("/proc/self/limits: %v, %q", err, data)
	}
}
