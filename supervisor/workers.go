//go:build linux

package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// This file owns a generation's workers: spawn, readiness, exit, crash
// restart with backoff, drain, and the timers of each. Every timer belongs
// to a worker or a slot and is stopped with it; its event names the object,
// so a late event for an object that is gone is ignored.

type workerState int

const (
	stateStarting workerState = iota
	stateReady
	stateDraining
)

func (s workerState) String() string {
	return [...]string{"starting", "ready", "draining"}[s]
}

// worker is one running server process. Only the master's loop touches it.
type worker struct {
	index   int
	pid     int // for logs, status and notify attribution; never for signals
	proc    process
	state   workerState
	started time.Time
	drainAt time.Time
	killed  bool // SIGKILLed at the drain deadline
	exited  bool // its exit was handled; late events for it are ignored
	log     *zap.Logger
	// notified: it sent something on NOTIFY_SOCKET (for the hint when
	// --ready notify times out)
	notified bool
	wasReady bool // it was ready once (a draining worker has its handlers)
	usr1Held bool // a USR1 came while it started: sent once it is ready

	tree *procTree // its process tree (tree.go); nil in in-process tests

	stopReady      func() // ends the readiness watch
	stopReadyTimer func()
	stopDrainTimer func()
}

func (w *worker) String() string {
	return fmt.Sprintf("worker %d (pid %d)", w.index, w.pid)
}

// cancelTimers stops everything that would post an event about w.
func (w *worker) cancelTimers() {
	for _, stop := range []func(){w.stopReady, w.stopReadyTimer, w.stopDrainTimer} {
		if stop != nil {
			stop()
		}
	}
}

// slot is a worker index: the worker holding it now and its crash history.
type slot struct {
	index       int
	cur         *worker
	backoff     time.Duration
	restarts    int
	stopRestart func() // non-nil while a restart is scheduled
}

func (s *slot) cancelRestart() {
	if s.stopRestart != nil {
		s.stopRestart()
		s.stopRestart = nil
	}
}

const (
	backoffMin    = 100 * time.Millisecond
	backoffMax    = 10 * time.Second
	backoffStable = 10 * time.Second // up this long: the next crash restarts at backoffMin again
)

// addSlot appends a worker index and starts its worker.
func (m *master) addSlot() { m.addSlots(1) }

// addSlots appends n worker indexes and starts their workers at once.
func (m *master) addSlots(n int) {
	slots := make([]*slot, n)
	for i := range slots {
		slots[i] = &slot{index: len(m.slots), backoff: backoffMin}
		m.slots = append(m.slots, slots[i])
	}
	m.startWorkers(slots)
}

// liveSlot reports whether s is still one of the master's slots.
func (m *master) liveSlot(s *slot) bool {
	return s.index < len(m.slots) && m.slots[s.index] == s
}

func (m *master) startWorker(s *slot) { m.startWorkers([]*slot{s}) }

// launch is one worker's start: prepared by the loop, forked by
// startWorkers (possibly beside others), recorded by the loop.
type launch struct {
	s    *slot
	w    *worker
	env  []string
	log  *zap.Logger
	tree *procTree
	cg   *os.File // the cgroup it is cloned into, closed once forked
	spec procSpec
	proc process
	err  error
	at   time.Time // its fork returned
}

// startWorkers starts a worker in each of slots. The forks are one batch
// (sys's startAll); the loop waits for all of them, then records the
// started ones in slot order before it handles any failure, so that a
// generation that fails to start drains every worker it has.
func (m *master) startWorkers(slots []*slot) {
	ls := make([]*launch, len(slots))
	for i, s := range slots {
		ls[i] = m.prepareStart(s)
	}
	specs, exits := make([]procSpec, len(ls)), make([]func(exitStatus), len(ls))
	for i, l := range ls {
		specs[i] = l.spec
		exits[i] = func(st exitStatus) {
			if m.notify != nil {
				// Datagrams are read in order: a worker's last READY=1 is
				// handled before its exit (a server that says READY=1 and
				// dies at once was ready, not a failed start).
				m.notify.Barrier(100 * time.Millisecond)
			}
			m.post(evExit{l.w, st})
		}
	}
	for i, st := range m.sys.startAll(specs, exits) {
		ls[i].proc, ls[i].err, ls[i].at = st.proc, st.err, st.at
	}
	for _, l := range ls {
		if l.cg != nil {
			l.cg.Close()
		}
		if l.err == nil {
			m.workerStarted(l)
		}
	}
	for _, l := range ls {
		if l.err != nil {
			m.workerStartFailed(l)
		}
	}
}

