package main

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"stapler/internal/haproxy"
)

// defaultConfigPath is read when it exists and no --config or STAPLER_CONFIG is given.
const defaultConfigPath = "/etc/stapler/stapler.toml"

// Config is everything a run needs to know. It is the reference for the TOML file: each field's
// comment gives its key and default, and defaultConfig applies those defaults.
type Config struct {
	// dirs: certificate directories, read the way HAProxy reads `crt /dir/`. Default none.
	Dirs []string `toml:"dirs"`
	// files: single certificate files. Default none.
	Files []string `toml:"files"`
	// haproxy_configs: HAProxy configuration files (or directories of *.cfg) whose `bind ... crt`
	// and `crt-list` certificates and `stats socket` addresses are added to dirs, files and
	// sockets. Default none.
	HAProxyConfigs []string `toml:"haproxy_configs"`
	// recursive: also read subdirectories of dirs. Default false.
	Recursive bool `toml:"recursive"`
	// exclude: glob patterns; a file whose base name or path relative to its directory
	// matches one is ignored. Default none.
	Exclude []string `toml:"exclude"`
	// extra_del_ext: the HAProxy serving the certificates given in dirs and files has
	// ssl-load-extra-del-ext in its global section, so that it reads the staple of site.crt
	// from site.ocsp (and its issuer from site.issuer), not site.crt.ocsp. HAProxy drops a
	// ".crt" extension only: site.pem keeps site.pem.ocsp. Discovered configurations
	// (haproxy_configs) say this themselves. Default false.
	ExtraDelExt bool `toml:"extra_del_ext"`
	// issuer_dirs: directories of PEM issuer certificates, searched when an issuer is neither
	// in the bundle nor in <cert>.issuer. Default none.
	IssuerDirs []string `toml:"issuer_dirs"`
	// fetch_issuers: fetch a missing issuer from the certificate's AIA caIssuers URL (cached
	// beside the state file). Default true.
	FetchIssuers bool `toml:"fetch_issuers"`
	// state: the JSON state file. Default /var/lib/stapler/state.json.
	State string `toml:"state"`
	// sockets: HAProxy runtime API sockets: a unix socket path or host:port. Default none.
	Sockets []string `toml:"sockets"`
	// socket_timeout: deadline for connecting to one HAProxy socket and for each answer on it.
	// Default 5s.
	SocketTimeout time.Duration `toml:"socket_timeout"`
	// reload_command: run once, with sh -c, at the end of a run in which some HAProxy can serve a
	// staple only after a reload, e.g. "systemctl reload haproxy". Default none.
	ReloadCommand string `toml:"reload_command"`
	// reload_timeout: deadline for reload_command. Default 60s.
	ReloadTimeout time.Duration `toml:"reload_timeout"`
	// revoked_command: run with sh -c once for each revocation, when a certificate's staple
	// first says revoked, e.g. to renew the certificate at once. Its environment has
	// STAPLER_CERT (the file), STAPLER_SUBJECT, STAPLER_SERIAL (hex), STAPLER_REVOKED_AT (RFC
	// 3339) and STAPLER_REASON (RFC 5280's name, e.g. keyCompromise). A command that fails is
	// reported and runs again at the next run. Default none.
	RevokedCommand string `toml:"revoked_command"`
	// revoked_timeout: deadline for each revoked_command. Default 60s.
	RevokedTimeout time.Duration `toml:"revoked_timeout"`
	// jobs: OCSP requests in flight at once. Default 8.
	Jobs int `toml:"jobs"`
	// responder_jobs: OCSP requests in flight to one responder host at most, to stay polite to
	// CAs; the smaller of jobs and this applies. Default 32.
	ResponderJobs int `toml:"responder_jobs"`
	// timeout: deadline for one OCSP request, connection included. Default 10s.
	Timeout time.Duration `toml:"timeout"`
	// max_response_bytes: larger OCSP responses are refused. Default 65536.
	MaxResponseBytes int64 `toml:"max_response_bytes"`
	// proxy: HTTP proxy URL for OCSP and issuer requests. Default: from the environment
	// (HTTP_PROXY, HTTPS_PROXY, NO_PROXY).
	Proxy string `toml:"proxy"`
	// responder_override: responder URL in the certificate = URL to ask instead (a local
	// HTTP cache in front of the responder, for a fleet). Default none.
	ResponderOverride map[string]string `toml:"responder_override"`
	// cache_fallback: when the cache that responder_override or proxy sends requests to is
	// down (no answer within timeout, or 502, 503, 504), ask the responder itself for the rest
	// of the run, and say so once.
	// Default false: the cache is there to spare the CA's responder, and a host that goes
	// round it is a host the CA sees.
	CacheFallback bool `toml:"cache_fallback"`
	// renew_at: fraction of a staple's useful life (thisUpdate to 5 minutes before its expiry)
	// after which it is refreshed. Default 0.5.
	RenewAt float64 `toml:"renew_at"`
	// renew_spread: each certificate renews up to this fraction of the validity earlier than
	// renew_at, by a fixed per-certificate amount, so that many certificates do not fall due
	// together. Default 0.1.
	RenewSpread float64 `toml:"renew_spread"`
	// max_staple_age: a staple is refreshed at least this long after its thisUpdate, whatever
	// its nextUpdate says: CAs under the Baseline Requirements publish a new response within 4
	// days, and a revocation must not wait for a far-away nextUpdate. Default 96h.
	MaxStapleAge time.Duration `toml:"max_staple_age"`
	// retry_base: wait after the first failure; doubled after each further one. Default 5m.
	RetryBase time.Duration `toml:"retry_base"`
	// retry_max: longest wait between retries. Default 6h. A staple close to expiry is
	// retried at every run whatever the back-off says.
	RetryMax time.Duration `toml:"retry_max"`
	// run_timeout: deadline for the wait for another run's lock and the fetching; what is not
	// fetched by then stays due for the next run, and the run exits 1. The HAProxy part, the
	// hooks and saving the state follow it, under their own timeouts. Default 5m.
	RunTimeout time.Duration `toml:"run_timeout"`
	// metrics_file: after each run, write Prometheus metrics here (for node_exporter's textfile
	// collector, e.g. /var/lib/prometheus/node-exporter/stapler.prom). Default none.
	MetricsFile string `toml:"metrics_file"`
	// log_format: "text" or "json". Default "text".
	LogFormat string `toml:"log_format"`
	// log_level: "debug", "info", "warn" or "error". Default "info".
	LogLevel string `toml:"log_level"`

	// origins says where a key's value came from, for messages: "FILE:LINE: key" for the
	// config file, "--flag" for a flag.
	origins map[string]string
}

