//go:build linux

package supervisor

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// In-process tests of the master's loop through the fake OS seam: no
// processes, no sockets, no log wording. Each runs in milliseconds.

func TestBootReadyServes(t *testing.T) {
	l := newLoop(t, testConfig(3))
	if l.started() != 3 || l.m.phase != phaseBooting {
		t.Fatalf("started %d, phase %d; want 3 starting", l.started(), l.m.phase)
	}
	l.ready(l.proc(0))
	l.ready(l.proc(1))
	if l.m.phase != phaseBooting || l.upg.readies != 0 {
		t.Fatal("serving before every worker was ready")
	}
	l.ready(l.proc(2))
	if l.m.phase != phaseServing || l.upg.readies != 1 {
		t.Fatalf("phase %d, tableflip Ready calls %d; want serving, 1", l.m.phase, l.upg.readies)
	}
	if !slices.ContainsFunc(l.os.manager, func(s string) bool { return strings.Contains(s, "READY=1") }) {
		t.Fatalf("service manager not told READY=1: %q", l.os.manager)
	}
	// The ready timeout of a ready worker is void.
	l.advance(time.Minute)
	if l.m.phase != phaseServing || l.proc(0).got(syscall.SIGTERM) {
		t.Fatal("a ready worker was drained at its ready timeout")
	}
}

func TestBootFailure(t *testing.T) {
	tests := []struct {
		name string
		fail func(l *loop)
		want string // in the error
	}{
		{"exit before ready", func(l *loop) { l.exit(l.proc(1), exitStatus{code: 3}) }, "exited with exit status 3 before it was ready"},
		{"killed after ready", func(l *loop) {
			l.ready(l.proc(1))
			l.exit(l.proc(1), exitStatus{code: -1, signal: syscall.SIGKILL})
		}, "signal SIGKILL while the generation was starting"},
		{"ready timeout", func(l *loop) { l.ready(l.proc(0)); l.advance(5 * time.Second) }, "not ready after 5s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLoop(t, testConfig(3))
			l.m.origin.parentNotify, l.m.origin.parentToken = "@old", "tok" // as a new master
			tt.fail(l)
			if !errors.Is(l.m.bootErr, ErrBootFailed) || !strings.Contains(l.m.bootErr.Error(), tt.want) {
				t.Fatalf("bootErr %v, want ErrBootFailed saying %q", l.m.bootErr, tt.want)
			}
			if l.m.phase != phaseStopping || l.upg.readies != 0 {
				t.Fatalf("phase %d, Ready calls %d: the failed generation went on", l.m.phase, l.upg.readies)
			}
			// Progress reports aside, one failure report with the token.
			var failed []string
			for _, r := range l.os.reports {
				if !strings.Contains(r, reportProgress+"=") {
					failed = append(failed, r)
				}
			}
			if len(failed) != 1 || !strings.Contains(failed[0], reportFailed+"=") || !strings.Contains(failed[0], "tok") {
				t.Fatalf("old master not told: %q", l.os.reports)
			}
			for i := 0; i < 3; i++ {
				if p := l.proc(i); !p.reaped && !p.got(syscall.SIGTERM) {
					t.Fatalf("worker %d not drained", i)
				}
			}
			l.exitDrained()
			if !l.m.finished() {
				t.Fatal("not finished once every worker exited")
			}
			if l.started() != 3 {
				t.Fatalf("%d workers started; a failed boot must not restart any", l.started())
			}
		})
	}
}

func TestBootWorkerCannotStart(t *testing.T) {
	f, upg := newFakeOS(), newFakeUpgrader()
	m := newMaster(testConfig(2), f.sys(), upg, 1)
	f.startErr = errors.New("fork: resource temporarily unavailable")
	l := &loop{t: t, m: m, os: f, upg: upg}
	m.boot()
	l.step()
	if !errors.Is(m.bootErr, ErrBootFailed) || !strings.Contains(m.bootErr.Error(), "could not start") {
		t.Fatalf("bootErr %v", m.bootErr)
	}
	if !m.finished() {
		t.Fatal("boot hangs: no worker, yet not finished")
	}
}

