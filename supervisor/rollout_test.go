//go:build linux

package supervisor

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// In-process tests of the blue-green and canary rollout through the fake
// seam: the health probe, the smoke test, the accept-queue wait and the
// steering are the fake's, and the clock (the health stage's retries and
// deadline, the bake, its health checks) moves only when the test says.
// No process is started. The old master's side first, then the new
// master's.

const testHealthTimeout = 2 * time.Second

func rolloutConfig(st Strategy) Config {
	cfg := testConfig(2)
	cfg.Rollout = Rollout{Strategy: st, HealthCheck: HealthCheck{Kind: "http", Path: "/"}, HealthInterval: time.Second,
		HealthTimeout: testHealthTimeout, SmokeTest: "./smoke", SmokeTimeout: 10 * time.Second, Bake: 10 * time.Second, CanaryWeight: 20}
	return cfg
}

// offer has the new master of the upgrade under way report its workers
// ready; the checks begin.
func offer(t *testing.T, l *loop) {
	t.Helper()
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token,
		reportCandidate: `{"generation":2,"workers_starting_ms":20}`, reportNotify: "@new"}})
	if l.m.rollout.cand == nil {
		t.Fatal("candidate not taken")
	}
}

// candidateOffered starts an upgrade (baton reload, whose lines rc holds)
// on the serving old master l and offers the candidate.
func candidateOffered(t *testing.T, l *loop) *recConn {
	t.Helper()
	rc := l.reload(false)
	if !l.m.up.running {
		t.Fatalf("upgrade not under way (last %+v)", l.m.up.last)
	}
	offer(t, l)
	return rc
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

// check is the candidate's record of the check name, as baton status
// shows it.
func (l *loop) check(name string) control.CheckStatus {
	l.t.Helper()
	st := l.m.status().Rollout
	if st == nil {
		l.t.Fatal("no rollout in baton status")
	}
	for _, ck := range st.Checks {
		if ck.Name == name {
			return ck
		}
	}
	l.t.Fatalf("no %s in baton status: %+v", name, st.Checks)
	return control.CheckStatus{}
}

// probed waits until n probes of the check name have been taken in.
func (l *loop) probed(name string, n int) {
	l.t.Helper()
	l.until("probe "+name, func() bool { return l.check(name).Probes >= n })
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

// orderField is key's value in the last order that carries it.
func orderField(l *loop, key string) string {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	for i := len(l.os.reports) - 1; i >= 0; i-- {
		for _, line := range strings.Split(l.os.reports[i], "\n") {
			if v, ok := strings.CutPrefix(line, key+"="); ok {
				return v
			}
		}
	}
	return ""
}

func (l *loop) steered() []int {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	return append([]int(nil), l.os.steers...)
}

func (l *loop) probes() int {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	return l.os.probes
}

// pendingTimers counts the timers that have neither fired nor been stopped.
func (l *loop) pendingTimers() int {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	n := 0
	for _, t := range l.os.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// sent is the progress lines rc was sent so far.
func (rc *recConn) sent() []control.Progress {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var ps []control.Progress
	for _, line := range strings.Split(rc.buf.String(), "\n") {
		var p control.Progress
		if strings.Contains(line, `"event"`) && json.Unmarshal([]byte(line), &p) == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// sentUntil waits until the progress lines rc was sent satisfy cond, for
// at most 5 s (they are written by the connection's own goroutine), and
// returns them.
func (rc *recConn) sentUntil(t *testing.T, what string, cond func([]control.Progress) bool) []control.Progress {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		ps := rc.sent()
		if cond(ps) {
			return ps
		}
		select {
		case <-rc.wrote:
		case <-deadline:
			t.Fatalf("no %s within 5 s: progress %v", what, events(ps))
		}
	}
}

// handedOver returns tableflip's Upgrade call with success: the new
// master took over. The reload's result is the new master's to send.
func handedOver(l *loop) {
	l.t.Helper()
	l.upg.results <- nil
	l.until("the old generation's drain", func() bool { return l.proc(0).got(syscall.SIGTERM) })
	if l.m.phase != phaseHandedOver {
		l.t.Fatalf("phase %d after the promote", l.m.phase)
	}
}

// finishUpgrade returns tableflip's Upgrade call with err and the reload's
// progress lines and result.
func finishUpgrade(l *loop, rc *recConn, err error) ([]control.Progress, control.ReloadResult) {
	l.t.Helper()
	l.upg.results <- err
	l.awaitEvent()
	return rc.lines(l.t)
}

func TestRolloutStagesInOrder(t *testing.T) {
	cfg := rolloutConfig(StrategyBlueGreen)
	env := filepath.Join(t.TempDir(), "env")
	os.WriteFile(env, []byte("APP_TAG=v1\n"), 0o600)
	cfg.EnvFile = env
	cfg.Credential = &syscall.Credential{Uid: 1234, Gid: 5678}
	l := serving(t, cfg)
	os.WriteFile(env, []byte("APP_TAG=v2\n"), 0o600) // edited for the deploy
	rc := l.reload(false)
	if st := l.m.status().Rollout; st == nil || st.Stage != control.StageStarting {
		t.Fatalf("rollout in status before the candidate reported: %+v", st)
	}
	offer(t, l)
	l.until("bake", l.stageIs(stageBake)) // health check and smoke test passed
	c := l.m.rollout.cand
	if want := []string{"ready", "health-check", "smoke-test", "switch", "bake"}; !slices.Equal(stages(l), want) {
		t.Fatalf("stages %v, want %v", stages(l), want)
	}
	// The smoke test ran as the new generation will: its user and group,
	// its --env-file as it is now, its generation number.
	if s := l.os.smokes; len(s) != 1 || s[0].command != "./smoke" || s[0].target != "127.0.0.1:1" || s[0].cred != cfg.Credential ||
		!slices.Contains(s[0].env, "BATON_GENERATION=2") || !slices.Contains(s[0].env, "APP_TAG=v2") || slices.Contains(s[0].env, "APP_TAG=v1") {
		t.Fatalf("smoke runs %+v", l.os.smokes)
	}
	// Only probes reach the candidate until the switch (0, set when the
	// upgrade starts); every user at the switch.
	if got := l.steered(); !slices.Equal(got, []int{0, 100}) {
		t.Fatalf("steering %v, want 0 then one switch to 100", got)
	}
	if hc, sm := l.check("health-check"), l.check("smoke-test"); hc.State != "passed" || hc.Probes != 1 || hc.LastAnswer != "200" ||
		sm.State != "passed" || sm.LastAnswer != "exit 0" {
		t.Fatalf("checks in status: %+v, %+v", hc, sm)
	}
	// Health checks every --health-interval during the bake, one at a
	// time: the bake holds one pending probe or timer, its own timer, and
	// one record of its checks however long it runs.
	for i := 1; i <= 9; i++ {
		l.advance(time.Second)
		l.probed("bake-health", i)
		l.until("the next bake health check's timer", func() bool { return l.pendingTimers() > 0 && c.probe != nil })
		if st := l.m.status().Rollout; len(st.Checks) != 3 || len(c.stops) > 3 {
			t.Fatalf("bake check %d: %d check records, %d stops held", i, len(st.Checks), len(c.stops))
		}
	}
	st := l.m.status().Rollout
	if st.Stage != control.StageBaking || st.CanaryPercent != 100 || st.BakeLeftMS != 1000 ||
		!slices.Equal(st.Commands, []string{"baton promote", "baton rollback"}) {
		t.Fatalf("status during the bake: %+v", st)
	}
	if len(orders(l)) != 0 {
		t.Fatalf("orders before the bake ended: %v", orders(l))
	}
	l.advance(time.Second)
	if got := orders(l); !slices.Equal(got, []string{"promote"}) || c.stage != stagePromoted || l.m.status().Rollout.Stage != control.StagePromoting {
		t.Fatalf("orders %v, stage %s after the bake; want promote", got, c.stage)
	}
	// The promote order carries the checks and the bake apart.
	if orderField(l, orderChecksMS) != "0.000" || orderField(l, orderBakeMS) != "10000.000" {
		t.Fatalf("promote timings: checks %q, bake %q ms", orderField(l, orderChecksMS), orderField(l, orderBakeMS))
	}
	// tableflip's Upgrade returns: handed over, the old generation drains
	// once its accept queue is empty.
	handedOver(l)
	if res := l.m.up.pending; res == nil || res.Strategy != "blue-green" || res.SwitchMS < 0 || len(res.Steps) != 6 || res.FailedStep != "" {
		t.Fatalf("reload result %+v", res)
	}
	rc.sentUntil(t, "promote line", func(ps []control.Progress) bool { return slices.Contains(events(ps), "rollout_promote") })
	if got := strings.Join(events(rc.sent()), " "); !strings.Contains(got, "rollout_health-check rollout_smoke-test rollout_switch rollout_bake rollout_promote") {
		t.Fatalf("progress %q", got)
	}
}

func TestRolloutHealthRetriesUntilItPasses(t *testing.T) {
	l := serving(t, rolloutConfig(StrategyBlueGreen))
	l.os.probeErrs = []error{errors.New("connection refused"), errors.New("GET / answered 500")}
	rc := candidateOffered(t, l)
	l.probed("health-check", 1)
	st := l.m.status().Rollout
	if st.Stage != control.StageHealthCheck || !slices.Equal(st.Commands, []string{"baton rollback"}) || st.CanaryPercent != 0 {
		t.Fatalf("status during the health check: %+v", st)
	}
	// The next probe waits for its pause (healthRetry), on the clock.
	l.advance(healthRetry - time.Millisecond)
	if n := l.probes(); n != 1 {
		t.Fatalf("%d probes before the pause ended", n)
	}
	l.advance(time.Millisecond)
	l.probed("health-check", 2)
	if ck := l.check("health-check"); ck.State != "running" || ck.Failed != 2 || ck.LastAnswer != "GET / answered 500" {
		t.Fatalf("health check after two failed probes: %+v", ck)
	}
	l.advance(healthRetry)
	l.until("bake", l.stageIs(stageBake))
	if ck := l.check("health-check"); ck.State != "passed" || ck.Probes != 3 || ck.Failed != 2 || ck.LastAnswer != "200" {
		t.Fatalf("health check: %+v", ck)
	}
	l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdPromote}})
	handedOver(l)
	ps := rc.sentUntil(t, "promote line", func(ps []control.Progress) bool { return slices.Contains(events(ps), "rollout_promote") })
	n := 0
	for _, p := range ps {
		if p.Event == control.EvHealthProbe {
			n++
			if p.Count != n || !strings.Contains(p.Message, "--health-timeout") {
				t.Fatalf("probe line %d: %+v", n, p)
			}
		}
	}
	if n != 2 {
		t.Fatalf("%d failed-probe lines, want 2 (one per failed probe): %v", n, events(ps))
	}
}

func TestRolloutHealthTimeoutRollsBack(t *testing.T) {
	l := serving(t, rolloutConfig(StrategyBlueGreen))
	l.os.probeErrs = []error{errors.New("connection refused")}
	l.os.probeFail = errors.New("GET / answered 503")
	rc := candidateOffered(t, l)
	// A probe every healthRetry until --health-timeout: the deadline ends
	// the stage, not the count of probes.
	for i := 1; i < int(testHealthTimeout/healthRetry); i++ {
		l.probed("health-check", i)
		l.advance(healthRetry)
	}
	l.probed("health-check", int(testHealthTimeout/healthRetry))
	if c := l.m.rollout.cand; c.stage != stageHealth || len(orders(l)) != 0 {
		t.Fatalf("stage %s, orders %v before --health-timeout", c.stage, orders(l))
	}
	l.advance(healthRetry) // the deadline, due with the next probe's timer
	c := l.m.rollout.cand
	if c.stage != stageRolledBack || !slices.Equal(orders(l), []string{"rollback"}) || l.m.status().Rollout.Stage != control.StageRollingBack {
		t.Fatalf("stage %s, orders %v at --health-timeout; want a rollback", c.stage, orders(l))
	}
	if len(l.os.smokes) != 0 || slices.Contains(l.steered(), 100) {
		t.Fatalf("went on after a failed health check: smokes %d, steering %v", len(l.os.smokes), l.steered())
	}
	if l.pendingTimers() != 0 {
		t.Fatalf("%d timers left after the rollback", l.pendingTimers())
	}
	if ck := l.check("health-check"); ck.State != "failed" || ck.Probes != 20 || ck.Failed != 20 {
		t.Fatalf("health check %+v", ck)
	}
	// tableflip's Upgrade fails; the old generation was never touched.
	_, res := finishUpgrade(l, rc, errUpgrade)
	if res.Code != control.ReloadRollback || res.FailedStep != "health-check" ||
		!strings.Contains(res.Reason, "GET / answered 503 (still failing after 2s, --health-timeout)") {
		t.Fatalf("reload result %+v", res)
	}
	if l.m.phase != phaseServing || l.proc(0).got(syscall.SIGTERM) {
		t.Fatalf("phase %d after the rollback; old worker signalled %v", l.m.phase, l.proc(0).signals)
	}
}

func TestRolloutSmokeFailureRollsBack(t *testing.T) {
	l := serving(t, rolloutConfig(StrategyBlueGreen))
	l.os.smokeErr = errors.New("exit status 1")
	l.os.smokeHold = make(chan struct{})
	rc := candidateOffered(t, l)
	l.until("smoke test", l.stageIs(stageSmoke))
	if st := l.m.status().Rollout; st.Stage != control.StageSmokeTest || l.check("smoke-test").State != "running" {
		t.Fatalf("status during the smoke test: %+v", st)
	}
	close(l.os.smokeHold)
	l.until("rollback", l.stageIs(stageRolledBack))
	if !slices.Equal(orders(l), []string{"rollback"}) || slices.Contains(l.steered(), 100) {
		t.Fatalf("orders %v, steering %v; want a rollback before any switch", orders(l), l.steered())
	}
	if ck := l.check("smoke-test"); ck.State != "failed" || !strings.Contains(ck.LastAnswer, "exit status 1") {
		t.Fatalf("smoke test in status: %+v", ck)
	}
	_, res := finishUpgrade(l, rc, errUpgrade)
	if res.FailedStep != "smoke-test" || res.OutputOf != "the smoke test's output" || !slices.Equal(res.Stderr, []string{"smoke: checkout broken"}) {
		t.Fatalf("the smoke test's failure is not in the report: %+v", res)
	}
}

// baking runs a candidate through its checks into the bake.
func baking(t *testing.T, st Strategy) (*loop, *candidate, *recConn) {
	t.Helper()
	l := serving(t, rolloutConfig(st))
	rc := candidateOffered(t, l)
	l.until("bake", l.stageIs(stageBake))
	return l, l.m.rollout.cand, rc
}

func TestRolloutCommandsDuringTheBake(t *testing.T) {
	cmd := func(l *loop, which control.Cmd) {
		l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: which}})
		l.step()
	}
	t.Run("rollback", func(t *testing.T) {
		l, c, rc := baking(t, StrategyBlueGreen)
		cmd(l, control.CmdRollback)
		if c.stage != stageRolledBack || !slices.Equal(orders(l), []string{"rollback"}) || !slices.Equal(l.steered(), []int{0, 100, 0}) {
			t.Fatalf("stage %s, orders %v, steering %v; want users back (0) and a rollback order", c.stage, orders(l), l.steered())
		}
		// The bake's timers are void: nothing is promoted later.
		l.advance(time.Minute)
		if slices.Contains(orders(l), "promote") || l.probes() != 1 {
			t.Fatalf("orders %v, %d probes after a rollback", orders(l), l.probes())
		}
		_, res := finishUpgrade(l, rc, errUpgrade)
		if res.FailedStep != "bake" || !strings.Contains(res.Reason, "baton rollback") {
			t.Fatalf("reload result %+v", res)
		}
	})
	t.Run("promote", func(t *testing.T) {
		l, c, _ := baking(t, StrategyBlueGreen)
		l.advance(3 * time.Second)
		cmd(l, control.CmdPromote)
		if c.stage != stagePromoted || !slices.Equal(orders(l), []string{"promote"}) || orderField(l, orderBakeMS) != "3000.000" {
			t.Fatalf("stage %s, orders %v, bake %q ms; want promoted after 3 s", c.stage, orders(l), orderField(l, orderBakeMS))
		}
		probes := l.probes()
		l.advance(time.Minute)
		if l.probes() != probes || len(orders(l)) != 1 {
			t.Fatalf("the bake went on after the promote: %d probes, orders %v", l.probes()-probes, orders(l))
		}
	})
	t.Run("promote refused before the switch", func(t *testing.T) {
		l := serving(t, rolloutConfig(StrategyBlueGreen))
		l.os.smokeHold = make(chan struct{})
		candidateOffered(t, l)
		l.until("smoke test", l.stageIs(stageSmoke))
		cmd(l, control.CmdPromote)
		if l.m.rollout.cand.stage != stageSmoke || len(orders(l)) != 0 {
			t.Fatalf("promoted before the switch: stage %s, orders %v", l.m.rollout.cand.stage, orders(l))
		}
		close(l.os.smokeHold)
	})
}

