//go:build linux

package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// This file owns the blue-green and canary rollout, both ends of it.
//
// Each generation has its own sockets in one SO_REUSEPORT group per
// address (sockets/reuseport.go); the old master's steering program keeps
// users on its own socket (index 0) and sends only baton's probes to the
// candidate's (index 1). The sequence runs inside the old master's
// tableflip Upgrade call:
//
//	new master: workers ready -> reports "candidate" (not Ready) -> waits
//	old master: health check -> smoke test -> switch (one setsockopt)
//	            -> bake (health checks every --health-interval)
//	            -> promote: tells the new master, which calls Ready
//	            -> Upgrade returns; the old generation's accept queue is
//	               emptied by its workers, then they drain
//	rollback:   the old master swaps the program back (its workers never
//	            stopped), then tells the new master, which lets its
//	            workers empty their queue and drains them; for tableflip
//	            this is a failed upgrade, and the old master stays a full
//	            master that can upgrade again.
//
// Orders from the old master reach the new one as datagrams on the new
// master's notify socket, carrying the upgrade's token.

// Report and order keys on the notify sockets, besides upgrade.go's.
const (
	reportCandidate = "BATON_UPGRADE_CANDIDATE" // JSON ReloadResult: workers ready, awaiting promotion
	reportNotify    = "BATON_CANDIDATE_NOTIFY"  // the new master's notify socket, for orders
	reportSockets   = "BATON_CANDIDATE_SOCKETS" // its sockets' inodes, comma-separated (members.go)
	orderPromote    = "BATON_PROMOTE"           // "1": call Ready now
	orderRollback   = "BATON_ROLLBACK"          // reason; users are back on the old generation
	// With orderPromote: how long the checks before the switch and the
	// bake took, in ms, for the new master's timings (rolloutview.go).
	orderChecksMS = "BATON_CHECKS_MS"
	orderBakeMS   = "BATON_BAKE_MS"
)

// switchBackWait bounds how long a failing candidate waits for the old
// master to confirm that users are back on the old generation before it
// drains anyway.
const switchBackWait = time.Second

// Stages of a candidate, as seen by the old master.
type stage int

const (
	stageHealth stage = iota
	stageSmoke
	stageBake
	stagePromoted
	stageRolledBack
)

func (s stage) String() string {
	return [...]string{"health-check", "smoke-test", "bake", "promoted", "rolled-back"}[s]
}

// candidate is the new generation of the upgrade under way, for the old
// master's loop.
type candidate struct {
	pid    int
	notify string // its master's notify socket
	// sockets are its sockets' inodes as its master reported them; nil
	// from a master that did not (the membership check then reads its
	// fds in /proc).
	sockets  []uint64
	gen      int
	stage    stage
	switched bool
	steps    []control.Step
	readyAt  time.Time // when its master reported its workers ready
	switchAt time.Time
	weight   int                   // percent of new connections it gets once switched
	checks   []control.CheckStatus // for baton status (rolloutview.go)
	stops    []func()              // the health stage's deadline, the smoke test, the bake's timer
	// probe stops the one pending health probe, or the timer that starts
	// the next: one at a time, before the switch and during the bake, so
	// a long bake holds one, not a list.
	probe func()
	// probeErr is the last failed probe's answer before the switch: what
	// the health stage reports if --health-timeout passes.
	probeErr error
}

func (c *candidate) stopAll() {
	for _, f := range c.stops {
		f()
	}
	c.stops = nil
	c.setProbe(nil)
}

// setProbe stops the pending probe or its timer, if any, and keeps stop
// as the next one's.
func (c *candidate) setProbe(stop func()) {
	if c.probe != nil {
		c.probe()
	}
	c.probe = stop
}

// rolloutState is a master's part in a blue-green or canary upgrade. Owned
// by the loop.
type rolloutState struct {
	// As the old master.
	cand *candidate
	// As the new master.
	offered      bool   // told the old master our workers are ready
	switchedBack bool   // the old master confirmed users are back on its socket
	afterIdle    func() // runs once our accept queue is empty
	stopWait     func()
	readyAt      time.Time     // when our workers were all ready (the app's start-up ended)
	checks       time.Duration // the old master's checks before the switch, from its promote order
	bake         time.Duration // and the bake
	// As the old master, before the candidate reports: its master's pid
	// (from its first progress line), for baton status.
	startingPID int
	// As the old master after a handover: the new master's pid, whose
	// socket the classic program steers to once ours leaves (leaveGroup).
	successor int
}