func TestStopWhileBootingIsCleanForFirstMaster(t *testing.T) {
	l := newLoop(t, testConfig(2))
	l.signal(syscall.SIGINT)
	if l.m.bootErr != nil || l.m.phase != phaseStopping {
		t.Fatalf("bootErr %v, phase %d", l.m.bootErr, l.m.phase)
	}
	l.exitDrained()
	if !l.m.finished() {
		t.Fatal("not finished")
	}
}

func TestCrashRestartBackoff(t *testing.T) {
	l := serving(t, testConfig(2))
	crash := func() *fakeProc {
		t.Helper()
		p := l.proc(l.started() - 1)
		if l.m.slots[1].cur == nil || l.m.slots[1].cur.pid != p.pid {
			p = l.proc(1)
		}
		l.exit(p, exitStatus{code: 1})
		return p
	}
	restartAfter := func(want time.Duration) {
		t.Helper()
		n := l.started()
		l.advance(want - time.Millisecond)
		if l.started() != n {
			t.Fatalf("restarted before the %s backoff", want)
		}
		l.advance(time.Millisecond)
		if l.started() != n+1 {
			t.Fatalf("not restarted at the %s backoff", want)
		}
		l.ready(l.proc(l.started() - 1))
	}
	crash()
	restartAfter(100 * time.Millisecond)
	crash()
	restartAfter(200 * time.Millisecond)
	crash()
	restartAfter(400 * time.Millisecond)
	if l.m.slots[1].restarts != 3 {
		t.Fatalf("restarts %d, want 3", l.m.slots[1].restarts)
	}
	// Up for backoffStable: the next crash restarts at the minimum again.
	l.advance(backoffStable)
	crash()
	restartAfter(backoffMin)
	// Backoff stops growing at backoffMax.
	for range 10 {
		crash()
		l.advance(backoffMax)
		l.ready(l.proc(l.started() - 1))
	}
	if b := l.m.slots[1].backoff; b != backoffMax {
		t.Fatalf("backoff %s, want capped at %s", b, backoffMax)
	}
	if l.proc(0).got(syscall.SIGTERM) || l.m.slots[0].restarts != 0 {
		t.Fatal("the other worker was touched")
	}
}

func TestTTINTTOU(t *testing.T) {
	l := serving(t, testConfig(2))
	l.signal(syscall.SIGTTIN)
	if len(l.m.slots) != 3 || l.started() != 3 {
		t.Fatalf("after TTIN: %d slots, %d started", len(l.m.slots), l.started())
	}
	l.signal(syscall.SIGTTOU)
	l.signal(syscall.SIGTTOU)
	if len(l.m.slots) != 1 || !l.proc(2).got(syscall.SIGTERM) || !l.proc(1).got(syscall.SIGTERM) {
		t.Fatalf("after 2 TTOU: %d slots; the removed workers must drain", len(l.m.slots))
	}
	l.signal(syscall.SIGTTOU)
	if len(l.m.slots) != 1 || l.proc(0).got(syscall.SIGTERM) {
		t.Fatal("TTOU went below one worker")
	}
	// The drained ones exit: nothing is restarted for a removed slot.
	l.exitDrained()
	l.advance(time.Minute)
	if l.started() != 3 || len(l.m.procs) != 1 {
		t.Fatalf("%d started, %d live; want 3 and 1", l.started(), len(l.m.procs))
	}
}

// The drain-timeout timer belongs to the worker it was set for: when that
// worker exits and the kernel gives its pid to a new worker, the timer must
// not kill the new one (it SIGKILLed by pid before).
func TestDrainTimeoutSparesAWorkerThatReusedThePid(t *testing.T) {
	l := serving(t, testConfig(2))
	old := l.proc(1)
	l.signal(syscall.SIGTTOU) // drains worker 1; its drain timer runs 3 s
	l.advance(time.Second)
	l.exit(old, exitStatus{code: 0})
	l.os.reusePid = old.pid
	l.signal(syscall.SIGTTIN)
	fresh := l.proc(2)
	if fresh.pid != old.pid {
		t.Fatalf("fake did not reuse pid %d (got %d)", old.pid, fresh.pid)
	}
	l.ready(fresh)
	l.advance(time.Minute)
	if fresh.gotGroup(syscall.SIGKILL) || fresh.got(syscall.SIGKILL) || fresh.got(syscall.SIGTERM) {
		t.Fatalf("the new worker with the reused pid %d was signalled: %v %v", fresh.pid, fresh.signals, fresh.group)
	}
	if w := l.m.slots[1].cur; w == nil || w.state != stateReady || w.pid != old.pid {
		t.Fatalf("slot 1 is %v, want the new ready worker", w)
	}
}

