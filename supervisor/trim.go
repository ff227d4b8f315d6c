//go:build linux

package supervisor

import (
	"time"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// initDone is when this package was initialised: after the packages it
// imports (zap, tableflip, the metrics library), so a new master's log can
// say how its start-up time splits between exec and package
// initialisation, the command line, and Run's own set-up.
var initDone = time.Now()

// startupFields are the steps of a new master's start, for its "master
// starting" line: the old master re-executed baton (launch, after its
// pre-flight checks) -> this package initialised (fork, exec, Go runtime
// and package initialisation) -> Run called (the command line, the
// logger) -> boot (sockets, notify and control sockets). Nothing for a
// first master, which has no old master. The handover line's steps object
// has the finer steps (steps.go).
func startupFields(launch, runAt, bootAt time.Time) []zap.Field {
	if launch.IsZero() {
		return nil
	}
	return []zap.Field{
		zap.Duration("exec_and_init", initDone.Sub(launch)),
		zap.Duration("command_line", runAt.Sub(initDone)),
		zap.Duration("setup", bootAt.Sub(runAt)),
	}
}

// trim gives back what the master's start-up or last upgrade used and will
// not use again (osutil.Trim): called once it serves alone. A master keeps
// the runtime's default GC target: it lives one generation, and a lower
// target would wake it for collections while it should sleep through the
// traffic (TestMasterStaysOutOfTheDataPath).
func (m *master) trim() {
	t0 := m.sys.now()
	dropped := osutil.Trim()
	m.log.Debug("memory trimmed", zap.Int64("binary_bytes_unmapped", dropped), zap.Duration("took", m.sys.now().Sub(t0)))
}