// step records a stage for baton reload.
func (m *master) rolloutStep(c *candidate, name, detail string) {
	c.steps = append(c.steps, control.Step{Name: name, AtMS: ms(m.sys.now().Sub(m.up.at)), Detail: detail})
	// And as it happens, to a reload that follows the upgrade.
	msg := name
	if detail != "" {
		msg += ": " + detail
	}
	m.progress(control.Progress{Event: "rollout_" + name, Message: msg})
}

// steer attaches the steering program to this master's own sockets:
// canary percent of users' new connections to the other generation, the
// rest to ours.
func (m *master) steer(canary int) error { return m.sys.steer(m.lns, canary) }

// prepareSteer loads the eBPF programs this master's next upgrade attaches
// (users kept here before it, the switch's weight, a canary's promotion)
// while it is idle, so that the upgrade only attaches them: called before
// each trim, which then gives back the pages the loading mapped. Loaded
// once for the sockets' life; a failure is logged and the upgrade loads
// them itself.
func (m *master) prepareSteer() {
	r := m.cfg.Rollout
	if m.lns == nil || !r.Strategy.steered() {
		return
	}
	pcts := []int{0, 100}
	if r.Strategy == StrategyCanary {
		pcts = append(pcts, r.CanaryWeight)
	}
	if err := m.lns.PrepareSteer(pcts...); err != nil {
		m.log.Warn("steering programs not loaded ahead: the next upgrade loads them", zap.Error(err))
	}
}

// prepareRollout runs before an upgrade starts: users stay on this
// master's socket, the only one in the group now (index 0), and whatever
// joins next (index 1) gets only probes.
func (m *master) prepareRollout() error {
	if !m.cfg.Rollout.Strategy.steered() {
		return nil
	}
	m.rollout.cand = nil
	m.group.soleSteer = false
	if why := m.checkBeforeSwitch(); why != "" {
		return errors.New(why)
	}
	if m.lns != nil {
		// The map holds our socket and nothing else: a failed candidate's
		// or a leftover's socket under the other key is dropped.
		if err := m.lns.Claim(false); err != nil {
			return err
		}
	}
	return m.steer(0)
}

// --- the old master's side ---

// onCandidate handles the new master's report that its workers are ready.
func (m *master) onCandidate(pid int, fields map[string]string) {
	if !m.up.running || m.rollout.cand != nil {
		return
	}
	c := &candidate{pid: pid, notify: fields[reportNotify], gen: m.gen + 1, readyAt: m.sys.now()}
	c.sockets = parseInodes(fields[reportSockets])
	m.rollout.cand = c
	m.rolloutStep(c, "ready", "new generation's workers ready; no user connection can reach them")
	m.log.Info("candidate generation ready: checking it before the switch",
		zap.Int("new_master_pid", pid), zap.Int("new_generation", c.gen))
	m.startHealth(c)
}

func (m *master) startHealth(c *candidate) {
	if m.cfg.Rollout.HealthCheck.Kind == "" {
		m.startSmoke(c)
		return
	}
	c.stage = stageHealth
	m.checkStarted(c, "health-check")
	c.stops = append(c.stops, m.sys.afterFunc(m.cfg.Rollout.HealthTimeout, func() { m.post(evHealthTimeout{c}) }))
	m.onProbeDue(c)
}

// healthRetry is the pause between a failed probe before the switch and
// the next.
const healthRetry = 100 * time.Millisecond

// onProbeDue runs one health probe of c, before the switch or during the
// bake; its outcome comes back as evProbe.
func (m *master) onProbeDue(c *candidate) {
	if m.rollout.cand != c || (c.stage != stageHealth && c.stage != stageBake) {
		return
	}
	st := c.stage
	if st == stageBake {
		m.checkStarted(c, "bake-health")
	}
	c.setProbe(m.probeOnce(func(answer string, err error) { m.post(evProbe{c, st, answer, err}) }))
}

// onProbe takes one probe's outcome. Before the switch a failed probe is
// retried every healthRetry until --health-timeout passes, and the first
// that passes ends the stage; during the bake one failed probe rolls back
// and a passed one schedules the next after --health-interval.
func (m *master) onProbe(ev evProbe) {
	c := ev.c
	if m.rollout.cand != c || c.stage != ev.stage {
		return
	}
	m.recordProbe(ev) // rolloutview.go
	c.probe = nil     // it has ended
	if ev.stage == stageHealth && ev.err != nil {
		c.probeErr = ev.err
		c.setProbe(m.sys.afterFunc(healthRetry, func() { m.post(evProbeDue{c}) }))
		return
	}
	m.onCheckDone(evCheckDone{c, ev.stage, ev.err, nil})
}

