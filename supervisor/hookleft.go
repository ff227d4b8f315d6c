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
// gets SIGTERM, and SIGKILL hookLeftoverGrace later, or when the master
// exits, whichever comes first. Their output is the master's to read,
// and that master goes away after the handover: left running, a leftover
// would die of SIGPIPE at its next line anyway, at a moment nobody
// chose. A process that left the group (setsid, a daemon) is not ours.

// hookLeftoverGrace is how long a hook's leftovers have after SIGTERM.
const hookLeftoverGrace = 5 * time.Second

// endHookLeftovers signals the group of the hook that just exited.
func (m *master) endHookLeftovers(h *hookRun) {
	if err := h.proc.SignalGroup(syscall.SIGTERM); err != nil {
		return // the group is empty: nothing was left
	}
	h.log.Info("before-upgrade hook left processes behind: ending them (SIGTERM to its process group)", logevent.HookLeftovers,
		zap.Duration("kill_after", hookLeftoverGrace))
	stop := m.sys.afterFunc(hookLeftoverGrace, func() { h.proc.SignalGroup(syscall.SIGKILL) })
	m.hookLeft = append(m.hookLeft, hookLeftover{h, stop})
}

// killHookLeftovers SIGKILLs what is left of past hooks' groups, as the
// master exits.
func (m *master) killHookLeftovers() {
	for _, l := range m.hookLeft {
		l.stop()
		l.h.proc.SignalGroup(syscall.SIGKILL)
	}
	m.hookLeft = nil
}

type hookLeftover struct {
	h    *hookRun
	stop func()
}
