//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A pid file left by a crash names a process that runs now but is not
// baton: 1 (in a container, its init) or any unrelated pid after a reboot.
// baton replaces it with a log line; a second start while the keeper holds
// it is refused in one line; the stop removes it.
func TestStalePIDFileNamingALiveProcess(t *testing.T) {
	t.Parallel()
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	for name, stale := range map[string]int{"init": 1, "unrelated": sleeper.Process.Pid} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pidFile := filepath.Join(t.TempDir(), "app.pid")
			if err := os.WriteFile(pidFile, []byte(strconv.Itoa(stale)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			addr := freeAddr(t)
			b := startBaton(t, nil, "-l", addr, "--pid-file", pidFile, "--", bin("hello"))
			b.waitReady()
			ev := b.log.wait(t, "pid_file_stale", nil, 5*time.Second)
			if ev.num("stale_pid") != stale || ev.num("keeper_pid") != b.pid {
				t.Fatalf("stale pid file event %v, want stale_pid %d from keeper %d", ev, stale, b.pid)
			}
			if got, _ := os.ReadFile(pidFile); strings.TrimSpace(string(got)) != strconv.Itoa(b.pid) {
				t.Fatalf("pid file %q, want the keeper %d", got, b.pid)
			}
			// A second start of the same service: one line, exit 2, and
			// the running one untouched.
			code, lines, out := runBaton(t, nil, "run", "-l", freeAddr(t), "--pid-file", pidFile, "--", bin("hello"))
			want := "held by a running baton keeper (pid " + strconv.Itoa(b.pid) + ")"
			if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], want) {
				t.Fatalf("second start: exit %d, want 2 and one line with %q:\n%s", code, want, out)
			}
			if got, _ := os.ReadFile(pidFile); strings.TrimSpace(string(got)) != strconv.Itoa(b.pid) {
				t.Fatalf("pid file after the refused start %q, want %d", got, b.pid)
			}
			mustGet(t, addr, "/")
			b.signal(syscall.SIGTERM)
			if code := b.waitExit(20 * time.Second); code != 0 {
				t.Fatalf("exit %d after stop", code)
			}
			if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
				t.Fatalf("pid file left after stop: %v", err)
			}
		})
	}
}

// baton runs in a pid namespace of its own (a container whose /run, here a
// temporary directory, the host shares). From the host, status and stop
// work through the control socket, and stop waits for the container's
// keeper, not for whatever the host runs under the same numbers: as PID 1
// ("keeper 1" is the host's init) and below a shell that is PID 1.
func TestStopFromAnotherPidNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root for unshare --pid --mount-proc")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("SKIP: unshare (util-linux) not installed")
	}
	t.Parallel()
	for name, shell := range map[string]bool{"keeper-is-pid-1": false, "keeper-below-a-shell": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addr := freeAddr(t)
			pidFile := filepath.Join(t.TempDir(), "app.pid")
			run := []string{bin("baton"), "run", "--log-format", "json", "-l", addr, "-w", "2", "--pid-file", pidFile, "--", bin("hello")}
			args := append([]string{"--pid", "--fork", "--mount-proc"}, run...)
			if shell {
				// The shell stays PID 1; the keeper is a later pid there.
				args = []string{"--pid", "--fork", "--mount-proc", "sh", "-c", strings.Join(run, " ") + "; exit $?"}
			}
			b := launch(t, exec.Command(unshare, args...), nil)
			endUnshareOnCleanup(t, b)
			b.waitReady()
			if code, out := b.ctl(t, "status"); code != 0 || !strings.Contains(out, "serving") {
				t.Fatalf("status from the host: exit %d:\n%s", code, out)
			}
			start := time.Now()
			code, out := b.ctl(t, "stop", "--timeout", "10s")
			if code != 0 || !strings.Contains(out, "stopped") {
				t.Fatalf("stop from the host: exit %d after %s:\n%s", code, time.Since(start).Round(time.Millisecond), out)
			}
			if code := b.waitExit(10 * time.Second); code != 0 {
				t.Fatalf("unshare exited %d, want 0", code)
			}
			if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
				t.Fatalf("pid file left after stop: %v", err)
			}
		})
	}
}

// baton verify run on the host of a pid namespace (a container's) against
// a baton inside it: the old master's pid in its answer is a number
// there, which verify translates before it waits for that master's exit.
// Before, it waited on that number here (a kernel thread, or init, that
// never exits) until the run ended, and never saw the old generation go.
func TestVerifyFromAnotherPidNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root for unshare --pid --mount-proc")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("SKIP: unshare (util-linux) not installed")
	}
	t.Parallel()
	addr := freeAddr(t)
	b := launch(t, exec.Command(unshare, "--pid", "--fork", "--mount-proc",
		bin("baton"), "run", "--log-format", "json", "-l", addr, "-w", "2", "--", bin("hello")), nil)
	endUnshareOnCleanup(t, b)
	b.waitReady()
	code, rep, errOut := verifyJSON(t, append([]string{"--url", "http://" + addr + "/", "--control", b.control,
		"--reloads", "1", "--version-header", "Hello-Generation"}, verifyLight...)...)
	if code != 0 || !rep.Verified || len(rep.Upgrades) != 1 {
		t.Fatalf("exit %d, verified %v, problems %q, upgrades %+v, stderr %q", code, rep.Verified, rep.Problems, rep.Upgrades, errOut)
	}
	if u := rep.Upgrades[0]; u.OldGoneMS == nil || *u.OldGoneMS > 10_000 {
		t.Fatalf("upgrade %+v: want the old generation seen gone, well before the run's end", u)
	}
}

// A pid file that names no pid at all (garbage, a torn write) is stale
// too: replaced with the same log line, saying what it held. Before, it
// was replaced without a word.
func TestGarbagePIDFileIsReplacedWithALogLine(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{"text": "not-a-pid\n", "torn": "12ab"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pidFile := filepath.Join(t.TempDir(), "app.pid")
			if err := os.WriteFile(pidFile, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			b := startBaton(t, nil, "-l", freeAddr(t), "--pid-file", pidFile, "--", bin("hello"))
			ev := b.log.wait(t, "pid_file_stale", nil, 10*time.Second)
			if ev.str("content") != strings.TrimSpace(content) || ev.str("pid_file") != pidFile {
				t.Fatalf("stale pid file event %v, want content %q and pid_file %s", ev, strings.TrimSpace(content), pidFile)
			}
			b.waitReady()
			if got, _ := os.ReadFile(pidFile); strings.TrimSpace(string(got)) != strconv.Itoa(b.pid) {
				t.Fatalf("pid file %q, want the keeper %d", got, b.pid)
			}
			b.signal(syscall.SIGTERM)
			if code := b.waitExit(20 * time.Second); code != 0 {
				t.Fatalf("exit %d after stop", code)
			}
		})
	}
}
