//go:build linux

package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// runBaton runs baton to completion and returns its exit code, its stderr
// lines that are not JSON log events, and the whole output.
func runBaton(t *testing.T, cred *syscall.Credential, args ...string) (int, []string, string) {
	t.Helper()
	return runBatonEnv(t, cred, nil, args...)
}

func runBatonEnv(t *testing.T, cred *syscall.Credential, env []string, args ...string) (int, []string, string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin("baton"), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	code := runBounded(t, cmd, out.String)
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
		if l != "" && !strings.HasPrefix(l, "{") {
			lines = append(lines, l)
		}
	}
	return code, lines, out.String()
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() }) // after the parallel subtests, unlike defer

	type tc struct {
		name   string
		args   func(dir string) []string
		code   int
		want   string // the one error line contains this
		asUser bool   // run as nobody (skipped unless root)
	}
	free := freeAddr(t)
	cases := []tc{
		{"unknown flag", func(string) []string { return []string{"run", "--bogus", "--", bin("hello")} }, 2, "-bogus", false},
		{"unknown command", func(string) []string { return []string{"launch"} }, 2, `"launch"`, false},
		{"no command", func(string) []string { return []string{"run", "-l", free} }, 2, "no command given", false},
		{"no arguments", func(string) []string { return nil }, 2, "no command given", false},
		{"bad listen spec", func(string) []string { return []string{"run", "-l", "127.0.0.1:99999", "--", bin("hello")} }, 2, `"127.0.0.1:99999"`, false},
		{"bad scheme", func(string) []string { return []string{"run", "-l", "udp://:53", "--", bin("hello")} }, 2, `"udp"`, false},
		{"bad ready rule", func(string) []string { return []string{"run", "-l", free, "--ready", "sometimes", "--", bin("hello")} }, 2, `"sometimes"`, false},
		{"bad drain signal", func(string) []string {
			return []string{"run", "-l", free, "--drain-signal", "NOPE", "--", bin("hello")}
		}, 2, `"NOPE"`, false},
		{"zero workers", func(string) []string { return []string{"run", "-l", free, "-w", "0", "--", bin("hello")} }, 2, "--workers 0", false},
		{"port in use", func(dir string) []string {
			return []string{"run", "-l", busy.Addr().String(), "--pid-file", filepath.Join(dir, "b.pid"), "--", bin("hello")}
		}, 1, busy.Addr().String() + ": address already in use", false},
		{"port in use after a unix socket", func(dir string) []string {
			return []string{"run", "-l", "unix://" + filepath.Join(dir, "a.sock"), "-l", busy.Addr().String(), "--", bin("hello")}
		}, 1, "address already in use", false},
		{"command not found", func(string) []string { return []string{"run", "-l", free, "--", "no-such-command-baton"} }, 2, `"no-such-command-baton": not found`, false},
		{"command path missing", func(dir string) []string { return []string{"run", "-l", free, "--", filepath.Join(dir, "nope")} }, 2, "no such file", false},
		{"chdir missing", func(dir string) []string {
			return []string{"run", "-l", free, "--chdir", filepath.Join(dir, "gone"), "--", bin("hello")}
		}, 2, "gone", false},
		{"pid file dir missing", func(dir string) []string {
			return []string{"run", "-l", free, "--pid-file", filepath.Join(dir, "no/such/dir/b.pid"), "--", bin("hello")}
		}, 2, "b.pid", false},
		{"worker exits at once", func(dir string) []string {
			return []string{"run", "--log-format", "json", "-l", "unix://" + filepath.Join(dir, "w.sock"), "--pid-file", filepath.Join(dir, "b.pid"), "--", "sh", "-c", "exit 3"}
		}, 1, "exit status 3 before it was ready", false},
		{"worker cannot start", func(dir string) []string {
			// root may enter it, the worker's user may not: only the
			// worker's own chdir fails.
			private := filepath.Join(dir, "private")
			os.Mkdir(private, 0o700)
			return []string{"run", "-l", "unix://" + filepath.Join(dir, "c.sock"), "--user", "nobody", "--chdir", private, "--", bin("hello")}
		}, 1, "worker 0 could not start", false},
		{"IPv6 check without CAP_NET_ADMIN", func(dir string) []string {
			return []string{"run", "-l", "[::1]:1", "--strategy", "blue-green", "--health-check", "tcp", "--", bin("hello")}
		}, 2, "needs CAP_NET_ADMIN", true},
		{"permission denied", func(dir string) []string {
			return []string{"run", "-l", "unix://" + filepath.Join(dir, "p.sock"), "--", bin("hello")}
		}, 1, "permission denied", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if c.name == "worker cannot start" && os.Getuid() != 0 {
				t.Skip("needs root for --user")
			}
			var cred *syscall.Credential
			if c.asUser {
				if os.Getuid() != 0 {
					t.Skip("needs root to run baton as another user")
				}
				os.Chmod(dir, 0o755) // nobody may enter but not create
				cred = &syscall.Credential{Uid: 65534, Gid: 65534}
			}
			// The control socket goes in dir too: it must not be left behind either.
			code, lines, out := runBatonEnv(t, cred, []string{"BATON_CONTROL=" + filepath.Join(dir, "ctl.sock")}, c.args(dir)...)
			if code != c.code {
				t.Errorf("exit code %d, want %d; output:\n%s", code, c.code, out)
			}
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "baton: ") || !strings.Contains(lines[0], c.want) {
				t.Errorf("want one line \"baton: …%s…\", got %q", c.want, lines)
			}
			// The flag at fault is named once, not once per layer.
			for _, f := range []string{"--listen", "--ready", "--drain-signal", "--workers", "--chdir", "--pid-file", "--user"} {
				if len(lines) == 1 && strings.Count(lines[0], f+" ")+strings.Count(lines[0], f+":") > 1 {
					t.Errorf("%s named more than once: %q", f, lines[0])
				}
			}
			for _, bad := range []string{"goroutine ", "panic", "Incorrect Usage", "USAGE:"} {
				if strings.Contains(out, bad) {
					t.Errorf("output contains %q:\n%s", bad, out)
				}
			}
			var left []string
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "private" { // the test's own
					left = append(left, e.Name())
				}
			}
			if len(left) != 0 {
				t.Errorf("left behind in %s: %v", dir, left)
			}
		})
	}
}
