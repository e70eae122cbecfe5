package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"stapler/internal/haproxy"
)

// haproxySetup is what stapler learns from HAProxy's own configuration: the certificates its
// bind lines load and its stats sockets.
type haproxySetup struct {
	Dirs    []string
	Files   []string
	Sockets []string
	// Notes are constructs stapler could not follow, each naming file and line.
	Notes []string
}

// readHAProxyConfig reads an HAProxy 2.6 configuration file, or a directory of *.cfg files
// read in name order as HAProxy does with `-f dir`. It follows `crt-base`, `bind ... crt`
// (files and directories), `bind ... crt-list` (each line's certificate; crt-base applies to
// the certificates, not to the list) and `stats socket`.
// What it cannot follow (environment variables, `.if` blocks, relative paths without
// crt-base, abstract or inherited sockets) it reports in Notes rather than guessing.
func readHAProxyConfig(path string) (haproxySetup, error) {
	var hs haproxySetup
	files := []string{path}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		files, err = filepath.Glob(filepath.Join(path, "*.cfg"))
		if err != nil {
			return hs, err
		}
		slices.Sort(files)
	}
	p := &cfgParser{hs: &hs}
	for _, f := range files {
		if err := p.file(f); err != nil {
			return hs, err
		}
	}
	hs.Dirs, hs.Files, hs.Sockets = dedupe(hs.Dirs), dedupe(hs.Files), dedupe(hs.Sockets)
	return hs, nil
}

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

type cfgParser struct {
	hs      *haproxySetup
	section string
	crtBase string
}

func (p *cfgParser) note(file string, line int, format string, args ...any) {
	p.hs.Notes = append(p.hs.Notes, fmt.Sprintf("%s:%d: ", file, line)+fmt.Sprintf(format, args...))
}

