//go:build linux

// Package spawn starts child processes from one OS thread that lives as
// long as the process (masters start workers, the keeper its first
// master), with the signal mask the children must inherit.
package spawn

import (
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spawner starts every worker from one OS thread that lives as long as the
// master. Workers get PR_SET_PDEATHSIG so they die with a SIGKILLed master,
// but Linux fires it when the *thread* that forked them exits (golang/go#27505);
// an ordinary goroutine's thread may be retired under a live master.
type Spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan<- error
}

// New starts the spawner's thread; mask (BlockAcrossExec or
// UnblockCaught) sets that thread's signal mask, which children inherit.
func New(mask func()) *Spawner {
	s := &Spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go s.loop(mask)
	return s
}

func (s *Spawner) loop(mask func()) {
	// Never unlocked: when the loop ends the thread exits with it, which
	// SIGKILLs any worker still alive, as a dead master would.
	runtime.LockOSThread()
	mask() // what children inherit blocked
	for {
		select {
		case r := <-s.reqs:
			r.reply <- r.cmd.Start()
		case <-s.done:
			return
		}
	}
}

// Start starts cmd from the spawner's thread (cmd.Start), blocking until
// it did.
func (s *Spawner) Start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	s.reqs <- spawnReq{cmd, reply}
	return <-reply
}

// Stop ends the spawner's thread, which SIGKILLs what it started with
// PDEATHSIG.
func (s *Spawner) Stop() { close(s.done) }

// blockedAcrossExec are the signals a new master starts with blocked, so
// that from its exec until its handlers are in place they stay pending
// instead of taking their default action (USR1 kills, TTIN and TTOU stop
// it). Go's runtime leaves these blocked until signal.Notify unblocks them
// on its signal thread; HUP, INT, TERM and QUIT it unblocks at once, so
// for those the keeper's hold (package keeper) is what protects a starting master.
var blockedAcrossExec = []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU}

// The spawner thread's signal mask is what children inherit through fork
// and exec (Go's fork copies the forking thread's mask): the keeper's
// blocks blockedAcrossExec for the first master (BlockAcrossExec); a
// master's unblocks every signal it catches, so workers and hooks start
// with none blocked (UnblockCaught). (A master's other threads keep the
// mask it started with, which tableflip's fork passes to the next master:
// the same protection for every generation.)

// BlockAcrossExec blocks blockedAcrossExec on this thread: the keeper's
// spawner mask.
func BlockAcrossExec() { setMask(unix.SIG_BLOCK, blockedAcrossExec) }

// UnblockCaught unblocks every signal baton catches on this thread; they
// are caught, so any thread may take them. A master's spawner mask.
func UnblockCaught() {
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

// StartUnblocked starts cmd from a thread with nothing of blockedAcrossExec
// blocked, so that what a master runs outside its spawner (the smoke test,
// exec: readiness probes) starts with no signal blocked. (The master's
// other threads keep them blocked for tableflip's next master.)
func StartUnblocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	UnblockCaught()
	return cmd.Start()
}
