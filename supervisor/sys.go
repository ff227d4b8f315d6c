//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"github.com/baton-sh/baton/supervisor/internal/spawn"
	"github.com/baton-sh/baton/supervisor/sockets"
	"github.com/baton-sh/baton/supervisor/tasks"
	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// sys is the master's OS seam, in the style of tableflip's env: every
// process start, signal, timer and notification the loop causes goes
// through these funcs, so tests drive the loop in-process with a fake
// (fake_test.go) and the real ones live here alone.
type sys struct {
	// start starts a worker process. exited is called once, from another
	// goroutine, after the process has been reaped and its output read.
	start func(p procSpec, exited func(exitStatus)) (process, error)
	// startAll starts a process per spec as start does, and returns each
	// one's start in order: forked back to back from the spawning threads
	// here (spawn.StartAll), one after another in tests.
	startAll func(ps []procSpec, exited []func(exitStatus)) []started
	// now is the clock; afterFunc calls f once d has passed, unless the
	// returned stop is called first.
	now       func() time.Time
	afterFunc func(d time.Duration, f func()) (stop func())
	// notifyManager sends one sd_notify message to the service manager
	// that started baton ($NOTIFY_SOCKET); nothing when there is none.
	notifyManager func(msg string) error
	// notifyTo sends one sd_notify datagram to addr (the old master's
	// notify socket, for upgrade reports).
	notifyTo func(addr, msg string) error
	// keepNotify makes notifyTo to addr reuse one socket until release is
	// called (a new master's reports to its old master: a dozen or more
	// per handover).
	keepNotify func(addr string) (release func())
	// setenv changes the environment the next master is executed with.
	setenv func(key, value string)
	// parentOf returns a process's parent pid, 0 when unknown (notify
	// messages from a worker's descendants count as the worker's).
	parentOf func(pid int) int
	// headroom, treeTasks and limitHits read the task limits (tasks.go).
	headroom  func() tasks.Headroom
	treeTasks func(pid int) int64
	limitHits func() int64

	// The rollout's contacts with the candidate (checks.go). healthProbe
	// runs one health check against target and returns its answer ("200",
	// "connected") or why it failed; it blocks for at most a few seconds,
	// or until ctx ends.
	healthProbe func(ctx context.Context, target string, hc HealthCheck) (string, error)
	// smokeTest runs the smoke test and returns its last output lines and
	// why it failed (nil: it passed); it blocks until it ends, its timeout
	// passes or ctx ends.
	smokeTest func(ctx context.Context, s smokeRun) ([]string, error)
	// waitQueueEmpty blocks until the accept queues of files are empty, or
	// bound has passed, and returns how many connections were left.
	waitQueueEmpty func(files []*os.File, bound time.Duration) int
	// steer sets the share of new connections the candidate gets on lns
	// (0: only baton's probes, 100: every user).
	steer func(lns *sockets.Set, canary int) error
}

// upgrader is what the master uses of *tableflip.Upgrader (tableflip's own
// testing package fakes the same calls).
type upgrader interface {
	Upgrade() error
	Ready() error
	Stop()
	Exit() <-chan struct{}
	HasParent() bool
	WaitForParent(ctx context.Context) error
	// Registry is where listening sockets are inherited or bound.
	Registry() sockets.Registry
}

// tableflipUpgrader is *tableflip.Upgrader as an upgrader; log says its
// retries.
type tableflipUpgrader struct {
	*tableflip.Upgrader
	log *zap.Logger
}

func (u tableflipUpgrader) Registry() sockets.Registry { return u.Fds }

// tableflipParentNotExited is tableflip v1.2.3's refusal of an Upgrade
// while its own loop has not yet taken in the old master's exit. It is
// made by errors.New inside that loop (upgrader.go, run), with no exported
// value or type to match, so its text is the only handle; this is the one
// place that reads it.
const tableflipParentNotExited = "parent hasn't exited"

// tableflipTextBusy ends tableflip v1.2.3's error when the exec of the new
// master failed with ETXTBSY: the error reaches us formatted with %s
// through three layers ("can't start child: can't start process PATH:
// fork/exec: text file busy"), so errors.Is cannot find the errno and its
// text is the only handle; this is the one place that reads it.
var tableflipTextBusy = "fork/exec: " + syscall.ETXTBSY.Error()

