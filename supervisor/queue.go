//go:build linux

package supervisor

import (
	"fmt"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// This file owns the one upgrade that may wait for its turn: asked for
// (USR2, HUP, baton reload) while the previous generation still drains, it
// starts once the previous master has exited. A request while one is
// queued is merged into it. Drains are bounded (--drain-timeout), so the
// wait is too.

// queueUpgrade queues an upgrade, or merges trigger into the queued one.
func (m *master) queueUpgrade(trigger string) {
	u := &m.up
	left := max(m.origin.parentDeadline.Sub(m.sys.now()), 0).Round(time.Millisecond)
	if !u.queuedAt.IsZero() {
		m.log.Info("upgrade request merged into the queued upgrade", logevent.UpgradeMerged,
			zap.String("trigger", trigger), zap.String("queued_by", u.queuedBy), zap.Duration("drain_left_at_most", left))
	} else {
		u.queuedAt, u.queuedBy = m.sys.now(), trigger
		m.log.Info("upgrade queued: previous generation still draining", logevent.UpgradeQueued,
			zap.String("trigger", trigger), zap.Duration("drain_left_at_most", left))
	}
	m.progress(control.Progress{Event: control.EvWaiting, Generation: m.gen + 1, DurationMS: ms(left),
		Message: fmt.Sprintf("waiting for the previous generation to drain (at most %s left)", left)})
}

// startQueued runs the queued upgrade, if any, now that the previous
// master has exited; requests waiting for it get its outcome, or the
// refusal.
func (m *master) startQueued() {
	u := &m.up
	if u.queuedAt.IsZero() {
		return
	}
	m.log.Info("starting the queued upgrade",
		zap.String("trigger", u.queuedBy), zap.Duration("waited", m.sys.now().Sub(u.queuedAt)))
	if why := m.requestUpgrade(u.queuedBy, true); why != "" {
		u.queuedAt = time.Time{}
		m.finishReload(control.ReloadResult{Code: control.ReloadRefused, Reason: why, OldMasterPID: m.self})
	}
}

// dropQueued answers requests waiting for a queued upgrade that will not
// run: the master stops.
func (m *master) dropQueued(why string) {
	u := &m.up
	if u.queuedAt.IsZero() {
		return
	}
	u.queuedAt = time.Time{}
	m.log.Info("queued upgrade dropped", zap.String("reason", why))
	m.finishReload(control.ReloadResult{Code: control.ReloadRefused, Reason: why, OldMasterPID: m.self})
}
