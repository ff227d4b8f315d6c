//go:build linux

package supervisor

import (
	"os"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// This file owns what the master tells the service manager that started
// baton (systemd's sd_notify protocol): readiness, reloads, status, stop,
// and watchdog pings.

// monotonicUsec is "MONOTONIC_USEC=…\n", which systemd wants beside
// RELOADING=1 (without it systemd may ignore the reload notification).
var monotonicUsec = daemon.SdNotifyMonotonicUsec

// sdNotify tells the service manager that started baton, if any.
func (m *master) sdNotify(msg string) {
	if err := m.sys.notifyManager(msg); err != nil {
		m.log.Warn("notify service manager failed", zap.Error(err))
	}
}

// watchdogInterval is how often to send WATCHDOG=1, or 0 when systemd's
// watchdog is not on for this master. WATCHDOG_PID names the first master;
// a re-executed one is its successor when it names our parent, and passes
// the role on by naming itself.
func (m *master) watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, _ := strconv.Atoi(p)
		if pid != m.self && !(m.origin.parentAlive && pid == os.Getppid()) {
			return 0
		}
	}
	m.sys.setenv("WATCHDOG_PID", strconv.Itoa(m.self))
	return time.Duration(usec) * time.Microsecond / 2
}

// startWatchdog posts evWatchdog every half watchdog interval until the
// loop ends. The ping is sent from the loop, not from a goroutine of its
// own: a wedged loop must look dead to systemd.
func (m *master) startWatchdog() {
	iv := m.watchdogInterval()
	if iv <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(iv)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m.post(evWatchdog{})
			case <-m.done:
				return
			}
		}
	}()
}
