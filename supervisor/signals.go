//go:build linux

package supervisor

import (
	"os/exec"
	"runtime"
	"syscall"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// This file owns what signals mean before a process is ready for them.
//
// Every `baton run` process catches the signals baton gives a meaning to
// from its first package init (package earlysig) until it exits; the
// loop reads them once it runs, in the order they came. On top of that:
//
//   - The keeper forwards nothing to a master before the master announced
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

// announced notes that the first master announced itself: it becomes the
// master of record and gets what was held for it.
func (k *keeper) announced(m *keptMaster) {
	if m.announced {
		return
	}
	m.announced = true
	if k.stopping {
		k.pending = nil // a stop wins over what was held
		if err := m.signal(k.stopSig); err != nil {
			k.log.Warn("forward signal failed", zap.Error(err))
		}
		return
	}
	if k.record == nil && !k.ready {
		k.setRecord(m)
	}
}

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

// blockedAcrossExec are the signals a new master starts with blocked, so
// that from its exec until its handlers are in place they stay pending
// instead of taking their default action (USR1 kills, TTIN and TTOU stop
// it). Go's runtime leaves these blocked until signal.Notify unblocks them
// on its signal thread; HUP, INT, TERM and QUIT it unblocks at once, so
// for those the keeper's hold (above) is what protects a starting master.
var blockedAcrossExec = []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU}

// spawnerMask sets the signal mask of the spawner's thread, which children
// inherit through fork and exec (Go's fork copies the forking thread's
// mask): the keeper's blocks blockedAcrossExec for the first master; a
// master's unblocks every signal it catches, so workers and hooks start
// with none blocked. (A master's other threads keep the mask it started
// with, which tableflip's fork passes to the next master: the same
// protection for every generation.)
func spawnerMask() {
	if UnderKeeper() {
		unblockCaught()
		return
	}
	setMask(unix.SIG_BLOCK, blockedAcrossExec)
}

// unblockCaught unblocks every signal baton catches on this thread; they
// are caught, so any thread may take them.
func unblockCaught() {
	setMask(unix.SIG_UNBLOCK, append(blockedAcrossExec[:len(blockedAcrossExec):len(blockedAcrossExec)],
		syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT))
}

func setMask(how int, sigs []syscall.Signal) {
	var set unix.Sigset_t
	for _, s := range sigs {
		set.Val[(s-1)/64] |= 1 << ((uint(s) - 1) % 64)
	}
	unix.PthreadSigmask(how, &set, nil)
}

// startUnblocked starts cmd from a thread with nothing of blockedAcrossExec
// blocked, so that what a master runs outside its spawner (the smoke test,
// exec: readiness probes) starts with no signal blocked. (The master's
// other threads keep them blocked for tableflip's next master.)
func startUnblocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	unblockCaught()
	return cmd.Start()
}