func TestRolloutCandidateCrashDuringTheBake(t *testing.T) {
	l, c, rc := baking(t, StrategyBlueGreen)
	// A worker of the new generation crashed: its master gave up and says
	// why; users go back before its workers drain.
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token,
		reportFailed: "worker 1 (pid 7) exited with signal SIGSEGV while the generation was starting"}})
	if c.stage != stageRolledBack || !slices.Equal(l.steered(), []int{0, 100, 0}) {
		t.Fatalf("stage %s, steering %v; want users back on the old generation", c.stage, l.steered())
	}
	_, res := finishUpgrade(l, rc, errUpgrade)
	if res.Code != control.ReloadRollback || !strings.Contains(res.Reason, "SIGSEGV") {
		t.Fatalf("reload result %+v", res)
	}
	if l.m.phase != phaseServing {
		t.Fatalf("phase %d: the old master must serve on", l.m.phase)
	}
}

// TestRolloutNewMasterDiedDuringTheBake: tableflip's Upgrade call returns
// an error while the candidate bakes and no order was sent: the new master
// died without a word. Its socket leaves the group with it, but the old
// master still steers users back to its own generation and records a
// rollback, so a reload reports it and nothing is left steered at a
// socket that is gone.
func TestRolloutNewMasterDiedDuringTheBake(t *testing.T) {
	l, c, rc := baking(t, StrategyBlueGreen)
	if len(orders(l)) != 0 || !slices.Equal(l.steered(), []int{0, 100}) {
		t.Fatalf("orders %v, steering %v before the new master died", orders(l), l.steered())
	}
	_, res := finishUpgrade(l, rc, errUpgrade)
	if c.stage != stageRolledBack || !slices.Equal(l.steered(), []int{0, 100, 0}) {
		t.Fatalf("stage %s, steering %v; want users back on the old generation (0)", c.stage, l.steered())
	}
	if res.Code != control.ReloadRollback || res.FailedStep != "bake" || !strings.Contains(res.Reason, errUpgrade.Error()) {
		t.Fatalf("reload result %+v; want a rollback at the bake naming the new master's failure", res)
	}
	if l.m.phase != phaseServing || l.proc(0).got(syscall.SIGTERM) {
		t.Fatalf("phase %d; old worker signalled %v: the old master must serve on", l.m.phase, l.proc(0).signals)
	}
	// The bake's timers are void: nothing is probed or promoted later.
	probes := l.probes()
	l.advance(time.Minute)
	if slices.Contains(orders(l), "promote") || l.probes() != probes {
		t.Fatalf("orders %v, %d probes after the new master died", orders(l), l.probes()-probes)
	}
}