// And the case it exists for: a worker that does not drain in time is
// killed, process group and all.
func TestDrainTimeoutKillsTheWorkerItWasSetFor(t *testing.T) {
	l := serving(t, testConfig(2))
	l.signal(syscall.SIGTERM)
	l.advance(3*time.Second - time.Millisecond)
	if l.proc(0).gotGroup(syscall.SIGKILL) {
		t.Fatal("killed before the drain timeout")
	}
	l.exit(l.proc(1), exitStatus{code: 0})
	l.advance(time.Millisecond)
	if !l.proc(0).gotGroup(syscall.SIGKILL) {
		t.Fatal("not killed at the drain timeout")
	}
	l.exit(l.proc(0), exitStatus{code: -1, signal: syscall.SIGKILL})
	if !l.m.finished() || l.m.up.killed != 1 || l.m.up.drained != 2 {
		t.Fatalf("finished %v, killed %d, drained %d", l.m.finished(), l.m.up.killed, l.m.up.drained)
	}
}

// A replacement that crashes while still starting leaves a ready timer
// behind; when the next replacement gets its pid, that timer must not
// drain it.
func TestReadyTimeoutBelongsToItsWorker(t *testing.T) {
	l := serving(t, testConfig(1))
	l.exit(l.proc(0), exitStatus{code: 1})
	l.advance(backoffMin)
	first := l.proc(1) // a replacement, starting: its ready timer runs 5 s
	l.advance(4 * time.Second)
	l.exit(first, exitStatus{code: 1}) // crashes before it is ready
	l.os.reusePid = first.pid
	l.advance(200 * time.Millisecond) // the backoff has doubled
	second := l.proc(2)
	if second.pid != first.pid {
		t.Fatalf("fake did not reuse pid %d", first.pid)
	}
	// The first replacement's ready timeout falls due now; the second,
	// still starting under the same pid, has 4.8 s left of its own.
	l.advance(time.Second)
	if second.got(syscall.SIGTERM) || l.m.slots[0].cur != nil && l.m.slots[0].cur.state != stateStarting {
		t.Fatal("the second replacement was drained by its predecessor's ready timeout")
	}
	l.ready(second)
	if l.m.slots[0].cur == nil || l.m.slots[0].cur.state != stateReady {
		t.Fatal("the second replacement is not serving")
	}
}

func TestSecondStopSignalKills(t *testing.T) {
	l := serving(t, testConfig(2))
	l.signal(syscall.SIGTERM)
	l.signal(syscall.SIGQUIT) // QUIT again is patient
	if l.proc(0).gotGroup(syscall.SIGKILL) {
		t.Fatal("QUIT after TERM killed")
	}
	l.signal(syscall.SIGINT)
	if !l.proc(0).gotGroup(syscall.SIGKILL) || !l.proc(1).gotGroup(syscall.SIGKILL) {
		t.Fatal("second INT did not kill")
	}
}

