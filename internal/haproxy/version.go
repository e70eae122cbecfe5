package haproxy

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is an HAProxy version as `show info` reports it ("2.6.12-1+deb12u4", "3.4.7-1").
type Version struct {
	Major, Minor int
	Text         string
}

// ParseVersion reads the branch from HAProxy's version string. A string it cannot read gives
// the zero Version, which Caps treats as the newest HAProxy.
func ParseVersion(s string) Version {
	v := Version{Text: strings.TrimSpace(s)}
	parts := strings.SplitN(v.Text, ".", 3)
	if len(parts) < 2 {
		return v
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return Version{Text: v.Text}
	}
	v.Major, v.Minor = major, minor
	return v
}

// AtLeast reports whether v is major.minor or newer. An unknown version is the newest.
func (v Version) AtLeast(major, minor int) bool {
	if v.Major == 0 {
		return true
	}
	return v.Major > major || v.Major == major && v.Minor >= minor
}

func (v Version) String() string {
	if v.Text != "" {
		return v.Text
	}
	return fmt.Sprintf("%d.%d", v.Major, v.Minor)
}

// Caps is what stapler does differently on each HAProxy version: the one place where versions
// are told apart. The README's version table says the same in words. Each field cites the
// behaviour it follows, verified on 2.6, 3.0, 3.2 and 3.4 (../shared/haproxy-versions.md).
type Caps struct {
	// ByPath: `show ssl ocsp-response base64 <path>` returns the DER HAProxy holds for the
	// certificate a file currently runs (2.8+). Without it (2.6) stapler reads `show ssl cert
	// <path>` (its OCSP Response Key) and `show ssl ocsp-response <key>` (its text). Either way
	// stapler never polls the `show ssl ocsp-response` listing: on 2.8+ the listing leaks a
	// reference at each output buffer it fills, pinning slots forever (§5).
	ByPath bool
	// OCSPUpdate: HAProxy has its own OCSP updater and `show ssl ocsp-updates` (2.8+).
	OCSPUpdate bool
	// AdminOnlyOCSP: every OCSP command, read-only ones included, needs level admin (3.3+;
	// 3.4 answers "Permission denied").
	AdminOnlyOCSP bool
	// WarnsBelowAdmin: HAProxy logs a deprecation warning for each OCSP command below level
	// admin (3.2).
	WarnsBelowAdmin bool
	// RejectsShort: `set ssl ocsp-response` refuses a response with less than 300 s left
	// (3.2+); 2.6 and 3.0 take it and never staple it. stapler never sends one either way.
	RejectsShort bool
}

// Caps returns what v can do.
func (v Version) Caps() Caps {
	return Caps{
		ByPath:          v.AtLeast(2, 8),
		OCSPUpdate:      v.AtLeast(2, 8),
		AdminOnlyOCSP:   v.AtLeast(3, 3),
		WarnsBelowAdmin: v.AtLeast(3, 2) && !v.AtLeast(3, 3),
		RejectsShort:    v.AtLeast(3, 2),
	}
}
