//go:build linux

// Package spawn starts child processes from one OS thread that lives as
// long as the process (masters start workers, the keeper its first
// master), with the signal mask the children must inherit.
package spawn

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Spawner starts every worker from OS threads that live as long as the
// master. Workers get PR_SET_PDEATHSIG so they die with a SIGKILLed master,
// but Linux fires it when the *thread* that forked them exits (golang/go#27505);
// an ordinary goroutine's thread may be retired under a live master.
//
// A generation's workers may be started at once, each from a thread of its
// own (Grow makes them beforehand), so that one fork's wait for its child
// (Go forks with CLONE_VFORK and reads the child's exec status before
// Start returns) overlaps the others' instead of adding up. The threads
// never end before Stop, since each may be the parent thread of a live
// worker. One start at a time (the keeper) keeps one thread.
type Spawner struct {
	reqs chan spawnReq
	done chan struct{}
	mask func()

	mu      sync.Mutex
	threads int
}

// MaxThreads bounds a spawner's threads: each is a task the cgroup's
// pids.max counts for the process's whole life. Go forks with CLONE_VFORK:
// the forking thread waits until its child has exec'd, which on a small VM
// is mostly waiting (the child's exec, a halted CPU's wake-up), so a second
// thread overlaps those waits. On 2 CPUs (24 handovers each, interleaved,
// load 3-4) 4 workers of a generation started in 9.5 ms median from four
// threads against 14.6 from one, with the same CPU (2.8 ms), and in 8.8
// from two against 8.5 from four; under 64 clients, two were no slower.
// (Before starts were batched per thread, four threads at load 40 cost 4.3
// ms of CPU instead of 3.1.) So: one per CPU, at least two, at most four.
var MaxThreads = max(2, min(4, runtime.NumCPU()))

// spawnReq is a run of starts for one thread: it starts cmds in order
// and fills errs, then signals reply.
type spawnReq struct {
	cmds  []*exec.Cmd
	errs  []error
	at    []time.Time
	reply chan<- struct{}
}

// New starts the spawner's thread; mask (BlockAcrossExec or
// UnblockCaught) sets that thread's signal mask (and every later
// thread's), which children inherit.
func New(mask func()) *Spawner {
	s := &Spawner{reqs: make(chan spawnReq), done: make(chan struct{}), mask: mask, threads: 1}
	go s.loop()
	return s
}

func (s *Spawner) loop() {
	// Never unlocked: when the loop ends the thread exits with it, which
	// SIGKILLs any worker it forked that is still alive, as a dead master
	// would.
	runtime.LockOSThread()
	s.mask() // what children inherit blocked
	for {
		select {
		case r := <-s.reqs:
			for i, cmd := range r.cmds {
				r.errs[i] = cmd.Start()
				r.at[i] = time.Now()
			}
			r.reply <- struct{}{}
		case <-s.done:
			return
		}
	}
}

// Start starts cmd (cmd.Start) from one of the spawner's threads: an idle
// one, else a new one while there are fewer than MaxThreads, else the
// first to be free. Safe for concurrent use; blocks until cmd started or
// failed.
func (s *Spawner) Start(cmd *exec.Cmd) error {
	errs := make([]error, 1)
	reply := make(chan struct{}, 1)
	req := spawnReq{[]*exec.Cmd{cmd}, errs, make([]time.Time, 1), reply}
	select {
	case s.reqs <- req:
	default:
		s.Grow(s.Threads() + 1)
		s.reqs <- req
	}
	<-reply
	return errs[0]
}

// StartAll starts every cmd and returns each one's error (nil: started)
// and when its start returned, in cmds' order. The starts are split into
// one run per thread (up to MaxThreads), each run forked back to back by
// its thread: a thread that
// took a start request per command would hand control back to the caller's
// goroutine after every fork, two thread wake-ups each, and on a busy
// machine each wake-up waits for a CPU behind the servers already started.
// Safe for concurrent use; blocks until every cmd started or failed.
func (s *Spawner) StartAll(cmds []*exec.Cmd) ([]error, []time.Time) {
	errs, at := make([]error, len(cmds)), make([]time.Time, len(cmds))
	if len(cmds) == 0 {
		return errs, at
	}
	runs := min(len(cmds), MaxThreads)
	s.Grow(runs)
	per := (len(cmds) + runs - 1) / runs
	reply := make(chan struct{}, runs)
	sent := 0
	for i := 0; i < len(cmds); i += per {
		j := min(i+per, len(cmds))
		s.reqs <- spawnReq{cmds[i:j], errs[i:j], at[i:j], reply}
		sent++
	}
	for range sent {
		<-reply
	}
	return errs, at
}

// Grow makes the threads for n starts at once (up to MaxThreads), so that
// they need not be made when the starts are due.
func (s *Spawner) Grow(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.threads < min(n, MaxThreads) {
		s.threads++
		go s.loop()
	}
}

// Threads is how many threads the spawner has.
func (s *Spawner) Threads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.threads
}

// Stop ends the spawner's threads, which SIGKILLs what they started with
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
