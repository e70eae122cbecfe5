package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
)

// writeFileAtomic replaces path with data so that a reader (HAProxy, a later run) sees either
// the old or the new content, never a mix, and the new content survives a crash once this
// returns: temp file in the same directory, write, fsync, rename, fsync the directory.
// Renaming replaces a symlink at path rather than following it. It reports whether it wrote:
// a file that already holds exactly data is left alone.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (written bool, err error) {
	return writeFile(path, data, perm, nil)
}

// dirSyncer defers the fsync of directories, so that a run writing thousands of staples syncs
// each directory once instead of once per file. Until sync returns, a crash may undo some
// renames: the directory then holds the previous files, complete, which the next run finds
// and replaces, because the state file is saved only after sync.
type dirSyncer struct {
	mu   sync.Mutex
	dirs map[string]bool
}

func (d *dirSyncer) add(dir string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dirs == nil {
		d.dirs = map[string]bool{}
	}
	d.dirs[dir] = true
}

// sync fsyncs every directory written to since the last sync.
func (d *dirSyncer) sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for dir := range d.dirs {
		if err := syncDir(dir); err != nil {
			errs = append(errs, fmt.Errorf("syncing directory %s: %w", dir, err))
		}
	}
	d.dirs = nil
	return errors.Join(errs...)
}

// writeFile is writeFileAtomic, with the directory's fsync left to ds when ds is not nil.
func writeFile(path string, data []byte, perm os.FileMode, ds *dirSyncer) (written bool, err error) {
	if old, err := readRegular(path, int64(len(data))); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return false, err
	}
	if _, err = f.Write(data); err != nil {
		return false, err
	}
	if err = f.Sync(); err != nil {
		return false, err
	}
	if err = f.Close(); err != nil {
		return false, err
	}
	if err = os.Rename(tmp, path); err != nil {
		return false, err
	}
	if ds != nil {
		ds.add(dir)
		return true, nil
	}
	if err = syncDir(dir); err != nil {
		return true, fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return true, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// tempName matches the temporary files writeFile creates for staples, issuers and the state:
// "." + name + ".tmp-" + digits. No other file is ever removed.
var tempName = regexp.MustCompile(`^\..+\.(ocsp|issuer|json|der)\.tmp-[0-9]+$`)

// removeStaleTemps removes, from each directory, temporary files that writeFile left behind
// when its process was killed. HAProxy ignores them, being dotfiles, but they would pile up.
// The caller holds the state lock, so no other run is writing there (runs that share
// certificate directories share the state file, and so its lock).
func removeStaleTemps(dirs []string) {
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.Type().IsRegular() || !tempName.MatchString(e.Name()) {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err == nil {
				slog.Info("removed a temporary file left by an interrupted run", "file", p)
			}
		}
	}
}

// fileKey identifies a file's content cheaply: size, modification time and inode. Replacing
// the file (as every atomic writer does) changes the inode; rewriting it in place changes the
// modification time. "" when the inode is unknown.
func fileKey(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d:%d", fi.Size(), fi.ModTime().UnixNano(), st.Ino)
}

// readRegular reads the regular file at path, at most maxBytes of it. Anything else (a FIFO,
// a device, a directory) is an error, and opening never blocks, so that a FIFO or a device
// left where a certificate or staple belongs cannot hang a run.
func readRegular(path string, maxBytes int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Size() > maxBytes {
		return nil, fmt.Errorf("%s is larger than it should be (%d bytes, at most %d)", path, fi.Size(), maxBytes)
	}
	buf := bytes.NewBuffer(make([]byte, 0, fi.Size()+1))
	if _, err := buf.ReadFrom(io.LimitReader(f, maxBytes+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > maxBytes {
		return nil, fmt.Errorf("%s is larger than it should be (more than %d bytes)", path, maxBytes)
	}
	return buf.Bytes(), nil
}

// maxStapleBytes caps what is read of a staple or .issuer file: far more than HAProxy takes.
const maxStapleBytes = 1 << 20

// hashBytes is the content hash recorded in the state file.
func hashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