// prepareStart is what the loop does for a worker before its fork.
func (m *master) prepareStart(s *slot) *launch {
	l := &launch{s: s, w: &worker{index: s.index, state: stateStarting}, env: m.workerEnv(s.index),
		log: m.log.With(zap.Int("worker", s.index))}
	path, argv := shimCommand(m.shell, m.pinned.command)
	tree, treeEnv, cgDir := m.newTree(s.index)
	l.tree, l.cg = tree, cgDir
	l.spec = procSpec{
		path: path, argv: argv, env: append(l.env, treeEnv...), dir: m.pinned.dir, cgroup: cgDir,
		files: m.files, cred: m.cfg.Credential,
		output: m.cfg.WorkerOutput, log: l.log, onLine: m.outputForwarder(s.index),
	}
	return l
}

func (m *master) workerStartFailed(l *launch) {
	s := l.s
	m.removeTree(l.tree)
	m.log.Error("worker start failed", zap.Int("worker", s.index), zap.Error(l.err))
	if m.phase == phaseBooting {
		// No process, so no exit or timeout would ever end the boot.
		reason := fmt.Sprintf("worker %d could not start: %v", s.index, l.err)
		m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, reason), reason)
		return
	}
	m.scheduleRestart(s, "start_error")
}

func (m *master) workerStarted(l *launch) {
	s, w, proc := l.s, l.w, l.proc
	w.proc, w.pid, w.started = proc, proc.Pid(), l.at
	if l.tree != nil {
		l.tree.w, w.tree = w, l.tree
	}
	w.log = l.log.With(zap.Int("pid", w.pid))
	s.cur = w
	m.procs[w.pid] = w
	w.log.Info("worker started", logevent.WorkerStarted, zap.Int("restarts", s.restarts))
	m.met.workerStarted()
	m.step(control.Progress{Event: control.EvWorkerStarted, Worker: intp(w.index), PID: w.pid,
		Message: fmt.Sprintf("worker %d started (pid %d)", w.index, w.pid)})
	w.stopReadyTimer = m.sys.afterFunc(m.cfg.ReadyTimeout, func() { m.post(evReadyTimeout{w}) })
	w.stopReady = m.ready.watch(w, l.env, func() { m.post(evReady{w}) })
}

// workerEnv is the environment of worker index of this generation.
func (m *master) workerEnv(index int) []string {
	env := append(m.baseEnv[:len(m.baseEnv):len(m.baseEnv)], m.compatEnv()...)
	return append(env,
		"LISTEN_FDS="+strconv.Itoa(len(m.files)),
		"LISTEN_FDNAMES="+m.fdNames,
		"NOTIFY_SOCKET="+m.notifyAddr(),
		"BATON_WORKER="+strconv.Itoa(index),
		"BATON_GENERATION="+strconv.Itoa(m.gen),
		envShimPPID+"="+strconv.Itoa(m.self),
	)
}

func (m *master) markReady(w *worker) {
	if w.exited || w.state != stateStarting {
		return
	}
	w.state, w.wasReady = stateReady, true
	m.readyUSR1(w)
	w.stopReady()
	w.stopReadyTimer()
	startup := m.sys.now().Sub(w.started)
	if m.phase == phaseServing && !m.origin.parentAlive && !m.up.running && m.allReady() {
		// A replacement (a crash, TTIN) that makes the generation whole
		// again while this master serves alone: starting it mapped the
		// spawn path again; back to rest, before the line, so that
		// whoever waits for it measures a trimmed master.
		m.trim()
	}
	w.log.Info("worker ready", logevent.WorkerReady, zap.Duration("startup", startup))
	m.step(control.Progress{Event: control.EvWorkerReady, Worker: intp(w.index), PID: w.pid, DurationMS: ms(startup),
		Message: fmt.Sprintf("worker %d ready (pid %d) after %s", w.index, w.pid, startup.Round(time.Millisecond))})
	if m.phase == phaseBooting {
		m.steps.workerStarted(startup)
		m.bootWhenAllReady()
	}
}

// bootWhenAllReady makes a booting generation ready once every worker it
// still has is: after a worker's readiness, and after a TTOU that removed
// the one it still waited for.
func (m *master) bootWhenAllReady() {
	if m.phase != phaseBooting || m.rollout.offered || !m.allReady() {
		return
	}
	m.steps.mark("workers_ready", m.sys.now(), processCPU())
	m.generationReady()
}

