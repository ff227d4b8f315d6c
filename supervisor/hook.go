//go:build linux

package supervisor

import (
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// This file owns the --before-upgrade command (say, database migrations):
// run by /bin/sh -c before an upgrade starts anything of the new
// generation, by the old master, which keeps serving meanwhile. It runs in
// the workers' directory (--chdir, resolved anew), with the workers'
// environment (--env-file read anew) plus BATON_GENERATION of the new
// generation, in a process group of its own. A non-zero exit, or running
// past --before-upgrade-timeout (then its group is SIGKILLed), fails the
// upgrade before the new master is even executed. With --before-start the
// first master runs it before its first worker.

// hookRun is one run of the command. Only the loop touches it.
type hookRun struct {
	gen       int
	upgrade   bool // before an upgrade (else before the first start)
	proc      process
	started   time.Time
	stopTimer func()
	timedOut  bool
	tail      stderrTail // the last lines of both streams
	log       *zap.Logger
}

// startHook runs the command for generation gen; its end arrives as
// evHookExit.
func (m *master) startHook(gen int, upgrade bool) {
	env := m.baseEnv
	if upgrade {
		env = m.nextEnv()
	}
	env = append(env[:len(env):len(env)], "BATON_GENERATION="+strconv.Itoa(gen))
	h := &hookRun{gen: gen, upgrade: upgrade, log: m.log.Named("hook").With(zap.Int("new_generation", gen))}
	proc, err := m.sys.start(procSpec{
		path: "/bin/sh", argv: []string{"/bin/sh", "-c", m.cfg.BeforeUpgrade},
		env: env, dir: m.cfg.Chdir, cred: m.cfg.Credential,
		output: OutputTagged, outputMsg: "hook output", outputEvent: logevent.HookOutput, log: h.log,
		onLine: func(stream, line string) {
			h.tail.add(line)
			m.post(evHookOutput{h, stream, line})
		},
	}, func(st exitStatus) { m.post(evHookExit{h, st}) })
	if err != nil {
		m.hookDone(h, fmt.Sprintf("--before-upgrade could not start: %v", err))
		return
	}
	h.proc, h.started = proc, m.sys.now()
	h.log = h.log.With(zap.Int("pid", proc.Pid()))
	m.hook = h
	h.stopTimer = m.sys.afterFunc(m.cfg.BeforeUpgradeTimeout, func() { m.post(evHookTimeout{h}) })
	h.log.Info("before-upgrade hook started", zap.String("command", m.cfg.BeforeUpgrade),
		zap.Duration("timeout", m.cfg.BeforeUpgradeTimeout))
	m.progress(control.Progress{Event: control.EvHookStarted, PID: proc.Pid(),
		Message: fmt.Sprintf("--before-upgrade started (pid %d): %s", proc.Pid(), m.cfg.BeforeUpgrade)})
}

func (m *master) onHookOutput(h *hookRun, stream, line string) {
	if m.hook != h {
		return
	}
	m.progress(control.Progress{Event: control.EvHookOutput, PID: h.proc.Pid(), Stream: stream, Line: line,
		Message: "hook " + stream + " | " + line})
}

func (m *master) onHookTimeout(h *hookRun) {
	if m.hook != h {
		return
	}
	h.timedOut = true
	h.log.Error("before-upgrade hook timed out: killing its process group", zap.Duration("timeout", m.cfg.BeforeUpgradeTimeout))
	h.proc.SignalGroup(syscall.SIGKILL)
}

func (m *master) onHookExit(h *hookRun, st exitStatus) {
	if m.hook != h {
		return
	}
	m.hook = nil
	h.stopTimer()
	m.endHookLeftovers(h) // hookleft.go
	took := m.sys.now().Sub(h.started)
	if h.upgrade {
		m.up.hookTook = took
	}
	switch {
	case h.timedOut:
		m.hookDone(h, fmt.Sprintf("--before-upgrade killed after --before-upgrade-timeout %s", m.cfg.BeforeUpgradeTimeout))
	case st.code != 0 || st.signal != 0:
		m.hookDone(h, fmt.Sprintf("--before-upgrade failed with %s after %s", st, took.Round(time.Millisecond)))
	default:
		h.log.Info("before-upgrade hook finished", zap.Duration("took", took))
		m.progress(control.Progress{Event: control.EvHookFinished, DurationMS: ms(took),
			Message: fmt.Sprintf("--before-upgrade finished in %s", took.Round(time.Millisecond))})
		m.hookDone(h, "")
	}
}

// hookDone goes on after the command: with the upgrade or the first start
// when failed is "", else it fails them.
func (m *master) hookDone(h *hookRun, failed string) {
	if failed != "" {
		h.log.Error("before-upgrade hook failed", zap.String("reason", failed), zap.Strings("last_output", h.tail.snapshot()))
	}
	if !h.upgrade {
		switch {
		case m.phase != phaseBooting:
		case failed != "":
			m.failedStderr, m.failedOf = h.tail.snapshot(), "the hook's output"
			m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, failed), failed)
		default:
			m.startGeneration()
		}
		return
	}
	u := &m.up
	if failed == "" && m.phase == phaseServing {
		m.launchUpgrade()
		return
	}
	if failed == "" {
		failed = "master " + m.stateName() + " while --before-upgrade ran"
	}
	u.running = false
	res := control.ReloadResult{Code: control.ReloadRollback, Reason: failed, Stderr: h.tail.snapshot(),
		OutputOf: "the hook's output", FailedStep: "before-upgrade",
		OldMasterPID: m.self, Generation: h.gen, HookMS: ms(u.hookTook), WaitedMS: ms(u.waited)}
	if m.phase == phaseServing {
		m.log.Error("upgrade failed: old generation keeps serving", logevent.UpgradeFailed, zap.String("reason", failed))
		m.sdNotify("READY=1\nSTATUS=upgrade failed, generation " + strconv.Itoa(m.gen) + " serving: " + failed)
	}
	m.met.upgradeFailed(m.sys.now())
	m.progress(control.Progress{Event: control.EvFailed, Message: "upgrade failed: " + failed})
	m.finishReload(res)
}

// stopHook passes a stop on to a running command: sig to its process
// group. The loop waits for it to exit (finished), which its timeout
// bounds.
func (m *master) stopHook(sig syscall.Signal) {
	if m.hook != nil {
		m.hook.log.Warn("stopping before-upgrade hook", zap.String("signal", sigName(sig)))
		m.hook.proc.SignalGroup(sig)
	}
}
