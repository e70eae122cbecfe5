// Command stapler keeps HAProxy's OCSP staples fresh. Run from cron, a systemd timer or a
// certbot deploy hook, it finds certificates, fetches a new OCSP response for each staple that
// is due, validates it as strictly as HAProxy will, writes <cert>.ocsp atomically and hands it
// to every running HAProxy over the runtime API.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Exit statuses, documented in --help and the README.
const (
	exitOK      = 0 // every certificate with a responder has a fresh, valid staple everywhere
	exitFailed  = 1 // a staple could not be refreshed or pushed, or a certificate is revoked
	exitUsage   = 2 // bad usage or configuration: nothing was done
	exitHelpMsg = `EXIT STATUS:
   0  every certificate that has an OCSP responder ends the run with a fresh, valid staple
      on disk and in every configured HAProxy (certificates without a responder are fine)
   1  at least one staple could not be refreshed or pushed, or a certificate is revoked
   2  bad usage or configuration; nothing was done`
)

// testOnlyNow replaces the clock in tests; testOnlyCheckHang, when set, stalls the check's work
// (for its --timeout).
var (
	testOnlyNow       func() time.Time
	testOnlyCheckHang func()
)

func main() {
	os.Exit(stapler(os.Args, os.Stdout, os.Stderr))
}

// exitError carries an exit status and hints from a command's action to stapler.
type exitError struct {
	code  int
	err   error
	hints []string
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// permissionHint follows an error that a file could not be opened for lack of permission.
const permissionHint = "run stapler as the user that owns its state and certificates (root with the package: sudo stapler ...), or give this user access to the file named"

func usageError(err error, hints ...string) error {
	return &exitError{code: exitUsage, err: err, hints: hints}
}

// stapler runs the command line and returns the exit status.
func stapler(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		// urfave/cli's own errors: unknown flags and commands.
		ee = &exitError{code: exitUsage, err: err, hints: []string{"see 'stapler --help'"}}
		if len(args) > 1 && args[1] == "check" {
			ee.code = checkUnknown // what monitoring expects of a plugin it runs wrongly
		}
	}
	if ee.err == nil && len(ee.hints) == 0 {
		return ee.code // the run said what went wrong
	}
	if errors.Is(ee.err, fs.ErrPermission) && len(ee.hints) == 0 {
		ee.hints = append(ee.hints, permissionHint)
	}
	if logJSON(app, args) {
		// One JSON record, like every other line: stable msg, the error, the hints, the status.
		attrs := []any{"exit", ee.code}
		if ee.err != nil {
			attrs = append(attrs, "err", ee.err.Error())
		}
		if len(ee.hints) > 0 {
			attrs = append(attrs, "hints", ee.hints)
		}
		slog.New(slog.NewJSONHandler(stderr, nil)).Error("stapler stopped", attrs...)
		return ee.code
	}
	if ee.err != nil {
		fmt.Fprintf(stderr, "stapler: error: %v\n", ee.err)
	}
	for _, h := range ee.hints {
		fmt.Fprintf(stderr, "stapler: hint: %s\n", h)
	}
	return ee.code
}

// logJSON reports whether the run's messages are JSON: log_format as the command resolved it
// (config file, then flag), else a --log-format json on the command line, for errors that
// stop stapler before it reads its settings.
func logJSON(app *cli.App, args []string) bool {
	if f, ok := app.Metadata[metaLogFormat].(string); ok {
		return f == "json"
	}
	for i, a := range args {
		switch {
		case a == "--":
			return false
		case a == "--log-format=json", a == "-log-format=json":
			return true
		case (a == "--log-format" || a == "-log-format") && i+1 < len(args):
			return args[i+1] == "json"
		}
	}
	return false
}