func (m *master) allReady() bool {
	for _, s := range m.slots {
		if s.cur == nil || s.cur.state != stateReady {
			return false
		}
	}
	return true
}

func (m *master) onReadyTimeout(w *worker) {
	if w.exited || w.state != stateStarting {
		return
	}
	hint := startHint(w.proc.StderrTail(), true, w.notified, m.ready.byNotify())
	w.log.Error("worker not ready in time", logevent.WorkerReadyTimeout, zap.Duration("ready_timeout", m.cfg.ReadyTimeout), zap.String("hint", hint))
	if m.phase == phaseBooting {
		m.failedStderr, m.failedOf = w.proc.StderrTail(), fmt.Sprintf("worker %d's stderr", w.index)
		m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, withHint(fmt.Sprintf("worker %d (pid %d) not ready after %s", w.index, w.pid, m.cfg.ReadyTimeout), hint)),
			withHint(fmt.Sprintf("worker %d (pid %d) not ready after %s (--ready-timeout)", w.index, w.pid, m.cfg.ReadyTimeout), hint))
		return
	}
	// A replacement that never comes up: drain it; its exit schedules another.
	m.drain(w)
}

func (m *master) onExit(w *worker, st exitStatus) {
	if w.exited {
		return
	}
	w.exited = true
	w.cancelTimers()
	m.treeAfterExit(w)
	m.oldWorkerStopped(w)
	if m.procs[w.pid] == w {
		delete(m.procs, w.pid)
	}
	uptime := m.sys.now().Sub(w.started)
	fields := append(st.fields(), zap.Duration("uptime", uptime))
	var s *slot
	if w.index < len(m.slots) && m.slots[w.index].cur == w {
		s = m.slots[w.index]
		s.cur = nil
	}
	switch {
	case w.state == stateDraining:
		m.up.oldWorkerDrained(w.killed)
		if w.killed {
			m.met.workerExited("killed")
		} else {
			m.met.workerExited("drained")
		}
		w.log.Info("worker drained", append(fields, logevent.WorkerDrained, zap.Duration("drain", m.sys.now().Sub(w.drainAt)), zap.Bool("killed", w.killed))...)
		if s != nil && m.phase == phaseServing {
			// Drained but still holding its slot: a replacement that never
			// became ready. Try again, with backoff.
			m.scheduleRestart(s, "not_ready")
		}
	case m.phase == phaseBooting:
		// A crash while the generation starts fails the generation, even
		// from a worker that had said READY=1: it is not healthy.
		when := "before it was ready"
		if w.state == stateReady {
			when = "while the generation was starting (after it was ready)"
		}
		w.log.Error("worker exited "+when, fields...)
		m.met.workerExited("failed_start")
		m.failedStderr, m.failedOf = w.proc.StderrTail(), fmt.Sprintf("worker %d's stderr", w.index)
		reason := withHint(fmt.Sprintf("worker %d (pid %d) exited with %s %s", w.index, w.pid, st, when),
			startHint(m.failedStderr, false, w.notified, m.ready.byNotify()))
		m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, reason), reason)
	case m.phase == phaseServing && s != nil:
		if hint := startHint(w.proc.StderrTail(), false, w.notified, m.ready.byNotify()); hint != "" {
			fields = append(fields, zap.String("hint", hint))
		}
		w.log.Warn("worker exited unexpectedly", append(fields, logevent.WorkerCrashed)...)
		m.met.workerExited("crashed")
		if uptime >= backoffStable {
			s.backoff = backoffMin
		}
		m.scheduleRestart(s, "crash")
	default:
		w.log.Info("worker exited", fields...)
		m.met.workerExited("other")
	}
}

// scheduleRestart restarts s's worker after its backoff; reason is a
// baton_worker_restarts_total label.
func (m *master) scheduleRestart(s *slot, reason string) {
	if m.phase != phaseServing && m.phase != phaseBooting {
		return
	}
	m.met.workerRestart(reason)
	d := s.backoff
	s.backoff = min(s.backoff*2, backoffMax)
	s.cancelRestart()
	s.stopRestart = m.sys.afterFunc(d, func() { m.post(evRestart{s}) })
	m.log.Info("worker restart scheduled", logevent.WorkerRestartScheduled, zap.Int("worker", s.index), zap.Duration("backoff", d))
}

