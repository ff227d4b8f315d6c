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

// In-process tests of the blue-green and canary rollout through the fake
// seam: the health probe, the smoke test, the accept-queue wait and the
// steering are the fake's, the clock moves when the test says. The old
// master's side first, then the new master's.

func rolloutConfig(st Strategy) Config {
	cfg := testConfig(2)
	cfg.Rollout = Rollout{Strategy: st, HealthCheck: HealthCheck{Kind: "tcp"}, HealthInterval: time.Second,
		SmokeTest: "./smoke", SmokeTimeout: 10 * time.Second, Bake: 10 * time.Second, CanaryWeight: 20}
	cfg.ReadyTimeout = 300 * time.Millisecond // bounds the health stage, in real time
	return cfg
}

// candidateOffered starts an upgrade on a serving old master and has the
// new master report its workers ready; the health check is under way.
func candidateOffered(t *testing.T, cfg Config) *loop {
	t.Helper()
	l := serving(t, cfg)
	c := &ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdReload}}
	l.m.onControl(c)
	if !l.m.up.running {
		t.Fatalf("upgrade not under way (last %+v)", l.m.up.last)
	}
	l.m.handle(evNotify{pid: 999, fields: map[string]string{reportToken: l.m.up.token,
		reportCandidate: `{"generation":2,"workers_starting_ms":20}`, reportNotify: "@new"}})
	if l.m.rollout.cand == nil {
		t.Fatal("candidate not taken")
	}
	return l
}

// until handles events, those other goroutines post included, until cond
// holds; it fails the test after 5 s.
func (l *loop) until(what string, cond func() bool) {
	l.t.Helper()
	deadline := time.After(5 * time.Second)
	for l.step(); !cond(); l.step() {
		select {
		case ev := <-l.m.events:
			l.m.handle(ev)
		case <-deadline:
			l.t.Fatalf("no %s within 5 s", what)
		}
	}
}

func (l *loop) stageIs(st stage) func() bool {
	return func() bool { return l.m.rollout.cand != nil && l.m.rollout.cand.stage == st }
}

// stages lists the rollout's steps so far, by name.
func stages(l *loop) []string {
	var out []string
	for _, s := range l.m.rollout.cand.steps {
		out = append(out, s.Name)
	}
	return out
}

// orders lists the orders sent to the new master ("promote", "rollback").
func orders(l *loop) []string {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	var out []string
	for _, r := range l.os.reports {
		switch {
		case strings.Contains(r, orderPromote+"="):
			out = append(out, "promote")
		case strings.Contains(r, orderRollback+"="):
			out = append(out, "rollback")
		}
	}
	return out
}

func (l *loop) steered() []int {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	return append([]int(nil), l.os.steers...)
}

func TestRolloutStagesInOrder(t *testing.T) {
	l := candidateOffered(t, rolloutConfig(StrategyBlueGreen))
	l.until("bake", l.stageIs(stageBake)) // health check and smoke test passed
	c := l.m.rollout.cand
	if want := []string{"ready", "health-check", "smoke-test", "switch", "bake"}; !slices.Equal(stages(l), want) || c.stage != stageBake {
		t.Fatalf("stages %v (stage %s), want %v and baking", stages(l), c.stage, want)
	}
	// The smoke test ran as the new generation will: its user, its
	// environment, its generation number.
	if s := l.os.smokes; len(s) != 1 || s[0].command != "./smoke" || !slices.Contains(s[0].env, "BATON_GENERATION=2") || s[0].target != "127.0.0.1:1" {
		t.Fatalf("smoke runs %+v", l.os.smokes)
	}
	// Only probes reach the candidate until the switch (0, set when the
	// upgrade starts); every user at the switch.
	if got := l.steered(); !slices.Equal(got, []int{0, 100}) {
		t.Fatalf("steering %v, want 0 then one switch to 100", got)
	}
	// Health checks every --health-interval during the bake, one at a
	// time; then the promote order at the bake's end.
	for i := 0; i < 9; i++ {
		probes := l.os.probes
		l.advance(time.Second)
		l.until("a bake health check", func() bool { l.os.mu.Lock(); defer l.os.mu.Unlock(); return l.os.probes > probes })
		l.until("the next bake health check's timer", func() bool { return len(l.os.timers) > 0 && !l.os.timers[len(l.os.timers)-1].stopped })
		if c.bakeCheck == nil || len(c.stops) > 3 {
			t.Fatalf("bake check %d: pending %v, %d other stops held", i, c.bakeCheck != nil, len(c.stops))
		}
	}
	if len(orders(l)) != 0 {
		t.Fatalf("orders before the bake ended: %v", orders(l))
	}
	l.advance(time.Second)
	l.step()
	if got := orders(l); !slices.Equal(got, []string{"promote"}) || c.stage != stagePromoted {
		t.Fatalf("orders %v, stage %s after the bake; want promote", got, c.stage)
	}
	// tableflip's Upgrade returns: handed over, the old generation drains
	// once its accept queue is empty.
	l.upg.results <- nil
	// Handed over; the old workers drain once the queue is empty.
	l.until("the old generation's drain", func() bool { return l.proc(0).got(syscall.SIGTERM) })
	if l.m.phase != phaseHandedOver || !l.proc(0).got(syscall.SIGTERM) {
		t.Fatalf("phase %d, old worker drained %v", l.m.phase, l.proc(0).got(syscall.SIGTERM))
	}
	if res := l.m.up.pending; res == nil || res.Strategy != "blue-green" || res.SwitchMS < 0 {
		t.Fatalf("reload result %+v", res)
	}
}

