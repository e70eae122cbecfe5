// Package durable writes files so that a reader sees the old content or the new, never a mix,
// and the new content survives a crash or a power loss once the write returns: a temporary
// file in the same directory, written and fsynced, renamed over the old one, then the
// directory fsynced. A rename replaces a symlink rather than writing through it. The owner,
// group and mode of a file that is replaced are kept.
//
// Batch does the same for many files at once with fewer waits on the disk: temporary files
// are written and made durable before any is renamed, and the files are renamed in the order
// of their stages, each stage's directories fsynced before the next stage is renamed. A small
// batch fsyncs its temporary files several at a time; a large one (SyncfsMin files or more)
// goes in rounds of Round files, each flushed with one syncfs(2) per file system instead of
// one fsync per file, and reuses the files it replaces instead of creating new ones (see
// Commit); batches that share Spares pass on those they could not reuse.
package durable

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
	// Spares, when set, carries the files this batch replaced and did not reuse to the next
	// batch given the same Spares, instead of removing them at the end of Commit.
	Spares *Spares

	mu      sync.Mutex
	files   []*file
	written int
}

// Spares are files that batches replaced, kept under temporary names to be overwritten by a
// later batch (see Commit), so that a program writing many files in several batches creates
// new ones only for the first. Drop removes those left; a program killed before Drop leaves
// them behind as temporary files, as it would in the middle of a batch (see RemoveTemps).
type Spares struct {
	mu     sync.Mutex
	spares map[spareKey][]string
}

// Drop removes the spares left.
func (s *Spares) Drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	removeSpares(s.spares)
	s.spares = nil
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
	// differs: the caller knows path does not hold data (see AddChanged): not read to compare.
	differs bool
	// replacing: path is a regular file that the new one replaces.
	replacing bool
	// key is what a spare to stand for this file must match (when it replaces one); the
	// file it replaces becomes a spare of that key.
	key    spareKey
	reused bool // the temporary file is a spare, overwritten
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

// AddChanged is Add for content the caller knows path does not hold (it read what path holds
// in this run, and that differs): Commit writes it without reading path to compare. Were path
// to hold data all the same, it would only be written again.
func (b *Batch) AddChanged(stage int, path string, data []byte, perm fs.FileMode) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files = append(b.files, &file{stage: stage, path: path, data: data, perm: perm, differs: true})
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

// Reused is how many of the files Commit wrote went into a file it replaced, overwritten,
// rather than into a new one.
func (b *Batch) Reused() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, f := range b.files {
		if f.reused && f.err == nil {
			n++
		}
	}
	return n
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
//
// A large batch (SyncfsMin files or more) goes in rounds (an eighth of each stage, SyncfsMin to
// Round files; one round for what replaces no file): their temporary files are written, made
// durable with one syncfs, and exchanged with the files they replace (renameat2
// RENAME_EXCHANGE, as atomic as a rename); once the directory is fsynced, the replaced files,
// now under temporary names, are overwritten with a later round's content instead of creating
// new files (or a later batch's, given the same Spares: its first round too). Creating a file
// is what costs most on ext4 (allocating an inode and its blocks: 0.03 to 0.9 ms of kernel
// time each on this project's machine, depending on the directory and the hour, against about
// 0.05 ms to overwrite one; bench/README.md). A replaced file stands
// only for a file of the same directory, owner, group and mode, and only when nothing else can
// see it: one link, no extended attributes (ACLs, security labels, which belong to the file
// they were set on), a local file system (ext4, XFS, Btrfs, tmpfs), and a write lease granted,
// which Linux grants only while no other process has the file open (HAProxy reading it at a
// reload keeps what it read). Otherwise it is removed and a new file created; when a round
// could reuse none of them, the rest of the stage goes in one round.
func (b *Batch) Commit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	stages := map[int][]*file{}
	var order []int
	for _, f := range b.files {
		if _, ok := stages[f.stage]; !ok {
			order = append(order, f.stage)
		}
		stages[f.stage] = append(stages[f.stage], f)
	}
	slices.Sort(order)
	bulk := len(b.files) >= SyncfsMin
	r := &renamer{failed: map[string]int{}, spares: map[spareKey][]string{}}
	if b.Spares != nil {
		// The renamer works on the shared spares: those a batch before left (durable under
		// their temporary names since that batch fsynced their directory, and vetted again
		// when taken: reusable), and those this batch leaves to the next.
		b.Spares.mu.Lock()
		defer b.Spares.mu.Unlock()
		if b.Spares.spares == nil {
			b.Spares.spares = r.spares
		}
		r.spares = b.Spares.spares
	} else {
		defer removeSpares(r.spares)
	}
	for _, stage := range order {
		files := stages[stage]
		if !bulk {
			// A small batch: each temporary file fsynced, several at once.
			b.prepareAll(files, r, true)
			b.written += r.rename(files, stage)
			continue
		}
		// Rounds of an eighth of the stage, from SyncfsMin to Round files: the first round's
		// files are new, the others reuse what the rounds before replaced. When the first
		// replaced none (new files: nothing to reuse), the rest go at once, as more rounds
		// would only add waits on the disk.
		size := min(Round, max(SyncfsMin, len(files)/8))
		for first := true; len(files) > 0; first = false {
			n := min(len(files), size)
			if !first && (r.count() == 0 || r.refusing) {
				n = len(files)
			}
			round := files[:n]
			files = files[n:]
			b.prepareAll(round, r, false)
			b.syncTemps(round)
			b.written += r.rename(round, stage)
		}
	}
	return errors.Join(r.errs...)
}

