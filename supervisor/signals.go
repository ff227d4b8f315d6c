//go:build linux

package supervisor

import (
	"syscall"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// This file owns what signals mean before a process is ready for them.
//
// Every `baton run` process catches the signals baton gives a meaning to
// from its first package init (package earlysig) until it exits; the
// loop reads them once it runs, in the order they came. On top of that:
//
//   - The keeper (package keeper) forwards nothing to a master before the master announced
//     itself (BATON_MASTER=1, sent once its own handlers are in place):
//     a signal for the master of record waits in the keeper, a stop is
//     sent at the announcement, a USR1 is not needed (the master opens
//     its log then).
//   - A first master that is still booting holds an upgrade (USR2, HUP,
//     baton reload) and starts it once its generation is ready: the
//     sender (a deploy that found the pid file early) meant "run what is
//     on disk now", which the booting generation may not be. A stop
//     (TERM, INT, QUIT) ends the boot cleanly; TTIN and TTOU change the
//     count the generation boots with.
//   - USR1 (reopen logs) reaches only workers that are ready: a worker
//     that is starting may not have its handler yet, and USR1's default
//     action kills it. A starting worker gets the USR1 once it is ready.

// holdUpgrade keeps an upgrade asked for while the first generation boots;
// bootDone starts it (startQueued).
func (m *master) holdUpgrade(trigger string) {
	u := &m.up
	if !u.queuedAt.IsZero() {
		m.log.Info("upgrade request merged into the held upgrade", zap.String("trigger", trigger), zap.String("held_for", u.queuedBy))
		return
	}
	u.queuedAt, u.queuedBy = m.sys.now(), trigger
	m.log.Info("upgrade held until the first generation is ready", logevent.UpgradeHeld, zap.String("trigger", trigger))
}

// forwardUSR1 sends SIGUSR1 to every ready worker (and to draining ones
// that were ready), and marks starting ones to get it once ready.
func (m *master) forwardUSR1() {
	sent, held := 0, 0
	for _, w := range m.procs {
		switch {
		case w.state == stateStarting:
			w.usr1Held = true
			held++
		case w.state == stateReady || w.wasReady:
			w.proc.Signal(syscall.SIGUSR1)
			sent++
		}
	}
	m.log.Info("SIGUSR1 forwarded to ready workers", logevent.USR1Forwarded, zap.Int("workers", sent), zap.Int("held_for_starting", held))
}

// readyUSR1 delivers a USR1 held for w while it started.
func (m *master) readyUSR1(w *worker) {
	if w.usr1Held {
		w.usr1Held = false
		w.proc.Signal(syscall.SIGUSR1)
	}
}