// An exec that failed with ETXTBSY is retried execBusyRetries times,
// execBusyPause apart. The binary is open for writing somewhere: most often
// a package manager wrote it and a process it forked meanwhile inherited
// the descriptor, which goes at that child's own exec or exit, within
// milliseconds. Half a second covers that on a loaded machine, and a
// failed exec leaves nothing behind (tableflip closes the child's pipes,
// no process was made), so the upgrade is only delayed, never harmed.
const (
	execBusyRetries = 20
	execBusyPause   = 25 * time.Millisecond
)

// Upgrade is tableflip's, with two transient failures retried:
//
//   - its stale refusal. The master asks for an upgrade only after
//     WaitForParent said the old master exited, but WaitForParent learns
//     it from a channel that tableflip's loop reads separately and may not
//     have read yet (its select picks at random among ready cases). The
//     parent is gone, so the refusal is stale within microseconds: up to
//     50 retries 2 ms apart, then the refusal stands.
//   - an exec of the baton binary that failed with ETXTBSY (see
//     execBusyRetries), each retry logged (upgrade_exec_busy); after the
//     last the error stands and the upgrade fails as before.
//
// It blocks until the new master is ready or the upgrade failed.
func (u tableflipUpgrader) Upgrade() error {
	log := u.log
	if log == nil {
		log = zap.NewNop()
	}
	err := u.Upgrader.Upgrade()
	for stale, busy := 0, 0; err != nil; err = u.Upgrader.Upgrade() {
		switch {
		case err.Error() == tableflipParentNotExited && stale < 50:
			stale++
			time.Sleep(2 * time.Millisecond)
		case strings.HasSuffix(err.Error(), tableflipTextBusy) && busy < execBusyRetries:
			busy++
			log.Info("baton binary busy (open for writing elsewhere): exec retried", logevent.UpgradeExecBusy,
				zap.String("binary", os.Args[0]), zap.Int("attempt", busy), zap.Int("of", execBusyRetries),
				zap.Duration("pause", execBusyPause))
			time.Sleep(execBusyPause)
		default:
			return err
		}
	}
	return nil
}

// procSpec is one worker process to start.
type procSpec struct {
	path  string
	argv  []string
	env   []string
	dir   string
	files []*os.File // fds 3, 4, …
	cred  *syscall.Credential
	// cgroup, if set, is the cgroup v2 directory the process is cloned
	// into (CLONE_INTO_CGROUP): it is never outside it, even for an instant.
	cgroup *os.File
	output string      // OutputTagged or OutputInherit
	log    *zap.Logger // for tagged output; the pid is added
	// outputMsg is the log message of each tagged line (OutputMessage
	// when empty), outputEvent its event (logevent.WorkerOutput when
	// unset); onLine, if set, is also called with each line, from
	// the output pumps' goroutines.
	outputMsg   string
	outputEvent zap.Field
	onLine      func(stream, line string)
}

// process is a started worker as the loop sees it.
type process interface {
	Pid() int
	// Signal sends sig to the process, and SignalGroup to its process
	// group. Once the process has been reaped Signal sends nothing (its
	// pid may belong to another process by then) and returns
	// os.ErrProcessDone; SignalGroup still reaches the group while it has
	// live members (helpers left behind), since a pid in use as a process
	// group id is not handed out again.
	Signal(sig syscall.Signal) error
	SignalGroup(sig syscall.Signal) error
	// StderrTail returns the last lines it wrote to stderr when its
	// output goes through the master, else nil.
	StderrTail() []string
}

// exitStatus is how a process ended: exited with code, or killed by signal.
type exitStatus struct {
	code   int            // -1 when killed by a signal
	signal syscall.Signal // 0 when it exited
}

func (e exitStatus) String() string {
	if e.signal != 0 {
		return "signal " + sigName(e.signal)
	}
	return fmt.Sprintf("exit status %d", e.code)
}

func (e exitStatus) fields() []zap.Field {
	if e.signal != 0 {
		return []zap.Field{zap.String("signal", sigName(e.signal))}
	}
	return []zap.Field{zap.Int("exit_code", e.code)}
}

func statusOf(ps *os.ProcessState) exitStatus {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitStatus{code: -1, signal: ws.Signal()}
	}
	return exitStatus{code: ps.ExitCode()}
}

