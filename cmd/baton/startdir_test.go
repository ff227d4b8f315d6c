//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// baton started from inside releases/1 with relative paths everywhere
// (argv[0], --pid-file, --chdir, --env-file) and no $PWD: once the deploy
// tool prunes that directory, upgrades still work; without --chdir the
// workers' directory was that one, and the refusal names it.
func TestUpgradeAfterTheStartDirectoryIsPruned(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "HELLO_TAG=$APP_TAG exec "+bin("hello"))
	pointCurrent(t, dir, "v1")
	start := filepath.Join(dir, "releases", "1")
	if err := os.MkdirAll(start, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "app.env"), []byte("APP_TAG=tagged\n"), 0o644)
	relBin, err := filepath.Rel(start, bin("baton"))
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	run := func(chdir bool) *baton {
		args := []string{"run", "--log-format", "json", "-l", addr, "--pid-file", "../../app.pid", "--env-file", "../../app.env"}
		if chdir {
			args = append(args, "--chdir", "../../current", "--", "./server")
		} else {
			args = append(args, "--", bin("hello"))
		}
		cmd := exec.Command(bin("baton"), args...)
		cmd.Args[0] = relBin
		cmd.Dir = start
		return startBatonCmd(t, cmd, []string{"PWD="})
	}
	b := run(true)
	b.waitReady()
	if err := os.RemoveAll(start); err != nil {
		t.Fatal(err)
	}
	if code, out := b.ctl(t, "reload"); code != 0 {
		t.Fatalf("reload after the start directory was pruned: exit %d:\n%s", code, out)
	}
	body := mustGet(t, addr, "/")
	if field(body, "generation") != "2" || field(body, "tag") != "tagged" {
		t.Fatalf("after reload served %q, want generation 2 with the env file's tag", body)
	}
	if pid, err := os.ReadFile(filepath.Join(dir, "app.pid")); err != nil || strings.TrimSpace(string(pid)) == "" {
		t.Fatalf("pid file beside the releases: %q, %v", pid, err)
	}
	b.ctl(t, "stop")
	b.waitExit(20e9)

	// No --chdir: the workers' directory was the pruned one.
	os.MkdirAll(start, 0o755)
	b = run(false)
	b.waitReady()
	os.RemoveAll(start)
	code, out := b.ctl(t, "reload")
	if code != 2 || !strings.Contains(out, "pre-flight") || !strings.Contains(out, start) {
		t.Fatalf("reload without --chdir after the start directory went: exit %d, want 2 naming %s:\n%s", code, start, out)
	}
}