func TestRolloutHealthFailureRollsBack(t *testing.T) {
	cfg := rolloutConfig(StrategyBlueGreen)
	l := serving(t, cfg)
	l.os.probeErrs = []error{errors.New("connection refused"), errors.New("GET / answered 500"),
		errors.New("GET / answered 500"), errors.New("GET / answered 500"), errors.New("GET / answered 500")}
	l = candidateOfferedOn(t, l)
	l.until("rollback", l.stageIs(stageRolledBack)) // the health stage gave up at --ready-timeout
	c := l.m.rollout.cand
	if c.stage != stageRolledBack || !slices.Equal(orders(l), []string{"rollback"}) {
		t.Fatalf("stage %s, orders %v; want a rollback", c.stage, orders(l))
	}
	if len(l.os.smokes) != 0 || slices.Contains(l.steered(), 100) {
		t.Fatalf("went on after a failed health check: smokes %d, steering %v", len(l.os.smokes), l.steered())
	}
	if !strings.Contains(l.m.up.reason, "health check failed") {
		t.Fatalf("reason %q", l.m.up.reason)
	}
	// tableflip's Upgrade fails; the old generation was never touched.
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if l.m.phase != phaseServing || l.proc(0).got(syscall.SIGTERM) {
		t.Fatalf("phase %d after the rollback; old worker signalled %v", l.m.phase, l.proc(0).signals)
	}
}

// candidateOfferedOn is candidateOffered on a loop the test prepared.
func candidateOfferedOn(t *testing.T, l *loop) *loop {
	t.Helper()
	c := &ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdReload}}
	l.m.onControl(c)
	l.m.handle(evNotify{pid: 999, fields: map[string]string{reportToken: l.m.up.token,
		reportCandidate: `{"generation":2}`, reportNotify: "@new"}})
	if l.m.rollout.cand == nil {
		t.Fatal("candidate not taken")
	}
	return l
}

func TestRolloutSmokeFailureRollsBack(t *testing.T) {
	l := serving(t, rolloutConfig(StrategyBlueGreen))
	l.os.smokeErr = errors.New("exit status 1")
	l = candidateOfferedOn(t, l)
	l.until("rollback", l.stageIs(stageRolledBack)) // health passed, smoke failed
	c := l.m.rollout.cand
	if c.stage != stageRolledBack || !slices.Equal(orders(l), []string{"rollback"}) || slices.Contains(l.steered(), 100) {
		t.Fatalf("stage %s, orders %v, steering %v; want a rollback before any switch", c.stage, orders(l), l.steered())
	}
	if !slices.Equal(l.m.up.stderr, []string{"smoke: checkout broken"}) {
		t.Fatalf("the smoke test's output is not in the report: %q", l.m.up.stderr)
	}
}

// baking runs a candidate through its checks into the bake.
func baking(t *testing.T, st Strategy) (*loop, *candidate) {
	t.Helper()
	l := candidateOffered(t, rolloutConfig(st))
	l.until("bake", l.stageIs(stageBake))
	c := l.m.rollout.cand
	if c.stage != stageBake {
		t.Fatalf("stage %s, want bake", c.stage)
	}
	return l, c
}

func TestRolloutCommandsDuringTheBake(t *testing.T) {
	cmd := func(l *loop, which control.Cmd) {
		l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: which}})
		l.step()
	}
	t.Run("rollback", func(t *testing.T) {
		l, c := baking(t, StrategyBlueGreen)
		cmd(l, control.CmdRollback)
		if c.stage != stageRolledBack || !slices.Equal(orders(l), []string{"rollback"}) || !slices.Equal(l.steered(), []int{0, 100, 0}) {
			t.Fatalf("stage %s, orders %v, steering %v; want users back (0) and a rollback order", c.stage, orders(l), l.steered())
		}
		// The bake's timers are void: nothing is promoted later.
		l.advance(time.Minute)
		if slices.Contains(orders(l), "promote") {
			t.Fatal("promoted after a rollback")
		}
	})
	t.Run("promote", func(t *testing.T) {
		l, c := baking(t, StrategyBlueGreen)
		cmd(l, control.CmdPromote)
		if c.stage != stagePromoted || !slices.Equal(orders(l), []string{"promote"}) {
			t.Fatalf("stage %s, orders %v; want promoted", c.stage, orders(l))
		}
	})
}

