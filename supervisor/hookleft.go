//go:build linux

package supervisor

import (
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// A --before-upgrade hook's leftovers (what it started in the background
// and did not wait for) end with the hook, as a generation's processes
// end with the generation: once the hook's shell exits, its process group
// gets SIGTERM, and SIGKILL hookLeftoverGrace later if anything of it is
// still there. The master waits for them before it exits (finished), as
// it waits for its workers' trees: their output is the master's to read,
// and a master that exited earlier cut their grace to however long its
// handover took (about 20 ms: a leftover whose TERM handler was not
// scheduled by then was SIGKILLed mid-way). A second stop signal kills
// them at once (killAll). A process that left the group (setsid, a
// daemon) is not ours.

// hookLeftoverGrace is how long a hook's leftovers have after SIGTERM.
const hookLeftoverGrace = 5 * time.Second

// hookLeftoverKilledWait bounds the wait for a group after its SIGKILL: a
// process that outlives that (uninterruptible sleep) does not keep the
// master from exiting.
const hookLeftoverKilledWait = time.Second

// hookLeftCheckEvery is how often groups of past hooks are looked at.
const hookLeftCheckEvery = 50 * time.Millisecond

// hookLeftover is the process group of a hook that exited with processes
// still in it. Only the loop touches it.
type hookLeftover struct {
	h        *hookRun
	deadline time.Time // SIGKILL then
	killedAt time.Time // zero until SIGKILLed
}

// endHookLeftovers signals the group of the hook that just exited.
func (m *master) endHookLeftovers(h *hookRun) {
	if err := h.proc.SignalGroup(syscall.SIGTERM); err != nil {
		return // the group is empty: nothing was left
	}
	h.log.Info("before-upgrade hook left processes behind: ending them (SIGTERM to its process group)", logevent.HookLeftovers,
		zap.Duration("kill_after", hookLeftoverGrace))
	m.hookLeft = append(m.hookLeft, hookLeftover{h: h, deadline: m.sys.now().Add(hookLeftoverGrace)})
	m.scheduleHookLeftCheck()
}

func (m *master) scheduleHookLeftCheck() {
	if m.leftChecking || len(m.hookLeft) == 0 {
		return
	}
	m.leftChecking = true
	m.sys.afterFunc(hookLeftCheckEvery, func() { m.post(evHookLeftCheck{}) })
}

// onHookLeftCheck forgets groups that are empty (or SIGKILLed
// hookLeftoverKilledWait ago) and SIGKILLs those past their grace.
func (m *master) onHookLeftCheck() {
	m.leftChecking = false
	now := m.sys.now()
	kept := m.hookLeft[:0]
	for i := range m.hookLeft {
		l := &m.hookLeft[i]
		// Signal 0 errs once no live process is left in the group (the
		// hook itself is reaped, so its id is checked against /proc).
		if l.h.proc.SignalGroup(0) != nil {
			continue
		}
		switch {
		case l.killedAt.IsZero() && !now.Before(l.deadline):
			l.h.log.Warn("before-upgrade hook's leftovers still running after the grace: SIGKILL to its process group",
				zap.Duration("grace", hookLeftoverGrace))
			l.kill(now)
		case !l.killedAt.IsZero() && now.Sub(l.killedAt) >= hookLeftoverKilledWait:
			l.h.log.Warn("before-upgrade hook's leftovers outlived SIGKILL; no longer waited for",
				zap.Duration("waited", now.Sub(l.killedAt)))
			continue
		}
		kept = append(kept, *l)
	}
	clear(m.hookLeft[len(kept):])
	m.hookLeft = kept
	m.scheduleHookLeftCheck()
}

// killHookLeftovers SIGKILLs what is left of past hooks' groups now (a
// second stop signal, a keeper gone, the master's exit); the checks go on
// until the groups are empty.
func (m *master) killHookLeftovers() {
	now := m.sys.now()
	for i := range m.hookLeft {
		if l := &m.hookLeft[i]; l.killedAt.IsZero() {
			l.kill(now)
		}
	}
}

// hookLeftoversGone reports whether no past hook's group is being waited
// for.
func (m *master) hookLeftoversGone() bool { return len(m.hookLeft) == 0 }

func (l *hookLeftover) kill(now time.Time) {
	l.killedAt = now
	l.h.proc.SignalGroup(syscall.SIGKILL)
}