// onHealthTimeout ends a health stage whose probes kept failing for
// --health-timeout.
func (m *master) onHealthTimeout(c *candidate) {
	if m.rollout.cand != c || c.stage != stageHealth {
		return
	}
	c.setProbe(nil) // a probe under way now is cut short: it says only that
	err := c.probeErr
	if err == nil {
		err = errors.New("no probe answered")
	}
	bound := m.cfg.Rollout.HealthTimeout
	m.onCheckDone(evCheckDone{c, stageHealth, fmt.Errorf("%w (still failing after %s, --health-timeout)", err, bound), nil})
}

func (m *master) startSmoke(c *candidate) {
	if m.cfg.Rollout.SmokeTest == "" {
		m.switchUsers(c)
		return
	}
	c.stage = stageSmoke
	m.checkStarted(c, "smoke-test")
	stop := m.runSmokeTest(c.gen, func(err error, out []string) { m.post(evCheckDone{c, stageSmoke, err, out}) })
	c.stops = append(c.stops, stop)
}

// onCheckDone takes the outcome of a health check or smoke test.
func (m *master) onCheckDone(ev evCheckDone) {
	c := ev.c
	if m.rollout.cand != c || c.stage >= stagePromoted {
		return
	}
	m.checkDone(c, ev)
	if ev.err != nil {
		what := map[stage]string{stageHealth: "health check", stageSmoke: "smoke test", stageBake: "health check during the bake"}[ev.stage]
		m.up.stderr, m.up.outputOf = ev.output, ""
		if ev.stage == stageSmoke {
			m.up.outputOf = "the smoke test's output"
		}
		m.up.failedStep = map[stage]string{stageHealth: "health-check", stageSmoke: "smoke-test", stageBake: "bake"}[ev.stage]
		m.rollback(c, what+" failed: "+ev.err.Error())
		return
	}
	switch ev.stage {
	case stageBake:
		m.scheduleBakeHealth(c)
	case stageHealth:
		m.rolloutStep(c, "health-check", m.cfg.Rollout.HealthCheck.String()+" passed")
		m.startSmoke(c)
	case stageSmoke:
		m.rolloutStep(c, "smoke-test", "passed")
		m.switchUsers(c)
	}
}

// switchUsers sends new connections to the candidate (all of them, or the
// canary share) with one program swap, and starts the bake.
func (m *master) switchUsers(c *candidate) {
	r := m.cfg.Rollout
	weight := 100
	if r.Strategy == StrategyCanary {
		weight = r.CanaryWeight
	}
	if why := m.checkBeforeSwitch(); why != "" {
		m.up.failedStep = "switch"
		m.rollback(c, "switch refused: "+why)
		return
	}
	if err := m.steer(weight); err != nil {
		m.up.failedStep = "switch"
		m.rollback(c, "switch failed: "+err.Error())
		return
	}
	now := m.sys.now()
	c.switched, c.switchAt, c.stage, c.weight = true, now, stageBake, weight
	detail := "every new connection to generation " + strconv.Itoa(c.gen)
	if weight < 100 {
		detail = strconv.Itoa(weight) + "% of new connections to generation " + strconv.Itoa(c.gen)
	}
	m.rolloutStep(c, "switch", detail)
	m.log.Info("users switched to the new generation", logevent.RolloutSwitched, zap.Int("new_generation", c.gen), zap.Int("weight_percent", weight),
		zap.Int64("switched_at_unix_ns", now.UnixNano()), zap.Duration("since_upgrade", now.Sub(m.up.at)))
	if r.Bake <= 0 {
		m.promote(c, "no bake")
		return
	}
	m.rolloutStep(c, "bake", "old generation kept warm for "+r.Bake.String())
	c.stops = append(c.stops, m.sys.afterFunc(r.Bake, func() { m.post(evBakeDone{c}) }))
	if r.HealthCheck.Kind != "" {
		m.scheduleBakeHealth(c)
	}
}

func (m *master) scheduleBakeHealth(c *candidate) {
	c.setProbe(m.sys.afterFunc(m.cfg.Rollout.HealthInterval, func() { m.post(evProbeDue{c}) }))
}