// TestRolloutStopDuringTheBake: baton stop reaches both masters during
// the bake. The old master's loop goes on after its own workers are gone,
// while the candidate runs: it takes the candidate's stop report (users
// back here, and the order that lets the candidate drain at once), and it
// ends only once tableflip's Upgrade has returned with the candidate's
// exit. Its loop used to end with its workers; the candidate then waited
// 1 s for an order nobody sent, and was reaped by the keeper.
func TestRolloutStopDuringTheBake(t *testing.T) {
	l, c, rc := baking(t, StrategyBlueGreen)
	l.signal(syscall.SIGTERM)
	l.exitDrained()
	if l.m.phase != phaseStopping || l.m.finished() {
		t.Fatalf("phase %d, finished %v with the candidate still running; want stopping, not finished", l.m.phase, l.m.finished())
	}
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token,
		reportFailed: "new master received SIGTERM before its workers were ready"}})
	l.step()
	if c.stage != stageRolledBack || !slices.Equal(orders(l), []string{"rollback"}) || !slices.Equal(l.steered(), []int{0, 100, 0}) {
		t.Fatalf("stage %s, orders %v, steering %v; want users back (0) and a rollback order", c.stage, orders(l), l.steered())
	}
	if l.m.finished() {
		t.Fatal("finished before tableflip's Upgrade returned")
	}
	finishUpgrade(l, rc, errUpgrade)
	if !l.m.finished() {
		t.Fatalf("not finished once the candidate exited (candidate %v)", l.m.rollout.cand)
	}
}