// osSys returns the real seam and a func that releases it (the spawning
// threads) once the master's loop has ended. The threads for starting
// workers workers at once are made in the background (spawn.Grow).
func osSys(workers int) (sys, func()) {
	sp := spawn.New(spawn.UnblockCaught)
	go func() {
		sp.Grow(workers)
		// Go's first use of a pidfd (its first StartProcess: a worker's)
		// first checks that clone(CLONE_PIDFD) works by cloning a child and
		// waiting for its exit, 0.2-0.8 ms here: done now, while this
		// master waits for the keeper, instead of before its first worker.
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			p.Release()
		}
	}()
	var kept keptNotifiers
	return sys{
		start: func(p procSpec, exited func(exitStatus)) (process, error) {
			return startOSProcess(sp, p, exited)
		},
		startAll: func(ps []procSpec, exited []func(exitStatus)) []started {
			return startOSProcesses(sp, ps, exited)
		},
		now: time.Now,
		afterFunc: func(d time.Duration, f func()) func() {
			t := time.AfterFunc(d, f)
			return func() { t.Stop() }
		},
		notifyManager: func(msg string) error {
			if addr := os.Getenv("NOTIFY_SOCKET"); addr != "" {
				return kept.manager(addr).Send(msg, 100*time.Millisecond)
			}
			return nil
		},
		notifyTo:       kept.send,
		keepNotify:     kept.keep,
		setenv:         func(k, v string) { os.Setenv(k, v) },
		parentOf:       osutil.ParentOf,
		healthProbe:    healthProbe,
		smokeTest:      smokeTest,
		waitQueueEmpty: waitQueueEmpty,
		steer: func(lns *sockets.Set, canary int) error {
			if lns == nil {
				return nil
			}
			return lns.Steer(canary)
		},
		headroom: osTasks.headroom, treeTasks: osTasks.treeTasks, limitHits: osTasks.limitHits,
	}, sp.Stop
}

// keptNotifiers are the sockets the real seam sends sd_notify datagrams
// over for more than one message: to the service manager for the master's
// life (one fd), to an address keepNotify names until released. Every
// other address gets a socket per message, so that a peer that is gone
// (a failed new master) leaves no fd behind.
type keptNotifiers struct {
	mu    sync.Mutex
	mgr   *osutil.Notifier
	mgrTo string
	to    map[string]*osutil.Notifier
}

func (k *keptNotifiers) manager(addr string) *osutil.Notifier {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.mgr == nil || k.mgrTo != addr {
		if k.mgr != nil {
			k.mgr.Close()
		}
		k.mgr, k.mgrTo = osutil.NewNotifier(addr), addr
	}
	return k.mgr
}

func (k *keptNotifiers) send(addr, msg string) error {
	k.mu.Lock()
	n := k.to[addr]
	k.mu.Unlock()
	if n == nil {
		return osutil.SendNotify(addr, msg)
	}
	return n.Send(msg, 100*time.Millisecond)
}

func (k *keptNotifiers) keep(addr string) func() {
	n := osutil.NewNotifier(addr)
	k.mu.Lock()
	if k.to == nil {
		k.to = make(map[string]*osutil.Notifier)
	}
	k.to[addr] = n
	k.mu.Unlock()
	return func() {
		k.mu.Lock()
		if k.to[addr] == n {
			delete(k.to, addr)
		}
		k.mu.Unlock()
		n.Close()
	}
}

// osProcess is a worker process of this machine.
type osProcess struct {
	pid   int
	pipes *workerPipes

	mu     sync.Mutex
	reaped bool // set before the kernel may hand the pid to another process
}

// started is one process of a startAll: the process, or the error that
// kept it from starting; at is when its fork returned.
type started struct {
	proc process
	err  error
	at   time.Time
}

func startOSProcess(sp *spawn.Spawner, p procSpec, exited func(exitStatus)) (process, error) {
	st := startOSProcesses(sp, []procSpec{p}, []func(exitStatus){exited})[0]
	return st.proc, st.err
}

