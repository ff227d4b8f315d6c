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
// not use again (osutil.Trim): called once it serves alone. From then on
// the master collects at the keeper's low GC target (unless GOGC is set):
// its start-up, with the default target, is not held up by collections,
// and a master that does not allocate is never woken by one
// (TestMasterStaysOutOfTheDataPath).
func (m *master) trim() {
	m.prepareSteer() // bluegreen.go
	t0 := m.sys.now()
	// Serving, what allocates in a master is a status request, a /metrics
	// scrape or a membership check: at the default target the garbage of a
	// few scrapes grew its heap to the 4 MiB minimum before a collection.
	osutil.LowGC()
	m.trims++
	dropped := osutil.Trim()
	m.log.Debug("memory trimmed", zap.Int64("binary_bytes_unmapped", dropped), zap.Duration("took", m.sys.now().Sub(t0)))
}