// Round is how many files of a large batch are written, made durable and renamed together, at
// most.
const Round = 1024

// prepareAll writes the temporary files of files, Jobs at once, reusing spares where it can;
// files in a directory where an earlier stage failed are not written.
func (b *Batch) prepareAll(files []*file, r *renamer, fsync bool) {
	var todo []*file
	for _, f := range files {
		dir := filepath.Dir(f.path)
		if st, ok := r.failed[dir]; ok && st < f.stage {
			f.err = fmt.Errorf("%s: not written: a file written before it in %s failed", f.path, dir)
			continue
		}
		todo = append(todo, f)
	}
	r.offered = 0
	var wg sync.WaitGroup
	work := make(chan *file)
	for range min(Jobs, len(todo)) {
		wg.Go(func() {
			for f := range work {
				f.err = f.prepare(fsync, r)
			}
		})
	}
	for _, f := range todo {
		work <- f
	}
	close(work)
	wg.Wait()
	reused := 0
	for _, f := range todo {
		if f.reused {
			reused++
		}
	}
	// Spares offered and every one refused (security labels on every file, leases off):
	// more rounds would only add waits on the disk.
	r.refusing = r.offered > 0 && reused == 0
}

// renamer puts the temporary files of a batch in place and keeps what that frees for reuse.
type renamer struct {
	failed     map[string]int        // directory: the stage in which a file in it failed
	mu         sync.Mutex            // for spares and offered, which prepare's workers use
	spares     map[spareKey][]string // replaced files under temporary names
	offered    int                   // spares taken in the round being prepared
	replaced   map[spareKey][]string // of the round being renamed: spares once durable
	local      map[uint64]bool       // by device: whether its file system is local (see isLocal)
	noExchange bool                  // the file system has no RENAME_EXCHANGE: plain renames
	refusing   bool                  // the last round reused none of the spares it was offered
	errs       []error
}

// spareKey is what a spare can stand for: a file in its directory with its owner, group and
// mode.
type spareKey struct {
	dir      string
	uid, gid int
	perm     fs.FileMode
}

// take hands out a spare of key k, "" when there is none.
func (r *renamer) take(k spareKey) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.spares[k]
	if len(s) == 0 {
		return ""
	}
	r.spares[k] = s[:len(s)-1]
	r.offered++
	return s[len(s)-1]
}

// count is how many spares there are, in every directory.
func (r *renamer) count() int {
	n := 0
	for _, s := range r.spares {
		n += len(s)
	}
	return n
}

