package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"syscall"
)

// statMark identifies a file's content cheaply: size, modification time and inode. Replacing
// the file (as every atomic writer does) changes the inode; rewriting it in place changes the
// modification time. "" when the inode is unknown.
func statMark(fi os.FileInfo) string {
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
	data, _, err := readRegularStat(path, maxBytes)
	return data, err
}

// readRegularStat is readRegular, with the stat mark of the file it read.
func readRegularStat(path string, maxBytes int64) ([]byte, string, error) {
	f, err := openRegular(path, maxBytes)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	// ReadFrom wants bytes.MinRead free before each read: with less it doubles the buffer.
	buf := bytes.NewBuffer(make([]byte, 0, fi.Size()+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(f, maxBytes+1)); err != nil {
		return nil, "", err
	}
	if int64(buf.Len()) > maxBytes {
		return nil, "", fmt.Errorf("%s is larger than it should be (more than %d bytes)", path, maxBytes)
	}
	return buf.Bytes(), statMark(fi), nil
}

// openRegular opens the regular file at path for reading, if it holds at most maxBytes, as
// readRegular does.
func openRegular(path string, maxBytes int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s is not a regular file", path)
	case fi.Size() > maxBytes:
		err = fmt.Errorf("%s is larger than it should be (%d bytes, at most %d)", path, fi.Size(), maxBytes)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// maxStapleBytes caps what is read of a staple or issuer file: far more than HAProxy takes.
const maxStapleBytes = 1 << 20

// maxBundleBytes caps how much of a file is read as a certificate bundle: a long chain with a
// key is a few tens of kilobytes.
const maxBundleBytes = 1 << 20

// hashBytes is the content hash recorded in the state file.
func hashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func hexString(b []byte) string { return hex.EncodeToString(b) }
