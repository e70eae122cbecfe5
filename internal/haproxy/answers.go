package haproxy

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HAProxy's answers, the same on every supported version unless noted
// (../shared/haproxy-versions.md §2, §3).
const (
	// ReplyUpdated: `set ssl ocsp-response` took the response.
	ReplyUpdated = "OCSP Response updated!"
	// ReplyNoSlot: no OCSP slot has the response's CertID.
	ReplyNoSlot = "OCSP single response: Certificate ID does not match any certificate or issuer."
	// ReplyTooShort: 3.2+ refuse a response with less than 300 s left.
	ReplyTooShort = "OCSP single response: no longer valid. Must be valid during at least 300s.."
	// ReplyDenied: the socket's level is too low for the command (every OCSP command on 3.4
	// below admin; transactions below admin everywhere).
	ReplyDenied = "Permission denied"
)

// IsDenied reports whether an answer refuses the command for want of privilege.
func IsDenied(text string) bool { return strings.HasPrefix(text, ReplyDenied) }

// field is the value of "Name: value" in HAProxy's text, "" when absent.
func field(text, name string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Info is what stapler reads of `show info`.
type Info struct {
	Pid       int
	StartTime int64 // Start_time_sec
	Stopping  bool  // an old worker, after a reload: what it is told is lost
	Version   Version
	Threads   int // Nbthread; 0 when not said
}

// ParseInfo reads the answer to `show info`.
func ParseInfo(text string) (Info, error) {
	pid, err1 := strconv.Atoi(field(text, "Pid"))
	start, err2 := strconv.ParseInt(field(text, "Start_time_sec"), 10, 64)
	if err1 != nil || err2 != nil {
		return Info{}, fmt.Errorf("no Pid and Start_time_sec in the answer to show info: %q", clip(text, 80))
	}
	threads, _ := strconv.Atoi(field(text, "Nbthread"))
	return Info{Pid: pid, StartTime: start, Stopping: field(text, "Stopping") == "1", Version: ParseVersion(field(text, "Version")), Threads: threads}, nil
}

// Mark identifies the process: a new one (restart, reload) read its staples from disk again.
func (i Info) Mark() string { return fmt.Sprintf("%d@%d", i.Pid, i.StartTime) }

// CertInfo is what stapler reads of `show ssl cert <name>`.
type CertInfo struct {
	Filename string
	Serial   string // hex, as HAProxy writes it
	// OCSPKey is the hex CertID of the OCSP slot the certificate is attached to; "" when it
	// has none (loaded without a .ocsp file, or since a hot `set ssl cert`).
	OCSPKey string
	// OCSPUpdate is "on" or "off" where HAProxy says (3.4: "Option: ocsp-update on"), else "".
	OCSPUpdate string
}

// ParseCertInfo reads the answer to `show ssl cert <name>`; ok is false when it describes no
// certificate.
func ParseCertInfo(text string) (ci CertInfo, ok bool) {
	ci = CertInfo{
		Filename: field(text, "Filename"),
		Serial:   strings.ToLower(field(text, "Serial")),
		OCSPKey:  strings.ToLower(field(text, "OCSP Response Key")),
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Option: ocsp-update "); ok {
			ci.OCSPUpdate = strings.TrimSpace(v)
		}
	}
	return ci, ci.Serial != ""
}

// SameSerial compares hex serials as HAProxy and stapler write them.
func SameSerial(a, b string) bool {
	return strings.TrimLeft(strings.ToLower(a), "0") == strings.TrimLeft(strings.ToLower(b), "0")
}

// CertList is the answer to `show ssl cert`: the certificate files HAProxy loaded, under the
// names HAProxy uses, and those in a transaction someone left open.
type CertList struct {
	names map[string]string // cleaned path: HAProxy's name
	Open  []string          // names in an open transaction ("*" in the listing)
}

// ParseCertList reads the answer to `show ssl cert`.
func ParseCertList(text string) CertList {
	l := CertList{names: map[string]string{}}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if name, ok := strings.CutPrefix(line, "*"); ok {
			l.Open = append(l.Open, name)
			continue
		}
		l.names[filepath.Clean(line)] = line
	}
	return l
}

