// Package haproxycfg reads HAProxy's configuration as stapler needs it: the certificate files
// its bind lines load (crt, crt-list, crt-store), what HAProxy makes of each (its name at run
// time, where it reads the staple and the issuer, whether its own ocsp-update keeps it fresh)
// and its stats sockets. What it cannot follow it reports, naming file and line.
package haproxycfg

import (
	"bufio"
	"cmp"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"stapler/internal/haproxy"
)

// Setup is what stapler learns from HAProxy's own configuration.
type Setup struct {
	Dirs  []Dir  // directories of `crt /dir/` lines, sorted
	Files []File // files of crt, crt-list and crt-store lines, sorted by path
	// Sockets are the stats sockets to use: those with level admin when there is one (the
	// others lead to the same process, and HAProxy 3.4 refuses OCSP commands below admin,
	// which 3.2 logs as deprecated), else all of them.
	Sockets []string
	// Notes are what the operator should look at, each naming file and line: constructs
	// stapler could not follow, and settings that weaken stapling.
	Notes []string

	dirs, files []string
}

// Dir is a certificate directory HAProxy loads, and what it makes of the files in it.
type Dir struct {
	Path   string
	DelExt bool // ssl-load-extra-del-ext
	Auto   bool // global ocsp-update.mode on
}

// File is a certificate file and what HAProxy's configuration makes of it.
type File struct {
	Path string // the certificate file, as HAProxy's configuration names it
	// Name is HAProxy's name for it at run time (`show ssl cert`): Path, or "@store/alias"
	// for a crt-store entry.
	Name string
	// Staple is the file HAProxy reads the staple from at start-up: <Path>.ocsp, <Path less
	// .crt>.ocsp under ssl-load-extra-del-ext, or the `ocsp` file of a crt-store entry or
	// crt-list line.
	Staple string
	// Issuer is the file HAProxy reads the issuer from when the bundle lacks it; "" when it
	// reads none (a crt-store entry without `issuer`).
	Issuer string
	// IssuerGiven: the configuration names the issuer file (crt-store, crt-list): it is the
	// operator's, to check but never to rewrite.
	IssuerGiven bool
	// Auto: HAProxy's configuration puts the certificate under its own ocsp-update.
	Auto bool
	// Where is the configuration line that names it ("/etc/haproxy/haproxy.cfg:12").
	Where string
}

// DefaultFile is what HAProxy makes of a certificate file loaded with `crt`, by directory or by
// name. With ssl-load-extra-del-ext (delExt) HAProxy drops a ".crt" extension, and only that
// one, before adding ".ocsp" and ".issuer" (verified on 2.6, 3.0, 3.2 and 3.4: site.crt has
// site.ocsp, site.pem keeps site.pem.ocsp).
func DefaultFile(path string, delExt bool) File {
	base := path
	if delExt && strings.HasSuffix(path, ".crt") {
		base = strings.TrimSuffix(path, ".crt")
	}
	return File{Path: path, Name: path, Staple: base + ".ocsp", Issuer: base + ".issuer"}
}

// Read reads an HAProxy configuration file, or a directory of *.cfg files read in name order
// as HAProxy does with `-f dir`. It follows `crt-base`, `bind ... crt`
// (files and directories), `bind ... crt-list` (each line's certificate; crt-base applies to
// the certificates, not to the list) and `stats socket`.
// What it cannot follow (environment variables, `.if` blocks, relative paths without
// crt-base, abstract or inherited sockets) it reports in Notes rather than guessing.
func Read(path string) (Setup, error) {
	var hs Setup
	files := []string{path}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		files, err = filepath.Glob(filepath.Join(path, "*.cfg"))
		if err != nil {
			return hs, err
		}
		slices.Sort(files)
	}
	p := &cfgParser{hs: &hs, stores: map[string]*crtStore{}, files: map[string]File{}}
	for _, f := range files {
		if err := p.file(f); err != nil {
			return hs, err
		}
	}
	// Global settings apply wherever they stand in the configuration.
	for _, d := range dedupe(hs.dirs) {
		hs.Dirs = append(hs.Dirs, Dir{Path: d, DelExt: p.delExt, Auto: p.autoAll})
	}
	for _, path := range dedupe(hs.files) {
		f, ok := p.files[path]
		if !ok { // a member of a multi-certificate bundle
			f = File{Path: path, Name: path}
		}
		if f.Name == f.Path { // loaded by crt or a crt-list line, not a crt-store entry
			d := DefaultFile(path, p.delExt)
			f.Staple = cmp.Or(f.Staple, d.Staple)
			if f.Issuer == "" {
				f.Issuer = d.Issuer
			}
		}
		f.Auto = f.Auto || p.autoAll && !p.autoOff[path]
		hs.Files = append(hs.Files, f)
	}
	if len(p.admin) > 0 {
		hs.Sockets = p.admin
	}
	hs.Sockets = dedupe(hs.Sockets)
	return hs, nil
}

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

