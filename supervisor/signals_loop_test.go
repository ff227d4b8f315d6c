//go:build linux

package supervisor

import (
	"strings"
	"syscall"
	"testing"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/tasks"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// An upgrade asked for while the first generation boots is held, not
// refused, and starts once the generation is ready; a second request
// merges into it.
func TestUpgradeHeldWhileFirstGenerationBoots(t *testing.T) {
	l := newLoop(t, testConfig(2))
	l.signal(syscall.SIGUSR2)
	l.signal(syscall.SIGHUP)
	if l.m.up.running || l.upg.calls.Load() != 0 {
		t.Fatal("upgrade started before the first generation was ready")
	}
	if l.m.up.queuedAt.IsZero() {
		t.Fatal("upgrade asked for while booting was dropped, not held")
	}
	l.ready(l.proc(0))
	l.ready(l.proc(1))
	if !l.m.up.running || !l.m.up.queuedAt.IsZero() {
		t.Fatalf("held upgrade not started once ready (running %v)", l.m.up.running)
	}
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if l.upg.calls.Load() != 1 {
		t.Fatalf("%d upgrades, want the two requests merged into 1", l.upg.calls.Load())
	}
}

// A stop while booting drops the held upgrade: nothing starts afterwards.
func TestHeldUpgradeDroppedByStop(t *testing.T) {
	l := newLoop(t, testConfig(1))
	l.signal(syscall.SIGUSR2)
	l.signal(syscall.SIGTERM)
	if !l.m.up.queuedAt.IsZero() {
		t.Fatal("held upgrade survived a stop")
	}
	l.exitDrained()
	if !l.m.finished() || l.upg.calls.Load() != 0 {
		t.Fatal("stop while booting did not end the master cleanly")
	}
}

// USR1 reaches ready workers at once; a starting one gets it once it is
// ready (its handler may not be installed yet: USR1's default kills).
func TestUSR1OnlyToReadyWorkers(t *testing.T) {
	l := serving(t, testConfig(2))
	l.exit(l.proc(1), exitStatus{code: 1}) // crash: a replacement starts
	l.advance(backoffMin)
	repl := l.proc(2)
	l.signal(syscall.SIGUSR1)
	if !l.proc(0).got(syscall.SIGUSR1) {
		t.Fatal("ready worker did not get USR1")
	}
	if repl.got(syscall.SIGUSR1) {
		t.Fatal("starting worker got USR1 before it was ready")
	}
	l.ready(repl)
	if !repl.got(syscall.SIGUSR1) {
		t.Fatal("USR1 held for a starting worker not sent once it was ready")
	}
}

// The task limits are read once per upgrade: an old master whose
// pre-flight checks found none tells the new master so, which then does
// not read them again before its spawn, and reads no pids.max hits to
// compare with. Under a limit, and after a --before-upgrade hook (the
// checks ran before it), both are read as before.
func TestTaskLimitsReadOncePerUpgrade(t *testing.T) {
	reads := func(l *loop) (int, int) {
		l.os.mu.Lock()
		defer l.os.mu.Unlock()
		return l.os.headroomReads, l.os.hitsReads
	}
	l := serving(t, testConfig(2))
	h0, hits0 := reads(l)
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatalf("upgrade refused: %s", why)
	}
	h1, hits1 := reads(l)
	if h1-h0 != 1 || hits1 != hits0 {
		t.Fatalf("upgrade with no task limit read the headroom %d times and the hits %d times, want 1 and 0", h1-h0, hits1-hits0)
	}
	if v := l.os.env[envNoTaskLimit]; v != "1" {
		t.Fatalf("%s=%q for the new master, want 1", envNoTaskLimit, v)
	}
	l.upg.results <- errUpgrade
	l.awaitEvent()

	// The new master's side: told there is none, it does not look.
	tight := tasks.Headroom{Left: 0, Max: 10, Current: 10, Source: "pids.max of cgroup /x", Limit: tasks.LimitPidsMax}
	fresh := newLoop(t, testConfig(2))
	fresh.os.headroom = tight
	fresh.m.origin.noTaskLimit = true
	if err := fresh.m.startTasks(2); err != nil {
		t.Fatalf("startTasks after the old master found no limit: %v", err)
	}
	if h, _ := reads(fresh); h != 0 {
		t.Fatalf("startTasks read the headroom %d times, want 0", h)
	}
	fresh.m.origin.noTaskLimit = false
	if err := fresh.m.startTasks(2); err == nil {
		t.Fatal("startTasks with no word from an old master fit 2 workers in 0 tasks")
	}

	// Under a limit the old master reads the hits and says nothing.
	l.os.mu.Lock()
	l.os.headroom = tasks.Headroom{Left: 30, Max: 40, Current: 10, Source: "pids.max of cgroup /x", Limit: tasks.LimitPidsMax}
	l.os.mu.Unlock()
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatalf("upgrade refused with room: %s", why)
	}
	if _, hits := reads(l); hits != hits1+1 {
		t.Fatalf("upgrade under a limit read the hits %d times, want 1", hits-hits1)
	}
	if v := l.os.env[envNoTaskLimit]; v != "" {
		t.Fatalf("%s=%q under a limit, want empty", envNoTaskLimit, v)
	}
}

// Under a tight task limit TTIN and scale are refused, an upgrade is
// refused at pre-flight naming the numbers, and a new master that died
// while the cgroup's limit was hit says so in the reload's reason.
func TestTaskLimits(t *testing.T) {
	cfg := testConfig(2)
	core, logs := observer.New(zap.InfoLevel)
	cfg.Log = zap.New(core)
	l := serving(t, cfg)
	l.os.tree = 5 // every worker's tree, and this master's
	l.os.headroom = tasks.Headroom{Left: 3, Max: 40, Current: 37, Source: "pids.max of cgroup /x", Limit: tasks.LimitPidsMax}
	l.signal(syscall.SIGTTIN)
	if len(l.m.slots) != 2 || l.started() != 2 {
		t.Fatal("TTIN added a worker that does not fit")
	}
	// The refusal names the kind of limit in a field of its own, for
	// tools that must not read the reason's wording.
	unchanged := logs.FilterField(logevent.WorkerCountUnchanged).All()
	if len(unchanged) != 1 || unchanged[0].ContextMap()["limit"] != tasks.LimitPidsMax {
		t.Fatalf("worker_count_unchanged entries %+v, want one with limit %q", unchanged, tasks.LimitPidsMax)
	}
	if _, err := l.m.scale(4); err == nil || !strings.Contains(err.Error(), "pids.max of cgroup /x is 40 with 37 in use, 3 left") {
		t.Fatalf("scale refusal %v", err)
	}
	if why := l.m.requestUpgrade("test", false); !strings.Contains(why, "needs about 5 tasks") || !strings.Contains(why, "3 left") {
		t.Fatalf("upgrade refusal %q", why)
	}
	l.os.headroom = tasks.Headroom{Left: 30, Max: 40, Current: 10, Source: "pids.max of cgroup /x"}
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatalf("upgrade refused with room: %s", why)
	}
	l.os.mu.Lock()
	l.os.hits = 2 // the new master hit the limit
	l.os.mu.Unlock()
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if r := l.m.up.last; r == nil || !strings.Contains(r.Reason, "ran out of tasks: pids.max was hit 2 times") {
		t.Fatalf("reason %+v", l.m.up.last)
	}
}
