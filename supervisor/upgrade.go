package supervisor

import (
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// requestUpgrade starts a handover to a freshly executed master, unless one
// is under way or the previous master is still draining: tableflip allows a
// single pair of masters, and a third generation would stack drains.
func (m *master) requestUpgrade(sig syscall.Signal) {
	switch {
	case m.phase != phaseServing:
		m.log.Warn("upgrade refused: master is not serving", zap.String("signal", sigName(sig)))
		return
	case m.upgrading:
		m.log.Warn("upgrade refused: an upgrade is already under way",
			zap.Duration("running_for", time.Since(m.upgradeAt)))
		return
	case m.hasParent:
		left := time.Until(m.parentDeadline)
		if m.parentDeadline.IsZero() || left < 0 {
			left = 0
		}
		m.log.Warn("upgrade refused: previous generation still draining",
			zap.Duration("drain_left_at_most", left.Round(time.Millisecond)))
		return
	}
	m.upgrading = true
	m.upgradeAt = time.Now()
	m.upgradeReason = ""
	// tableflip re-executes us with os.Environ(); this is how the next
	// master learns its generation and when the deploy began.
	os.Setenv(envNextGeneration, strconv.Itoa(m.gen+1))
	os.Setenv(envUpgradeStart, strconv.FormatInt(m.upgradeAt.UnixNano(), 10))
	os.Setenv(envParentNotify, m.notify.addr)
	m.log.Info("upgrade requested", zap.String("signal", sigName(sig)), zap.Int("new_generation", m.gen+1))
	go func() { m.post(evUpgradeDone{m.upg.Upgrade()}) }()
}

func (m *master) onUpgradeDone(err error) {
	m.upgrading = false
	took := time.Since(m.upgradeAt)
	if err != nil {
		// tableflip v1.2.3 does not close its ends of the child's pipes
		// (ready writer, names reader) in the parent; only their finalizers
		// do. Collect now so a failed upgrade leaves no fds behind until
		// some later GC.
		runtime.GC()
		reason := m.upgradeReason
		if reason == "" {
			reason = err.Error()
		}
		if m.phase != phaseServing {
			m.log.Info("upgrade abandoned", zap.String("reason", reason))
			return
		}
		m.log.Error("upgrade failed: old generation keeps serving",
			zap.String("reason", reason), zap.Duration("took", took),
			zap.Int("goroutines", runtime.NumGoroutine()))
		return
	}
	m.log.Info("handed over to new master: draining old generation",
		zap.Duration("handover", took), zap.Int("workers", len(m.procs)))
	m.phase = phaseHandedOver
	m.drainAll()
}
