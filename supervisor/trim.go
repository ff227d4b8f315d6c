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

// settleAfter is how long a master serving alone waits, after work that
// mapped pages of its binary again, before it trims again (settle). The
// work is its first seconds at rest (the first membership check after the
// boot re-claims the steering map and attaches the steering program again;
// timers of the boot fire) and each burst of /metrics scrapes or control
// requests: a scrape maps the HTTP server, the metrics library and their
// data, about 5 MiB of the binary, and nothing in the loop uses them until
// the next scrape. The pages stay in the page cache: the next scrape maps
// them again with minor faults. A burst of scrapes or requests closer
// together than this trims once, after the last.
const settleAfter = 2 * time.Second

// settleState is the trim that follows work done at rest. Owned by the loop.
type settleState struct {
	seq  int    // of the armed timer; an evSettle of another is stale
	stop func() // stops the armed timer; nil when none is armed
}

type (
	evSettle  struct{ seq int }
	evScraped struct{} // a /metrics request was answered (metrics.go)
)

func (evSettle) isEvent()  {}
func (evScraped) isEvent() {}

// trim gives back what the master's start-up or last upgrade used and will
// not use again (osutil.Trim): called once it serves alone. From then on
// the master collects at the keeper's low GC target (unless GOGC is set):
// its start-up, with the default target, is not held up by collections,
// and a master that does not allocate is never woken by one
// (TestMasterStaysOutOfTheDataPath). Its first seconds at rest are followed
// by one more trim (unsettle).
func (m *master) trim() {
	m.prepareSteer() // bluegreen.go
	// Serving, what allocates in a master is a status request, a /metrics
	// scrape or a membership check: at the default target the garbage of a
	// few scrapes grew its heap to the 4 MiB minimum before a collection.
	osutil.LowGC()
	t0 := m.sys.now()
	m.trims++
	dropped := osutil.Trim()
	m.log.Debug("memory trimmed", zap.Int64("binary_bytes_unmapped", dropped), zap.Duration("took", m.sys.now().Sub(t0)))
	m.unsettle()
}

// unsettle (re)arms the trim settleAfter from now: called at rest and on
// work that maps the binary's pages again.
func (m *master) unsettle() {
	if m.settle.stop != nil {
		m.settle.stop()
	}
	m.settle.seq++
	seq := m.settle.seq
	m.settle.stop = m.sys.afterFunc(settleAfter, func() { m.post(evSettle{seq}) })
}

// onSettle trims if the master still serves alone: during an upgrade the
// pages are in use, and the upgrade's end is a rest point of its own.
func (m *master) onSettle(ev evSettle) {
	if ev.seq != m.settle.seq {
		return
	}
	m.settle.stop = nil
	if m.phase != phaseServing || m.origin.parentAlive || m.up.running || m.rollout.cand != nil || !m.allReady() {
		return
	}
	// Off the loop: a trim takes several milliseconds (6-7 ms at a load
	// average of 5: a full collection, then /proc/self/smaps read), and a
	// USR2 or a worker's exit that comes meanwhile is not held up by it.
	// Nothing waits for this one, unlike the trim at a rest point.
	m.trims++
	log := m.log
	go func() {
		t0 := time.Now()
		dropped := osutil.Trim()
		log.Debug("memory trimmed", zap.String("trigger", "settle"), zap.Int64("binary_bytes_unmapped", dropped), zap.Duration("took", time.Since(t0)))
	}()
}
