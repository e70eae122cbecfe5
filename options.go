package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"stapler/internal/haproxycfg"
)

// setLogger makes slog write to stderr as configured, and reports what stapler could not
// follow in HAProxy's configuration.
func setLogger(c *cli.Context, opt runOptions) error {
	logger, err := newLogger(c.App.ErrWriter, opt.LogFormat, opt.LogLevel)
	if err != nil {
		return usageError(err)
	}
	slog.SetDefault(logger)
	for _, note := range opt.Notes {
		slog.Warn("HAProxy configuration needs a look", "at", note)
	}
	return nil
}

// exampleHint says where every configuration key is described.
const exampleHint = "every key, with its default, is described in stapler.example.toml (/usr/share/doc/stapler/ when installed from the package; the top of the source tree)"

// runOptionsFrom turns the config file and the flags into plain values.
func runOptionsFrom(c *cli.Context) (runOptions, error) {
	cfg, path, errs, err := configFrom(c)
	if err != nil {
		return runOptions{}, err
	}
	opt := runOptions{Config: cfg, Force: c.Bool("force"), DryRun: c.Bool("dry-run")}
	var argErrs []error
	opt.Only, argErrs = certArgs(c.Args().Slice())
	if err := cfg.validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs)+len(argErrs) > 0 {
		var hints []string
		if len(errs) > 0 {
			where := "in the flags"
			if path != "" {
				where = "in " + path + " or the flags"
			}
			hints = append(hints, "fix the settings "+where+"; "+exampleHint)
		}
		if len(argErrs) > 0 {
			hints = append(hints, "give existing certificate files after the flags: stapler run [flags] FILE...")
		}
		return runOptions{}, usageError(errors.Join(append(errs, argErrs...)...), hints...)
	}
	if err := opt.discover(); err != nil {
		return runOptions{}, err
	}
	if len(opt.Only) == 0 && len(opt.Dirs) == 0 && len(opt.Files) == 0 {
		err := errors.New("no certificates to check")
		switch {
		case len(opt.HAProxyConfigs) > 0 && len(opt.Notes) > 0:
			// What the configuration names but stapler could not follow (a crt path that does
			// not exist, say): said here, as the run that would log it does not start.
			err = fmt.Errorf("no certificates to check: the bind lines of %s load none that stapler could find:\n  %s", strings.Join(opt.HAProxyConfigs, ", "), strings.Join(opt.Notes, "\n  "))
		case len(opt.HAProxyConfigs) > 0:
			err = fmt.Errorf("no certificates to check: no bind line of %s loads one (crt or crt-list)", strings.Join(opt.HAProxyConfigs, ", "))
		}
		return runOptions{}, usageError(err, "give --dir DIR, --haproxy-config FILE or certificate files, or set dirs in "+cmp.Or(path, defaultConfigPath+" (or --config FILE)"))
	}
	return opt, nil
}

// configFrom is the config file (the default one when it exists) with the flags over it: path
// is the file read ("" for none), errs the problems to report with the others, err one that
// stops everything (a file that cannot be read or decoded).
func configFrom(c *cli.Context) (cfg Config, path string, errs []error, err error) {
	cfg = defaultConfig()
	path = c.String("config")
	if !c.IsSet("config") {
		if _, err := os.Stat(defaultConfigPath); err == nil {
			path = defaultConfigPath
		}
	}
	if path != "" {
		unknown, err := loadConfigFile(path, &cfg)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return cfg, path, nil, usageError(err)
		}
		if err != nil {
			return cfg, path, nil, usageError(err, exampleHint)
		}
		cfg.resolvePaths(path)
		if unknown != nil {
			errs = append(errs, unknown)
		}
	}
	if c.IsSet("dir") {
		cfg.setOrigin("dirs", "--dir")
		cfg.Dirs = c.StringSlice("dir")
	}
	if c.IsSet("haproxy-config") {
		cfg.setOrigin("haproxy_configs", "--haproxy-config")
		cfg.HAProxyConfigs = c.StringSlice("haproxy-config")
	}
	if c.IsSet("socket") {
		cfg.setOrigin("sockets", "--socket")
		cfg.Sockets = c.StringSlice("socket")
	}
	if c.IsSet("state") {
		cfg.setOrigin("state", "--state")
		cfg.State = c.String("state")
	}
	if c.IsSet("jobs") {
		cfg.setOrigin("jobs", "--jobs")
		cfg.Jobs = c.Int("jobs")
	}
	if c.IsSet("metrics-file") {
		cfg.setOrigin("metrics_file", "--metrics-file")
		cfg.MetricsFile = absPath(c.String("metrics-file"))
	}
	if c.IsSet("log-format") {
		cfg.setOrigin("log_format", "--log-format")
		cfg.LogFormat = c.String("log-format")
	}
	c.App.Metadata[metaLogFormat] = cfg.LogFormat
	switch {
	case c.Bool("quiet") && c.Bool("verbose"):
		return cfg, path, nil, usageError(errors.New("--quiet and --verbose contradict each other"))
	case c.Bool("quiet"):
		cfg.LogLevel = "error"
	case c.Bool("verbose"):
		cfg.LogLevel = "debug"
	}
	return cfg, path, errs, nil
}

// certArgs are the certificate files named on the command line, absolute, sorted, once each.
func certArgs(args []string) (files []string, errs []error) {
	for _, arg := range args {
		fi, err := os.Stat(arg)
		switch {
		case err != nil && strings.HasPrefix(arg, "-"):
			errs = append(errs, fmt.Errorf("%s comes after a certificate file; flags go before them", arg))
		case err != nil:
			errs = append(errs, err)
		case !fi.Mode().IsRegular():
			errs = append(errs, fmt.Errorf("%s is not a certificate file", arg))
		default:
			files = append(files, absPath(arg))
		}
	}
	slices.Sort(files)
	return slices.Compact(files), errs
}

// discover adds what HAProxy's configurations say (certificates, sockets, and what HAProxy
// makes of each file) to the options, and makes every path absolute.
func (opt *runOptions) discover() error {
	opt.Naming = naming{DelExt: opt.ExtraDelExt, Dirs: map[string]haproxycfg.Dir{}, Files: map[string]certFile{}}
	for _, hc := range opt.HAProxyConfigs {
		hs, err := haproxycfg.Read(absPath(hc))
		if err != nil {
			return usageError(err)
		}
		for _, d := range hs.Dirs {
			opt.Dirs = append(opt.Dirs, d.Path)
			opt.Naming.Dirs[d.Path] = d
		}
		for _, f := range hs.Files {
			opt.Files = append(opt.Files, f.Path)
			opt.Naming.Files[f.Path] = f
		}
		opt.Sockets = append(opt.Sockets, hs.Sockets...)
		opt.Notes = append(opt.Notes, hs.Notes...)
	}
	opt.State = absPath(opt.State)
	for i := range opt.Dirs {
		opt.Dirs[i] = absPath(opt.Dirs[i])
	}
	for i := range opt.Files {
		opt.Files[i] = absPath(opt.Files[i])
	}
	opt.Dirs, opt.Files, opt.Sockets = dedupe(opt.Dirs), dedupe(opt.Files), dedupe(opt.Sockets)
	return nil
}

// absPath makes paths absolute so that a certificate has one state entry however it is named.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || strings.ContainsAny(s, "+-") {
		return 0, fmt.Errorf("must be debug, info, warn or error, not %q", s)
	}
	return l, nil
}

// durationSeconds writes durations as seconds, a number in both formats.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key, math.Round(a.Value.Duration().Seconds()*1000)/1000)
	}
	return a
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: l, ReplaceAttr: durationSeconds}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}
