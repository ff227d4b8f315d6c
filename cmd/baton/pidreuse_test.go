//go:build linux

package main

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// A drained worker's pid, reused by a new worker within --drain-timeout,
// must not get the drained worker's SIGKILL. The kernel is made to hand the
// pid out again through /proc/sys/kernel/ns_last_pid (root only). Not
// parallel: other tests forking at the same moment would take the pid.
func TestDrainTimeoutSparesANewWorkerWithTheSamePid(t *testing.T) {
	const nsLastPid = "/proc/sys/kernel/ns_last_pid"
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root to write " + nsLastPid + " (forces pid reuse)")
	}
	if f, err := os.OpenFile(nsLastPid, os.O_WRONLY, 0); err != nil {
		t.Skipf("SKIP: %s not writable: %v", nsLastPid, err)
	} else {
		f.Close()
	}
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--ready", "delay:0s", "--drain-timeout", "2s", "--", "sleep", "600")
	b.waitReady()
	// Worker 1 of the first generation, then each try's new worker 1.
	victim := b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == 1 }, 10*time.Second).num("pid")
	for try := 0; try < 5; try++ {
		from := b.log.len()
		b.signal(syscall.SIGTTOU) // drains worker 1; its kill timer runs 2 s
		drainAt := time.Now()
		b.log.waitFrom(t, from, "worker_drained", func(e logEvent) bool { return e.num("pid") == victim }, 10*time.Second)
		from = b.log.len()
		if err := os.WriteFile(nsLastPid, []byte(strconv.Itoa(victim-1)), 0); err != nil {
			t.Fatalf("write %s: %v", nsLastPid, err)
		}
		b.signal(syscall.SIGTTIN)
		ev, _ := b.log.waitFrom(t, from, "worker_ready", func(e logEvent) bool { return e.num("worker") == 1 }, 10*time.Second)
		if ev.num("pid") != victim {
			t.Logf("try %d: another process took pid %d (the new worker is %d); again", try, victim, ev.num("pid"))
			victim = ev.num("pid")
			continue
		}
		if time.Since(drainAt) >= 2*time.Second {
			t.Logf("try %d: the new worker came up after the drain timeout; again", try)
			continue
		}
		// Past the drained worker's deadline, with a margin: the kill must
		// not come.
		left := time.Until(drainAt.Add(2*time.Second + 500*time.Millisecond))
		if kill, _ := b.log.tryWaitFrom(from, "worker_drain_timeout", nil, left); kill != nil {
			t.Fatalf("the drain timeout of the old worker %d fired at the new one: %v", victim, kill)
		}
		if !alive(victim) {
			t.Fatalf("the new worker %d (reused pid) is dead", victim)
		}
		return
	}
	t.Skip("SKIP: could not get the pid reused in 5 tries (other processes forking)")
}