// removeSpares removes the replaced files that were not reused.
func removeSpares(spares map[spareKey][]string) {
	for _, s := range spares {
		for _, p := range s {
			os.Remove(p)
		}
	}
}

// rename puts the prepared files of one round of a stage in place, then fsyncs their
// directories; it returns how many it wrote.
func (r *renamer) rename(files []*file, stage int) (written int) {
	dirs := map[string]bool{}
	r.replaced = map[spareKey][]string{}
	for _, f := range files {
		dir := filepath.Dir(f.path)
		if f.err == nil && !f.same {
			if testBeforePlace != nil {
				testBeforePlace(f.path)
			}
			if err := r.place(f); err != nil {
				f.err = fmt.Errorf("%s: %w", f.path, err)
			} else {
				dirs[dir] = true
				written++
			}
		}
		if f.tmp != "" {
			os.Remove(f.tmp)
			f.tmp = ""
		}
		if f.err != nil {
			if _, ok := r.failed[dir]; !ok {
				r.failed[dir] = stage
			}
			r.errs = append(r.errs, f.err)
		} else if f.owner != nil {
			r.errs = append(r.errs, f.owner)
		}
	}
	for dir := range dirs {
		if err := syncDir(dir); err != nil {
			// In place, but not durable: a crash may undo the rename. Said as the
			// file's error, so that no caller records it as written.
			for _, f := range files {
				if f.err == nil && !f.same && filepath.Dir(f.path) == dir {
					f.err = fmt.Errorf("%s: renamed into place, but syncing directory %s failed: %w", f.path, dir, err)
					r.errs = append(r.errs, f.err)
					written--
				}
			}
			if _, ok := r.failed[dir]; !ok {
				r.failed[dir] = stage
			}
			// Not durable either: a power loss may bring them back under their old names, so
			// they must keep their content.
			for k, s := range r.replaced {
				if k.dir == dir {
					for _, p := range s {
						os.Remove(p)
					}
					delete(r.replaced, k)
				}
			}
		}
	}
	// Replaced files become spares once their exchange is durable.
	for k, s := range r.replaced {
		r.spares[k] = append(r.spares[k], s...)
	}
	r.replaced = nil
	return written
}

// testBeforePlace, when a test sets it, is called with each path before its file is put in
// place.
var testBeforePlace func(path string)

// place renames f's temporary file over f.path. A regular file it replaces is exchanged with
// it rather than unlinked, and kept as a spare for the next round.
func (r *renamer) place(f *file) error {
	if f.replacing && !r.noExchange {
		// prepare found a regular file at f.path; what the exchange brings out is checked.
		err := unix.Renameat2(unix.AT_FDCWD, f.tmp, unix.AT_FDCWD, f.path, unix.RENAME_EXCHANGE)
		switch {
		case err == nil:
			fi, err := os.Lstat(f.tmp)
			switch {
			case err == nil && fi.Mode().IsRegular():
				r.replaced[f.key] = append(r.replaced[f.key], f.tmp)
			case err == nil && !fi.IsDir():
				// A symlink, say, since prepare: replaced, as a rename would have.
				os.Remove(f.tmp)
			default:
				// A directory: put it back, as a rename over it would have failed.
				unix.Renameat2(unix.AT_FDCWD, f.tmp, unix.AT_FDCWD, f.path, unix.RENAME_EXCHANGE)
				return fmt.Errorf("%s is no longer a regular file", f.path)
			}
			f.tmp = ""
			return nil
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP):
			r.noExchange = true
		}
		// Otherwise (the file went away meanwhile): a plain rename.
	}
	if err := os.Rename(f.tmp, f.path); err != nil {
		return err
	}
	f.tmp = ""
	return nil
}