func (p *cfgParser) file(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("reading HAProxy configuration: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		words, env := splitCfgLine(sc.Text())
		if len(words) == 0 {
			continue
		}
		if env {
			p.note(name, n, "uses environment variables, which stapler does not expand: %s", strings.TrimSpace(sc.Text()))
			continue
		}
		p.line(name, n, words)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	return nil
}

var cfgSections = []string{"global", "defaults", "frontend", "listen", "backend", "userlist", "peers",
	"resolvers", "mailers", "program", "http-errors", "ring", "cache", "crt-store", "log-forward", "fcgi-app"}

func (p *cfgParser) line(file string, n int, w []string) {
	if slices.Contains(cfgSections, w[0]) {
		p.section = w[0]
		if w[0] == "crt-store" {
			p.note(file, n, "crt-store sections (HAProxy 2.8+) are not followed")
		}
		return
	}
	if strings.HasPrefix(w[0], ".") {
		// .if/.elif/.else/.endif blocks, and messages (.notice, .warning, ...).
		if w[0] == ".if" {
			p.note(file, n, "conditional block %q is not evaluated; certificates and sockets in every branch are used", strings.Join(w, " "))
		}
		return
	}
	switch {
	case p.section == "global" && w[0] == "crt-base" && len(w) > 1:
		p.crtBase = w[1]
	case p.section == "global" && w[0] == "stats" && len(w) > 2 && w[1] == "socket":
		p.socket(file, n, w[2])
	case (p.section == "frontend" || p.section == "listen") && w[0] == "bind":
		for i := 2; i < len(w)-1; i++ {
			switch w[i] {
			case "crt":
				p.crt(file, n, w[i+1])
			case "crt-list":
				p.crtList(file, n, w[i+1])
			}
		}
	}
}

// socket adds a stats socket address in the form stapler takes.
func (p *cfgParser) socket(file string, n int, addr string) {
	switch {
	case strings.HasPrefix(addr, "abns@"), strings.HasPrefix(addr, "fd@"), strings.HasPrefix(addr, "sockpair@"):
		p.note(file, n, "stats socket %s cannot be reached from another process; add a unix or TCP stats socket", addr)
	case strings.HasPrefix(addr, "unix@"), strings.HasPrefix(addr, "/"), !strings.Contains(addr, ":"):
		path := strings.TrimPrefix(addr, "unix@")
		if !filepath.IsAbs(path) {
			p.note(file, n, "stats socket %s is relative to HAProxy's working directory; give its absolute path in sockets", addr)
			return
		}
		p.hs.Sockets = append(p.hs.Sockets, filepath.Clean(path))
	default:
		// A TCP address: HAProxy listens on it, stapler connects to it, on this host.
		a, err := haproxy.ParseAddr(addr)
		if err != nil || a.Network != "tcp" || a.Master {
			p.note(file, n, "stats socket %s: not an address stapler can connect to; give it in sockets", addr)
			return
		}
		host, port, _ := net.SplitHostPort(a.Address)
		switch host {
		case "0.0.0.0":
			host = "127.0.0.1"
		case "::":
			host = "::1"
		}
		out := net.JoinHostPort(host, port)
		if b, err := haproxy.ParseAddr(out); err != nil || b.Master {
			out = "ipv4@" + out // a host named "master" would read as a master socket
		}
		p.hs.Sockets = append(p.hs.Sockets, out)
	}
}

// certPath resolves a certificate path the way HAProxy does, against crt-base.
func (p *cfgParser) certPath(file string, n int, path string) (string, bool) {
	if filepath.IsAbs(path) {
		return filepath.Clean(path), true
	}
	if p.crtBase == "" || !filepath.IsAbs(p.crtBase) {
		p.note(file, n, "certificate %s is relative to HAProxy's working directory (no absolute crt-base); give it in dirs or files", path)
		return "", false
	}
	return filepath.Join(p.crtBase, path), true
}

func (p *cfgParser) crt(file string, n int, path string) {
	full, ok := p.certPath(file, n, path)
	if !ok {
		return
	}
	fi, err := os.Stat(full)
	switch {
	case err == nil && fi.IsDir():
		p.hs.Dirs = append(p.hs.Dirs, full)
	case err == nil:
		p.hs.Files = append(p.hs.Files, full)
	default:
		// A multi-certificate bundle named without its .rsa/.ecdsa/.dsa members.
		members, _ := filepath.Glob(full + ".*")
		found := false
		for _, m := range members {
			if ext := filepath.Ext(m); ext == ".rsa" || ext == ".ecdsa" || ext == ".dsa" {
				p.hs.Files = append(p.hs.Files, m)
				found = true
			}
		}
		if !found {
			p.note(file, n, "certificate %s: %v", full, err)
		}
	}
}

func (p *cfgParser) crtList(file string, n int, path string) {
	// HAProxy 2.6 applies crt-base to the certificates in a crt-list, not to the list itself.
	if !filepath.IsAbs(path) {
		p.note(file, n, "crt-list %s is relative to HAProxy's working directory; give its certificates in dirs or files", path)
		return
	}
	full := filepath.Clean(path)
	f, err := os.Open(full)
	if err != nil {
		p.note(file, n, "crt-list %v", err)
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for ln := 1; sc.Scan(); ln++ {
		words, env := splitCfgLine(sc.Text())
		switch {
		case len(words) == 0:
		case env:
			p.note(full, ln, "uses environment variables, which stapler does not expand")
		default:
			p.crt(full, ln, words[0])
		}
	}
	if err := sc.Err(); err != nil {
		p.note(file, n, "crt-list %s: %v", full, err)
	}
}

// splitCfgLine splits an HAProxy configuration line into words: comments from an unquoted #,
// single and double quotes, and backslash escapes. env reports "$" in double quotes, where
// HAProxy expands environment variables.
func splitCfgLine(line string) (words []string, env bool) {
	var w strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote, inWord = c, true
		case c == '\\' && quote != '\'' && i+1 < len(line):
			i++
			w.WriteByte(line[i])
			inWord = true
		case quote == 0 && c == '#':
			i = len(line)
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			if c == '$' && quote == '"' {
				env = true
			}
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, env
}