// Name is HAProxy's name for the certificate file at path, "" when HAProxy has not loaded it.
// HAProxy keeps names as its configuration spells them ("/etc/haproxy//certs/a.pem" with a
// crt-base ending in "/"), so paths are compared cleaned.
func (l CertList) Name(path string) string { return l.names[filepath.Clean(path)] }

// Len is how many certificate files HAProxy loaded.
func (l CertList) Len() int { return len(l.names) }

// OCSPUpdate is one line of `show ssl ocsp-updates` (2.8+): a certificate HAProxy keeps
// fresh itself.
type OCSPUpdate struct {
	CertID     string // hex
	Path       string
	NextUpdate time.Time
	LastUpdate time.Time // zero before the first attempt
	Successes  int
	Failures   int
	// Status is HAProxy's code for the last attempt (0 none yet, 1 "Update successful", others
	// failures) and StatusText its words. LastUpdate is that of the last success.
	Status     int
	StatusText string
}

// Failing reports whether HAProxy's last attempt failed.
func (u OCSPUpdate) Failing() bool { return u.Status != 0 && u.Status != 1 }

// ParseOCSPUpdates reads the answer to `show ssl ocsp-updates`:
// "303b… | /etc/haproxy/certs/a.pem | 02/Dec/2026:01:19:26 +0000 | 02/Dec/2026:01:19:06 +0000 | 1 | 0 | 1 | Update successful".
func ParseOCSPUpdates(text string) []OCSPUpdate {
	var out []OCSPUpdate
	for _, line := range strings.Split(text, "\n") {
		f := strings.Split(line, "|")
		if len(f) < 8 || strings.HasPrefix(strings.TrimSpace(line), "OCSP Certid") || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		u := OCSPUpdate{CertID: strings.ToLower(f[0]), Path: f[1], StatusText: strings.Join(f[7:], "|")}
		u.NextUpdate, _ = time.Parse("02/Jan/2006:15:04:05 -0700", f[2])
		u.LastUpdate, _ = time.Parse("02/Jan/2006:15:04:05 -0700", f[3])
		u.Successes, _ = strconv.Atoi(f[4])
		u.Failures, _ = strconv.Atoi(f[5])
		u.Status, _ = strconv.Atoi(f[6])
		if u.CertID != "" && u.Path != "" {
			out = append(out, u)
		}
	}
	return out
}

// OCSPText is what stapler reads of HAProxy's text form of a response (`show ssl
// ocsp-response <key>`, the only way 2.6 shows one).
type OCSPText struct {
	ThisUpdate, NextUpdate, ProducedAt time.Time
	Status                             string // "good", "revoked", "unknown"
}

// ParseOCSPText reads OpenSSL's text form of an OCSP response; ok is false when it holds none.
func ParseOCSPText(text string) (t OCSPText, ok bool) {
	parse := func(name string) time.Time {
		v, err := time.Parse("Jan _2 15:04:05 2006 MST", field(text, name))
		if err != nil {
			return time.Time{}
		}
		return v
	}
	t.ThisUpdate, t.NextUpdate, t.ProducedAt = parse("This Update"), parse("Next Update"), parse("Produced At")
	t.Status = field(text, "Cert Status")
	return t, !t.ThisUpdate.IsZero()
}

// Proc is one process of `show proc` on the master CLI.
type Proc struct {
	Pid  int
	Type string // "master", "worker"
	Old  bool   // listed as an old worker: stopping after a reload
}

// ParseProcs reads the master CLI's `show proc`: the master, then "# workers", then (during
// a reload) "# old workers", then "# programs".
func ParseProcs(text string) ([]Proc, error) {
	var out []Proc
	section := "master"
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "# ") {
			section = strings.TrimPrefix(line, "# ")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		out = append(out, Proc{Pid: pid, Type: f[1], Old: section == "old workers"})
	}
	if len(out) == 0 {
		return nil, errors.New("no process in the answer to show proc")
	}
	return out, nil
}