// origin names where key's value came from: its file and line, or its flag.
func (cfg *Config) origin(key string) string {
	if o, ok := cfg.origins[key]; ok {
		return o
	}
	return key
}

// setOrigin records where key's value came from.
func (cfg *Config) setOrigin(key, origin string) {
	if cfg.origins == nil {
		cfg.origins = map[string]string{}
	}
	cfg.origins[key] = origin
}

func defaultConfig() Config {
	return Config{
		FetchIssuers:     true,
		State:            "/var/lib/stapler/state.json",
		SocketTimeout:    5 * time.Second,
		ReloadTimeout:    time.Minute,
		RevokedTimeout:   time.Minute,
		Jobs:             8,
		ResponderJobs:    32,
		Timeout:          10 * time.Second,
		MaxResponseBytes: 64 << 10,
		RenewAt:          0.5,
		RenewSpread:      0.1,
		MaxStapleAge:     96 * time.Hour,
		RetryBase:        5 * time.Minute,
		RetryMax:         6 * time.Hour,
		RunTimeout:       5 * time.Minute,
		LogFormat:        "text",
		LogLevel:         "info",
	}
}

// loadConfigFile decodes path over cfg. A file that cannot be read or decoded is err; unknown
// keys, each with its line, are unknown, and leave cfg usable for further checks.
func loadConfigFile(path string, cfg *Config) (unknown, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	md, err := toml.Decode(string(data), cfg)
	if err != nil {
		return nil, decodeError(path, err)
	}
	for _, key := range md.Keys() {
		if len(key) == 1 {
			cfg.setOrigin(key[0], fmt.Sprintf("%s:%d: %s", path, keyLine(data, key), key[0]))
		}
	}
	var errs []error
	for _, key := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("%s:%d: unknown key %q", path, keyLine(data, key), key.String()))
	}
	// TOML decodes a bare number into a Go duration as nanoseconds: timeout = 10 would be
	// 10 ns. A duration is a string such as "10s".
	for _, key := range md.Keys() {
		if t := md.Type(key...); durationKeys[key.String()] && (t == "Integer" || t == "Float") {
			errs = append(errs, fmt.Errorf("%s:%d: %s is a number, which would be nanoseconds: write a duration as a string, such as %s = \"%ss\"",
				path, keyLine(data, key), key.String(), key.String(), numberText(data, key)))
		}
	}
	return errors.Join(errs...), nil
}