// ignoringEINTR calls fn until it is not interrupted by a signal.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// syncTemps makes the temporary files durable with one syncfs per filesystem they are on. A
// file whose filesystem cannot be synced that way is fsynced; one that fails is not renamed.
func (b *Batch) syncTemps(files []*file) {
	type fsys struct {
		err   error
		files []*file
	}
	byDev := map[uint64]*fsys{}
	devs := map[string]uint64{} // by directory: a temporary file is in its file's (a stat per file was 10 to 25 us)
	for _, f := range files {
		if f.err != nil || f.tmp == "" {
			continue
		}
		dir := filepath.Dir(f.tmp)
		dev, ok := devs[dir]
		if !ok {
			var st syscall.Stat_t
			if err := syscall.Stat(f.tmp, &st); err != nil {
				f.fail(err)
				continue
			}
			dev, devs[dir] = st.Dev, st.Dev
		}
		if byDev[dev] == nil {
			byDev[dev] = &fsys{err: syncfs(f.tmp)}
		}
		byDev[dev].files = append(byDev[dev].files, f)
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
// already holds its data. It writes into a spare (see take) when one may be reused, else into a
// new file.
func (f *file) prepare(sync bool, r *renamer) error {
	old, statErr := os.Lstat(f.path)
	f.replacing = statErr == nil && old.Mode().IsRegular()
	if f.write == nil && !f.differs && f.replacing && old.Size() == int64(len(f.data)) {
		if cur, err := readFile(f.path, int64(len(f.data))); err == nil && bytes.Equal(cur, f.data) {
			f.same = true
			return nil
		}
	}
	// A new file gets the owner and group a new file gets in its directory (a setgid
	// directory's group); one that replaces another, that one's.
	uid, gid, perm := -1, -1, f.perm
	if f.replacing {
		perm = old.Mode().Perm()
		if st, ok := old.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	var spare string
	if f.replacing {
		f.key = spareKey{filepath.Dir(f.path), uid, gid, perm}
		spare = r.take(f.key)
	}
	t, err := f.temp(spare, r, uid, gid, perm)
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	f.tmp = t.name
	fail := func(err error) error {
		t.close()
		os.Remove(f.tmp)
		f.tmp = ""
		return fmt.Errorf("%s: %w", f.path, err)
	}
	// A reused file has its owner, group and mode already (see reusable); a new one that
	// replaces another is given that one's, as far as this process may.
	if !f.reused {
		if uid >= 0 {
			var st unix.Stat_t
			if err := unix.Fstat(t.fd, &st); err != nil {
				return fail(t.pathErr("fstat", err))
			}
			if int(st.Uid) != uid || int(st.Gid) != gid {
				if err := unix.Fchown(t.fd, uid, gid); err != nil {
					f.owner = fmt.Errorf("%s: %w (uid %d, gid %d), written as uid %d, gid %d: %v", f.path, ErrOwner, uid, gid, st.Uid, st.Gid, t.pathErr("chown", err))
				}
			}
		}
		if err := unix.Fchmod(t.fd, uint32(perm)); err != nil {
			return fail(t.pathErr("chmod", err))
		}
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
	// A reused file may be longer than the new content.
	if f.reused && t.size > t.written {
		if err := unix.Ftruncate(t.fd, t.written); err != nil {
			return fail(t.pathErr("truncate", err))
		}
	}
	if sync {
		if err := ignoringEINTR(func() error { return unix.Fsync(t.fd) }); err != nil {
			return fail(t.pathErr("sync", err))
		}
	}
	if err := t.close(); err != nil {
		os.Remove(f.tmp)
		f.tmp = ""
		return fmt.Errorf("%s: %w", f.path, err)
	}
	return nil
}

// tempFile is a temporary file being written, held by its descriptor. (An *os.File costs a
// regular file four fcntl(2) and epoll_ctl(2) more when it is created, as Go's poller tries
// and fails to take it, and two more when it wraps an open descriptor: a fifth of the system
// calls a refresh makes per staple; bench/README.md, round eight.)
type tempFile struct {
	fd      int
	name    string
	size    int64 // of a reused file, before it is written
	written int64
}

// Write writes p whole, at the file's offset.
func (t *tempFile) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(t.fd, p[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.written += int64(n)
			return n, t.pathErr("write", err)
		}
		if m == 0 {
			t.written += int64(n)
			return n, t.pathErr("write", io.ErrShortWrite)
		}
		n += m
	}
	t.written += int64(n)
	return n, nil
}

func (t *tempFile) close() error {
	if err := unix.Close(t.fd); err != nil {
		return t.pathErr("close", err)
	}
	return nil
}

func (t *tempFile) pathErr(op string, err error) error {
	return &fs.PathError{Op: op, Path: t.name, Err: err}
}

// temp opens the temporary file to write f's content into, at offset 0: spare ("" for none),
// a replaced file of f's directory, owner, group and mode, when nothing but this process can
// see it, else a new file (a spare that cannot be reused is removed).
func (f *file) temp(spare string, r *renamer, uid, gid int, perm fs.FileMode) (*tempFile, error) {
	if spare != "" {
		if t := r.reusable(spare, uid, gid, perm); t != nil {
			f.reused = true
			return t, nil
		}
		os.Remove(spare)
	}
	dir, base := filepath.Split(f.path)
	if dir == "" {
		dir = "."
	}
	prefix := filepath.Join(dir, "."+base+".tmp-")
	for range 10000 {
		name := prefix + strconv.FormatUint(uint64(rand.Uint32()), 10)
		fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &tempFile{fd: fd, name: name}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: prefix + "*", Err: fs.ErrExist}
}

// localFS are the file systems whose leases see every opener (on a network or FUSE file
// system, readers on other hosts would not count): ext4 (ext2, ext3), XFS, Btrfs, tmpfs.
var localFS = []int64{unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.TMPFS_MAGIC}

// isLocal says whether the file system of device dev, which fd is on, is one of localFS; it
// asks once per device.
func (r *renamer) isLocal(fd int, dev uint64) bool {
	r.mu.Lock()
	local, ok := r.local[dev]
	r.mu.Unlock()
	if ok {
		return local
	}
	var sfs unix.Statfs_t
	if unix.Fstatfs(fd, &sfs) != nil {
		return false // not remembered: it may answer next time
	}
	local = slices.Contains(localFS, int64(sfs.Type))
	r.mu.Lock()
	if r.local == nil {
		r.local = map[uint64]bool{}
	}
	r.local[dev] = local
	r.mu.Unlock()
	return local
}

// reusable opens path for writing when its file may be overwritten unseen and stand for a file
// of the given owner, group and mode: a regular file with one link, that owner, group and mode,
// no extended attributes, on a local file system, which no other process has open (a write
// lease is granted only then). It returns nil otherwise.
func (r *renamer) reusable(path string, uid, gid int, perm fs.FileMode) *tempFile {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	var st unix.Stat_t
	ok := unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 &&
		int(st.Uid) == uid && int(st.Gid) == gid && fs.FileMode(st.Mode&0o7777) == perm &&
		r.isLocal(fd, st.Dev)
	if ok {
		n, err := unix.Flistxattr(fd, nil)
		ok = err == nil && n == 0
	}
	if ok {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK)
		ok = err == nil
	}
	if !ok {
		unix.Close(fd)
		return nil
	}
	// Written by this process only from here: the lease goes with the file's close.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
		unix.Close(fd)
		return nil
	}
	return &tempFile{fd: fd, name: path, size: st.Size}
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

// TempFor reports whether name is the name of one of this package's temporary files, and for
// which file name.
func TempFor(name string) (target string, ok bool) {
	if !strings.HasPrefix(name, ".") { // most names: no need for the pattern
		return "", false
	}
	if m := tempPattern.FindStringSubmatch(name); m != nil {
		return m[1], true
	}
	return "", false
}

// RemoveTemps removes from dir the temporary files that a killed writer left for the given
// file names, and only those: never another program's temporary files. It returns the paths
// it removed.
func RemoveTemps(dir string, names map[string]bool) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var listed []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			listed = append(listed, e.Name())
		}
	}
	return RemoveListedTemps(dir, listed, names)
}

// RemoveListedTemps is RemoveTemps for a directory the caller has just read: listed are the
// names of the regular files in it (those starting with "." suffice).
func RemoveListedTemps(dir string, listed []string, names map[string]bool) []string {
	var removed []string
	for _, name := range listed {
		if target, ok := TempFor(name); !ok || !names[target] {
			continue
		}
		p := filepath.Join(dir, name)
		if os.Remove(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}
