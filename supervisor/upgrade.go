//go:build linux

package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// This file owns the handover protocol, both ends of it. The old master
// (parent) re-executes baton through tableflip with a few variables set;
// the new master (child) reads them at start, and before it signals ready
// or exits it reports to the parent's notify socket, proving who it is
// with a per-upgrade token.

// Variables one master sets for the next one it re-executes. They never
// reach workers (stripEnv drops every BATON_ variable).
const (
	envNextGeneration = "BATON_MASTER_GENERATION"
	envUpgradeStart   = "BATON_UPGRADE_START"  // unix nanoseconds of the USR2
	envUpgradeLaunch  = "BATON_UPGRADE_LAUNCH" // unix nanoseconds of the re-exec (after the pre-flight checks)
	envPreflightCPU   = "BATON_PREFLIGHT_CPU"  // the old master's CPU nanoseconds in its pre-flight checks
	envParentNotify   = "BATON_PARENT_NOTIFY"  // the old master's notify socket
	envUpgradeToken   = "BATON_UPGRADE_TOKEN"  // proves a report comes from that new master
	envNextWorkers    = "BATON_MASTER_WORKERS" // the worker count, as TTIN/TTOU/scale left it
	envMetrics        = "BATON_MASTER_METRICS" // the counters so far (metrics.go)
	envNoTaskLimit    = "BATON_NO_TASK_LIMIT"  // "1": the pre-flight checks just found no task limit (tasks.go)
	envPrevSockets    = "BATON_PREV_SOCKETS"   // blue-green, canary: the old generation's socket inodes, comma-separated (members.go)
	envFollowed       = "BATON_FOLLOWED"       // "1": a reload request waited for this upgrade when it launched (progress.go)
)

// Keys of the child's report on the parent's notify socket.
const (
	reportToken    = "BATON_TOKEN"
	reportReady    = "BATON_UPGRADE_READY"  // JSON of a control.ReloadResult: it took over
	reportFailed   = "BATON_UPGRADE_FAILED" // why it gave up
	reportStderr   = "BATON_STDERR"         // JSON list: its failing worker's last stderr lines
	reportStderrOf = "BATON_STDERR_OF"      // whose lines: "worker 1's stderr"
)

// originState is a new master's part in the upgrade that started it: what
// the old master passed, and how far the handover from it has come. Owned
// by the loop. upgrade.go writes it: at start (readUpgradeEnv), at the
// takeover (tookOver) and when the old master exits (onParentExited); the
// rest of the master only reads it.
type originState struct {
	parentAlive  bool   // the old master has not exited yet
	parentPID    int    // the old master (this master's parent at start)
	parentNotify string // where to report
	// keptNotify releases the socket the reports go over (sys.keepNotify)
	// once the old master is gone; nil when there is none.
	keptNotify     func()
	parentToken    string    // include in reports
	followed       bool      // a reload request follows the upgrade: report each step (progress.go)
	start          time.Time // when the old master got the USR2
	launch         time.Time // when it re-executed baton (steps.go)
	parentDeadline time.Time // the old master has surely exited by then
	workers        int       // the worker count the old master ran, or 0
	metrics        string    // its counters, for metrics.restore
	noTaskLimit    bool      // its pre-flight checks found no task limit (tasks.go)
	prevSockets    []uint64  // the old generation's socket inodes, as its master named them
	servingAt      time.Time // when this generation took over
}

// upgradeState is a master's part in the upgrade it started, as the old
// master. Owned by the loop: upgrade.go runs it; queue.go, hook.go,
// signals.go and carrycounts.go hold it before and between its steps;
// bluegreen.go records why a rollout failed; control.go and progress.go
// hold the reload requests waiting on it.
type upgradeState struct {
	running  bool
	asked    time.Time     // the request reached the loop (before the pre-flight checks)
	askedCPU time.Duration // processCPU then
	at       time.Time
	token    string   // expect in reports from the new master
	reason   string   // from the new master, when it failed
	stderr   []string // its failing worker's last stderr lines
	outputOf string   // whose lines stderr holds ("worker 1's stderr")
	// failedStep names the step that failed (control.ReloadResult.FailedStep).
	failedStep string
	// The new master's notify socket (from its ready report), and the
	// counts already passed to it (carrycounts.go).
	childNotify string
	passed      counts
	ready       *control.ReloadResult // from the new master, when it took over
	last        *control.ReloadResult
	waiters     []*ctlConn    // reload requests answered at the outcome
	hookTook    time.Duration // the --before-upgrade command's run
	waited      time.Duration // the wait for the previous generation's drain
	queuedAt    time.Time     // non-zero while an upgrade waits (queue.go)
	queuedBy    string        // what asked for it first
	limitHits   int64         // the cgroup's pids.events max when it launched; -1: not read (no limit)
	// noTaskLimit: the pre-flight checks found no task limit (tasks.go).
	noTaskLimit bool

	// After a handover, reload requests are answered once every old
	// worker has stopped accepting (said STOPPING=1, or exited), or after
	// stopAckWait.
	handedOverAt time.Time
	drained      int // old workers that exited while draining
	killed       int // of them, SIGKILLed at the drain deadline

	pending     *control.ReloadResult
	accepting   map[*worker]bool
	stopAckStop func()
}

