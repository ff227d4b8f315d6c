//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/harness"
)

// Signals at the first instants of a service's life (issue: a deploy step,
// an autoscaler or logrotate finds the pid file before the service is
// ready). Each signal kind is sent at several instants after the pid file
// appears, to the keeper (whose pid the file names); the kinds a terminal or
// logrotate send straight to a process also go to the first master the
// moment it exists. The service must end up serving (an upgrade asked for
// early is carried out: generation 2), or stopped cleanly for a stop, and
// no baton process may be left stopped (state T).
func TestSignalsAtStart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts baton 40 times")
	}
	delays := []time.Duration{0, 1 * time.Millisecond, 4 * time.Millisecond, 15 * time.Millisecond, 60 * time.Millisecond}
	kinds := []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1,
		syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT}
	for _, sig := range kinds {
		t.Run(strings.TrimPrefix(sigNameOf(sig), "SIG"), func(t *testing.T) {
			for _, d := range delays {
				signalAtStart(t, sig, d)
			}
		})
	}
}

func sigNameOf(sig syscall.Signal) string {
	return map[syscall.Signal]string{syscall.SIGHUP: "SIGHUP", syscall.SIGUSR2: "SIGUSR2", syscall.SIGTTIN: "SIGTTIN",
		syscall.SIGTTOU: "SIGTTOU", syscall.SIGUSR1: "SIGUSR1", syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT",
		syscall.SIGQUIT: "SIGQUIT"}[sig]
}

func signalAtStart(t *testing.T, sig syscall.Signal, delay time.Duration) {
	t.Helper()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "app.pid")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--pid-file", pidFile, "--", bin("hello"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(pidFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid file after 10 s:\n%s", b.log.dump())
		}
		time.Sleep(200 * time.Microsecond)
	}
	time.Sleep(delay)
	syscall.Kill(b.pid, sig)
	direct := sig == syscall.SIGUSR1 || sig == syscall.SIGUSR2 || sig == syscall.SIGTTIN || sig == syscall.SIGTTOU
	if direct {
		// The first master, the moment the keeper has forked it.
		for time.Now().Before(deadline) {
			if kids := harness.Children(b.pid); len(kids) > 0 {
				syscall.Kill(kids[0], sig)
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	what := fmt.Sprintf("%s %s after the pid file", sigNameOf(sig), delay)
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
		if code := b.waitExit(20 * time.Second); code != 0 {
			t.Fatalf("%s: baton exited %d, want a clean stop (0); log:\n%s", what, code, b.log.dump())
		}
		return
	case syscall.SIGHUP, syscall.SIGUSR2:
		// The upgrade asked for early is carried out once generation 1 serves.
		b.log.wait(t, "handover_complete", nil, 30*time.Second)
	default:
		if _, i := b.log.tryWaitFrom(0, "generation_ready", nil, 20*time.Second); i < 0 {
			t.Fatalf("%s: not ready in 20 s; processes: %s; log:\n%s", what, procStates(b.pid), b.log.dump())
		}
	}
	checkNotStopped(t, what, b)
	if body, err := get("tcp", addr, "/"); err != nil || !strings.HasPrefix(body, "hello") {
		t.Fatalf("%s: not serving: %q %v; log:\n%s", what, body, err, b.log.dump())
	}
	b.signal(syscall.SIGTERM)
	if code := b.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("%s: stop exited %d; log:\n%s", what, code, b.log.dump())
	}
}

// checkNotStopped fails if the keeper or any master or worker the log names
// is in state T (stopped).
func checkNotStopped(t *testing.T, what string, b *baton) {
	t.Helper()
	for _, pid := range b.pids() {
		if st, _, err := procStat(pid); err == nil && (st == 'T' || st == 't') {
			t.Fatalf("%s: process %d left stopped (state %c); log:\n%s", what, pid, st, b.log.dump())
		}
	}
}

// procStates describes pid and its descendants: pid, state, blocked and
// pending signal masks (for a failure's message).
func procStates(pid int) string {
	var out []string
	var walk func(int)
	walk = func(p int) {
		st, _, _ := procStat(p)
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		var masks []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "SigBlk") || strings.HasPrefix(l, "ShdPnd") || strings.HasPrefix(l, "SigPnd") {
				masks = append(masks, strings.Join(strings.Fields(l), ""))
			}
		}
		out = append(out, fmt.Sprintf("%d %c %s", p, st, strings.Join(masks, " ")))
		for _, c := range harness.Children(p) {
			walk(c)
		}
	}
	walk(pid)
	return strings.Join(out, "; ")
}

// USR1 (logrotate) during an upgrade whose workers take 1.5 s to install
// their handlers: the upgrade still takes over (it used to roll back, the
// starting workers killed by USR1's default action); then the same for a
// crashed worker's replacement while it starts. 0 failed requests.
func TestUSR1DuringUpgradeAndRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "exec "+bin("hello"))
	release(t, dir, "slow", "HELLO_STARTUP_MS=1500 exec "+bin("hello"))
	pointCurrent(t, dir, "v1")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--chdir", filepath.Join(dir, "current"), "--", "./server")
	b.waitReady()
	load := newLoad(t, addr, 4)
	pointCurrent(t, dir, "slow")
	res := reloadAsync(b)
	logrotate := func(until func() bool) int {
		n := 0
		for ; n < 40 && !until(); n++ {
			syscall.Kill(b.pid, syscall.SIGUSR1)
			time.Sleep(100 * time.Millisecond)
		}
		return n
	}
	var r [2]any
	sent := logrotate(func() bool {
		select {
		case r = <-res:
			return true
		default:
			return false
		}
	})
	if r[0] == nil {
		r = <-res
	}
	if r[1].(int) != 0 {
		t.Fatalf("reload with %d USR1s during it exited %d: %s\nlog:\n%s", sent, r[1], r[0], b.log.dump())
	}
	// A crashed worker's replacement, starting for 1.5 s, gets USR1s too.
	from := b.log.len()
	gen2 := b.workerPids(2)
	if len(gen2) == 0 {
		t.Fatalf("no generation 2 workers; log:\n%s", b.log.dump())
	}
	syscall.Kill(gen2[0], syscall.SIGTERM) // it exits after its requests: a crash that fails none
	b.log.waitFrom(t, from, "worker_started", func(e logEvent) bool { return e.num("generation") == 2 }, 10*time.Second)
	replaced := false
	logrotate(func() bool {
		_, i := b.log.tryWaitFrom(from, "worker_ready", func(e logEvent) bool { return e.num("generation") == 2 }, time.Millisecond)
		replaced = i >= 0
		return replaced
	})
	if !replaced {
		b.log.waitFrom(t, from, "worker_ready", func(e logEvent) bool { return e.num("generation") == 2 }, 10*time.Second)
	}
	if n := b.log.count("worker_crashed"); n != 1 {
		t.Fatalf("%d unexpected worker exits, want only the one this test killed; log:\n%s", n, b.log.dump())
	}
	if lr := load.finish(); lr.Failures() != 0 {
		t.Fatalf("failed requests: %s", lr)
	}
}