// startOSProcesses starts one process per spec (spawn.StartAll: forked
// back to back) and returns each one's start, in order; exited[i] is
// called once the i-th has been reaped and its output read.
func startOSProcesses(sp *spawn.Spawner, ps []procSpec, exited []func(exitStatus)) []started {
	out := make([]started, len(ps))
	cmds, pipes := make([]*exec.Cmd, 0, len(ps)), make([]*workerPipes, len(ps))
	idx := make([]int, 0, len(ps)) // ps index of each of cmds
	for i, p := range ps {
		cmd := &exec.Cmd{
			Path:       p.path,
			Args:       p.argv,
			Env:        p.env,
			Dir:        p.dir,
			Stdout:     os.Stdout,
			Stderr:     os.Stderr,
			ExtraFiles: p.files,
			SysProcAttr: &syscall.SysProcAttr{
				Setpgid:    true, // a terminal's ^C reaches the master only
				Pdeathsig:  syscall.SIGKILL,
				Credential: p.cred,
			},
		}
		if p.cgroup != nil {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(p.cgroup.Fd())
		}
		// Tagged: both streams through the master. Inherit: stderr is
		// teed, so failure reports carry its last lines in both modes.
		pp, err := newWorkerPipes(p.output != OutputTagged)
		if err != nil {
			out[i].err = fmt.Errorf("output pipes: %w", err)
			continue
		}
		if pp.outW != nil {
			cmd.Stdout = pp.outW
		}
		cmd.Stderr = pp.errW
		pipes[i] = pp
		cmds, idx = append(cmds, cmd), append(idx, i)
	}
	errs, at := sp.StartAll(cmds)
	for k, err := range errs {
		i, cmd, pp := idx[k], cmds[k], pipes[idx[k]]
		out[i].at = at[k]
		if err != nil {
			pp.abandon()
			out[i].err = err
			continue
		}
		out[i].proc = watchOSProcess(cmd, pp, ps[i], exited[i])
	}
	return out
}

// watchOSProcess is what follows a started process's fork: its output is
// read, and its exit waited for and handed to exited.
func watchOSProcess(cmd *exec.Cmd, pipes *workerPipes, p procSpec, exited func(exitStatus)) *osProcess {
	proc := &osProcess{pid: cmd.Process.Pid, pipes: pipes}
	msg, ev := p.outputMsg, p.outputEvent
	if msg == "" {
		msg = OutputMessage
	}
	if ev.Key == "" {
		ev = logevent.WorkerOutput
	}
	// Lazy: the pid is encoded into the output logger only if the worker
	// writes a line; many never do, and the encoding was about 20 us of a
	// new master's CPU per worker, on the way to the generation serving.
	pipes.started(p.log.WithLazy(zap.Int("pid", proc.pid)), msg, ev, p.onLine)
	// Open before the goroutine: the process is this one's unreaped child,
	// so the pidfd names it even if it has exited already.
	w, werr := osutil.WatchExit(proc.pid)
	go func() {
		// Wait for the exit without reaping, so that signals stop before
		// the pid can be reused: a timer that fires after this point
		// finds the process marked reaped instead of killing a stranger.
		// Through the poller when the kernel allows it (no OS thread held
		// per worker), else a blocking waitid.
		if werr != nil || w.Wait() != nil {
			var info unix.Siginfo
			for {
				err := unix.Waitid(unix.P_PID, proc.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
				if !errors.Is(err, syscall.EINTR) {
					break
				}
			}
		}
		proc.mu.Lock()
		proc.reaped = true
		proc.mu.Unlock()
		cmd.Wait()
		// Let the last words reach the log (and the failure report)
		// before the exit is handled; a grandchild holding the pipe must
		// not hold up the exit, hence the bound.
		select {
		case <-pipes.done:
		case <-time.After(200 * time.Millisecond):
		}
		exited(statusOf(cmd.ProcessState))
	}()
	return proc
}

func (p *osProcess) Pid() int { return p.pid }

func (p *osProcess) Signal(sig syscall.Signal) error { return p.kill(p.pid, sig) }

func (p *osProcess) SignalGroup(sig syscall.Signal) error { return p.kill(-p.pid, sig) }

func (p *osProcess) kill(target int, sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	// After the reap, the group is still ours only while it has members:
	// an empty group's id is a free pid. (The loop, the only spawner of
	// workers, is the caller, so none of ours takes it meanwhile.)
	if p.reaped && (target > 0 || !osutil.GroupHasMembers(p.pid)) {
		return os.ErrProcessDone
	}
	if err := syscall.Kill(target, sig); err != nil {
		return fmt.Errorf("kill %d %s: %w", target, sigName(sig), err)
	}
	return nil
}

func (p *osProcess) StderrTail() []string {
	if p.pipes == nil {
		return nil
	}
	return p.pipes.tail.snapshot()
}