// tookOver records that this generation took over from the old master at
// now; one still running drains for at most drainTimeout after it.
func (o *originState) tookOver(now time.Time, drainTimeout time.Duration) {
	o.servingAt = now
	if o.parentAlive {
		o.parentDeadline = now.Add(drainTimeout + time.Second)
	}
}

// oldWorkerDrained counts an old worker's exit after the handover, for
// the drain's report; killed: SIGKILLed at the drain deadline.
func (u *upgradeState) oldWorkerDrained(killed bool) {
	u.drained++
	if killed {
		u.killed++
	}
}

// stopAckWait bounds how long an answer to "baton reload" waits for the
// old workers' STOPPING=1; servers that never send it cost this much.
const stopAckWait = 250 * time.Millisecond

// readUpgradeEnv takes what the old master passed, if this master was
// started by one, and removes it from the environment. It returns the
// generation number to use.
func (u *originState) readUpgradeEnv(hasParent bool) int {
	gen := 1
	u.parentAlive = hasParent
	if hasParent {
		u.parentPID = os.Getppid()
		if g, err := strconv.Atoi(os.Getenv(envNextGeneration)); err == nil && g > 0 {
			gen = g
		}
		if ns, err := strconv.ParseInt(os.Getenv(envUpgradeStart), 10, 64); err == nil {
			u.start = time.Unix(0, ns)
		}
		if ns, err := strconv.ParseInt(os.Getenv(envUpgradeLaunch), 10, 64); err == nil {
			u.launch = time.Unix(0, ns)
		}
		u.parentNotify = os.Getenv(envParentNotify)
		u.parentToken = os.Getenv(envUpgradeToken)
		if n, err := strconv.Atoi(os.Getenv(envNextWorkers)); err == nil && n > 0 {
			u.workers = n
		}
		u.metrics = os.Getenv(envMetrics)
		u.noTaskLimit = os.Getenv(envNoTaskLimit) == "1"
		u.prevSockets = parseInodes(os.Getenv(envPrevSockets))
		u.followed = os.Getenv(envFollowed) == "1"
	}
	for _, k := range []string{envNextGeneration, envUpgradeStart, envUpgradeLaunch, envPreflightCPU, envParentNotify, envUpgradeToken, envNextWorkers, envMetrics, envNoTaskLimit, envPrevSockets, envFollowed, "TABLEFLIP_HAS_PARENT_7DIU3"} {
		os.Unsetenv(k)
	}
	return gen
}