func (m *master) onBakeDone(c *candidate) {
	if m.rollout.cand == c && c.stage == stageBake {
		m.promote(c, "bake over")
	}
}

// promote makes the candidate the generation of record: all users to it,
// and an order to its master to call Ready, which ends our Upgrade call.
func (m *master) promote(c *candidate, trigger string) {
	if m.cfg.Rollout.Strategy == StrategyCanary {
		if why := m.checkBeforeSwitch(); why != "" {
			m.up.failedStep = "promote"
			m.rollback(c, "switch of all users refused: "+why)
			return
		}
		if err := m.steer(100); err != nil {
			m.up.failedStep = "promote"
			m.rollback(c, "switch of all users failed: "+err.Error())
			return
		}
		c.weight = 100
	}
	c.stopAll()
	c.stage = stagePromoted
	m.rolloutStep(c, "promote", trigger)
	m.log.Info("promoting the new generation", logevent.RolloutPromoted, zap.String("trigger", trigger), zap.Int("new_generation", c.gen),
		zap.Int64("at_unix_ns", m.sys.now().UnixNano()))
	if err := m.sys.notifyTo(c.notify, reportToken+"="+m.up.token+"\n"+orderPromote+"=1\n"+m.promoteTimings(c)); err != nil {
		m.up.failedStep = "promote"
		m.rollback(c, "could not reach the new master to promote it: "+err.Error())
	}
}

// rollback sends users back to this master's workers, which never stopped
// serving, then tells the new master to drain.
func (m *master) rollback(c *candidate, reason string) {
	if c.stage == stageRolledBack {
		return
	}
	if err := m.steer(0); err != nil {
		m.log.Error("could not switch users back to the old generation", zap.Error(err))
	}
	if m.up.failedStep == "" {
		m.up.failedStep = map[stage]string{stageHealth: "health-check", stageSmoke: "smoke-test", stageBake: "bake"}[c.stage]
	}
	c.stopAll()
	c.stage = stageRolledBack
	m.rolloutStep(c, "rollback", reason)
	if m.up.reason == "" {
		m.up.reason = "rolled back: " + reason
	}
	m.log.Warn("rolling back: users on the old generation, draining the new one", logevent.RolloutRollback,
		zap.String("reason", reason), zap.Bool("was_switched", c.switched), zap.Int("new_generation", c.gen),
		zap.Int64("at_unix_ns", m.sys.now().UnixNano()))
	if c.notify != "" {
		m.sys.notifyTo(c.notify, reportToken+"="+m.up.token+"\n"+orderRollback+"="+strings.ReplaceAll(reason, "\n", " "))
	}
}

// onChildFailed: the new master gave up on its own (a worker crashed, a
// stop signal); users go back before its workers drain.
func (m *master) onChildFailed(reason string) {
	if c := m.rollout.cand; c != nil {
		m.rollback(c, reason)
	}
}

// rolloutDone ends the rollout when tableflip's Upgrade call returns; it
// returns what baton reload reports of it.
func (m *master) rolloutDone(err error, res *control.ReloadResult) {
	if !m.cfg.Rollout.Strategy.steered() {
		return
	}
	res.Strategy = string(m.cfg.Rollout.Strategy)
	c := m.rollout.cand
	m.rollout.cand = nil
	if c == nil {
		if err != nil {
			m.steer(0)
		}
		return
	}
	if err != nil && c.stage != stageRolledBack {
		// The new master died without a word: its socket leaves the group
		// with it; make sure users are back on ours.
		m.rollback(c, "new master failed: "+err.Error())
	}
	c.stopAll()
	if err == nil {
		m.rollout.successor = res.NewMasterPID
	}
	res.Steps = c.steps
	if c.switched {
		res.SwitchMS = ms(c.switchAt.Sub(m.up.at))
	}
}

// onRolloutCmd handles baton promote and baton rollback.
func (m *master) onRolloutCmd(cc *ctlConn) {
	c := m.rollout.cand
	if !m.cfg.Rollout.Strategy.steered() {
		cc.reply(control.NewRefusal("not a blue-green or canary master (--strategy " + string(m.cfg.Rollout.Strategy) + ")"))
		cc.close()
		return
	}
	if c == nil || c.stage >= stagePromoted {
		cc.reply(control.NewRefusal("no new generation is being checked or baked"))
		cc.close()
		return
	}
	ack := control.RolloutAck{OK: true, Generation: c.gen, Stage: c.stage.String()}
	switch cc.req.Cmd {
	case control.CmdPromote:
		if !c.switched {
			cc.reply(control.NewRefusal("generation " + strconv.Itoa(c.gen) + " is still being checked (" + c.stage.String() + "); promote ends a bake"))
			cc.close()
			return
		}
		m.promote(c, "baton promote")
	case control.CmdRollback:
		m.rollback(c, "baton rollback")
	}
	cc.reply(ack)
	cc.close()
}

