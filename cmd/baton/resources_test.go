//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
	"github.com/baton-sh/baton/supervisor/tasks"
)

// pidsCgroup makes a child cgroup of this process's own in the pids
// hierarchy (v1 or v2, found from /proc/self/cgroup and mountinfo), with
// pids.max set to max; removed at cleanup once empty. It skips, saying
// why, without root or a pids controller.
func pidsCgroup(t *testing.T, max int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a pids cgroup")
	}
	parent, ok := tasks.Dir()
	if !ok {
		t.Skip("no pids cgroup controller on this machine")
	}
	dir := filepath.Join(parent, fmt.Sprintf("baton-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a pids cgroup under %s: %v", parent, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pids.max")); err != nil {
		os.Remove(dir)
		t.Skipf("cgroup %s has no pids.max (pids controller not enabled there)", dir)
	}
	t.Cleanup(func() {
		for i := 0; i < 100; i++ {
			if os.Remove(dir) == nil || os.IsNotExist(os.Remove(dir)) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	setPidsMax(t, dir, max)
	return dir
}

func setPidsMax(t *testing.T, dir string, max int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(strconv.Itoa(max)), 0); err != nil {
		t.Fatal(err)
	}
}

func pidsCurrent(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "pids.current"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// batonIn starts baton run ARGS inside cgroup dir from its first instruction.
func batonIn(t *testing.T, dir string, args ...string) *baton {
	t.Helper()
	script := `echo $$ > "$0/cgroup.procs" && exec "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, dir, bin("baton"), "run", "--log-format", "json"}, args...)...)
	return startBatonCmd(t, cmd, nil)
}

// Tight pids.max: an upgrade, TTIN and baton scale that would not fit are
// refused in one line naming the numbers, and the serving master never
// aborts (it used to, for want of a thread: runtime/cgo: pthread_create
// failed, SIGABRT, its workers with it). A start that would not fit is
// refused the same way.
func TestTightPidsMax(t *testing.T) {
	dir := pidsCgroup(t, 200)
	addr := freeAddr(t)
	b := batonIn(t, dir, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	var answered atomic.Int64
	load := startLoad(t, loadgen.Config{Network: "tcp", Addr: addr, Clients: 2, ReleaseHeader: "Hello-Generation",
		Duration: 60 * time.Second, MaxRequests: 2_000_000, Timeout: 10 * time.Second,
		OnResponse: func([]byte) { answered.Add(1) }})
	// The workers add OS threads as the load starts: measured at once, the
	// count grew into the margin below and a worker died for want of a
	// thread (1 run in 6, failed requests). Measure it once steady.
	used := steadyTasks(t, dir, &answered)
	// Room for a few tasks more, far from a second generation's worth.
	setPidsMax(t, dir, used+4)
	for i := 0; i < 5; i++ {
		code, out := b.ctl(t, "reload")
		if code != 2 || !strings.Contains(out, "pids.max") || !strings.Contains(out, "tasks") {
			t.Fatalf("reload %d under pids.max %d (%d in use): exit %d, want 2 (refused) naming pids.max:\n%s", i, used+4, used, code, out)
		}
		if i == 0 {
			t.Logf("refusal: %s", strings.TrimSpace(lastLine(out)))
		}
		if body := mustGet(t, addr, "/"); !strings.HasPrefix(body, "hello") {
			t.Fatalf("not serving after refused reload %d: %q", i, body)
		}
	}
	code, out := b.ctl(t, "scale", "40")
	if code == 0 || !strings.Contains(out, "pids.max") {
		t.Fatalf("scale 40 under a tight pids.max: exit %d, want a refusal naming pids.max:\n%s", code, out)
	}
	from := b.log.len()
	syscall.Kill(b.pid, syscall.SIGTTIN)
	for i := 0; i < 10; i++ {
		syscall.Kill(b.pid, syscall.SIGTTIN)
	}
	b.log.waitFrom(t, from, "worker_count_unchanged", func(e logEvent) bool { return e.str("limit") == tasks.LimitPidsMax }, 10*time.Second)
	if res := load.finish(); res.Failures() != 0 {
		t.Fatalf("failed requests: %s", res)
	}
	if n := b.log.count("master_exited"); n != 0 || b.log.count("keeper_exiting") != 0 {
		t.Fatalf("a master exited under the tight limit; log:\n%s", b.log.dump())
	}
	b.signal(syscall.SIGTERM)
	if code := b.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("stop exited %d", code)
	}

	// A start that cannot fit: 200 workers under pids.max 60.
	dir2 := pidsCgroup(t, 60)
	var buf bytes.Buffer
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir2, bin("baton"), "run",
		"-l", freeAddr(t), "-w", "200", "--", bin("hello"))
	cmd.Stdout, cmd.Stderr = &buf, &buf
	// The refusal is baton's one line (the keeper may log its start before).
	if code := runBounded(t, cmd, buf.String); code != 1 || !strings.Contains(lastLine(buf.String()), "pids.max") ||
		strings.Count(buf.String(), "baton: ") != 1 {
		t.Fatalf("-w 200 under pids.max 60: exit %d, want 1 and one line naming pids.max:\n%s", code, buf.String())
	}
	t.Logf("start refusal: %s", lastLine(buf.String()))
}

// steadyTasks waits until the load has had 200 answers, then until the
// cgroup's task count has held still for a second while the load goes on
// answering, and returns it; it fails the test after 30 s.
func steadyTasks(t *testing.T, dir string, answered *atomic.Int64) int {
	t.Helper()
	eventually(t, 30*time.Second, "200 answers to the load", func() bool { return answered.Load() >= 200 })
	const quiet = time.Second
	deadline := time.Now().Add(30 * time.Second)
	n, since, sinceAnswers := pidsCurrent(t, dir), time.Now(), answered.Load()
	for time.Since(since) < quiet || answered.Load() == sinceAnswers {
		if time.Now().After(deadline) {
			t.Fatalf("tasks in %s not steady under load after 30 s: %d now, %d answers", dir, n, answered.Load())
		}
		time.Sleep(10 * time.Millisecond)
		if m := pidsCurrent(t, dir); m != n {
			n, since, sinceAnswers = m, time.Now(), answered.Load()
		}
	}
	return n
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