func TestUpgradeRefusals(t *testing.T) {
	t.Run("while booting", func(t *testing.T) {
		l := newLoop(t, testConfig(1))
		if why := l.m.requestUpgrade("test", false); !strings.Contains(why, "not serving") {
			t.Fatalf("refusal %q", why)
		}
	})
	t.Run("during an upgrade", func(t *testing.T) {
		l := serving(t, testConfig(1))
		if why := l.m.requestUpgrade("test", false); why != "" {
			t.Fatalf("first upgrade refused: %s", why)
		}
		if why := l.m.requestUpgrade("test", false); !strings.Contains(why, "already under way") {
			t.Fatalf("refusal %q", why)
		}
		l.upg.results <- errUpgrade
		l.awaitEvent()
	})
	t.Run("while the previous generation drains", func(t *testing.T) {
		l := serving(t, testConfig(1))
		l.m.origin.parentAlive = true
		l.m.origin.parentDeadline = l.m.sys.now().Add(1500 * time.Millisecond)
		if why := l.m.requestUpgrade("test", false); !strings.Contains(why, "still draining (up to 1.5s more)") {
			t.Fatalf("refusal %q", why)
		}
		l.m.handle(evParentExited{})
		if why := l.m.requestUpgrade("test", false); why != "" {
			t.Fatalf("refused after the parent exited: %s", why)
		}
		l.upg.results <- errUpgrade
		l.awaitEvent()
	})
	t.Run("while stopping", func(t *testing.T) {
		l := serving(t, testConfig(1))
		l.signal(syscall.SIGTERM)
		if why := l.m.requestUpgrade("test", false); !strings.Contains(why, "not serving (stopping)") {
			t.Fatalf("refusal %q", why)
		}
	})
	t.Run("pre-flight", func(t *testing.T) {
		cfg := testConfig(1)
		l := serving(t, cfg)
		l.m.cfg.Command = []string{"/nonexistent/server"}
		if why := l.m.requestUpgrade("test", false); !strings.Contains(why, "pre-flight") || !strings.Contains(why, "/nonexistent/server") {
			t.Fatalf("refusal %q", why)
		}
	})
}

func TestUSR2UpgradeIsNotFollowed(t *testing.T) {
	l := serving(t, testConfig(2))
	l.os.env[envFollowed] = "1" // left by an earlier upgrade
	l.signal(syscall.SIGUSR2)
	if !l.m.up.running || l.os.env[envFollowed] != "" {
		t.Fatalf("running %v, %s=%q after SIGUSR2, want an upgrade no reload follows", l.m.up.running, envFollowed, l.os.env[envFollowed])
	}
}

func TestHandover(t *testing.T) {
	l := serving(t, testConfig(2))
	c := &ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdReload}}
	l.m.onControl(c)
	if !l.m.up.running || l.os.env[envNextGeneration] != "2" || l.os.env[envUpgradeToken] == "" {
		t.Fatalf("upgrade not under way, or the next master's environment not set: %v", l.os.env)
	}
	// A reload request follows this upgrade: the new master reports its
	// steps (progress.go). After a SIGUSR2 it does not (TestUSR2UpgradeIsNotFollowed).
	if l.os.env[envFollowed] != "1" {
		t.Fatalf("%s=%q for an upgrade a reload request follows, want 1", envFollowed, l.os.env[envFollowed])
	}
	// The new master's report, then tableflip's success.
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token,
		reportReady: `{"generation":2,"total_ms":30,"workers_starting_ms":20}`}})
	l.upg.results <- nil
	l.awaitEvent()
	if l.m.phase != phaseHandedOver {
		t.Fatalf("phase %d after handover", l.m.phase)
	}
	if !l.proc(0).got(syscall.SIGTERM) || !l.proc(1).got(syscall.SIGTERM) {
		t.Fatal("old generation not drained after handover")
	}
	// The answer waits until the old workers no longer accept: one says
	// STOPPING=1, the other exits.
	l.m.handle(evNotify{PID: l.proc(0).pid, Fields: map[string]string{"STOPPING": "1"}})
	if len(l.m.up.waiters) != 1 || l.m.up.last != nil {
		t.Fatal("reload answered while an old worker may still accept")
	}
	l.exit(l.proc(1), exitStatus{code: 0})
	if len(l.m.up.waiters) != 0 || l.m.up.last == nil || !l.m.up.last.OK || l.m.up.last.NewMasterPID != 999 {
		t.Fatalf("reload not answered once the old workers stopped: last %+v", l.m.up.last)
	}
	l.exitDrained()
	if !l.m.finished() || l.started() != 2 {
		t.Fatalf("finished %v, started %d", l.m.finished(), l.started())
	}
}

