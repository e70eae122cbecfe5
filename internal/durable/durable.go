// Package durable writes files so that a reader sees the old content or the new, never a mix,
// and the new content survives a crash or a power loss once the write returns: a temporary
// file in the same directory, written and fsynced, renamed over the old one, then the
// directory fsynced. A rename replaces a symlink rather than writing through it. The owner,
// group and mode of a file that is replaced are kept.
//
// Batch does the same for many files at once with fewer waits on the disk: every temporary
// file is written and made durable first, then the files are renamed in the order of their
// stages, each stage's directories fsynced before the next stage is renamed. A small batch
// fsyncs its temporary files several at a time; a large one (SyncfsMin files or more) flushes
// each filesystem they are on once, with syncfs(2), which costs one wait on the disk instead
// of one per file.
package durable

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrOwner marks a file written with an owner or mode it did not have: the process may not
// give it the old one (it is not root, or the file belongs to another user).
var ErrOwner = errors.New("cannot keep the file's owner")

// WriteFile replaces path with data, durably. It reports whether it wrote: a file that
// already holds exactly data is left alone. perm is the mode of a new file; an existing
// file keeps its mode, owner and group. When the owner or group cannot be kept, the file is
// written all the same and the error wraps ErrOwner.
func WriteFile(path string, data []byte, perm fs.FileMode) (written bool, err error) {
	var b Batch
	b.Add(0, path, data, perm)
	if err := b.Commit(); err != nil && !errors.Is(err, ErrOwner) {
		return false, err
	} else if err != nil {
		return b.Written() > 0, err
	}
	return b.Written() > 0, nil
}

// WriteStream replaces path with what write writes, durably, as WriteFile does; the content
// is streamed to the temporary file, never held whole. It always writes.
func WriteStream(path string, perm fs.FileMode, write func(io.Writer) error) error {
	var b Batch
	b.mu.Lock()
	b.files = append(b.files, &file{path: path, write: write, perm: perm})
	b.mu.Unlock()
	return b.Commit()
}

// Batch is a set of files to write with one wait on the disk per stage.
type Batch struct {
	mu      sync.Mutex
	files   []*file
	written int
}

type file struct {
	stage int
	path  string
	data  []byte
	write func(io.Writer) error // instead of data: the content, streamed
	perm  fs.FileMode
	tmp   string
	err   error // of this file
	owner error // an ErrOwner warning
	same  bool  // already holds data: nothing to do
}

// Jobs is how many temporary files a Batch writes and fsyncs at once: the disk answers a few
// fsyncs at once about as fast as one.
const Jobs = 16

// SyncfsMin is the size from which a Batch makes its temporary files durable with one
// syncfs(2) per filesystem rather than one fsync per file. syncfs also flushes what other
// programs wrote to the filesystem, which a small batch should not wait for.
const SyncfsMin = 64

// Add adds a file to write at Commit and returns its index for Result. Files of a lower stage
// are renamed, and made durable, before those of a higher one (stapler renames <cert>.issuer
// before <cert>.ocsp: HAProxy refuses to start with a staple whose issuer it cannot find).
func (b *Batch) Add(stage int, path string, data []byte, perm fs.FileMode) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files = append(b.files, &file{stage: stage, path: path, data: data, perm: perm})
	return len(b.files) - 1
}

// Result says what Commit did with the file Add numbered i: whether it wrote it, and why not
// (an error naming the file), or an ErrOwner warning for a file written with another owner.
func (b *Batch) Result(i int) (written bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.files[i]
	if f.err != nil {
		return false, f.err
	}
	return !f.same, f.owner
}

// Len is how many files the batch holds.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.files)
}

// Written is how many files Commit wrote (the others held their data already, or failed).
func (b *Batch) Written() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.written
}

// Commit writes the batch. A file that fails is left as it was, and so are the files of
// later stages in its directory (an .ocsp is never renamed when its .issuer failed); the
// error names each file that failed. Errors that only say an owner could not be kept wrap
// ErrOwner.
func (b *Batch) Commit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	// 1. Temporary files, written and made durable: fsynced several at a time, or all at once
	// with one syncfs per filesystem.
	bulk := len(b.files) >= SyncfsMin
	var wg sync.WaitGroup
	work := make(chan *file)
	for range min(Jobs, len(b.files)) {
		wg.Go(func() {
			for f := range work {
				f.err = f.prepare(!bulk)
			}
		})
	}
	for _, f := range b.files {
		work <- f
	}
	close(work)
	wg.Wait()
	if bulk {
		b.syncTemps()
	}

	// 2. Renames, stage by stage, each stage's directories fsynced before the next.
	stages := map[int][]*file{}
	var order []int
	for _, f := range b.files {
		if _, ok := stages[f.stage]; !ok {
			order = append(order, f.stage)
		}
		stages[f.stage] = append(stages[f.stage], f)
	}
	slices.Sort(order)
	failedDirs := map[string]bool{}
	var errs []error
	for _, stage := range order {
		dirs := map[string]bool{}
		for _, f := range stages[stage] {
			dir := filepath.Dir(f.path)
			switch {
			case f.err == nil && failedDirs[dir]:
				f.err = fmt.Errorf("%s: not written: a file written before it in %s failed", f.path, dir)
			case f.err == nil && !f.same:
				if err := os.Rename(f.tmp, f.path); err != nil {
					f.err = fmt.Errorf("%s: %w", f.path, err)
				} else {
					f.tmp = ""
					dirs[dir] = true
					b.written++
				}
			}
			if f.tmp != "" {
				os.Remove(f.tmp)
				f.tmp = ""
			}
			if f.err != nil {
				failedDirs[dir] = true
				errs = append(errs, f.err)
			} else if f.owner != nil {
				errs = append(errs, f.owner)
			}
		}
		for dir := range dirs {
			if err := syncDir(dir); err != nil {
				// In place, but not durable: a crash may undo the rename. Said as the
				// file's error, so that no caller records it as written.
				for _, f := range stages[stage] {
					if f.err == nil && !f.same && filepath.Dir(f.path) == dir {
						f.err = fmt.Errorf("%s: renamed into place, but syncing directory %s failed: %w", f.path, dir, err)
						errs = append(errs, f.err)
					}
				}
				failedDirs[dir] = true
			}
		}
	}
	return errors.Join(errs...)
}