// --- the new master's side ---

// generationReady is called when every worker of this generation is ready.
// Under blue-green or canary, a new master waits for the old one to check
// and promote it; otherwise it takes over now.
func (m *master) generationReady() {
	if why := m.checkWorkerSockets(); why != "" {
		m.bootFailed(fmt.Errorf("%w: %s", ErrGenerationRefused, why), why, zap.String("reason_code", reasonWorkerOwnSocket))
		return
	}
	if !m.cfg.Rollout.Strategy.steered() || !m.origin.parentAlive || m.origin.parentNotify == "" {
		m.bootDone()
		return
	}
	if m.rollout.offered {
		return
	}
	m.rollout.offered = true
	now := m.sys.now()
	m.rollout.readyAt = now
	res := control.ReloadResult{Generation: m.gen, WorkersStartingMS: ms(m.steps.longest)}
	b, _ := json.Marshal(res)
	m.log.Info("generation ready as a candidate: waiting for the old master's checks", logevent.RolloutCandidate, zap.Duration("workers_starting", m.steps.longest))
	m.step(control.Progress{Event: control.EvGenerationReady, Count: len(m.slots), DurationMS: ms(now.Sub(m.bootAt)),
		Message: fmt.Sprintf("all %d workers ready after %s; the old master checks them before the switch", len(m.slots), now.Sub(m.bootAt).Round(time.Millisecond))})
	m.sys.notifyTo(m.origin.parentNotify, reportToken+"="+m.origin.parentToken+"\n"+reportCandidate+"="+string(b)+"\n"+reportNotify+"="+m.notifyAddr()+
		"\n"+reportSockets+"="+m.socketInodes())
}

// onParentOrder takes an order from the old master; false when fields hold
// none.
func (m *master) onParentOrder(fields map[string]string) bool {
	if m.onCounts(fields) {
		return true
	}
	if fields[orderPromote] == "1" {
		m.rollout.checks = msField(fields[orderChecksMS])
		m.rollout.bake = msField(fields[orderBakeMS])
		if m.phase == phaseBooting && m.rollout.offered {
			m.log.Info("promoted by the old master")
			if m.lns != nil {
				// Users are all ours; the previous generation's key goes,
				// so that a socket of it a leftover keeps open is never
				// chosen (its accept queue is still served).
				if err := m.lns.Claim(false); err != nil {
					m.log.Warn("could not clear the previous generation from the steering map", zap.Error(err))
				}
			}
			m.bootDone()
		}
		return true
	}
	if reason, ok := fields[orderRollback]; ok {
		m.rollout.switchedBack = true
		if m.phase == phaseBooting {
			m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, "rolled back: "+reason), "rolled back: "+reason)
		} else if m.rollout.stopWait != nil {
			m.rollout.stopWait()
			m.rollout.stopWait = nil
			m.drainWhenIdle()
		}
		return true
	}
	return false
}

// drainCandidate drains a new generation that will not take over. Users
// may have been switched to it (a bake): first the old master must have
// sent them back, then the connections already queued on our sockets are
// accepted by our workers, and only then do they drain; closing a socket
// with a queue resets it.
func (m *master) drainCandidate() {
	if !m.cfg.Rollout.Strategy.steered() || !m.rollout.offered || m.rollout.switchedBack {
		m.drainWhenIdle()
		return
	}
	for _, s := range m.slots {
		s.cancelRestart()
	}
	m.rollout.stopWait = m.sys.afterFunc(switchBackWait, func() { m.post(evSwitchBackWait{}) })
}

func (m *master) onSwitchBackWait() {
	if m.rollout.stopWait == nil {
		return
	}
	m.rollout.stopWait = nil
	m.log.Warn("old master did not confirm users are back on it; draining anyway", zap.Duration("waited", switchBackWait))
	m.drainWhenIdle()
}