// tomlTypeError is how the TOML decoder words a value of the wrong type.
var tomlTypeError = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): incompatible types: TOML value has type (\S+); destination has type (\S+)$`)

// decodeError words an error of the TOML decoder for people: the file, line and key, what the
// key takes, and the trap of a top-level key written below a table.
func decodeError(path string, err error) error {
	var perr toml.ParseError
	if errors.As(err, &perr) {
		msg := perr.Message
		if perr.LastKey != "" && !strings.Contains(msg, perr.LastKey) {
			msg = perr.LastKey + ": " + msg
		}
		if durationKeys[perr.LastKey] {
			msg += fmt.Sprintf(`: write a duration such as %s = "10s" (units: ms, s, m, h)`, perr.LastKey)
		}
		return fmt.Errorf("%s:%d: %s", path, perr.Position.Line, msg)
	}
	m := tomlTypeError.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	kinds := map[string]string{"string": "a string", "int64": "a number", "float64": "a number", "bool": "true or false", "boolean": "true or false",
		"slice": `a list, such as ["a", "b"]`, "int": "a whole number", "float": "a number", "map": "a table"}
	msg := fmt.Sprintf("%s:%s: %s takes %s, not %s", path, m[1], m[2], cmp.Or(kinds[m[4]], m[4]), cmp.Or(kinds[m[3]], m[3]))
	if table, key, ok := strings.Cut(m[2], "."); ok && table == "responder_override" {
		msg += fmt.Sprintf(" (every key below [responder_override] belongs to that table: write %s above it)", key)
	}
	return errors.New(msg)
}

// durationKeys are the configuration keys whose values are durations.
var durationKeys = func() map[string]bool {
	keys := map[string]bool{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if f := t.Field(i); f.Type == reflect.TypeFor[time.Duration]() {
			keys[strings.Split(f.Tag.Get("toml"), ",")[0]] = true
		}
	}
	return keys
}()

// numberText is the number written for key on its line, for the message that suggests the fix.
func numberText(data []byte, key toml.Key) string {
	line := strings.Split(string(data), "\n")[max(0, keyLine(data, key)-1)]
	_, value, _ := strings.Cut(line, "=")
	value, _, _ = strings.Cut(value, "#")
	return strings.TrimSpace(value)
}

// keyLine finds the line that defines key; BurntSushi/toml keeps key positions private.
func keyLine(data []byte, key toml.Key) int {
	last := regexp.QuoteMeta(key[len(key)-1])
	re := regexp.MustCompile(`^\s*(\[+\s*)?([^=]*\.)?\s*["']?` + last + `["']?\s*(=|\]|\.)`)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		if re.MatchString(sc.Text()) {
			return n
		}
	}
	return 0
}

