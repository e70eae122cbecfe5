package main

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigFile(t *testing.T) {
	tests := []struct {
		name, toml string
		check      func(Config) bool
		unknown    []string // each must appear in the unknown-keys error
		err        string
	}{
		{"defaults kept", `jobs = 3`, func(c Config) bool {
			return c.Jobs == 3 && c.Timeout == 10*time.Second && c.RenewAt == 0.5 && c.FetchIssuers
		}, nil, ""},
		{"durations and maps", "timeout = \"3s\"\nretry_max = \"2h\"\n[responder_override]\n\"http://a.test\" = \"http://b.test\"\n",
			func(c Config) bool {
				return c.Timeout == 3*time.Second && c.RetryMax == 2*time.Hour && c.ResponderOverride["http://a.test"] == "http://b.test"
			}, nil, ""},
		{"unknown keys with their lines", "jobs = 2\n\ncolour = \"red\"\n[extra]\nthing = 1\n", nil,
			[]string{`:3: unknown key "colour"`, `:4: unknown key "extra"`, `:5: unknown key "extra.thing"`}, ""},
		{"syntax error with its line", "jobs = 2\ndirs = [\n", nil, nil, ":2: "},
		{"wrong type", `jobs = "many"`, nil, nil, "jobs"},
		// A bare number would be nanoseconds: an error naming the key, its line and the fix.
		{"durations written as numbers", "jobs = 2\ntimeout = 10 # seconds\nretry_base = 300\nrun_timeout = \"5m\"\n", nil,
			[]string{`:2: timeout is a number, which would be nanoseconds: write a duration as a string, such as timeout = "10s"`,
				`:3: retry_base is a number, which would be nanoseconds: write a duration as a string, such as retry_base = "300s"`}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "stapler.toml")
			os.WriteFile(path, []byte(tt.toml), 0o644)
			cfg := defaultConfig()
			unknown, err := loadConfigFile(path, &cfg)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), path) {
					t.Fatalf("got %v, want an error naming the file and containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range tt.unknown {
				if unknown == nil || !strings.Contains(unknown.Error(), path+u) {
					t.Errorf("unknown keys error %v lacks %q", unknown, u)
				}
			}
			if tt.unknown == nil && unknown != nil {
				t.Errorf("unexpected unknown keys: %v", unknown)
			}
			if tt.check != nil && !tt.check(cfg) {
				t.Errorf("decoded %+v", cfg)
			}
		})
	}
}

func TestResolvePaths(t *testing.T) {
	cfg := Config{Dirs: []string{"certs", "/abs"}, Files: []string{"a.pem"}, IssuerDirs: []string{"../ca"}, State: "state.json",
		Sockets: []string{"run/admin.sock", "/run/haproxy/admin.sock", "master:run/master.sock", "unix@../haproxy.sock", "127.0.0.1:9999", "ipv4@10.0.0.1:9999"}}
	cfg.resolvePaths("/etc/stapler/stapler.toml")
	want := Config{Dirs: []string{"/etc/stapler/certs", "/abs"}, Files: []string{"/etc/stapler/a.pem"}, IssuerDirs: []string{"/etc/ca"}, State: "/etc/stapler/state.json",
		Sockets: []string{"/etc/stapler/run/admin.sock", "/run/haproxy/admin.sock", "master:/etc/stapler/run/master.sock", "unix@/etc/haproxy.sock", "127.0.0.1:9999", "ipv4@10.0.0.1:9999"}}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		modify func(*Config)
		err    string
	}{
		{"defaults", func(c *Config) {}, ""},
		{"jobs", func(c *Config) { c.Jobs = 0 }, "jobs: must be at least 1"},
		{"renew_at", func(c *Config) { c.RenewAt = 1 }, "renew_at: must be between 0 and 1"},
		{"spread", func(c *Config) { c.RenewSpread = 0.6 }, "renew_spread: must be"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "timeout: must be a positive duration"},
		{"retry", func(c *Config) { c.RetryMax = time.Minute }, "retry_max: (1m0s) must not be shorter"},
		{"log_format", func(c *Config) { c.LogFormat = "xml" }, `log_format: must be "text" or "json"`},
		{"log_level", func(c *Config) { c.LogLevel = "loud" }, "log_level: must be"},
		{"exclude", func(c *Config) { c.Exclude = []string{"[z-a"} }, `exclude: pattern "[z-a"`},
		{"exclude, bad at the end", func(c *Config) { c.Exclude = []string{"x*["} }, `exclude: pattern "x*["`},
		{"exclude, dangling escape", func(c *Config) { c.Exclude = []string{`a\`} }, `exclude: pattern`},
		{"exclude, good classes", func(c *Config) { c.Exclude = []string{"*.[ch]", "[^x]*", `\[*`, "[a-c]?"} }, ""},
		{"missing file", func(c *Config) { c.Files = []string{filepath.Join(dir, "nope.pem")} }, "files: " + filepath.Join(dir, "nope.pem") + ": no such file or directory"},
		{"proxy", func(c *Config) { c.Proxy = "socks5://x" }, "proxy:"},
		{"override", func(c *Config) { c.ResponderOverride = map[string]string{"http://a": "ftp://b"} }, `responder_override: "http://a"`},
		{"missing dir", func(c *Config) { c.Dirs = []string{filepath.Join(dir, "nope")} }, "dirs: " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"from the file, with its line", func(c *Config) {
			c.Dirs = []string{filepath.Join(dir, "nope")}
			c.setOrigin("dirs", "/etc/stapler/stapler.toml:7: dirs")
		}, "/etc/stapler/stapler.toml:7: dirs: " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"from a flag", func(c *Config) { c.Jobs = 0; c.setOrigin("jobs", "--jobs") }, "--jobs: must be at least 1, not 0"},
		{"file as dir", func(c *Config) { c.IssuerDirs = []string{filepath.Join(dir, "f")} }, "is not a directory"},
	}
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	for _, tt := range tests {
		cfg := defaultConfig()
		cfg.Dirs = []string{dir}
		tt.modify(&cfg)
		err := cfg.validate()
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.err)
		}
	}
}

// TestExampleConfig: stapler.example.toml decodes cleanly, sets every key the Config struct
// has, and states the defaults that defaultConfig applies.
func TestExampleConfig(t *testing.T) {
	cfg := Config{}
	unknown, err := loadConfigFile("stapler.example.toml", &cfg)
	if err != nil || unknown != nil {
		t.Fatalf("%v %v", err, unknown)
	}
	data, _ := os.ReadFile("stapler.example.toml")
	typ := reflect.TypeOf(cfg)
	for i := range typ.NumField() {
		key := typ.Field(i).Tag.Get("toml")
		if key == "" {
			continue // not a key (origins)
		}
		if !regexp.MustCompile(`(?m)^(` + key + ` = |\[` + key + `\])`).Match(data) {
			t.Errorf("stapler.example.toml does not document %q", key)
		}
	}
	// Every value is the default: the lists empty, the examples commented out.
	want := defaultConfig()
	want.Dirs, want.Files, want.Exclude, want.IssuerDirs, want.HAProxyConfigs, want.Sockets = []string{}, []string{}, []string{}, []string{}, []string{}, []string{}
	cfg.ResponderOverride, cfg.origins = nil, nil
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("example values differ from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
}
