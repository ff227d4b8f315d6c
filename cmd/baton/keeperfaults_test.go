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

	"github.com/baton-sh/baton/internal/harness"
)

// setNofile sets pid's soft RLIMIT_NOFILE with prlimit(1).
func setNofile(t *testing.T, pid, n int) {
	t.Helper()
	out, err := exec.Command("prlimit", "--pid", strconv.Itoa(pid), "--nofile="+strconv.Itoa(n)+":").CombinedOutput()
	if err != nil {
		t.Fatalf("prlimit: %v: %s", err, out)
	}
}

// The keeper one descriptor short of its limit: a reload used to say "ok"
// and the service was gone 1.5 s later (the keeper could not read /proc for
// the new master, ignored it, and exited with the old one). Now the keeper
// draws on its reserve and the reload succeeds; with the limit below even
// the reserve, the new master is refused in the open: the reload fails
// with the reason and the old generation serves on. Never "ok", then dead.
func TestKeeperShortOfDescriptors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to lower another process's RLIMIT_NOFILE with prlimit")
	}
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	load := newLoad(t, addr, 2)

	// One short: every new descriptor fails with EMFILE until the keeper
	// gives one of its reserve back.
	n := fdCount(t, b.pid)
	setNofile(t, b.pid, n)
	code, out := b.ctl(t, "reload")
	if code != 0 {
		t.Fatalf("reload with the keeper at its fd limit (%d): exit %d:\n%s", n, code, out)
	}
	checkServesAfterOldExits(t, b, addr, 2)

	// Far below (3: none can be opened): not even the reserve helps. The
	// new master must hear it.
	setNofile(t, b.pid, 3)
	code, out = b.ctl(t, "reload")
	if code != 1 || !strings.Contains(out, "keeper") || !strings.Contains(out, "too many open files") {
		t.Fatalf("reload with the keeper's fd limit at 3: exit %d, want 1 (rolled back) naming the keeper's EMFILE:\n%s", code, out)
	}
	t.Logf("refusal: %s", strings.TrimSpace(lastLine(out)))
	if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
		t.Fatalf("generation 2 not serving after the refused master: %q", body)
	}
	setNofile(t, b.pid, 1024)
	if code, out := b.ctl(t, "reload"); code != 0 {
		t.Fatalf("reload once the limit is back: exit %d:\n%s", code, out)
	}
	checkServesAfterOldExits(t, b, addr, 3)
	if res := load.finish(); res.Failures() != 0 {
		t.Fatalf("failed requests: %s", res)
	}
}

// checkServesAfterOldExits waits for the previous master to exit and
// checks generation gen still serves then (and the keeper still runs).
func checkServesAfterOldExits(t *testing.T, b *baton, addr string, gen int) {
	t.Helper()
	b.log.wait(t, "previous_master_exited", func(e logEvent) bool { return e.num("generation") == gen }, 20*time.Second)
	time.Sleep(300 * time.Millisecond) // the keeper's exit, if it were to follow, comes within 100 ms
	if !alive(b.pid) {
		t.Fatalf("keeper gone after generation %d took over; log:\n%s", gen, b.log.dump())
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != strconv.Itoa(gen) {
		t.Fatalf("want generation %d serving, got %q", gen, body)
	}
}

// A --before-upgrade hook's background process used to die of SIGPIPE at
// its next line once the old master went away. Now the hook's leftovers
// end with the hook: SIGTERM to its process group, and the master waits
// for them before it exits; one that ignores TERM is SIGKILLed 5 s later.
// The polite one takes half a second to finish on TERM: a master that
// SIGKILLed its hook's group as it exited, a handover (some 20 ms) after
// the TERM, cut that short (and on a loaded machine, a handler that is
// instant but not yet scheduled).
func TestHookLeftoversEndWithTheHook(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, c := range []struct{ name, trap string }{
		{"polite", `trap 'sleep 0.5; echo TERM >> "$F"; exit 0' TERM`},
		{"stubborn", `trap '' TERM`},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, c.name)
			// The leftover writes its pid (whole, by a rename) once its
			// traps are set, and the hook exits only then (or after 10 s):
			// a TERM before the trap would end it by the default action.
			leftover := c.trap + `; trap "echo PIPE >> \"$F\"" PIPE; echo $$ > "$F.tmp" && mv "$F.tmp" "$F.pid"; ` +
				`i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo left-$i || echo EPIPE >> "$F"; sleep 0.1; done`
			hook := `F=` + f + `; export F; sh -c '` + strings.ReplaceAll(leftover, `'`, `'\''`) + `' & ` +
				`i=0; while [ ! -e "$F.pid" ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done; echo hook-done`
			addr := freeAddr(t)
			b := startBaton(t, nil, "-l", addr, "-w", "1", "--before-upgrade", hook, "--", bin("hello"))
			b.waitReady()
			from := b.log.len()
			if code, out := b.ctl(t, "reload"); code != 0 {
				t.Fatalf("reload: %d\n%s", code, out)
			}
			b.log.waitFrom(t, from, "hook_leftovers", nil, 10*time.Second)
			pidb, err := os.ReadFile(f + ".pid")
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(pidb)))
			if err != nil || pid <= 0 {
				t.Fatalf("leftover's pid file: %q", pidb)
			}
			// SIGKILL comes 5 s after the TERM; the rest is the margin of a
			// loaded machine.
			eventually(t, 15*time.Second, "the hook's leftover to end", func() bool { return !alive(pid) })
			got, _ := os.ReadFile(f)
			if strings.Contains(string(got), "PIPE") {
				t.Fatalf("leftover died of a broken pipe: %q", got)
			}
			if c.name == "polite" && !strings.Contains(string(got), "TERM") {
				t.Fatalf("leftover not ended by SIGTERM: %q", got)
			}
			if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
				t.Fatalf("not serving generation 2: %q", body)
			}
		})
	}
}