func TestRolloutBakeHealthFailure(t *testing.T) {
	l, c, rc := baking(t, StrategyBlueGreen)
	l.os.mu.Lock()
	l.os.probeErrs = []error{nil, errors.New("GET / answered 503")}
	l.os.mu.Unlock()
	l.advance(time.Second)
	l.probed("bake-health", 1)
	if c.stage != stageBake {
		t.Fatalf("stage %s after a passed bake check", c.stage)
	}
	l.advance(time.Second)
	l.until("rollback", l.stageIs(stageRolledBack))
	if !slices.Equal(l.steered(), []int{0, 100, 0}) {
		t.Fatalf("steering %v; want users back", l.steered())
	}
	if ck := l.check("bake-health"); ck.State != "failed" || ck.Probes != 2 || ck.Failed != 1 || ck.LastAnswer != "GET / answered 503" {
		t.Fatalf("bake checks in status: %+v", ck)
	}
	_, res := finishUpgrade(l, rc, errUpgrade)
	if res.FailedStep != "bake" || !strings.Contains(res.Reason, "health check during the bake failed: GET / answered 503") {
		t.Fatalf("reload result %+v", res)
	}
}

func TestRolloutCanaryShare(t *testing.T) {
	l, c, _ := baking(t, StrategyCanary)
	if got := l.steered(); !slices.Equal(got, []int{0, 20}) || l.m.status().Rollout.CanaryPercent != 20 {
		t.Fatalf("steering %v at the switch, want the canary share 20", got)
	}
	l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdPromote}})
	if got := l.steered(); !slices.Equal(got, []int{0, 20, 100}) || c.stage != stagePromoted || l.m.status().Rollout.CanaryPercent != 100 {
		t.Fatalf("steering %v after promote, want 20 then 100", got)
	}

	// Cleared by a rollback: every user back.
	l, c, _ = baking(t, StrategyCanary)
	l.m.onControl(&ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdRollback}})
	if got := l.steered(); !slices.Equal(got, []int{0, 20, 0}) || c.stage != stageRolledBack || l.m.status().Rollout.CanaryPercent != 0 {
		t.Fatalf("steering %v after rollback, want 20 then 0", got)
	}
}