// metaLogFormat is the app's Metadata key under which a command leaves its log_format.
const metaLogFormat = "log_format"

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                      "stapler",
		Usage:                     "keep HAProxy's OCSP staples fresh",
		Description:               "stapler fetches OCSP responses for HAProxy's certificates, validates them as strictly\nas HAProxy does, writes <cert>.ocsp and pushes each new staple to HAProxy's runtime API.\nRun 'stapler run --help' for the options.\n\n" + exitHelpMsg,
		Writer:                    stdout,
		ErrWriter:                 stderr,
		Metadata:                  map[string]any{},
		DisableSliceFlagSeparator: true,
		HideHelpCommand:           true,
		ExitErrHandler:            func(*cli.Context, error) {}, // stapler maps errors to exit statuses
		EnableBashCompletion:      true,                         // --generate-bash-completion, for the completion script
		// Without a command stapler does nothing: a usage error, so that a crontab line that
		// lost its "run" fails instead of succeeding silently.
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError(fmt.Errorf("no command %q", c.Args().First()), "see 'stapler --help'")
			}
			return usageError(errors.New("no command given"), "usage: stapler run|status|check|demo|version [flags] (see 'stapler --help')")
		},
		Commands: []*cli.Command{runCommand(), statusCommand(), checkCommand(), demoCommand(), versionCommand(), manCommand()},
	}
	// A usage error is one line and a hint, like every other error: not the whole help on
	// stdout, which cron would mail.
	onUsageError := func(c *cli.Context, err error, _ bool) error {
		hint := "see 'stapler --help'"
		switch name := c.Command.Name; {
		case name == "check":
			// What monitoring expects of a plugin it runs wrongly.
			fmt.Fprintf(c.App.Writer, "STAPLER UNKNOWN - %v\n", err)
			return &exitError{code: checkUnknown}
		case name != "" && name != c.App.Name:
			hint = "see 'stapler " + name + " --help'"
		}
		return usageError(err, hint)
	}
	app.OnUsageError = onUsageError
	for _, cmd := range app.Commands {
		cmd.OnUsageError = onUsageError
	}
	return app
}

// manCommand prints the man page stapler(8), made from the commands and flags themselves so
// that it says what --help says; packaging/deb.sh installs it.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the man page, stapler(8), in roff",
		Hidden: true,
		Action: func(c *cli.Context) error {
			_, err := fmt.Fprint(c.App.Writer, manPage(c.App))
			return err
		},
	}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "refresh every staple that is due and push it to HAProxy",
		ArgsUsage: "[CERT_FILE...]",
		Description: `Scans the configured certificate directories and files (or only the CERT_FILEs given),
fetches a new OCSP response for every staple that is due, validates it, writes <cert>.ocsp
atomically (and <cert>.issuer when HAProxy needs it) and sends it to every HAProxy socket.
Certificates without an OCSP responder are skipped quietly. A run with nothing due asks no
responder, and each HAProxy once what it serves (and repairs what it lacks). Settings come
from the config file; flags override it.

EXAMPLES:
   stapler run --dir /etc/haproxy/certs --socket /run/haproxy/admin.sock
   stapler run -q                                  # from cron: prints only errors
   stapler run /etc/haproxy/certs/example.com.pem  # deploy hook: just this certificate
   stapler run --dry-run -v                        # what is due and why; changes nothing

` + exitHelpMsg,
		Flags: append(settingsFlags(),
			&cli.BoolFlag{Name: "force", Usage: "refresh every staple, due or not", DisableDefaultText: true},
			&cli.BoolFlag{Name: "dry-run", Usage: "say what is due and why; ask no responder, send HAProxy nothing, write nothing", DisableDefaultText: true},
			&cli.IntFlag{Name: "jobs", Usage: "`N` OCSP requests in flight at once", DefaultText: "config's jobs, else 8"},
			&cli.StringFlag{Name: "metrics-file", Usage: "write Prometheus metrics to `FILE` after the run (for node_exporter's textfile collector)", DefaultText: "config's metrics_file, else none"},
		),
		Action: runAction,
	}
}

// settingsFlags are the flags that override the config file, shared by the commands that
// read it.
func settingsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "TOML config `FILE`", DefaultText: defaultConfigPath + " when it exists", EnvVars: []string{"STAPLER_CONFIG"}},
		&cli.StringSliceFlag{Name: "dir", Usage: "certificate `DIR`, read like HAProxy's 'crt /dir/' (repeatable; replaces the config's dirs)"},
		&cli.StringSliceFlag{Name: "haproxy-config", Usage: "HAProxy configuration `FILE` to take certificates and stats sockets from (repeatable; replaces the config's haproxy_configs)"},
		&cli.StringSliceFlag{Name: "socket", Usage: "HAProxy runtime API `ADDR`: unix socket path, host:port, or master:ADDR (repeatable; replaces the config's sockets; those found in --haproxy-config are used too)"},
		&cli.StringFlag{Name: "state", Usage: "state `FILE`", DefaultText: "config's state, else /var/lib/stapler/state.json"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print errors only", DisableDefaultText: true},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print debug messages too", DisableDefaultText: true},
		&cli.StringFlag{Name: "log-format", Usage: "`FORMAT` of messages on stderr: text or json", DefaultText: "config's log_format, else text"},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show each certificate's staple and what every HAProxy serves",
		ArgsUsage: "[CERT_FILE...]",
		Description: `Prints one row per certificate, problems first: its staple's status, how long it stays
valid, when stapler refreshes it next, whether every HAProxy serves it (ok, stale, no slot,
down) and the last problem. --json prints everything, in the schema the README documents.
It reads the state file, the disk and the sockets; it contacts no OCSP responder and changes
nothing.

EXAMPLES:
   stapler status
   stapler status --json | jq '.certificates[] | select(.staple_status != "good")'
   stapler status --socket /run/haproxy/admin.sock /etc/haproxy/certs/example.com.pem`,
		Flags: append(settingsFlags(),
			&cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table", DisableDefaultText: true}),
		Action: statusAction,
	}
}

