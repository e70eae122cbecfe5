package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// manPage renders stapler(8) in roff from the commands and flags themselves: each command's
// synopsis, its description as --help prints it (examples and exit statuses included), and
// its options, so that the man page cannot say something else than --help. (urfave/cli's own
// ToMan leaves the descriptions out.)
func manPage(app *cli.App) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH STAPLER 8 \"\" \"stapler %s\" \"System Administration\"\n", roffEscape(buildVersion()))
	b.WriteString(".SH NAME\nstapler \\- " + roffEscape(app.Usage) + "\n.SH SYNOPSIS\n")
	var visible []*cli.Command
	for _, c := range app.Commands {
		if !c.Hidden {
			visible = append(visible, c)
		}
	}
	for i, c := range visible {
		if i > 0 {
			b.WriteString(".br\n")
		}
		fmt.Fprintf(&b, ".B stapler %s\n[\\fIoptions\\fR]%s\n", c.Name, argsUsage(c))
	}
	b.WriteString(".SH DESCRIPTION\n")
	roffText(&b, app.Description)
	b.WriteString(".SH COMMANDS\n")
	for _, c := range visible {
		fmt.Fprintf(&b, ".SS stapler %s\n%s.\n", c.Name, roffEscape(strings.ToUpper(c.Usage[:1])+c.Usage[1:]))
		if c.Description != "" {
			roffText(&b, c.Description)
		}
		for _, f := range c.Flags {
			name, usage, _ := strings.Cut(f.String(), "\t")
			fmt.Fprintf(&b, ".TP\n\\fB%s\\fR\n%s\n", roffEscape(name), roffEscape(usage))
		}
	}
	b.WriteString(`.SH FILES
.TP
/etc/stapler/stapler.toml
The configuration; every key, with its default, is in /usr/share/doc/stapler/stapler.example.toml.
.TP
/var/lib/stapler/state.json
The state: what stapler knows of each certificate between runs.
.TP
CERT.ocsp, CERT.issuer
The staple HAProxy reads for the certificate file CERT, and the issuer it needs beside it.
.SH SEE ALSO
.BR haproxy (1),
/usr/share/doc/stapler/README.md
`)
	return b.String()
}

// argsUsage is a command's arguments for the synopsis.
func argsUsage(c *cli.Command) string {
	if c.ArgsUsage == "" {
		return ""
	}
	return " " + roffEscape(c.ArgsUsage)
}

// roffText writes text as --help prints it: line for line, in a fixed-width block.
func roffText(b *strings.Builder, text string) {
	b.WriteString(".PP\n.nf\n")
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString(roffLine(line) + "\n")
	}
	b.WriteString(".fi\n")
}

// roffLine escapes a line of text for roff: backslashes, and a leading dot or quote that
// would make it a request.
func roffLine(s string) string {
	s = roffEscape(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func roffEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\e`), "-", `\-`)
}