// requestUpgrade starts a handover to a freshly executed master. It returns
// why it refused, or "" once the upgrade is under way or queued. One at a
// time: tableflip allows a single pair of masters, and a third generation
// would stack drains. While the previous generation drains, the upgrade is
// queued (wait true; at most one, later requests merge into it) and starts
// once the previous master has exited (queue.go); with wait false it is
// refused.
func (m *master) requestUpgrade(trigger string, wait bool) string {
	u := &m.up
	asked, askedCPU := m.sys.now(), processCPU()
	var why string
	var fields []zap.Field
	switch {
	case m.phase == phaseBooting && m.origin.parentPID == 0 && wait:
		m.holdUpgrade(trigger) // signals.go
		return ""
	case m.phase != phaseServing:
		why = "master is not serving (" + m.stateName() + ")"
	case u.running:
		why = "an upgrade is already under way"
		fields = append(fields, zap.Duration("running_for", m.sys.now().Sub(u.at)))
	case m.origin.parentAlive && wait:
		m.queueUpgrade(trigger)
		return ""
	case m.origin.parentAlive:
		left := max(m.origin.parentDeadline.Sub(m.sys.now()), 0).Round(time.Millisecond)
		why = "previous generation still draining (up to " + left.String() + " more)"
		fields = append(fields, zap.Duration("drain_left_at_most", left))
	default:
		if err := m.preflight(); err != nil {
			why = "pre-flight check failed (" + err.Error() + ")"
		} else if err := m.prepareRollout(); err != nil {
			why = "cannot steer connections (" + err.Error() + ")"
		}
	}
	if why != "" {
		m.log.Warn("upgrade refused: "+trimParen(why), append(fields, logevent.UpgradeRefused, zap.String("trigger", trigger), zap.String("reason", why))...)
		m.met.upgrade(outcomeRefused)
		return why
	}
	u.running = true
	u.asked, u.askedCPU, u.at = asked, askedCPU, m.sys.now()
	u.reason, u.stderr, u.ready, u.outputOf, u.failedStep = "", nil, nil, "", ""
	m.rollout.startingPID = 0
	u.hookTook, u.waited = 0, 0
	if !u.queuedAt.IsZero() {
		u.waited = u.at.Sub(u.queuedAt)
		u.queuedAt = time.Time{}
	}
	m.log.Info("upgrade requested", logevent.UpgradeRequested, zap.String("trigger", trigger), zap.Int("new_generation", m.gen+1))
	m.progress(control.Progress{Event: control.EvPreflight, Message: "pre-flight checks passed"})
	m.sdNotify("RELOADING=1\n" + monotonicUsec() + "STATUS=upgrading to generation " + strconv.Itoa(m.gen+1))
	if m.cfg.BeforeUpgrade != "" {
		m.startHook(m.gen+1, true)
		return ""
	}
	m.launchUpgrade()
	return ""
}

// launchUpgrade re-executes baton through tableflip; its outcome arrives
// as evUpgradeDone.
func (m *master) launchUpgrade() {
	u := &m.up
	launch := m.sys.now()
	start := launch
	if u.hookTook == 0 {
		// The pre-flight checks are baton's part of the handover too
		// (after a --before-upgrade hook, the handover starts after it).
		start = u.asked
	}
	u.token = strconv.FormatUint(rand.Uint64(), 36)
	m.passTaskLimit() // tasks.go
	// tableflip re-executes us with os.Environ(); this is how the next
	// master learns its generation, when the deploy began (after the
	// hook: the handover's time is the new generation's), where to
	// report, the worker count (TTIN/TTOU survive a deploy) and the
	// metrics so far.
	m.sys.setenv(envNextGeneration, strconv.Itoa(m.gen+1))
	m.sys.setenv(envUpgradeStart, strconv.FormatInt(start.UnixNano(), 10))
	m.sys.setenv(envUpgradeLaunch, strconv.FormatInt(launch.UnixNano(), 10))
	preflightCPU := ""
	if u.hookTook == 0 {
		preflightCPU = strconv.FormatInt(int64(processCPU()-u.askedCPU), 10)
	}
	m.sys.setenv(envPreflightCPU, preflightCPU)
	m.sys.setenv(envParentNotify, m.notifyAddr())
	m.sys.setenv(envUpgradeToken, u.token)
	m.sys.setenv(envNextWorkers, strconv.Itoa(len(m.slots)))
	m.sys.setenv(envMetrics, m.met.carry())
	m.sys.setenv(envPrevSockets, m.socketInodes())
	followed := ""
	if len(u.waiters) > 0 {
		followed = "1"
	}
	m.sys.setenv(envFollowed, followed)
	u.passed, u.childNotify = m.met.counts(), ""
	go func() {
		err := m.upg.Upgrade()
		if m.notify != nil {
			// The new master reports how it went before it signals ready
			// or exits; let that report reach the loop first.
			m.notify.Barrier(100 * time.Millisecond)
		}
		m.post(evUpgradeDone{err})
	}()
}

// preflight checks what the new master will need before anything is
// forked: the directory it is executed in (this master's), the baton
// binary as tableflip will exec it (os.Args[0], absolute since start), the
// workers' directory and the command, each resolved anew so that a moved
// symlink is followed.
func (m *master) preflight() error {
	if wd, err := os.Getwd(); err != nil {
		return fmt.Errorf("master's working directory %q: %w", wd, osutil.Cause(err))
	}
	if _, err := exec.LookPath(os.Args[0]); err != nil {
		return fmt.Errorf("baton binary %q: %w", os.Args[0], osutil.Cause(err))
	}
	if err := m.cfg.Check(); err != nil {
		return err
	}
	return m.upgradeTasks() // tasks.go
}

func trimParen(s string) string {
	if i := strings.IndexByte(s, '('); i >= 0 {
		return s[:max(i-1, 0)]
	}
	return s
}

