//go:build linux

package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// probeStopping connects n times, one after another, while baton stops with
// a request in flight: every new client is refused (or served) at once,
// none is parked in a backlog nobody accepts from.
func probeStopping(t *testing.T, addr string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		c := &loadgen.Client{Network: "tcp", Addr: addr, Timeout: 3 * time.Second}
		start := time.Now()
		_, _, err := c.Get("/")
		c.Close()
		took := time.Since(start)
		kind := "served"
		if err != nil {
			kind = loadgen.Classify(err)
		}
		if took > time.Second || (kind != "served" && kind != loadgen.Refused && kind != loadgen.Reset) {
			t.Fatalf("client %d arriving during the stop: %s after %s (%v), want served or refused at once", i, kind, took.Round(time.Millisecond), err)
		}
	}
}

// A stop with a slow request in flight: new clients are refused at once
// while the request completes, through a signal and through baton stop.
func TestStopRefusesNewConnectionsAtOnce(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"signal", "baton-stop"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			addr := freeAddr(t)
			b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
			b.waitReady()
			slow := inFlight(addr, 3000)
			b.waitAccepted(t, 1)
			from := b.log.len()
			stopped := make(chan int, 1)
			if how == "signal" {
				b.signal(syscall.SIGTERM)
			} else {
				go func() { code, _ := b.ctl(t, "stop", "--timeout", "20s"); stopped <- code }()
			}
			b.log.waitFrom(t, from, "master_stopping", nil, 5*time.Second)
			probeStopping(t, addr, 5)
			if got := <-slow; !strings.HasPrefix(got, "hello") {
				t.Fatalf("in-flight request during the stop: %q", got)
			}
			if code := b.waitExit(20 * time.Second); code != 0 {
				t.Fatalf("exit %d after stop", code)
			}
			if how == "baton-stop" {
				if code := <-stopped; code != 0 {
					t.Fatalf("baton stop exited %d", code)
				}
			}
		})
	}
}

// A first generation that fails to start (worker 1 exits before it is
// ready) while worker 0 serves a slow request: new clients are refused at
// once while it completes, and baton exits 1.
func TestFailedFirstStartRefusesNewConnections(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, "server")
	body := "#!/bin/sh\nif [ \"$BATON_WORKER\" = 1 ]; then sleep 1.5; echo 'worker 1: cannot start' >&2; exit 1; fi\nexec " + bin("hello") + "\n"
	if err := writeExecutable(script, []byte(body)); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", script)
	b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == 0 }, 10*time.Second)
	slow := inFlight(addr, 3000)
	eventually(t, 5*time.Second, "the slow request to be accepted", func() bool {
		ev := b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == 0 }, time.Second)
		return countSockets(ev.num("pid")) > 1
	})
	b.log.wait(t, "generation_failed", nil, 10*time.Second)
	probeStopping(t, addr, 5)
	if got := <-slow; !strings.HasPrefix(got, "hello") {
		t.Fatalf("in-flight request during the failed start: %q", got)
	}
	if code := b.waitExit(20 * time.Second); code != 1 {
		t.Fatalf("exit %d after a failed first start, want 1", code)
	}
}

// A stop during a blue-green bake (users already switched to the
// candidate, which is not promoted yet): both masters refuse new clients
// at once, each on its own socket in the group, and a request in flight
// on the candidate completes. Before, the candidate's socket stayed
// listening (clients parked, then reset), and the old master's exit
// SIGKILLed the candidate master (tableflip ends a child that has not
// said ready), its workers and their requests with it. And a stop is no
// failure: the candidate stops cleanly (it used to exit 1, "stopped by
// SIGTERM while starting", which the keeper logged when it reaped it).
func TestStopDuringBlueGreenBake(t *testing.T) {
	t.Parallel()
	b, addr, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--bake", "20s")
	writeEnv(t, envFile, "HELLO_TAG=v2\n")
	from := b.log.len()
	reloadAsync(b)
	b.log.waitFrom(t, from, "rollout_switched", nil, 20*time.Second)
	slow := inFlight(addr, 3000)
	b.waitAccepted(t, 2)
	from = b.log.len()
	b.signal(syscall.SIGTERM)
	b.log.waitFrom(t, from, "master_stopping", func(e logEvent) bool { return e.num("generation") == 2 }, 5*time.Second)
	b.log.waitFrom(t, from, "listeners_refused", func(e logEvent) bool { return e.num("generation") == 2 }, 5*time.Second)
	probeStopping(t, addr, 5)
	if got := <-slow; field(got, "generation") != "2" {
		t.Fatalf("in-flight request on the candidate during the stop: %q", got)
	}
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after stop", code)
	}
	for _, e := range b.log.all()[from:] {
		if e.str("event") == "master_exited" && e.num("status") != 0 {
			t.Fatalf("master %d exited with status %d during the stop", e.num("master_pid"), e.num("status"))
		}
	}
	for gen := 1; gen <= 2; gen++ {
		b.log.waitFrom(t, from, "master_stopped", func(e logEvent) bool { return e.num("generation") == gen }, time.Second)
	}
}