func TestFailedHandoverLeavesTheGenerationUntouched(t *testing.T) {
	l := serving(t, testConfig(2))
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatal(why)
	}
	// A report with a wrong token is not believed.
	l.m.handle(evNotify{PID: 998, Fields: map[string]string{reportToken: "forged", reportFailed: "forged reason"}})
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token,
		reportFailed: "worker 0 (pid 5) exited with exit status 1 before it was ready", reportStderr: `["boom"]`}})
	l.upg.results <- errUpgrade
	l.awaitEvent()
	res := l.m.up.last
	if l.m.phase != phaseServing || res == nil || res.Code != control.ReloadRollback ||
		!strings.Contains(res.Reason, "exit status 1") || !slices.Equal(res.Stderr, []string{"boom"}) {
		t.Fatalf("phase %d, result %+v", l.m.phase, res)
	}
	for i := range 2 {
		if p := l.proc(i); len(p.signals)+len(p.group) != 0 {
			t.Fatalf("worker %d was signalled: %v %v", i, p.signals, p.group)
		}
	}
	// And the next upgrade may go.
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatalf("refused after a failed upgrade: %s", why)
	}
	l.upg.results <- errUpgrade
	l.awaitEvent()
}

func TestNotifyFromUnknownProcessIgnored(t *testing.T) {
	l := newLoop(t, testConfig(1))
	l.m.handle(evNotify{PID: 4242, Fields: map[string]string{"READY": "1"}})
	if l.m.phase != phaseBooting {
		t.Fatal("READY=1 from a stranger counted")
	}
}

func TestDelayReadiness(t *testing.T) {
	cfg := testConfig(2)
	cfg.Ready = ReadyRule{Mode: ReadyDelay, Delay: 2 * time.Second}
	l := newLoop(t, cfg)
	l.ready(l.proc(0)) // READY=1 does not count in delay mode
	l.advance(2*time.Second - time.Millisecond)
	if l.m.phase != phaseBooting {
		t.Fatal("ready before the delay")
	}
	l.advance(time.Millisecond)
	if l.m.phase != phaseServing {
		t.Fatal("not ready at the delay")
	}
}

func TestReloadAnswerDoesNotWaitForeverForStopping(t *testing.T) {
	l := serving(t, testConfig(2))
	l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdReload}})
	l.upg.results <- nil
	l.awaitEvent()
	l.advance(stopAckWait - time.Millisecond)
	if len(l.m.up.waiters) != 1 {
		t.Fatal("answered before the wait for STOPPING=1 ended")
	}
	l.advance(time.Millisecond)
	if len(l.m.up.waiters) != 0 || l.m.up.last == nil || !l.m.up.last.OK {
		t.Fatalf("not answered after %s: %+v", stopAckWait, l.m.up.last)
	}
}

// The worker count cannot change under an upgrade: the new master took its
// count when it started, and a change would be lost with this generation.
func TestScaleRefusedDuringAnUpgrade(t *testing.T) {
	l := serving(t, testConfig(2))
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatal(why)
	}
	l.signal(syscall.SIGTTIN)
	l.signal(syscall.SIGTTOU)
	if _, err := l.m.scale(4); err == nil || len(l.m.slots) != 2 || l.started() != 2 {
		t.Fatalf("during an upgrade: scale error %v, %d slots, %d started", err, len(l.m.slots), l.started())
	}
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if _, err := l.m.scale(3); err != nil || len(l.m.slots) != 3 {
		t.Fatalf("after the upgrade: scale error %v, %d slots", err, len(l.m.slots))
	}
}

// A serving master that replaced crashed workers gives back what starting
// them used once the generation is whole again, not before.
func TestTrimAfterReplacementsMakeTheGenerationWhole(t *testing.T) {
	l := serving(t, testConfig(2))
	before := l.m.trims
	l.exit(l.proc(0), exitStatus{code: 1})
	l.exit(l.proc(1), exitStatus{code: 1})
	l.advance(backoffMin)
	if l.started() != 4 {
		t.Fatalf("started %d, want both workers restarted", l.started())
	}
	l.ready(l.proc(2))
	if l.m.trims != before {
		t.Fatalf("trimmed with a worker still starting (%d -> %d)", before, l.m.trims)
	}
	l.ready(l.proc(3))
	if l.m.trims != before+1 {
		t.Fatalf("trims %d -> %d once both replacements were ready, want one more", before, l.m.trims)
	}
}