func (m *master) onUpgradeDone(err error) {
	u := &m.up
	u.running = false
	took := m.sys.now().Sub(u.at)
	if err != nil {
		// tableflip v1.2.3 does not close its ends of the child's pipes
		// (ready writer, names reader) in the parent; only their finalizers
		// do. Collect now so a failed upgrade leaves no fds behind until
		// some later GC. Once more a second later: what tableflip's own
		// goroutines still held at the first collection is unreachable by
		// then (a loaded machine once kept an fd past the first).
		runtime.GC()
		m.sys.afterFunc(time.Second, runtime.GC)
		res := control.ReloadResult{Code: control.ReloadRollback, OldMasterPID: m.self, Generation: m.gen + 1,
			Reason: u.reason, Stderr: u.stderr, TotalMS: ms(took), HookMS: ms(u.hookTook), WaitedMS: ms(u.waited)}
		m.rolloutDone(err, &res)
		res.OutputOf, res.FailedStep = u.outputOf, u.failedStep
		if res.FailedStep == "" {
			res.FailedStep = "start"
		}
		if res.Reason == "" {
			res.Reason = m.up.reason
		}
		if res.Reason == "" {
			res.Reason = "new master failed: " + err.Error()
		}
		res.Reason = m.tasksReason(u.limitHits, res.Reason) // tasks.go
		if len(res.Stderr) == 0 {
			res.Stderr = u.stderr
		}
		if m.phase != phaseServing {
			m.log.Info("upgrade abandoned", zap.String("reason", res.Reason))
		} else {
			m.log.Error("upgrade failed: old generation keeps serving", logevent.UpgradeFailed,
				zap.String("reason", res.Reason), zap.Duration("took", took),
				zap.Int("goroutines", runtime.NumGoroutine()))
			m.sdNotify("READY=1\nSTATUS=upgrade failed, generation " + strconv.Itoa(m.gen) + " serving: " + res.Reason)
		}
		m.met.upgradeFailed(m.sys.now())
		m.progress(control.Progress{Event: control.EvFailed, Message: "upgrade failed: " + res.Reason})
		m.finishReload(res)
		return
	}
	res := control.ReloadResult{Generation: m.gen + 1, TotalMS: ms(took)}
	if u.ready != nil {
		res = *u.ready
	}
	res.OK, res.Code, res.OldMasterPID = true, control.ReloadOK, m.self
	res.HookMS, res.WaitedMS = ms(u.hookTook), ms(u.waited)
	m.rolloutDone(nil, &res)
	m.log.Info("handed over to new master: draining old generation", logevent.HandedOver,
		zap.Int("new_master_pid", res.NewMasterPID), zap.Duration("handover", took),
		zap.Float64("workers_starting_ms", res.WorkersStartingMS), zap.Int("workers", len(m.procs)))
	m.phase = phaseHandedOver
	u.handedOverAt = m.sys.now()
	u.drained, u.killed = 0, 0
	if m.control != nil {
		// The new master answers on the shared socket from now on.
		m.control.Close()
		m.control = nil
	}
	m.stopMetrics() // and serves /metrics, on the socket both hold
	// The deploy script hears "ok" once the old code takes no more
	// connections, so whatever it checks next is the new release. Only
	// workers that were serving are waited for: draining ones have
	// stopped accepting, and starting ones would not say STOPPING=1.
	u.pending = &res
	u.accepting = make(map[*worker]bool, len(m.procs))
	for _, w := range m.procs {
		if w.state == stateReady {
			u.accepting[w] = true
		}
	}
	m.drainWhenIdle() // blue-green: once the old socket's queue is empty
	m.progress(control.Progress{Event: control.EvHandover, PID: res.NewMasterPID, Count: len(m.procs),
		Message: fmt.Sprintf("new master %d serving generation %d; draining %d old workers", res.NewMasterPID, res.Generation, len(m.procs))})
	if len(u.accepting) == 0 {
		m.answerReload()
		return
	}
	u.stopAckStop = m.sys.afterFunc(stopAckWait, func() { m.post(evStopAckTimeout{}) })
}

// oldWorkerStopped notes that w no longer accepts, after a handover.
func (m *master) oldWorkerStopped(w *worker) {
	u := &m.up
	if u.pending == nil || !u.accepting[w] {
		return
	}
	delete(u.accepting, w)
	if len(u.accepting) == 0 {
		m.answerReload()
	}
}

