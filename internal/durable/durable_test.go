package durable

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.ocsp")
	if w, err := WriteFile(p, []byte("one"), 0o644); err != nil || !w {
		t.Fatalf("new file: %v, %v", w, err)
	}
	fi1 := stat(t, p)
	if fi1.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi1.Mode())
	}
	if w, err := WriteFile(p, []byte("one"), 0o644); err != nil || w {
		t.Fatalf("same bytes: written %v, %v", w, err)
	}
	if !os.SameFile(fi1, stat(t, p)) {
		t.Error("the same bytes were written again")
	}
	// An existing file keeps its mode (and owner), whatever perm says.
	os.Chmod(p, 0o640)
	if w, err := WriteFile(p, []byte("two"), 0o644); err != nil || !w {
		t.Fatalf("replace: %v, %v", w, err)
	}
	if got := read(t, p); got != "two" || stat(t, p).Mode().Perm() != 0o640 {
		t.Errorf("got %q, mode %v; want two, 0640", got, stat(t, p).Mode())
	}
	// A symlink is replaced, never written through.
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("target"), 0o644)
	link := filepath.Join(dir, "link.ocsp")
	os.Symlink(target, link)
	if _, err := WriteFile(link, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if read(t, target) != "target" || read(t, link) != "new" {
		t.Error("wrote through the symlink")
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

// TestWriteFileKeepsOwner: a file stapler rewrites keeps its owner and group (a run as root
// must not take the state or a staple away from the user the timer runs as).
func TestWriteFileKeepsOwner(t *testing.T) {
	if os.Getuid() != 0 {
		cannot(t, "changing a file's owner needs root")
	}
	p := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(p, []byte("{}"), 0o600)
	os.Chown(p, 65534, 65534)
	if _, err := WriteFile(p, []byte(`{"a":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	st := stat(t, p).Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65534 || stat(t, p).Mode().Perm() != 0o600 {
		t.Errorf("owner %d:%d mode %v, want 65534:65534 0600", st.Uid, st.Gid, stat(t, p).Mode())
	}
}

// TestBatchStages: a file of a later stage is not renamed into a directory where a file of an
// earlier stage failed (no .ocsp without its .issuer), and other directories go on.
// TestBatchStages: a file of a later stage is renamed only when those of earlier stages in its
// directory were, for a small batch (fsync per file) and a large one (syncfs).
func TestBatchStages(t *testing.T) {
	for _, filler := range []int{0, SyncfsMin} {
		t.Run(fmt.Sprintf("%d more files", filler), func(t *testing.T) {
			ok, bad, more := t.TempDir(), t.TempDir(), t.TempDir()
			os.Mkdir(filepath.Join(bad, "site.pem.issuer"), 0o755) // a directory where the issuer goes: its rename fails
			os.WriteFile(filepath.Join(bad, "site.pem.ocsp"), []byte("old"), 0o644)
			var b Batch
			b.Add(0, filepath.Join(ok, "site.pem.issuer"), []byte("issuer"), 0o644)
			b.Add(1, filepath.Join(ok, "site.pem.ocsp"), []byte("staple"), 0o644)
			b.Add(0, filepath.Join(bad, "site.pem.issuer"), []byte("issuer"), 0o644)
			b.Add(1, filepath.Join(bad, "site.pem.ocsp"), []byte("staple"), 0o644)
			for i := range filler {
				b.Add(i%2, filepath.Join(more, fmt.Sprintf("f%d", i)), []byte(fmt.Sprint(i)), 0o644)
			}
			err := b.Commit()
			if err == nil || !strings.Contains(err.Error(), filepath.Join(bad, "site.pem.issuer")) || !strings.Contains(err.Error(), filepath.Join(bad, "site.pem.ocsp")) {
				t.Errorf("error %v does not name both files of the failed directory", err)
			}
			if read(t, filepath.Join(bad, "site.pem.ocsp")) != "old" {
				t.Error("the staple was renamed although its issuer failed")
			}
			if read(t, filepath.Join(ok, "site.pem.ocsp")) != "staple" || read(t, filepath.Join(ok, "site.pem.issuer")) != "issuer" || b.Written() != 2+filler {
				t.Errorf("the good directories were not written (written %d)", b.Written())
			}
			for i := range filler {
				if got := read(t, filepath.Join(more, fmt.Sprintf("f%d", i))); got != fmt.Sprint(i) {
					t.Errorf("f%d holds %q", i, got)
				}
			}
			for _, d := range []string{ok, bad, more} {
				if left := temps(t, d); len(left) > 0 {
					t.Errorf("temporary files left in %s: %q", d, left)
				}
			}
		})
	}
}

// TestBatchDirSyncFails: a file renamed into a directory whose fsync fails is not reported as
// written, and what comes after it in that directory (the staple after its issuer) is not
// renamed.
func TestBatchDirSyncFails(t *testing.T) {
	ok, bad := t.TempDir(), t.TempDir()
	syncDir = func(dir string) error {
		if dir == bad {
			return syscall.EIO
		}
		return SyncDir(dir)
	}
	t.Cleanup(func() { syncDir = SyncDir })
	var b Batch
	okIssuer := b.Add(0, filepath.Join(ok, "site.pem.issuer"), []byte("issuer"), 0o644)
	okStaple := b.Add(1, filepath.Join(ok, "site.pem.ocsp"), []byte("staple"), 0o644)
	badIssuer := b.Add(0, filepath.Join(bad, "site.pem.issuer"), []byte("issuer"), 0o644)
	badStaple := b.Add(1, filepath.Join(bad, "site.pem.ocsp"), []byte("staple"), 0o644)
	if err := b.Commit(); err == nil || !strings.Contains(err.Error(), "syncing directory "+bad) {
		t.Errorf("commit: %v; want the failed directory sync named", err)
	}
	for _, i := range []int{okIssuer, okStaple} {
		if w, err := b.Result(i); !w || err != nil {
			t.Errorf("file %d in the good directory: written %v, %v", i, w, err)
		}
	}
	if _, err := b.Result(badIssuer); !errors.Is(err, syscall.EIO) {
		t.Errorf("issuer in the directory that failed to sync: %v, want EIO", err)
	}
	if _, err := b.Result(badStaple); err == nil {
		t.Error("the staple after an issuer that is not durable was reported written")
	}
	if _, err := os.Stat(filepath.Join(bad, "site.pem.ocsp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the staple was renamed after its issuer's directory failed to sync: %v", err)
	}
}

func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".site.pem.ocsp.tmp-123", ".site.pem.issuer.tmp-9", ".other.json.tmp-4", ".site.pem.ocsp.tmp-x", "site.pem.ocsp"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	got := RemoveTemps(dir, map[string]bool{"site.pem.ocsp": true, "site.pem.issuer": true})
	slices.Sort(got)
	want := []string{filepath.Join(dir, ".site.pem.issuer.tmp-9"), filepath.Join(dir, ".site.pem.ocsp.tmp-123")}
	if !slices.Equal(got, want) {
		t.Errorf("removed %q, want %q", got, want)
	}
	for _, n := range []string{".other.json.tmp-4", ".site.pem.ocsp.tmp-x", "site.pem.ocsp"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s: %v (another program's file)", n, err)
		}
	}
}

func TestWriteFileErrors(t *testing.T) {
	if _, err := WriteFile(filepath.Join(t.TempDir(), "missing", "a"), []byte("x"), 0o644); err == nil || errors.Is(err, ErrOwner) {
		t.Errorf("a missing directory: %v", err)
	}
}

func stat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func temps(t *testing.T, dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestWriteStream: streamed content lands whole, keeps the file's mode, leaves no temporary
// file; a writer that fails leaves the old file as it was.
func TestWriteStream(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stapler.prom")
	os.WriteFile(path, []byte("old\n"), 0o640)
	if err := WriteStream(path, 0o644, func(w io.Writer) error {
		for i := range 10000 {
			fmt.Fprintf(w, "line %d\n", i)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := read(t, path)
	if !strings.HasPrefix(got, "line 0\n") || !strings.HasSuffix(got, "line 9999\n") || strings.Count(got, "\n") != 10000 {
		t.Errorf("wrote %d bytes, not the 10,000 lines", len(got))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the old file's 0640", fi.Mode().Perm())
	}
	err := WriteStream(path, 0o644, func(w io.Writer) error { fmt.Fprint(w, "half"); return errors.New("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") || read(t, path) != got {
		t.Errorf("a failed write: %v, and the file changed", err)
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

// TestBatchRounds: a batch of several rounds replaces every file with its own content, mode
// and owner, leaves no temporary file, and overwrites replaced files instead of creating new
// ones, but never one that another process still sees: a file held open, a second link, a
// file with extended attributes.
func TestBatchRounds(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	const n = 2*Round + 100
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("c%04d.pem.ocsp", i)) }
	content := func(i int, gen string) []byte { return []byte(strings.Repeat(gen, 1+i%7) + fmt.Sprint(i)) }
	inodes := map[uint64]int{} // of the files before the batch: which one
	for i := range n {
		os.WriteFile(name(i), content(i, "old "), 0o644)
		os.Chmod(name(i), fs.FileMode(0o600+i%2*0o44)) // 0600 or 0644
		inodes[ino(t, name(i))] = i
	}
	held, err := os.Open(name(0)) // a reader (HAProxy at a reload) holds the first file open
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	linked := filepath.Join(elsewhere, "backup.ocsp") // a second link to the second file
	if err := os.Link(name(1), linked); err != nil {
		t.Fatal(err)
	}
	xattrs := unix.Setxattr(name(2), "user.stapler-test", []byte("mine"), 0) == nil // tmpfs may refuse
	if !xattrs && os.Getenv("CI") != "" {
		t.Fatal("cannot set an extended attribute in the test's directory, and CI must test that such a file is never reused")
	}

	var b Batch
	for i := range n {
		b.Add(1, name(i), content(i, "new "), 0o644)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if b.Written() != n {
		t.Errorf("written %d, want %d", b.Written(), n)
	}
	for i := range n {
		if got := read(t, name(i)); got != string(content(i, "new ")) {
			t.Fatalf("%s holds %q", name(i), got)
		}
		if mode := stat(t, name(i)).Mode().Perm(); mode != fs.FileMode(0o600+i%2*0o44) {
			t.Errorf("%s: mode %v, want the old file's", name(i), mode)
		}
		// (A file refused for reuse is removed, and its inode number may come back for a
		// new file: only the held and the linked ones must never appear.)
		if was, ok := inodes[ino(t, name(i))]; ok && was <= 1 {
			t.Errorf("%s was written into the file of %s, which another process could see", name(i), name(was))
		}
		if xattrs {
			if v, err := unix.Getxattr(name(i), "user.stapler-test", make([]byte, 16)); err == nil {
				t.Errorf("%s carries the extended attribute of another file (%d bytes)", name(i), v)
			}
		}
	}
	first := min(Round, max(SyncfsMin, n/8)) // the first round's files are new
	refused := 2                             // held open, linked
	if xattrs {
		refused++
	}
	if reused := b.Reused(); reused != n-first-refused {
		t.Errorf("%d files reused of %d, want %d: the rounds after the first should overwrite the files they replaced, all but the %d another process could see", reused, n, n-first-refused, refused)
	}
	if got, _ := io.ReadAll(held); string(got) != string(content(0, "old ")) {
		t.Errorf("the reader of the old file read %q", got)
	}
	if got := read(t, linked); got != string(content(1, "old ")) {
		t.Errorf("the other link of a replaced file holds %q", got)
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %d", len(left))
	}
}

// TestBatchSameStageIndependent: a file that fails does not stop the other files of its stage
// in the same directory, only those of later stages.
func TestBatchSameStageIndependent(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "b.ocsp"), 0o755) // its rename fails
	var b Batch
	a := b.Add(1, filepath.Join(dir, "a.ocsp"), []byte("a"), 0o644)
	bad := b.Add(1, filepath.Join(dir, "b.ocsp"), []byte("b"), 0o644)
	c := b.Add(1, filepath.Join(dir, "c.ocsp"), []byte("c"), 0o644)
	later := b.Add(2, filepath.Join(dir, "d.ocsp"), []byte("d"), 0o644)
	if err := b.Commit(); err == nil || !strings.Contains(err.Error(), "b.ocsp") {
		t.Errorf("Commit: %v, want an error naming b.ocsp", err)
	}
	for _, i := range []int{a, c} {
		if w, err := b.Result(i); !w || err != nil {
			t.Errorf("file %d of the same stage: written %v, %v", i, w, err)
		}
	}
	if _, err := b.Result(bad); err == nil {
		t.Error("no error for the file that failed")
	}
	if w, err := b.Result(later); w || err == nil {
		t.Errorf("a later stage in the failed directory: written %v, %v", w, err)
	}
}

func ino(t *testing.T, path string) uint64 {
	t.Helper()
	return stat(t, path).Sys().(*syscall.Stat_t).Ino
}

// TestBatchNewFileGroup: a new file gets the group a new file gets in its directory: a setgid
// directory's.
func TestBatchNewFileGroup(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chown(dir, -1, 4321); err != nil {
		cannot(t, "changing a directory's group needs root")
	}
	os.Chmod(dir, 0o755|os.ModeSetgid)
	for _, n := range []int{1, SyncfsMin * 2} {
		var b Batch
		for i := range n {
			b.Add(0, filepath.Join(dir, fmt.Sprintf("new%d-%d.ocsp", n, i)), []byte("x"), 0o644)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		if gid := stat(t, filepath.Join(dir, fmt.Sprintf("new%d-0.ocsp", n))).Sys().(*syscall.Stat_t).Gid; gid != 4321 {
			t.Errorf("batch of %d: a new file in a setgid directory has group %d, want the directory's", n, gid)
		}
	}
}

// TestBatchDirSyncFailsNoReuse: a file replaced in a round whose directory fsync failed is not
// overwritten: after a power loss it could be back at its name.
func TestBatchDirSyncFailsNoReuse(t *testing.T) {
	dir := t.TempDir()
	n := 4 * SyncfsMin
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("c%03d.ocsp", i)) }
	for i := range n {
		os.WriteFile(name(i), []byte(fmt.Sprint("old ", i)), 0o644)
	}
	calls := 0
	syncDir = func(d string) error {
		calls++
		if calls == 1 {
			return syscall.EIO
		}
		return SyncDir(d)
	}
	t.Cleanup(func() { syncDir = SyncDir })
	var b Batch
	for i := range n {
		b.Add(0, name(i), []byte(fmt.Sprint("new ", i)), 0o644)
	}
	if err := b.Commit(); err == nil {
		t.Error("Commit did not report the failed directory fsync")
	}
	// The first round (SyncfsMin files) failed its directory fsync: the files it replaced were
	// removed, not reused, and with no spare left the rest went in one round.
	if got := b.Reused(); got != 0 {
		t.Errorf("%d files reused, want none (the first round's replaced files could come back)", got)
	}
	for i := SyncfsMin; i < n; i++ {
		if got := read(t, name(i)); got != fmt.Sprint("new ", i) {
			t.Errorf("%s holds %q", name(i), got)
		}
	}
}

// TestBatchRoundsStopWhenRefused: when every replaced file is refused for reuse (extended
// attributes on every file, as security labels put), the batch stops going in rounds.
func TestBatchRoundsStopWhenRefused(t *testing.T) {
	dir := t.TempDir()
	n := 8 * SyncfsMin
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("c%03d.ocsp", i)) }
	for i := range n {
		os.WriteFile(name(i), []byte("old"), 0o644)
		if err := unix.Setxattr(name(i), "user.label", []byte("x"), 0); err != nil {
			cannot(t, "this file system has no user extended attributes")
		}
	}
	calls := 0
	syncDir = func(d string) error { calls++; return SyncDir(d) }
	t.Cleanup(func() { syncDir = SyncDir })
	var b Batch
	for i := range n {
		b.Add(0, name(i), []byte(fmt.Sprint("new ", i)), 0o644)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if b.Reused() != 0 || calls > 3 {
		t.Errorf("%d reused, %d directory fsyncs: want none reused, and no more than 3 rounds", b.Reused(), calls)
	}
}

// cannot says why a test cannot run here: it fails under CI (root, on ext4), where it must
// run, and skips loudly elsewhere.
func cannot(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why + ", and CI must run this test")
	}
	t.Skip("!!! " + why + " !!!")
}

// TestBatchAddChanged: a file added as changed is written without being compared, even when it
// holds the content already; Add leaves such a file alone.
func TestBatchAddChanged(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{1, SyncfsMin} { // one file fsynced, and a batch in rounds
		var b Batch
		var added, changed []int
		for i := range n {
			same := filepath.Join(dir, fmt.Sprintf("same%d-%d", n, i))
			other := filepath.Join(dir, fmt.Sprintf("other%d-%d", n, i))
			os.WriteFile(same, []byte("held"), 0o640)
			os.WriteFile(other, []byte("held"), 0o640)
			added = append(added, b.Add(0, same, []byte("held"), 0o644))
			changed = append(changed, b.AddChanged(0, other, []byte("held"), 0o644))
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if w, err := b.Result(added[i]); w || err != nil {
				t.Errorf("batch of %d: Add of the content a file holds: written %v, %v; want left alone", n, w, err)
			}
			if w, err := b.Result(changed[i]); !w || err != nil {
				t.Errorf("batch of %d: AddChanged: written %v, %v; want written", n, w, err)
			}
			other := filepath.Join(dir, fmt.Sprintf("other%d-%d", n, i))
			if got, mode := read(t, other), stat(t, other).Mode().Perm(); got != "held" || mode != 0o640 {
				t.Errorf("%s: %q, mode %v", other, got, mode)
			}
		}
		if b.Written() != n {
			t.Errorf("batch of %d: written %d", n, b.Written())
		}
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

// TestBatchTargetChanges: a file that turns into something else between the batch's look at
// it and its rename is handled as a rename would: a symlink is replaced (its target untouched),
// a directory refused and left in place; in a small batch and in one that goes in rounds.
func TestBatchTargetChanges(t *testing.T) {
	for _, n := range []int{1, 3 * SyncfsMin} {
		dir, elsewhere := t.TempDir(), t.TempDir()
		target := filepath.Join(elsewhere, "target")
		os.WriteFile(target, []byte("target"), 0o644)
		link, sub := filepath.Join(dir, "c0000"), filepath.Join(dir, "c0001")
		var b Batch
		for i := range n {
			p := filepath.Join(dir, fmt.Sprintf("c%04d", i))
			os.WriteFile(p, []byte("old"), 0o644)
			b.Add(0, p, []byte(fmt.Sprint("new ", i)), 0o644)
		}
		testBeforePlace = func(p string) {
			switch {
			case p == link:
				os.Remove(p)
				os.Symlink(target, p)
			case p == sub && n > 1:
				os.Remove(p)
				os.Mkdir(p, 0o755)
			}
		}
		err := b.Commit()
		testBeforePlace = nil
		if n > 1 && (err == nil || !strings.Contains(err.Error(), sub)) {
			t.Errorf("batch of %d: Commit: %v, want an error naming %s", n, err, sub)
		} else if n == 1 && err != nil {
			t.Errorf("batch of 1: %v", err)
		}
		if fi, err := os.Lstat(link); err != nil || !fi.Mode().IsRegular() || read(t, link) != "new 0" {
			t.Errorf("batch of %d: the file that became a symlink: %v, %v", n, fi, err)
		}
		if read(t, target) != "target" {
			t.Errorf("batch of %d: the symlink's target was written", n)
		}
		if n > 1 {
			if fi, err := os.Lstat(sub); err != nil || !fi.IsDir() {
				t.Errorf("batch of %d: the directory was not left in place: %v, %v", n, fi, err)
			}
			for i := 2; i < n; i++ {
				if p := filepath.Join(dir, fmt.Sprintf("c%04d", i)); read(t, p) != fmt.Sprint("new ", i) {
					t.Errorf("%s not written", p)
				}
			}
		}
		if left := temps(t, dir); len(left) > 0 {
			t.Errorf("batch of %d: temporary files left: %q", n, left)
		}
	}
}

// TestBatchSpares: batches given the same Spares pass on the files they replaced and did not
// reuse. The next batch overwrites them rather than create new files, unless another process
// has opened one since; Drop removes those left.
func TestBatchSpares(t *testing.T) {
	dir := t.TempDir()
	const n = 3 * SyncfsMin // a large batch: rounds of SyncfsMin files
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("c%04d.pem.ocsp", i)) }
	content := func(i int, gen string) []byte { return []byte(strings.Repeat(gen, 1+i%7) + fmt.Sprint(i)) }
	for i := range n {
		os.WriteFile(name(i), content(i, "0 "), 0o644)
	}
	var spares Spares
	batch := func(gen string) *Batch {
		t.Helper()
		b := &Batch{Spares: &spares}
		for i := range n {
			b.Add(1, name(i), content(i, gen), 0o644)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if got := read(t, name(i)); got != string(content(i, gen)) {
				t.Fatalf("%s holds %q", name(i), got)
			}
		}
		return b
	}

	// The first batch creates its first round's files, and keeps the last round's replaced
	// files, old content and all, under temporary names.
	b := batch("1 ")
	if got := b.Reused(); got != n-SyncfsMin {
		t.Errorf("first batch: %d files reused, want %d", got, n-SyncfsMin)
	}
	left := temps(t, dir)
	if len(left) != SyncfsMin {
		t.Fatalf("first batch: %d spares kept, want %d", len(left), SyncfsMin)
	}
	// A reader opens one of them (it cannot know its name, but a process may have held it
	// open since before it was replaced): that one must not be overwritten.
	held, err := os.Open(filepath.Join(dir, left[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldOld, _ := io.ReadAll(held)

	// The second batch starts on the first one's spares: every file reused but the held one.
	b = batch("2 ")
	if got := b.Reused(); got != n-1 {
		t.Errorf("second batch: %d files reused, want %d: all but the one held open", got, n-1)
	}
	held.Seek(0, io.SeekStart)
	if got, _ := io.ReadAll(held); string(got) != string(heldOld) {
		t.Errorf("the file a reader holds was overwritten: %q, was %q", got, heldOld)
	}
	if got := len(temps(t, dir)); got != SyncfsMin {
		t.Errorf("second batch: %d spares kept, want %d", got, SyncfsMin)
	}
	spares.Drop()
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("after Drop, temporary files left: %q", left)
	}

	// Without Spares, a batch keeps nothing.
	b = &Batch{}
	for i := range n {
		b.Add(1, name(i), content(i, "3 "), 0o644)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("a batch without Spares left temporary files: %q", left)
	}
}