func TestRolloutCandidateCrashDuringTheBake(t *testing.T) {
	l, c := baking(t, StrategyBlueGreen)
	// A worker of the new generation crashed: its master gave up and says
	// why; users go back before its workers drain.
	l.m.handle(evNotify{pid: 999, fields: map[string]string{reportToken: l.m.up.token,
		reportFailed: "worker 1 (pid 7) exited with signal SIGSEGV while the generation was starting"}})
	if c.stage != stageRolledBack || !slices.Equal(l.steered(), []int{0, 100, 0}) {
		t.Fatalf("stage %s, steering %v; want users back on the old generation", c.stage, l.steered())
	}
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if res := l.m.up.last; res == nil || res.Code != control.ReloadRollback || !strings.Contains(res.Reason, "SIGSEGV") {
		t.Fatalf("reload result %+v", res)
	}
	if l.m.phase != phaseServing {
		t.Fatalf("phase %d: the old master must serve on", l.m.phase)
	}
}

func TestRolloutBakeHealthFailure(t *testing.T) {
	l, c := baking(t, StrategyBlueGreen)
	l.os.mu.Lock()
	l.os.probeErrs = []error{errors.New("GET / answered 503")}
	l.os.mu.Unlock()
	l.advance(time.Second)
	l.until("rollback", l.stageIs(stageRolledBack))
	if c.stage != stageRolledBack || !strings.Contains(l.m.up.reason, "during the bake") {
		t.Fatalf("stage %s, reason %q; want a rollback for the bake's health check", c.stage, l.m.up.reason)
	}
}

func TestRolloutCanaryShare(t *testing.T) {
	l, c := baking(t, StrategyCanary)
	if got := l.steered(); !slices.Equal(got, []int{0, 20}) {
		t.Fatalf("steering %v at the switch, want the canary share 20", got)
	}
	l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdPromote}})
	if got := l.steered(); !slices.Equal(got, []int{0, 20, 100}) || c.stage != stagePromoted {
		t.Fatalf("steering %v after promote, want 20 then 100", got)
	}

	// Cleared by a rollback: every user back.
	l, c = baking(t, StrategyCanary)
	l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdRollback}})
	if got := l.steered(); !slices.Equal(got, []int{0, 20, 0}) || c.stage != stageRolledBack {
		t.Fatalf("steering %v after rollback, want 20 then 0", got)
	}
}

// --- the new master's side ---

// candidate boots a new master under an old one and makes its workers
// ready: it offers itself and waits for the checks.
func newCandidate(t *testing.T) *loop {
	t.Helper()
	l := newLoop(t, rolloutConfig(StrategyBlueGreen))
	l.m.up.parentAlive, l.m.up.parentPID = true, 1
	l.m.up.parentNotify, l.m.up.parentToken = "@old", "tok"
	l.ready(l.proc(0))
	l.ready(l.proc(1))
	if l.m.phase != phaseBooting || !l.m.rollout.offered || l.upg.readies != 0 {
		t.Fatalf("phase %d, offered %v, Ready calls %d; want a candidate", l.m.phase, l.m.rollout.offered, l.upg.readies)
	}
	return l
}

func servingOfRecord(t *testing.T, l *loop) {
	t.Helper()
	if l.m.phase != phaseServing || l.upg.readies != 1 {
		t.Fatalf("phase %d, Ready calls %d; want serving", l.m.phase, l.upg.readies)
	}
	// MAINPID= with READY=1 makes it the keeper's master of record.
	if !slices.ContainsFunc(l.os.manager, func(s string) bool { return strings.Contains(s, "MAINPID=") && strings.Contains(s, "READY=1") }) {
		t.Fatalf("never told the keeper it is the master of record: %q", l.os.manager)
	}
}

func TestCandidatePromoted(t *testing.T) {
	l := newCandidate(t)
	l.m.handle(evNotify{pid: 1, fields: map[string]string{reportToken: "tok", orderPromote: "1"}})
	servingOfRecord(t, l)
}

func TestCandidateRolledBack(t *testing.T) {
	l := newCandidate(t)
	l.m.handle(evNotify{pid: 1, fields: map[string]string{reportToken: "tok", orderRollback: "baton rollback"}})
	l.step()
	if l.m.phase != phaseStopping || !errors.Is(l.m.bootErr, ErrBootFailed) || l.upg.readies != 0 {
		t.Fatalf("phase %d, bootErr %v, Ready calls %d; want the candidate stopping", l.m.phase, l.m.bootErr, l.upg.readies)
	}
	// Its queue emptied (the fake's at once), its workers drain.
	l.until("the rolled-back workers' drain", func() bool { return l.proc(0).got(syscall.SIGTERM) })
}

func TestCandidateOldMasterGoneDuringTheBake(t *testing.T) {
	l := newCandidate(t)
	// The old master dies (OOM, SIGKILL) while its users are on this
	// generation: this master is the service now.
	l.upg.readyErr = errors.New("can't notify parent process: broken pipe")
	l.m.handle(evParentExited{})
	servingOfRecord(t, l)
	// A later crash is replaced, as for any serving master.
	l.exit(l.proc(0), exitStatus{code: 1})
	l.advance(time.Second)
	if l.started() != 3 {
		t.Fatalf("crashed worker not replaced after the takeover: %d started", l.started())
	}
}
