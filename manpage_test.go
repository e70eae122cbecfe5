package main

import (
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestManPage: stapler(8) holds every visible command with its description and every flag, as
// --help gives them, and man(1) renders it without a warning.
func TestManPage(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	page := manPage(app)
	for _, c := range app.Commands {
		if c.Hidden {
			if strings.Contains(page, ".SS stapler "+c.Name+"\n") {
				t.Errorf("the hidden command %s is in the man page", c.Name)
			}
			continue
		}
		if !strings.Contains(page, ".SS stapler "+c.Name+"\n") {
			t.Errorf("no section for %s", c.Name)
		}
		for _, line := range strings.Split(c.Description, "\n") {
			if !strings.Contains(page, roffLine(line)+"\n") {
				t.Errorf("%s: the description line %q is missing", c.Name, line)
			}
		}
		for _, f := range c.Flags {
			name, _, _ := strings.Cut(f.String(), "\t")
			if !strings.Contains(page, roffEscape(name)) {
				t.Errorf("%s: the flag %s is missing", c.Name, name)
			}
		}
	}
	man := hapLookTool(t, "man") // man-db: .ci/run installs it
	cmd := exec.Command(man, "--warnings", "-l", "-")
	cmd.Stdin = strings.NewReader(page)
	cmd.Env = append(cmd.Environ(), "MANWIDTH=80")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("man --warnings: %v\n%s", err, stderr.String())
	}
}