// A master serving alone trims again settleAfter after its rest (its first
// seconds map pages it does not use again), and after the last of a burst
// of /metrics scrapes, never during an upgrade, and never by itself again.
func TestSettleTrimAfterRestAndScrapes(t *testing.T) {
	l := serving(t, testConfig(2))
	rest := l.m.trims
	expect := func(what string, want int) {
		t.Helper()
		if l.m.trims != want {
			t.Fatalf("%s: trims %d, want %d", what, l.m.trims, want)
		}
	}
	l.advance(settleAfter - time.Millisecond)
	expect("before settleAfter at rest", rest)
	l.advance(time.Millisecond)
	expect("settleAfter after rest", rest+1)
	l.advance(10 * settleAfter)
	expect("idle", rest+1)

	// A burst: the trim follows its last scrape.
	for i := 0; i < 3; i++ {
		l.m.handle(evScraped{})
		l.step()
		l.advance(settleAfter / 2)
	}
	expect("during a burst of scrapes", rest+1)
	l.advance(settleAfter / 2)
	expect("settleAfter after the last scrape", rest+2)
	l.advance(10 * settleAfter)
	expect("idle after the burst", rest+2)

	// During an upgrade the pages are in use.
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatal(why)
	}
	l.m.handle(evScraped{})
	l.step()
	l.advance(2 * settleAfter)
	expect("scraped during an upgrade", rest+2)
}

// The new master's reports are known by their token before the old master
// walks up the sender's ancestors (m.sys.parentOf, reads of /proc): a new
// master sends one for each step of its start, and the walk for each took
// the old master's CPU while the new one spawned. A report with a wrong
// token is still dropped.
func TestChildReportKnownByTokenWithoutAncestryWalk(t *testing.T) {
	l := serving(t, testConfig(2))
	walks := 0
	l.m.sys.parentOf = func(int) int { walks++; return 0 }
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatal(why)
	}
	ready := `{"generation":2,"total_ms":30,"workers_starting_ms":20}`
	l.m.handle(evNotify{PID: 998, Fields: map[string]string{reportToken: "forged", reportReady: ready}})
	if l.m.up.ready != nil {
		t.Fatalf("a report with a wrong token was believed: %+v", l.m.up.ready)
	}
	walks = 0
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token, reportReady: ready}})
	if l.m.up.ready == nil || l.m.up.ready.NewMasterPID != 999 {
		t.Fatalf("the new master's report not taken: %+v", l.m.up.ready)
	}
	if walks != 0 {
		t.Fatalf("the sender's ancestry was looked up %d times for a report with the upgrade's token, want 0", walks)
	}
	l.upg.results <- nil
	l.awaitEvent()
	if l.m.phase != phaseHandedOver {
		t.Fatalf("phase %d after handover", l.m.phase)
	}
}

// A TTOU while the first generation boots, arriving after every worker it
// keeps is ready, makes the generation ready: nothing else would
// (TestSignalsAtStart/TTOU hung 20 s on it once start-up got faster).
func TestTTOUDuringBootAfterTheOthersAreReady(t *testing.T) {
	l := newLoop(t, testConfig(2))
	l.ready(l.proc(0))
	if l.m.phase != phaseBooting {
		t.Fatal("serving with one of two workers ready")
	}
	l.signal(syscall.SIGTTOU)
	if len(l.m.slots) != 1 || !l.proc(1).got(syscall.SIGTERM) {
		t.Fatalf("after TTOU: %d slots; the removed worker must drain", len(l.m.slots))
	}
	if l.m.phase != phaseServing || l.upg.readies != 1 {
		t.Fatalf("phase %d, tableflip Ready calls %d after TTOU left only ready workers; want serving, 1", l.m.phase, l.upg.readies)
	}
}