func statusAction(c *cli.Context) error {
	opt, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	if err := setLogger(c, opt); err != nil {
		return err
	}
	now := time.Now()
	if testOnlyNow != nil {
		now = testOnlyNow()
	}
	ctx, cancel := context.WithTimeout(c.Context, opt.RunTimeout)
	defer cancel()
	listed := startScan(opt)
	state, err := loadState(opt.State, false)
	if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	rep, err := collectStatus(ctx, opt, state, listed, now)
	if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	if c.Bool("json") {
		return writeStatusJSON(c.App.Writer, rep)
	}
	return writeStatusTable(c.App.Writer, rep, now)
}

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "monitoring plugin: are all staples valid, good and fresh?",
		ArgsUsage: "[CERT_FILE...]",
		Description: `A Nagios/Icinga-style plugin. It prints one line with performance data, then one
line per certificate that is not OK, and exits 0 OK, 1 WARNING, 2 CRITICAL or 3 UNKNOWN. CRITICAL: a revoked certificate, a certificate with
a responder but no valid staple, or a staple with less than --critical left. WARNING: less than
--warning left, refreshes failing for longer than --failing, a staple not yet pushed to some
HAProxy, or a staple stapler has not checked. For a Must-Staple certificate less than
--warning left, or a staple not checked, is CRITICAL, and so is no responder. Limits are
durations or shares of the staple's validity window (thisUpdate to expiry); the defaults take
the smaller of both, so that a fresh staple is OK whatever its window. It reads the state file
and the disk only.

EXAMPLES:
   stapler check
   stapler check --warning 24h --critical 6h /etc/haproxy/certs/shop.pem
   stapler check --warning 30% --critical 10%

   # Icinga 2 and Nagios: the commands are in /usr/share/doc/stapler/examples/
   # (contrib/icinga2/stapler.conf and contrib/nagios/stapler.cfg in the source).`,
		Flags: append(settingsFlags(),
			&cli.StringFlag{Name: "warning", Usage: "WARNING when a staple has less than `LIMIT` left: a duration (12h) or a share of its validity window (25%)", DefaultText: defaultWarning.String()},
			&cli.StringFlag{Name: "critical", Usage: "CRITICAL when a staple has less than `LIMIT` left: a duration (3h) or a share of its validity window (10%)", DefaultText: defaultCritical.String()},
			&cli.DurationFlag{Name: "failing", Value: 6 * time.Hour, Usage: "WARNING when refreshes have failed for longer than `DURATION`"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "UNKNOWN when the check takes longer than `DURATION`"},
		),
		Action: checkAction,
	}
}