// --- the new master's side ---

// newCandidate boots a new master under an old one and makes its workers
// ready: it offers itself and waits for the checks.
func newCandidate(t *testing.T) *loop {
	t.Helper()
	l := newLoop(t, rolloutConfig(StrategyBlueGreen))
	l.m.origin.parentAlive, l.m.origin.parentPID = true, 1
	l.m.origin.parentNotify, l.m.origin.parentToken = "@old", "tok"
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
	l.m.handle(evNotify{PID: 1, Fields: map[string]string{reportToken: "tok", orderPromote: "1",
		orderChecksMS: "1500.000", orderBakeMS: "10000.000"}})
	servingOfRecord(t, l)
	if l.m.rollout.checks != 1500*time.Millisecond || l.m.rollout.bake != 10*time.Second {
		t.Fatalf("timings from the promote order: checks %s, bake %s", l.m.rollout.checks, l.m.rollout.bake)
	}
}

func TestCandidateRolledBack(t *testing.T) {
	l := newCandidate(t)
	l.m.handle(evNotify{PID: 1, Fields: map[string]string{reportToken: "tok", orderRollback: "baton rollback"}})
	l.step()
	if l.m.phase != phaseStopping || !errors.Is(l.m.bootErr, ErrBootFailed) || l.upg.readies != 0 {
		t.Fatalf("phase %d, bootErr %v, Ready calls %d; want the candidate stopping", l.m.phase, l.m.bootErr, l.upg.readies)
	}
	// Its queue emptied (the fake's at once), its workers drain.
	l.until("the rolled-back workers' drain", func() bool { return l.proc(0).got(syscall.SIGTERM) })
}