// An upgrade checks only what it writes: the pid file's directory removed
// (or replaced by a file) after the start no longer refuses every deploy.
func TestUpgradeWithoutPidFileDir(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"removed", "not a directory"} {
		t.Run(kind, func(t *testing.T) {
			run := filepath.Join(t.TempDir(), "run-app")
			os.Mkdir(run, 0o755)
			addr := freeAddr(t)
			b := startBaton(t, nil, "-l", addr, "-w", "1", "--pid-file", filepath.Join(run, "app.pid"), "--", bin("hello"))
			b.waitReady()
			os.RemoveAll(run)
			if kind == "not a directory" {
				os.WriteFile(run, nil, 0o644)
			}
			if code, out := b.ctl(t, "reload"); code != 0 {
				t.Fatalf("reload with the pid file's directory %s: exit %d\n%s", kind, code, out)
			}
			if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
				t.Fatalf("not serving generation 2: %q", body)
			}
		})
	}
}

// baton stop while the keeper is stopped (SIGSTOP) says so within a
// second or two instead of waiting its whole --timeout in silence; the
// keeper continued, it finishes. Then: continued during the wait, the stop
// completes.
func TestStopWithStoppedKeeper(t *testing.T) {
	t.Parallel()
	for _, cont := range []bool{false, true} {
		t.Run("continued="+strconv.FormatBool(cont), func(t *testing.T) {
			b := startBaton(t, nil, "-l", freeAddr(t), "-w", "1", "--", bin("hello"))
			b.waitReady()
			syscall.Kill(b.pid, syscall.SIGSTOP)
			defer syscall.Kill(b.pid, syscall.SIGCONT)
			var out harness.Buffer
			cmd := exec.Command(bin("baton"), "stop", "--control", b.control, "--timeout", "4s")
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var saidAt time.Duration
			for saidAt == 0 && time.Since(start) < 4*time.Second {
				if strings.Contains(out.String(), "does not answer") {
					saidAt = time.Since(start)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if saidAt == 0 || saidAt > 2500*time.Millisecond {
				t.Fatalf("baton stop did not say the keeper does not answer within 2.5 s (%s): %q", saidAt, out.String())
			}
			t.Logf("said after %s", saidAt.Round(10*time.Millisecond))
			if cont {
				syscall.Kill(b.pid, syscall.SIGCONT)
			}
			var err error
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("baton stop did not end")
			}
			code, _ := exitStatus(err)
			if cont && code != 0 || !cont && code != 3 {
				t.Fatalf("baton stop exit %d (continued %v): %s", code, cont, out.String())
			}
			syscall.Kill(b.pid, syscall.SIGCONT)
			if c := b.waitExit(20 * time.Second); c != 0 {
				t.Fatalf("keeper exited %d", c)
			}
		})
	}
}
