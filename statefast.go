package main

import (
	"encoding/binary"
	"strconv"
	"time"
	"unicode/utf8"
)

// fastEntry decodes one line of a state as encode writes it, `"path":{...}` split at its colon,
// without reflection: 4.5 us a line on one core of this project's machine where
// go-json-experiment took 14 us (decoding was a quarter of the CPU of a run with nothing
// due). It takes only what encode writes and what
// encoding/json reads the same way: strings without escapes, no space, no null, integers
// without fraction or exponent, the fields of CertState and Staple once each, in any order.
// For anything else ok is false, and the line goes to the general decoder, which also says
// what is wrong with it. FuzzDecodeState compares the two with encoding/json.
//
// Where it meets a string of shared (which it only reads), it takes that one rather than a copy
// of its own, and likewise the staple's CertID and hash for the entry's own (see share).
func fastEntry(key, value []byte, shared map[string]string) (path string, cs *CertState, ok bool) {
	s := fastScanner{b: key}
	if !s.str(&path) || s.i != len(s.b) {
		return "", nil, false
	}
	s = fastScanner{b: value, shared: shared}
	cs = &CertState{}
	if !s.certState(cs) || s.i != len(s.b) {
		return "", nil, false
	}
	return path, cs, true
}

// fastScanner reads JSON from b at i; each method reports whether what it found was what it
// takes (where it did not, b holds something else, or the same in a form left to the general
// decoder).
type fastScanner struct {
	b      []byte
	i      int
	shared map[string]string
}

func (s *fastScanner) byte(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// raw reads a string and returns it with its quotes: no escape, no control character, valid
// UTF-8 (encoding/json replaces invalid bytes: the general decoder does that).
func (s *fastScanner) raw() ([]byte, bool) {
	start := s.i
	if !s.byte('"') {
		return nil, false
	}
	ascii := true
	for s.i < len(s.b) {
		if s.i+8 <= len(s.b) && plainWord(binary.LittleEndian.Uint64(s.b[s.i:])) {
			s.i += 8
			continue
		}
		c := s.b[s.i]
		if plainASCII[c] {
			s.i++
			continue
		}
		switch {
		case c == '"':
			s.i++
			q := s.b[start:s.i]
			return q, ascii || utf8.Valid(q)
		case c >= utf8.RuneSelf:
			ascii = false
			s.i++
		default:
			return nil, false // an escape or a control character
		}
	}
	return nil, false
}

// plainWord reports whether the 8 bytes of x are all plainASCII: none is a quote, a backslash,
// below 0x20 or above 0x7f (the classic tests for a zero byte, and for a byte below n).
func plainWord(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	zero := func(v uint64) uint64 { return (v - ones) & ^v & highs }
	return (zero(x^('"'*ones)) | zero(x^('\\'*ones)) | (x-0x20*ones)&^x&highs | x&highs) == 0
}

// plainASCII is the bytes a JSON string holds as themselves, ASCII only.
var plainASCII = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (s *fastScanner) str(dst *string) bool {
	q, ok := s.raw()
	if ok {
		*dst = string(q[1 : len(q)-1])
	}
	return ok
}

// sharedStr is str, taking the string from shared when it is there.
func (s *fastScanner) sharedStr(dst *string) bool {
	q, ok := s.raw()
	if ok {
		v, found := s.shared[string(q[1:len(q)-1])]
		if !found {
			v = string(q[1 : len(q)-1])
		}
		*dst = v
	}
	return ok
}

// sameStr is str, taking same when the string is same.
func (s *fastScanner) sameStr(dst *string, same string) bool {
	q, ok := s.raw()
	if ok {
		if v := q[1 : len(q)-1]; string(v) == same {
			*dst = same
		} else {
			*dst = string(v)
		}
	}
	return ok
}

// time reads a time as encoding/json does: time.Time's UnmarshalJSON, given the quoted text.
func (s *fastScanner) time(dst *time.Time) bool {
	q, ok := s.raw()
	return ok && dst.UnmarshalJSON(q) == nil
}

func (s *fastScanner) bool(dst *bool) bool {
	rest := s.b[s.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		*dst = true
		s.i += 4
	case len(rest) >= 5 && string(rest[:5]) == "false":
		*dst = false
		s.i += 5
	default:
		return false
	}
	return true
}

// int reads an integer written as such: no fraction, no exponent, no leading zero, not too
// large for an int.
func (s *fastScanner) int(dst *int) bool {
	start := s.i
	s.byte('-')
	digits := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n := s.i - digits
	if n == 0 || n > 1 && s.b[digits] == '0' || s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		return false
	}
	v, err := strconv.Atoi(string(s.b[start:s.i]))
	*dst = v
	return err == nil
}

// strs reads an array of strings; [] is an empty slice, as encoding/json makes it. Its
// strings come from shared when they are there.
func (s *fastScanner) strs(dst *[]string) bool {
	if !s.byte('[') {
		return false
	}
	out := []string{}
	if !s.byte(']') {
		for {
			var v string
			if !s.sharedStr(&v) {
				return false
			}
			out = append(out, v)
			if s.byte(']') {
				break
			}
			if !s.byte(',') {
				return false
			}
		}
	}
	*dst = out
	return true
}

