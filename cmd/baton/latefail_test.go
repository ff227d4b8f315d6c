//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad input that used to be found only after workers had started (or never,
// until a crash dump): refused before anything starts, in one line, with
// nothing left behind.
func TestBadInputFoundBeforeAnythingStarts(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args func(dir string) []string
		want string
	}{
		{"pid file is a directory", func(dir string) []string {
			os.Mkdir(filepath.Join(dir, "app.pid"), 0o755)
			return []string{"--pid-file", filepath.Join(dir, "app.pid"), "--", bin("hello")}
		}, `--pid-file "` + "DIR" + `/app.pid": is a directory`},
		{"more workers than one master can wait on", func(string) []string {
			return []string{"--workers", "100000", "--", bin("hello")}
		}, "--workers 100000: want at most"},
		{"more workers than the open-file limit holds", func(string) []string {
			// sh lowers the limit for baton alone.
			return []string{"--workers", "200", "--worker-output", "tagged", "--", bin("hello")}
		}, "ulimit -n 256"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := append([]string{"-c", `ulimit -n 256; exec "$0" "$@"`, bin("baton"), "run", "--log-format", "json",
				"-l", "unix://" + filepath.Join(dir, "app.sock"), "--control", filepath.Join(dir, "ctl.sock")}, c.args(dir)...)
			var out strings.Builder
			cmd := exec.Command("/bin/sh", args...)
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			ee, _ := err.(*exec.ExitError)
			if ee == nil || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2; output:\n%s", err, out.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			want := strings.ReplaceAll(c.want, "DIR", dir)
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "baton: ") || !strings.Contains(lines[0], want) {
				t.Fatalf("want one line with %q, got:\n%s", want, out.String())
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "app.pid" {
					t.Errorf("left behind: %s", e.Name())
				}
			}
		})
	}
}

// A new master that cannot open --log-file (it became a directory since
// the first start): "baton reload" says so, not "exit status 2", and the
// old generation keeps serving.
func TestNewMasterFailureReachesReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "baton.log")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "--log-file", logFile, "--", bin("hello"))
	eventually(t, 20*time.Second, "the first generation to serve", func() bool {
		code, out := b.ctl(t, "status")
		return code == 0 && strings.Contains(out, "serving")
	})
	t.Cleanup(func() {
		// The log is in the file, where the harness cannot see the pids.
		b.signal(15)
		b.waitExit(20 * time.Second)
	})
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(logFile, 0o755); err != nil {
		t.Fatal(err)
	}
	code, out := b.ctl(t, "reload")
	if code != 1 || !strings.Contains(out, "--log-file") || !strings.Contains(out, "is a directory") {
		t.Fatalf("reload with an unopenable --log-file: exit %d, want 1 naming --log-file and the cause:\n%s", code, out)
	}
	if g := field(mustGet(t, addr, "/"), "generation"); g != "1" {
		t.Fatalf("after the failed upgrade generation %s serves, want 1", g)
	}
}