func checkAction(c *cli.Context) error {
	unknown := func(err error) error {
		if errors.Is(err, fs.ErrPermission) {
			// A monitoring agent runs checks as its own user (nagios).
			err = fmt.Errorf("%w: run the check as the user that owns stapler's state, through sudo, or give its user read access", err)
		}
		fmt.Fprintf(c.App.Writer, "STAPLER UNKNOWN - %v\n", err)
		return &exitError{code: checkUnknown}
	}
	th := checkThresholds{Warning: defaultWarning, Critical: defaultCritical, Failing: c.Duration("failing")}
	for _, f := range []struct {
		name string
		t    *threshold
	}{{"warning", &th.Warning}, {"critical", &th.Critical}} {
		if c.IsSet(f.name) {
			var err error
			if *f.t, err = parseThreshold(f.name, c.String(f.name)); err != nil {
				return unknown(err)
			}
		}
	}
	if err := checkOrder(th.Warning, th.Critical); err != nil {
		return unknown(err)
	}
	opt, err := runOptionsFrom(c)
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			err = ee.err
		}
		return unknown(err)
	}
	opt.LogLevel = "error"
	if err := setLogger(c, opt); err != nil {
		return unknown(err)
	}
	now := time.Now()
	if testOnlyNow != nil {
		now = testOnlyNow()
	}
	opt.Sockets = nil // the check reads state and disk only
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return unknown(fmt.Errorf("--timeout must be a positive duration such as 10s, not %v", timeout))
	}
	type outcome struct {
		res checkResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		if testOnlyCheckHang != nil {
			testOnlyCheckHang()
		}
		listed := startScan(opt)
		state, err := readStateStrict(opt.State)
		if err != nil {
			done <- outcome{err: err}
			return
		}
		rep, err := collectStatus(c.Context, opt, state, listed, now)
		if err != nil {
			done <- outcome{err: err}
			return
		}
		done <- outcome{res: evaluateCheck(rep.Certificates, th, now)}
	}()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(timeout):
		// Whatever hangs (a file on a stalled NFS mount, say) goes with the process.
		return unknown(fmt.Errorf("the check did not finish within %v (--timeout)", timeout))
	}
	if o.err != nil {
		return unknown(o.err)
	}
	fmt.Fprintln(c.App.Writer, o.res.Line)
	for _, line := range o.res.Long {
		fmt.Fprintln(c.App.Writer, line)
	}
	if o.res.State != checkOK {
		return &exitError{code: o.res.State}
	}
	return nil
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "watch stapler work on a throw-away CA, OCSP responder and HAProxy",
		Description: `Shows the whole job on this machine with nothing configured, in a few seconds. In a
temporary directory it mints a CA, starts an OCSP responder on 127.0.0.1 and issues four
certificates (one without a responder, one revoked); starts HAProxy on 127.0.0.1 when it is
installed; runs the real 'stapler run' on them; prints 'stapler status'; and proves with TLS
handshakes that HAProxy staples exactly what stapler wrote. Then it stops everything and
removes the directory. The story goes to stdout, stapler's log to stderr. It reads no
configuration and changes nothing outside the temporary directory.

EXAMPLES:
   stapler demo
   stapler demo --keep         # keep the directory, to look at the files
   stapler demo --no-haproxy   # stop at the files on disk
   stapler demo --haproxy /opt/haproxy-3.2/sbin/haproxy

EXIT STATUS:
   0  everything behaved as it should (the revoked certificate included)
   1  something did not; the message says what`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "keep", Usage: "keep the demo directory and print its path", DisableDefaultText: true},
			&cli.BoolFlag{Name: "no-haproxy", Usage: "do not start HAProxy, even when it is installed", DisableDefaultText: true},
			&cli.StringFlag{Name: "haproxy", Usage: "HAProxy `BINARY` to run", DefaultText: "haproxy on PATH, else /usr/sbin/haproxy"},
		},
		Action: demoAction,
	}
}

func demoAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError(fmt.Errorf("demo takes no arguments, not %q", c.Args().First()), "see 'stapler demo --help'")
	}
	logger, err := newLogger(c.App.ErrWriter, "text", "info")
	if err != nil {
		return usageError(err)
	}
	slog.SetDefault(logger)
	opt := demoOptions{Keep: c.Bool("keep"), NoHAProxy: c.Bool("no-haproxy"), HAProxy: c.String("haproxy")}
	switch {
	case opt.NoHAProxy && opt.HAProxy != "":
		return usageError(errors.New("--haproxy and --no-haproxy contradict each other"))
	case opt.NoHAProxy:
	case opt.HAProxy == "":
		opt.HAProxy = lookHAProxy()
	default:
		if _, err := exec.LookPath(opt.HAProxy); err != nil {
			return usageError(fmt.Errorf("--haproxy %s: %w", opt.HAProxy, err))
		}
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, c.App.Writer, opt); err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	return nil
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print stapler's version",
		Description: `Prints stapler's version (what git describe said when it was packaged, else the module
version, else the VCS revision of a development build) and the Go version it was built with.

EXAMPLES:
   stapler version`,
		Action: func(c *cli.Context) error {
			fmt.Fprintf(c.App.Writer, "stapler %s %s\n", buildVersion(), runtime.Version())
			return nil
		},
	}
}

// packagedVersion is set when packaging/deb.sh builds stapler (-ldflags -X), from git describe.
var packagedVersion string

// buildVersion is stapler's version: the packaged one, else the module version, else the VCS
// revision of a development build.
func buildVersion() string {
	if packagedVersion != "" {
		return packagedVersion
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && (v == "" || v == "(devel)") {
			v = "devel-" + s.Value[:min(12, len(s.Value))]
		}
	}
	return cmp.Or(v, "(devel)")
}

func runAction(c *cli.Context) error {
	opt, err := runOptionsFrom(c)
	if err != nil {
		return err
	}
	if err := setLogger(c, opt); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	now := time.Now()
	if testOnlyNow != nil {
		now = testOnlyNow()
	}
	if f, ok := c.App.ErrWriter.(*os.File); ok && term.IsTerminal(int(f.Fd())) && opt.LogLevel != "error" && opt.LogFormat == "text" {
		opt.Progress = f
	}
	sum, err := run(ctx, opt, now)
	if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	if !sum.ok() {
		return &exitError{code: exitFailed}
	}
	return nil
}