type cfgParser struct {
	hs      *Setup
	section string
	crtBase string
	delExt  bool // ssl-load-extra-del-ext
	autoAll bool // ocsp-update.mode on (3.0+)
	autoOff map[string]bool
	admin   []string        // stats sockets with level admin (without level: operator)
	files   map[string]File // certificate files named by crt, crt-list and crt-store lines
	stores  map[string]*crtStore
	store   *crtStore // the crt-store section being read
}

// crtStore is a crt-store section (HAProxy 3.0+): its bases, and its entries by name.
type crtStore struct {
	name, crtBase, keyBase string
	entries                map[string]File // by "@store/alias"
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
		words, env := SplitLine(sc.Text())
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
		p.section, p.store = w[0], nil
		if w[0] == "crt-store" {
			name := ""
			if len(w) > 1 {
				name = w[1]
			}
			p.store = &crtStore{name: name, entries: map[string]File{}}
			p.stores[name] = p.store
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
	case p.section == "global" && w[0] == "ssl-load-extra-del-ext":
		p.delExt = true
	case p.section == "global" && w[0] == "ssl-load-extra-files" && !slices.Contains(w, "all") && !slices.Contains(w, "ocsp"):
		p.note(file, n, "%q: HAProxy does not read .ocsp files at start-up, so each reload serves no staple until stapler's next run; add ocsp (or all)", strings.Join(w, " "))
	case p.section == "global" && w[0] == "ocsp-update.mode" && len(w) > 1:
		p.autoAll = w[1] == "on"
	case p.section == "crt-store" && w[0] == "crt-base" && len(w) > 1:
		p.store.crtBase = w[1]
	case p.section == "crt-store" && w[0] == "key-base" && len(w) > 1:
		p.store.keyBase = w[1]
	case p.section == "crt-store" && w[0] == "load":
		p.load(file, n, w[1:])
	case p.section == "global" && w[0] == "stats" && len(w) > 2 && w[1] == "socket":
		if addr, ok := p.socket(file, n, w[2]); ok {
			p.hs.Sockets = append(p.hs.Sockets, addr)
			if i := slices.Index(w, "level"); i > 2 && i+1 < len(w) && w[i+1] == "admin" {
				p.admin = append(p.admin, addr)
			}
		}
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

// socket is a stats socket address in the form stapler takes; false (with a note) for one
// stapler cannot use.
func (p *cfgParser) socket(file string, n int, addr string) (string, bool) {
	switch {
	case strings.HasPrefix(addr, "abns@"), strings.HasPrefix(addr, "fd@"), strings.HasPrefix(addr, "sockpair@"):
		p.note(file, n, "stats socket %s cannot be reached from another process; add a unix or TCP stats socket", addr)
		return "", false
	case strings.HasPrefix(addr, "unix@"), strings.HasPrefix(addr, "/"), !strings.Contains(addr, ":"):
		path := strings.TrimPrefix(addr, "unix@")
		if !filepath.IsAbs(path) {
			p.note(file, n, "stats socket %s is relative to HAProxy's working directory; give its absolute path in sockets", addr)
			return "", false
		}
		return filepath.Clean(path), true
	default:
		// A TCP address: HAProxy listens on it, stapler connects to it, on this host.
		a, err := haproxy.ParseAddr(addr)
		if err != nil || a.Network != "tcp" || a.Master {
			p.note(file, n, "stats socket %s: not an address stapler can connect to; give it in sockets", addr)
			return "", false
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
		return out, true
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

// crt follows a certificate named by a bind line's `crt` or a crt-list line, with the
// crt-list line's options (nil for a bind line).
func (p *cfgParser) crt(file string, n int, path string) {
	p.crtWith(file, n, path, nil)
}

func (p *cfgParser) crtWith(file string, n int, path string, opts map[string]string) {
	if strings.HasPrefix(path, "@") {
		p.storeRef(file, n, path)
		return
	}
	full, ok := p.certPath(file, n, path)
	if !ok {
		return
	}
	fi, err := os.Stat(full)
	switch {
	case err == nil && fi.IsDir():
		p.hs.dirs = append(p.hs.dirs, full)
	case err == nil:
		p.hs.files = append(p.hs.files, full)
		f := File{Path: full, Name: full, Where: fmt.Sprintf("%s:%d", file, n)}
		if o, ok := opts["ocsp"]; ok {
			f.Staple, _ = p.certPath(file, n, o)
		}
		if o, ok := opts["issuer"]; ok {
			f.Issuer, _ = p.certPath(file, n, o)
			f.IssuerGiven = f.Issuer != ""
		}
		switch opts["ocsp-update"] {
		case "on":
			f.Auto = true
		case "off":
			if p.autoOff == nil {
				p.autoOff = map[string]bool{}
			}
			p.autoOff[full] = true
		}
		if _, seen := p.files[full]; !seen || opts != nil {
			p.files[full] = f
		}
	default:
		// A multi-certificate bundle named without its .rsa/.ecdsa/.dsa members.
		members, _ := filepath.Glob(full + ".*")
		found := false
		for _, m := range members {
			if ext := filepath.Ext(m); ext == ".rsa" || ext == ".ecdsa" || ext == ".dsa" {
				p.hs.files = append(p.hs.files, m)
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
		words, env := SplitLine(sc.Text())
		switch {
		case len(words) == 0:
		case env:
			p.note(full, ln, "uses environment variables, which stapler does not expand")
		default:
			p.crtWith(full, ln, words[0], crtListOptions(words[1:]))
		}
	}
	if err := sc.Err(); err != nil {
		p.note(file, n, "crt-list %s: %v", full, err)
	}
}

// crtListOptions are the options of a crt-list line that stapler follows, from its bracketed
// part: `[ocsp FILE]`, `[issuer FILE]` and `[ocsp-update on|off]` (3.0+; 2.8 has
// ocsp-update only).
func crtListOptions(words []string) map[string]string {
	opts := map[string]string{}
	if len(words) == 0 || !strings.HasPrefix(words[0], "[") {
		return opts
	}
	var inside []string
	for _, w := range words {
		last := strings.HasSuffix(w, "]")
		w = strings.TrimSuffix(strings.TrimPrefix(w, "["), "]")
		if w != "" {
			inside = append(inside, w)
		}
		if last {
			break
		}
	}
	for i := 0; i+1 < len(inside); i++ {
		switch inside[i] {
		case "ocsp", "issuer", "ocsp-update":
			opts[inside[i]] = inside[i+1]
			i++
		}
	}
	return opts
}

// load follows a crt-store `load` line (HAProxy 3.0+): `crt FILE [key FILE] [ocsp FILE]
// [issuer FILE] [sctl FILE] [alias NAME] [ocsp-update on|off]`, files relative to the store's
// crt-base. HAProxy reads the staple and the issuer only from the files the line names: a
// <crt>.ocsp beside the certificate is not read.
func (p *cfgParser) load(file string, n int, w []string) {
	kv := map[string]string{}
	for i := 0; i+1 < len(w); i += 2 {
		kv[w[i]] = w[i+1]
	}
	crt := kv["crt"]
	if crt == "" {
		p.note(file, n, "crt-store load line without crt")
		return
	}
	base := cmp.Or(p.store.crtBase, p.crtBase)
	resolve := func(f string) string {
		if f == "" || filepath.IsAbs(f) {
			return filepath.Clean(f)
		}
		if !filepath.IsAbs(base) {
			p.note(file, n, "%s is relative to HAProxy's working directory (no absolute crt-base); give it in files", f)
			return ""
		}
		return filepath.Join(base, f)
	}
	f := File{Path: resolve(crt), Name: "@" + p.store.name + "/" + cmp.Or(kv["alias"], crt), Where: fmt.Sprintf("%s:%d", file, n)}
	if f.Path == "" || f.Path == "." {
		return
	}
	if o := kv["ocsp"]; o != "" {
		f.Staple = resolve(o)
	} else {
		p.note(file, n, "crt-store entry %s names no ocsp file: HAProxy starts without a staple for it, and stapler's, kept in %s, reaches it at run time only (add ocsp \"FILE\" to the load line)", f.Name, f.Path+".ocsp")
		f.Staple = f.Path + ".ocsp"
	}
	if i := kv["issuer"]; i != "" {
		f.Issuer, f.IssuerGiven = resolve(i), true
	}
	switch kv["ocsp-update"] {
	case "on":
		f.Auto = true
	case "off":
		if p.autoOff == nil {
			p.autoOff = map[string]bool{}
		}
		p.autoOff[f.Path] = true
	}
	p.store.entries[f.Name] = f
	p.files[f.Path] = f
	p.hs.files = append(p.hs.files, f.Path)
}

// storeRef checks a `crt "@store/name"` reference to a crt-store entry.
func (p *cfgParser) storeRef(file string, n int, ref string) {
	name, _, _ := strings.Cut(strings.TrimPrefix(ref, "@"), "/")
	if st, ok := p.stores[name]; !ok || st.entries[ref] == (File{}) {
		p.note(file, n, "%s names no crt-store entry stapler found", ref)
	}
}

// SplitLine splits an HAProxy configuration line into words: comments from an unquoted #,
// single and double quotes, and backslash escapes. env reports "$" in double quotes, where
// HAProxy expands environment variables.
func SplitLine(line string) (words []string, env bool) {
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