// syncTemps makes the temporary files durable with one syncfs per filesystem they are on. A
// file whose filesystem cannot be synced that way is fsynced; one that fails is not renamed.
func (b *Batch) syncTemps() {
	type fsys struct {
		err   error
		files []*file
	}
	byDev := map[uint64]*fsys{}
	for _, f := range b.files {
		if f.err != nil || f.tmp == "" {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(f.tmp, &st); err != nil {
			f.fail(err)
			continue
		}
		if byDev[st.Dev] == nil {
			byDev[st.Dev] = &fsys{err: syncfs(f.tmp)}
		}
		byDev[st.Dev].files = append(byDev[st.Dev].files, f)
	}
	for _, sys := range byDev {
		for _, f := range sys.files {
			if sys.err != nil {
				f.fail(fsyncPath(f.tmp))
			}
		}
	}
}

// syncfs flushes the filesystem that holds path.
func syncfs(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// fsyncPath fsyncs the file at path.
func fsyncPath(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// fail records err (nil: none) for f and removes its temporary file.
func (f *file) fail(err error) {
	if err == nil {
		return
	}
	os.Remove(f.tmp)
	f.tmp, f.err = "", fmt.Errorf("%s: %w", f.path, err)
}

// prepare writes the temporary file of f, and fsyncs it when sync is set, unless the file
// already holds its data.
func (f *file) prepare(sync bool) error {
	old, statErr := os.Lstat(f.path)
	replacing := statErr == nil && old.Mode().IsRegular()
	if f.write == nil && replacing && old.Size() == int64(len(f.data)) {
		if cur, err := readFile(f.path, int64(len(f.data))); err == nil && bytes.Equal(cur, f.data) {
			f.same = true
			return nil
		}
	}
	dir, base := filepath.Split(f.path)
	if dir == "" {
		dir = "."
	}
	t, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	f.tmp = t.Name()
	fail := func(err error) error {
		t.Close()
		os.Remove(f.tmp)
		f.tmp = ""
		return fmt.Errorf("%s: %w", f.path, err)
	}
	perm := f.perm
	if replacing {
		perm = old.Mode().Perm()
		if st, ok := old.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != os.Getuid() || int(st.Gid) != os.Getgid()) {
			if err := t.Chown(int(st.Uid), int(st.Gid)); err != nil {
				f.owner = fmt.Errorf("%s: %w (uid %d, gid %d), written as uid %d, gid %d: %v", f.path, ErrOwner, st.Uid, st.Gid, os.Getuid(), os.Getgid(), err)
			}
		}
	}
	if err := t.Chmod(perm); err != nil {
		return fail(err)
	}
	if f.write != nil {
		w := bufio.NewWriterSize(t, 64<<10)
		if err := f.write(w); err != nil {
			return fail(err)
		}
		if err := w.Flush(); err != nil {
			return fail(err)
		}
	} else if _, err := t.Write(f.data); err != nil {
		return fail(err)
	}
	if sync {
		if err := t.Sync(); err != nil {
			return fail(err)
		}
	}
	if err := t.Close(); err != nil {
		os.Remove(f.tmp)
		f.tmp = ""
		return fmt.Errorf("%s: %w", f.path, err)
	}
	return nil
}

// syncDir is SyncDir, but for tests that make it fail.
var syncDir = SyncDir

// SyncDir fsyncs a directory, so that renames in it survive a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readFile reads at most max bytes of a regular file, without blocking on a FIFO.
func readFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max+1))
}

// tempPattern matches the temporary files of this package: "." + name + ".tmp-" + digits.
var tempPattern = regexp.MustCompile(`^\.(.+)\.tmp-[0-9]+$`)

// RemoveTemps removes from dir the temporary files that a killed writer left for the given
// file names, and only those: never another program's temporary files. It returns the paths
// it removed.
func RemoveTemps(dir string, names map[string]bool) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		m := tempPattern.FindStringSubmatch(e.Name())
		if m == nil || !names[m[1]] || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if os.Remove(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}
