package supervisor

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// notifyUpgradeReady is what a new master sends the old one, as JSON of a
// ReloadResult, just before it takes over.
const notifyUpgradeReady = "BATON_UPGRADE_READY"

// requestUpgrade starts a handover to a freshly executed master. It returns
// why it refused, or "" once the upgrade is under way. One at a time:
// tableflip allows a single pair of masters, and a third generation would
// stack drains.
func (m *master) requestUpgrade(trigger string) string {
	var why string
	var fields []zap.Field
	switch {
	case m.phase != phaseServing:
		why = "master is not serving (" + m.status().State + ")"
	case m.upgrading:
		why = "an upgrade is already under way"
		fields = append(fields, zap.Duration("running_for", time.Since(m.upgradeAt)))
	case m.parentAlive:
		left := max(time.Until(m.parentDeadline), 0).Round(time.Millisecond)
		why = "previous generation still draining (up to " + left.String() + " more)"
		fields = append(fields, zap.Duration("drain_left_at_most", left))
	default:
		if err := m.preflight(); err != nil {
			why = "pre-flight check failed (" + err.Error() + ")"
		}
	}
	if why != "" {
		m.log.Warn("upgrade refused: "+trimParen(why), append(fields, zap.String("trigger", trigger), zap.String("reason", why))...)
		return why
	}
	m.upgrading = true
	m.upgradeAt = time.Now()
	m.upgradeReason = ""
	m.upgradeStderr = nil
	m.upgradeReady = nil
	// tableflip re-executes us with os.Environ(); this is how the next
	// master learns its generation, when the deploy began, and where to
	// report.
	os.Setenv(envNextGeneration, strconv.Itoa(m.gen+1))
	os.Setenv(envUpgradeStart, strconv.FormatInt(m.upgradeAt.UnixNano(), 10))
	os.Setenv(envParentNotify, m.notify.addr)
	m.upgradeToken = strconv.FormatUint(rand.Uint64(), 36)
	os.Setenv(envUpgradeToken, m.upgradeToken)
	m.log.Info("upgrade requested", zap.String("trigger", trigger), zap.Int("new_generation", m.gen+1))
	m.sdNotify("RELOADING=1\nMONOTONIC_USEC=" + monotonicUsec() + "\nSTATUS=upgrading to generation " + strconv.Itoa(m.gen+1))
	go func() {
		err := m.upg.Upgrade()
		// tableflip learns that the old master exited in its own loop,
		// which may still hold that news when our (earlier) WaitForParent
		// already told us: its select then refuses at random. The parent
		// is gone, so the refusal is stale within microseconds.
		for i := 0; i < 50 && err != nil && err.Error() == "parent hasn't exited"; i++ {
			time.Sleep(2 * time.Millisecond)
			err = m.upg.Upgrade()
		}
		// The new master reports how it went on the notify socket before
		// it signals ready or exits; let that report reach the loop first.
		m.notify.barrier(100 * time.Millisecond)
		m.post(evUpgradeDone{err})
	}()
	return ""
}

// preflight checks what the new master will need before anything is
// forked: the baton binary as tableflip will exec it (os.Args[0] from the
// initial working directory), the working directory and the command, each
// resolved anew so that a moved symlink is followed.
func (m *master) preflight() error {
	if _, err := exec.LookPath(os.Args[0]); err != nil {
		return fmt.Errorf("baton binary %q: %w", os.Args[0], pathErr(err))
	}
	return m.cfg.Check()
}

func trimParen(s string) string {
	for i := range s {
		if s[i] == '(' {
			return s[:max(i-1, 0)]
		}
	}
	return s
}

func (m *master) onUpgradeDone(err error) {
	m.upgrading = false
	took := time.Since(m.upgradeAt)
	res := ReloadResult{OldMasterPID: m.self, Generation: m.gen + 1}
	if err != nil {
		// tableflip v1.2.3 does not close its ends of the child's pipes
		// (ready writer, names reader) in the parent; only their finalizers
		// do. Collect now so a failed upgrade leaves no fds behind until
		// some later GC.
		runtime.GC()
		res.Code = ReloadRollback
		res.Reason = m.upgradeReason
		if res.Reason == "" {
			res.Reason = "new master failed: " + err.Error()
		}
		res.Stderr = m.upgradeStderr
		res.TotalMS = ms(took)
		if m.phase != phaseServing {
			m.log.Info("upgrade abandoned", zap.String("reason", res.Reason))
		} else {
			m.log.Error("upgrade failed: old generation keeps serving",
				zap.String("reason", res.Reason), zap.Duration("took", took),
				zap.Int("goroutines", runtime.NumGoroutine()))
			m.sdNotify("READY=1\nSTATUS=upgrade failed, generation " + strconv.Itoa(m.gen) + " serving: " + res.Reason)
		}
		m.finishReload(res)
		return
	}
	res = ReloadResult{Generation: m.gen + 1, TotalMS: ms(took)}
	if m.upgradeReady != nil {
		res = *m.upgradeReady
	}
	res.OK, res.Code, res.OldMasterPID = true, ReloadOK, m.self
	m.log.Info("handed over to new master: draining old generation",
		zap.Int("new_master_pid", res.NewMasterPID), zap.Duration("handover", took),
		zap.Float64("workers_starting_ms", res.WorkersStartingMS), zap.Int("workers", len(m.procs)))
	m.phase = phaseHandedOver
	m.handedOverAt = time.Now()
	m.drainedCount, m.killedCount = 0, 0
	if m.control != nil {
		// The new master answers on the shared socket from now on.
		m.control.Close()
		m.control = nil
	}
	m.finishReload(res)
	m.drainAll()
}

func (m *master) finishReload(res ReloadResult) {
	m.lastUpgrade = &res
	for _, c := range m.reloadWaiters {
		c.reply(res)
		c.conn.Close()
	}
	m.reloadWaiters = nil
}

// onChildMasterReport takes a new master's report of its outcome.
func (m *master) onChildMasterReport(pid int, fields map[string]string) bool {
	if reason, ok := fields[notifyUpgradeFail]; ok {
		m.upgradeReason = reason
		if s, ok := fields["BATON_STDERR"]; ok {
			json.Unmarshal([]byte(s), &m.upgradeStderr)
		}
		return true
	}
	if js, ok := fields[notifyUpgradeReady]; ok {
		var r ReloadResult
		if json.Unmarshal([]byte(js), &r) == nil {
			r.NewMasterPID = pid
			m.upgradeReady = &r
		}
		return true
	}
	return false
}