// answerReload answers the reload requests held after a handover.
func (m *master) answerReload() {
	u := &m.up
	if u.pending == nil {
		return
	}
	if u.stopAckStop != nil {
		u.stopAckStop()
	}
	if len(u.accepting) > 0 {
		m.log.Info("answering reload: old workers still accepting after the wait",
			zap.Int("workers", len(u.accepting)), zap.Duration("waited", stopAckWait))
		m.progress(control.Progress{Event: control.EvStopped, Count: len(u.accepting),
			Message: fmt.Sprintf("%d old workers still accepting after %s; answering anyway", len(u.accepting), stopAckWait)})
	} else {
		m.progress(control.Progress{Event: control.EvStopped, Message: "old workers no longer accept connections"})
	}
	res := *u.pending
	u.pending, u.accepting = nil, nil
	m.finishReload(res)
}

func (m *master) finishReload(res control.ReloadResult) {
	res.PIDNamespace = osutil.PIDNamespace()
	if res.Code != control.ReloadRefused {
		m.up.last = &res
	}
	for _, c := range m.up.waiters {
		c.finish(res)
	}
	m.up.waiters = nil
}

// onChildReport takes a new master's report of its outcome. It reports
// false when fields are no such report.
func (m *master) onChildReport(pid int, fields map[string]string) bool {
	u := &m.up
	if reason, ok := fields[reportFailed]; ok {
		u.reason = reason
		if s, ok := fields[reportStderr]; ok {
			json.Unmarshal([]byte(s), &u.stderr)
			u.outputOf = fields[reportStderrOf]
		}
		m.onChildFailed(reason)
		return true
	}
	if _, ok := fields[reportCandidate]; ok {
		m.onCandidate(pid, fields)
		return true
	}
	if js, ok := fields[reportProgress]; ok {
		var p control.Progress
		if json.Unmarshal([]byte(js), &p) == nil {
			if p.Event == control.EvMasterStarted {
				p.PID = pid
				m.rollout.startingPID = pid
			}
			m.progress(p)
		}
		return true
	}
	if js, ok := fields[reportReady]; ok {
		var r control.ReloadResult
		if json.Unmarshal([]byte(js), &r) == nil {
			r.NewMasterPID = pid
			u.ready = &r
		}
		u.childNotify = fields[reportNotify]
		return true
	}
	return false
}

// reportReady tells the old master, if any, that this generation is ready,
// with how long it took. It must reach the old master before tableflip's
// Ready does.
func (m *master) reportReady(res control.ReloadResult) {
	if m.origin.parentNotify == "" {
		return
	}
	b, _ := json.Marshal(res)
	m.sys.notifyTo(m.origin.parentNotify, reportToken+"="+m.origin.parentToken+"\n"+reportReady+"="+string(b)+"\n"+reportNotify+"="+m.notifyAddr())
}

// reportFailure tells the old master, if any, why this generation failed.
func (m *master) reportFailure(reason string) {
	if m.origin.parentNotify == "" {
		return
	}
	msg := reportToken + "=" + m.origin.parentToken + "\n" + reportFailed + "=" + strings.ReplaceAll(reason, "\n", " ")
	if len(m.failedStderr) > 0 {
		b, _ := json.Marshal(m.failedStderr)
		msg += "\n" + reportStderr + "=" + string(b) + "\n" + reportStderrOf + "=" + m.failedOf
	}
	if err := m.sys.notifyTo(m.origin.parentNotify, msg); err != nil {
		m.log.Warn("could not tell the old master why this upgrade failed", zap.Error(err))
		return
	}
	failureReported.Store(true)
}

// waitForParent posts evParentExited once the old master has exited.
func (m *master) waitForParent() {
	m.upg.WaitForParent(context.Background())
	m.post(evParentExited{})
}

func (m *master) onParentExited() {
	m.origin.parentDeadline = time.Time{}
	m.origin.parentAlive = false
	if m.origin.keptNotify != nil {
		m.origin.keptNotify()
		m.origin.keptNotify = nil
	}
	m.resteerAlone() // bluegreen.go
	if m.phase == phaseBooting && m.rollout.offered {
		// The old master died (OOM, SIGKILL) while checking this
		// generation: its socket is gone from the group, so users reach
		// this one already. A parent that is gone means this master is
		// now the master.
		m.log.Warn("old master gone during the rollout: this generation takes over")
		m.bootDone()
	}
	if !m.origin.servingAt.IsZero() {
		// The old master drained from about when this one took over.
		m.met.drained(m.sys.now().Sub(m.origin.servingAt))
	}
	m.startQueued()
	// The goroutine count is here to make leaks visible in tests.
	m.trim() // before the line: whoever waits for it measures a trimmed master
	m.log.Info("previous master exited", logevent.PreviousMasterExited, zap.Int("goroutines", runtime.NumGoroutine()))
}