func (m *master) onRestart(s *slot) {
	if s.stopRestart == nil || !m.liveSlot(s) || s.cur != nil || m.phase != phaseServing {
		return
	}
	s.stopRestart = nil
	s.restarts++
	m.startWorker(s)
}

// drain asks a worker to finish in-flight work and exit, and SIGKILLs its
// process group at the drain deadline unless it has exited by then.
func (m *master) drain(w *worker) {
	if w.exited || w.state == stateDraining {
		return
	}
	w.state = stateDraining
	w.drainAt = m.sys.now()
	w.stopReady()
	w.stopReadyTimer()
	w.log.Info("draining worker", logevent.WorkerDraining, zap.String("signal", sigName(m.cfg.DrainSignal)))
	// Its helpers drain with it. They are signalled first, while the
	// worker surely runs: once it exits (the drain signal can make that
	// quick), its orphans are the keeper's children, found there only by
	// their marker (subreaper mechanism, walkMarked).
	m.signalTree(w, m.cfg.DrainSignal)
	w.proc.Signal(m.cfg.DrainSignal)
	w.stopDrainTimer = m.sys.afterFunc(m.cfg.DrainTimeout, func() { m.post(evDrainTimeout{w}) })
}

func (m *master) onDrainTimeout(w *worker) {
	if w.exited {
		return
	}
	w.log.Warn("drain timeout: killing worker", logevent.WorkerDrainTimeout, zap.Duration("drain_timeout", m.cfg.DrainTimeout))
	w.killed = true
	w.proc.SignalGroup(syscall.SIGKILL) // its process group: helpers too
	m.killTree(w.tree, "drain timeout")
}

func (m *master) drainAll() {
	for _, s := range m.slots {
		s.cancelRestart()
	}
	for _, w := range m.procs {
		m.drain(w)
	}
}

func (m *master) killAll() {
	m.stopHook(syscall.SIGKILL)
	m.killHookLeftovers() // hookleft.go
	for _, w := range m.procs {
		w.killed = true
		w.proc.SignalGroup(syscall.SIGKILL)
	}
	m.killTrees()
}

// addWorker is TTIN: one worker more.
func (m *master) addWorker() {
	if m.phase != phaseServing && m.phase != phaseBooting {
		return
	}
	if m.up.running {
		m.log.Warn("worker count not changed: an upgrade is under way (the new generation has its count)")
		return
	}
	if err := m.addTasks(1); err != nil {
		m.log.Warn("worker count not increased: "+err.Error(), logevent.WorkerCountUnchanged, zap.Int("workers", len(m.slots)), zap.String("reason", err.Error()),
			zap.String("limit", shortLimit(err)))
		return
	}
	m.log.Info("worker count increased", logevent.WorkerCountIncreased, zap.Int("workers", len(m.slots)+1))
	m.addSlot()
}

// removeWorker is TTOU: one worker fewer (never below one); the removed one
// drains.
func (m *master) removeWorker() {
	if m.phase != phaseServing && m.phase != phaseBooting {
		return
	}
	if m.up.running {
		m.log.Warn("worker count not changed: an upgrade is under way (the new generation has its count)")
		return
	}
	if len(m.slots) <= 1 {
		m.log.Warn("worker count not decreased: at least one worker runs", logevent.WorkerCountUnchanged, zap.Int("workers", len(m.slots)))
		return
	}
	s := m.slots[len(m.slots)-1]
	m.slots = m.slots[:len(m.slots)-1]
	s.cancelRestart()
	m.log.Info("worker count decreased", zap.Int("workers", len(m.slots)))
	if s.cur != nil {
		m.drain(s.cur)
	}
	m.bootWhenAllReady()
}

// scale sets the worker count to n (baton scale), as TTIN and TTOU would
// one at a time, and returns the count before. It refuses unless the
// master serves.
func (m *master) scale(n int) (int, error) {
	prev := len(m.slots)
	if m.phase != phaseServing {
		return prev, fmt.Errorf("master is not serving (%s)", m.stateName())
	}
	if m.up.running {
		// The new master took its count when it started: a change now
		// would be lost with this generation.
		return prev, fmt.Errorf("an upgrade is under way; scale once it is over")
	}
	if n > prev {
		if err := m.addTasks(n - prev); err != nil {
			return prev, err
		}
	}
	for len(m.slots) < n {
		m.addWorker()
	}
	for len(m.slots) > n {
		m.removeWorker()
	}
	m.log.Info("worker count set", zap.Int("previous", prev), zap.Int("workers", n))
	return prev, nil
}
