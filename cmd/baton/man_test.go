//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The baton make build ships leaves urfave/cli's man page generator out
// (man.go says why): its `baton man` says so in one line and fails; a
// plain go build, which make docs uses, prints the page.
func TestManPageBuilds(t *testing.T) {
	t.Parallel()
	code, lines, out := runBaton(t, nil, "man")
	if code != 1 || len(lines) != 1 || !strings.Contains(lines[0], "urfave_cli_no_docs") || !strings.Contains(lines[0], "make docs") {
		t.Errorf("baton man (make build's tags): exit %d, want 1 and one line naming the tag and make docs:\n%s", code, out)
	}

	docs := filepath.Join(t.TempDir(), "baton-docs")
	if b, err := exec.Command(goTool(), "build", "-o", docs, ".").CombinedOutput(); err != nil {
		t.Fatalf("plain go build: %v\n%s", err, b)
	}
	cmd := exec.Command(docs, "man")
	var page strings.Builder
	cmd.Stdout, cmd.Stderr = &page, os.Stderr
	if code := runBounded(t, cmd, page.String); code != 0 || !strings.HasPrefix(page.String(), ".nh\n.TH baton 1") || !strings.Contains(page.String(), "--listen") {
		t.Errorf("baton man (plain go build): exit %d, page starts %.80q", code, page.String())
	}
}