// validate reports every problem in cfg at once, each naming where the value came from.
func (cfg *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", cfg.origin(key), fmt.Sprintf(format, args...)))
	}
	if cfg.Jobs < 1 {
		bad("jobs", "must be at least 1, not %d", cfg.Jobs)
	}
	if cfg.ResponderJobs < 1 {
		bad("responder_jobs", "must be at least 1, not %d", cfg.ResponderJobs)
	}
	if cfg.RenewAt <= 0 || cfg.RenewAt >= 1 {
		bad("renew_at", "must be between 0 and 1 (exclusive), not %v", cfg.RenewAt)
	}
	if cfg.RenewSpread < 0 || cfg.RenewSpread >= cfg.RenewAt {
		bad("renew_spread", "must be at least 0 and less than renew_at, not %v", cfg.RenewSpread)
	}
	for name, d := range map[string]time.Duration{
		"timeout": cfg.Timeout, "socket_timeout": cfg.SocketTimeout,
		"retry_base": cfg.RetryBase, "retry_max": cfg.RetryMax, "run_timeout": cfg.RunTimeout, "reload_timeout": cfg.ReloadTimeout,
		"revoked_timeout": cfg.RevokedTimeout,
		"max_staple_age":  cfg.MaxStapleAge,
	} {
		if d <= 0 {
			bad(name, "must be a positive duration such as \"10s\", not %v", d)
		}
	}
	if cfg.RetryMax < cfg.RetryBase {
		bad("retry_max", "(%v) must not be shorter than retry_base (%v)", cfg.RetryMax, cfg.RetryBase)
	}
	if cfg.MaxResponseBytes < 1024 {
		bad("max_response_bytes", "must be at least 1024, not %d", cfg.MaxResponseBytes)
	}
	if cfg.State == "" {
		bad("state", "must name a file")
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		bad("log_format", "must be \"text\" or \"json\", not %q", cfg.LogFormat)
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		bad("log_level", "%v", err)
	}
	for _, p := range cfg.Exclude {
		if err := checkGlob(p); err != nil {
			bad("exclude", "pattern %q: %v", p, err)
		}
	}
	if cfg.Proxy != "" {
		if err := checkHTTPURL(cfg.Proxy); err != nil {
			bad("proxy", "%v", err)
		}
	}
	for from, to := range cfg.ResponderOverride {
		if err := checkHTTPURL(from); err != nil {
			bad("responder_override", "key %q is not a responder URL as certificates name them (%v); every key below [responder_override] belongs to that table: write top-level settings above it", from, err)
		} else if err := checkHTTPURL(to); err != nil {
			bad("responder_override", "%q: %v", from, err)
		}
	}
	for _, s := range cfg.Sockets {
		if _, err := haproxy.ParseAddr(s); err != nil {
			bad("sockets", "%v", err)
		}
	}
	for _, f := range cfg.Files {
		if fi, err := os.Stat(f); err != nil {
			bad("files", "%v", pathError(err))
		} else if !fi.Mode().IsRegular() {
			bad("files", "%s is not a certificate file", f)
		}
	}
	for _, f := range cfg.HAProxyConfigs {
		if _, err := os.Stat(f); err != nil { // a file, or a directory of *.cfg as haproxy -f takes
			bad("haproxy_configs", "%v", pathError(err))
		}
	}
	for key, dirs := range map[string][]string{"dirs": cfg.Dirs, "issuer_dirs": cfg.IssuerDirs} {
		for _, d := range dirs {
			if fi, err := os.Stat(d); err != nil {
				bad(key, "%v", pathError(err))
			} else if !fi.IsDir() {
				bad(key, "%s is not a directory", d)
			}
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// pathError is err without the operation's name: "/etc/haproxy/certs: no such file or
// directory", not "stat /etc/haproxy/certs: ...".
func pathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// checkGlob rejects every malformed filepath.Match pattern. filepath.Match itself reports a
// malformed pattern only when matching gets that far, so a bad pattern could otherwise
// silently never match.
func checkGlob(p string) error {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			if i++; i == len(p) {
				return filepath.ErrBadPattern
			}
		case '[':
			j := i + 1
			if j < len(p) && p[j] == '^' {
				j++
			}
			for first := true; ; first = false {
				if j >= len(p) {
					return filepath.ErrBadPattern
				}
				if p[j] == ']' && !first {
					break
				}
				if p[j] == '\\' {
					j++
				}
				j++
			}
			if _, err := filepath.Match(p[i:j+1], "x"); err != nil {
				return err
			}
			i = j
		}
	}
	return nil
}

// resolvePaths makes the relative paths of a config file relative to the file's directory, so
// that a run does not depend on the directory cron starts it in.
func (cfg *Config) resolvePaths(configFile string) {
	base := filepath.Dir(configFile)
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	for _, list := range [][]string{cfg.Dirs, cfg.Files, cfg.IssuerDirs, cfg.HAProxyConfigs} {
		for i := range list {
			list[i] = abs(list[i])
		}
	}
	cfg.State = abs(cfg.State)
	cfg.MetricsFile = abs(cfg.MetricsFile)
	// A unix socket's path too; host:port addresses stay as they are.
	for i, s := range cfg.Sockets {
		if a, err := haproxy.ParseAddr(s); err == nil && a.Network == "unix" && !filepath.IsAbs(a.Address) {
			cfg.Sockets[i] = strings.TrimSuffix(s, a.Address) + abs(a.Address)
		}
	}
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http:// or https:// URL", s)
	}
	return nil
}