// TestCandidateStoppedDuringTheBake: a stop is no failure. The candidate
// tells the old master, drains once users are back there, and exits 0
// (it used to exit 1, "stopped by SIGTERM while starting").
func TestCandidateStoppedDuringTheBake(t *testing.T) {
	l := newCandidate(t)
	l.signal(syscall.SIGTERM)
	if l.m.phase != phaseStopping || l.m.bootErr != nil {
		t.Fatalf("phase %d, bootErr %v; want stopping, no error", l.m.phase, l.m.bootErr)
	}
	if !slices.ContainsFunc(l.os.reports, func(r string) bool { return strings.Contains(r, reportFailed+"=") }) {
		t.Fatalf("the old master was not told: %q", l.os.reports)
	}
	if l.proc(0).got(syscall.SIGTERM) {
		t.Fatal("workers drained before users were back on the old generation")
	}
	l.m.handle(evNotify{PID: 1, Fields: map[string]string{reportToken: "tok", orderRollback: "new master failed"}})
	l.until("the workers' drain", func() bool { return l.proc(0).got(syscall.SIGTERM) && l.proc(1).got(syscall.SIGTERM) })
	l.exitDrained()
	if !l.m.finished() || l.m.bootErr != nil {
		t.Fatalf("finished %v, bootErr %v; want a clean stop", l.m.finished(), l.m.bootErr)
	}
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