// object reads an object whose values field reads, given each name; a name must not repeat
// (encoding/json would merge a repeated object: left to it). field returns the bit of the
// name, and whether it took the name and its value.
func (s *fastScanner) object(field func(name []byte) (bit uint32, ok bool)) bool {
	if !s.byte('{') {
		return false
	}
	if s.byte('}') {
		return true
	}
	var seen uint32
	for {
		q, ok := s.raw()
		if !ok || !s.byte(':') {
			return false
		}
		bit, ok := field(q[1 : len(q)-1])
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		if s.byte('}') {
			return true
		}
		if !s.byte(',') {
			return false
		}
	}
}

// certState reads a CertState: its names as its JSON tags spell them.
func (s *fastScanner) certState(c *CertState) bool {
	return s.object(func(name []byte) (bit uint32, ok bool) {
		switch string(name) {
		case "cert_hash":
			bit, ok = 1<<0, s.str(&c.CertHash)
		case "cert_stat":
			bit, ok = 1<<1, s.str(&c.CertStat)
		case "subject":
			bit, ok = 1<<2, s.str(&c.Subject)
		case "serial":
			bit, ok = 1<<3, s.str(&c.Serial)
		case "issuer":
			bit, ok = 1<<4, s.sharedStr(&c.Issuer)
		case "not_before":
			bit, ok = 1<<5, s.time(&c.NotBefore)
		case "not_after":
			bit, ok = 1<<6, s.time(&c.NotAfter)
		case "responders":
			bit, ok = 1<<7, s.strs(&c.Responders)
		case "must_staple":
			bit, ok = 1<<8, s.bool(&c.MustStaple)
		case "issuer_written":
			bit, ok = 1<<9, s.str(&c.IssuerWritten)
		case "issuer_stat":
			bit, ok = 1<<10, s.str(&c.IssuerStat)
		case "cert_id":
			bit, ok = 1<<11, s.str(&c.CertID)
		case "issuer_in_bundle":
			bit, ok = 1<<12, s.bool(&c.IssuerInBundle)
		case "staple":
			c.Staple = &Staple{}
			bit, ok = 1<<13, s.staple(c.Staple, c.CertID)
		case "disk_stat":
			bit, ok = 1<<14, s.str(&c.DiskStat)
		case "disk_hash":
			hash := ""
			if c.Staple != nil {
				hash = c.Staple.Hash
			}
			bit, ok = 1<<15, s.sameStr(&c.DiskHash, hash)
		case "disk_problem":
			bit, ok = 1<<16, s.str(&c.DiskProblem)
		case "next_due":
			bit, ok = 1<<17, s.time(&c.NextDue)
		case "failures":
			bit, ok = 1<<18, s.int(&c.Failures)
		case "failing_since":
			bit, ok = 1<<19, s.time(&c.FailingSince)
		case "last_error":
			bit, ok = 1<<20, s.str(&c.LastError)
		case "last_update":
			bit, ok = 1<<21, s.time(&c.LastUpdate)
		case "updater":
			bit, ok = 1<<22, s.str(&c.Updater)
		case "pending_push":
			bit, ok = 1<<23, s.strs(&c.Pending)
		case "needs_reload":
			bit, ok = 1<<24, s.strs(&c.Reload)
		case "revocation_handled":
			bit, ok = 1<<25, s.str(&c.RevocationHandled)
		}
		return bit, ok
	})
}

// staple reads a Staple; certID is the entry's, read before it.
func (s *fastScanner) staple(st *Staple, certID string) bool {
	return s.object(func(name []byte) (bit uint32, ok bool) {
		switch string(name) {
		case "hash":
			bit, ok = 1<<0, s.str(&st.Hash)
		case "cert_id":
			bit, ok = 1<<1, s.sameStr(&st.CertID, certID)
		case "status":
			bit, ok = 1<<2, s.sharedStr(&st.Status)
		case "this_update":
			bit, ok = 1<<3, s.time(&st.ThisUpdate)
		case "next_update":
			bit, ok = 1<<4, s.time(&st.NextUpdate)
		case "produced_at":
			bit, ok = 1<<5, s.time(&st.ProducedAt)
		case "revoked_at":
			bit, ok = 1<<6, s.time(&st.RevokedAt)
		case "revoked_reason":
			bit, ok = 1<<7, s.str(&st.RevokedReason)
		case "signer_not_after":
			bit, ok = 1<<8, s.time(&st.SignerNotAfter)
		case "responder":
			bit, ok = 1<<9, s.sharedStr(&st.Responder)
		case "etag":
			bit, ok = 1<<10, s.str(&st.ETag)
		case "last_modified":
			bit, ok = 1<<11, s.str(&st.LastModified)
		}
		return bit, ok
	})
}