// drainWhenIdle drains every worker once this master's accept queues are
// empty, for at most the drain timeout; under the shared strategy at once
// (another generation accepts from the same queue). A stopping master
// (not one that handed over) then refuses new connections: only then,
// since the refusal waits at most refuseGrace for workers to let go of
// the sockets, and a worker still accepting, not yet told to drain, sees
// its accept fail (hello exited with its requests in flight).
func (m *master) drainWhenIdle() {
	if !m.cfg.Rollout.Strategy.steered() {
		m.drainStopping()
		return
	}
	for _, s := range m.slots {
		s.cancelRestart()
	}
	m.rollout.afterIdle = m.drainStopping
	files := append([]*os.File(nil), m.files...)
	bound := m.cfg.DrainTimeout
	start := m.sys.now()
	go func() {
		n := m.sys.waitQueueEmpty(files, bound)
		m.post(evQueueIdle{left: n, waited: m.sys.now().Sub(start)})
	}()
}

// drainStopping drains every worker, and refuses new connections if this
// master is stopping (refuse.go).
func (m *master) drainStopping() {
	m.drainAll()
	if m.phase == phaseStopping {
		m.refuseNew()
	}
}

// leaveGroup closes this master's sockets when it exits. After a
// handover under classic BPF the leave reorders the group (the kernel
// moves its last socket into our slot), so it is made here, with the
// membership read just before, and the program re-attached with the index
// the new generation's socket has afterwards (sockets/handoff.go).
func (m *master) leaveGroup() {
	if m.lns == nil {
		return
	}
	if m.phase != phaseHandedOver || !m.cfg.Rollout.Strategy.steered() || m.rollout.successor <= 0 {
		m.lns.Close()
		return
	}
	// Our workers are gone: whatever is still queued here arrived after
	// the queue read empty (drainWhenIdle), a handshake that completed
	// late. Closing moves it to the new generation's socket where the
	// kernel migrates requests, and resets it where it does not.
	if n, err := m.lns.QueueLen(); err == nil && n > 0 {
		mig := m.lns.Migration()
		m.log.Warn("closing our socket with connections in its accept queue", logevent.QueueAtClose, zap.Int("left", n),
			zap.String("migration", mig), zap.Bool("reset", mig == "none"))
	}
	for _, r := range m.lns.Leave(m.rollout.successor) {
		fields := []zap.Field{logevent.SteeringHandedOff, zap.String("address", r.Spec.String()), zap.Int("index", r.Index),
			zap.Int("strays", r.Strays), zap.Bool("still_listening", r.StillListening), zap.Bool("unsure", r.Unsure),
			zap.Int("new_master_pid", m.rollout.successor)}
		switch {
		case r.Err != nil:
			m.log.Warn("could not re-steer the group as our socket left it; the new master re-steers when it sees us gone",
				append(fields, zap.Error(r.Err))...)
		case r.StillListening:
			m.log.Warn("our socket is still listening after we closed it (another process holds it): the group keeps its order",
				fields...)
		case r.Unsure:
			m.log.Warn("the group changed while our socket left it: users may reach another socket than the new generation's; the membership check names it",
				fields...)
		default:
			m.log.Info("our socket left the group; users steered to the new generation's socket at its new index", fields...)
		}
	}
}

// resteerAlone runs when the previous master has exited, on the new
// master: if the group now holds our socket alone, it is index 0 of the
// kernel's order, and a program attached now keeps users on it whoever
// joins later. The old master normally did this as it left (leaveGroup);
// this covers one that died instead.
func (m *master) resteerAlone() {
	if m.lns == nil || m.lns.EBPF() || !m.cfg.Rollout.Strategy.steered() || m.rollout.cand != nil || m.up.running {
		return
	}
	fs, err := m.foreignNow()
	if err != nil || len(fs) > 0 {
		return
	}
	if err := m.steer(0); err == nil {
		m.group.soleSteer = true
		m.log.Info("previous generation gone: users steered to index 0, our socket alone in the group", logevent.SteeringHandedOff,
			zap.Bool("resteered_at_exit", true))
	}
}

func (m *master) onQueueIdle(ev evQueueIdle) {
	f := m.rollout.afterIdle
	m.rollout.afterIdle = nil
	if f == nil {
		return
	}
	lvl := m.log.Info
	if ev.left > 0 {
		lvl = m.log.Warn
	}
	lvl("accept queue emptied before the drain", zap.Int("left", ev.left), zap.Duration("waited", ev.waited))
	f()
}
