//go:build linux

package keeper

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/earlysig"
	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/notify"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"github.com/baton-sh/baton/supervisor/internal/pidfile"
	"github.com/baton-sh/baton/supervisor/internal/spawn"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// sys is the keeper's contact with the OS: every decision of the keeper
// acts through it. osSys is the real one; the in-process tests swap in a
// fake (fake_test.go). Each function is called from the keeper's loop
// only; gone callbacks come from other goroutines.
type sys struct {
	now func() time.Time
	// startMaster starts the first master and calls gone once it has
	// exited. It returns its pid and a handle on it.
	startMaster func(gone func()) (int, proc, error)
	// parent is pid's parent pid; the error satisfies osutil.NoProcess
	// when pid is gone or a zombie (it has exited), and is the keeper's
	// own failure otherwise.
	parent func(pid int) (int, error)
	// sameProgram reports whether pid runs baton, as the keeper does.
	sameProgram func(pid int) bool
	// knowsToken reports whether tok is the secret the keeper gave its
	// masters (link.EnvToken): a master that runs another file (a
	// symlink on baton's path moved to a new binary) shows it.
	knowsToken func(tok string) bool
	// watch takes a handle on pid (which stays valid when the pid is
	// reused) and calls gone once pid has exited. Its error satisfies
	// osutil.NoProcess when pid is already gone.
	watch func(pid int, gone func()) (proc, error)
	// reap collects every exited child, without blocking.
	reap func() []reaped
	// waitChild waits for pid, which is known to have exited, and returns
	// its status; false when it is not the keeper's child.
	waitChild func(pid int) (int, bool)
	// notifyManager sends msg to the service manager ($NOTIFY_SOCKET at
	// the keeper's start); nothing when there is none.
	notifyManager func(msg string) error
	// answer answers a master's announcement at to: accepted when
	// refusal is "".
	answer func(to, refusal string) error
	// ttyAlive reports whether the controlling terminal is still there.
	ttyAlive func() bool
	// trim gives memory back (osutil.Trim) and returns how many bytes of
	// the binary's pages it unmapped.
	trim func() int64
	// endService ends what is left of the service (its cgroup subtree, or
	// the subreaper's remaining children) and removes the pid file.
	endService func()
}

// proc is a master as the keeper holds it.
type proc interface {
	// signal sends sig to the master (never to a process that got its
	// pid after it exited).
	signal(sig syscall.Signal) error
	// close lets go of the handle.
	close()
}

// reaped is a child the keeper collected, and its status as a shell
// gives it.
type reaped struct{ pid, status int }

// osSys is the keeper's OS: its notify socket, its answer socket, the
// descriptors it holds back, the pid file, the service's trees.
type osSys struct {
	kc       Config
	log      *zap.Logger
	self     int
	sock     *notify.Socket
	manager  string          // the service manager's NOTIFY_SOCKET, or ""
	tty      bool            // started with a controlling terminal, hangups not ignored
	ttyHung  chan time.Time  // when the terminal hung up, as its poll said
	fds      *osutil.Reserve // descriptors held back for registering masters
	oomOrig  string          // oom_score_adj before the keeper lowered it
	ackFD    int             // unbound datagram socket for handshake answers
	pidLock  *pidfile.Lock   // the pid file, held for the keeper's life
	trees    keeperTrees     // the service's cgroup subtree (tree.go)
	stalePID int             // the keeper a stale pid file named (its subtree is ended at start)
	token    string          // link.EnvToken: random, made at start
}

// openOS sets the keeper's process up: descriptors in reserve, the answer
// socket, a lower OOM score, child subreaper, the terminal's watch, the
// notify socket, the pid file. It logs what failed and returns nil then.
func openOS(kc Config, log *zap.Logger) *osSys {
	o := &osSys{kc: kc, log: log, self: os.Getpid(), ttyHung: make(chan time.Time, 1), token: newToken()}
	// A limit the masters still fit in must not starve the keeper of the
	// few descriptors it needs to adopt one (a pidfd, a /proc read, an
	// answer): those are retried with one of these released.
	o.fds = osutil.NewReserve(keeperReserveFDs)
	o.ackFD = link.OpenAnswerSocket()
	o.lowerOOMScore() // oom.go
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Error("keeper: cannot become a child subreaper", zap.Error(err))
		return nil
	}
	// A terminal's hangup stops the service, unless it was started to
	// survive one (nohup: SIGHUP ignored; Notify would undo that).
	if !earlysig.HUPIgnored() {
		if f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0); err == nil {
			o.tty = true
			go watchTTY(f, o.ttyHung)
		}
	}
	notify.Sweep(nil) // a keeper's start is no handover to hold up
	sock, err := notify.Open(nil)
	if err != nil {
		log.Error("keeper: notify socket", zap.Error(err))
		return nil
	}
	o.sock = sock
	// The pid file names the keeper from the start: a second `baton run`
	// with the same pid file is refused even while this one boots.
	if err := o.writePIDFile(); err != nil {
		sock.Close()
		log.Error("keeper: write pid file", zap.Error(err))
		return nil
	}
	return o
}

func (o *osSys) close() { o.sock.Close() }

func (o *osSys) sys() sys {
	return sys{
		now:         time.Now,
		startMaster: o.startMaster,
		parent: func(pid int) (ppid int, err error) {
			var st osutil.Stat
			err = o.fds.Do(func() (err error) { st, err = osutil.ReadStat(pid); return err })
			if err == nil && st.State == 'Z' {
				return 0, fmt.Errorf("process %d has exited (a zombie): %w", pid, fs.ErrNotExist)
			}
			return st.PPID, err
		},
		sameProgram: osutil.SameProgram,
		knowsToken: func(tok string) bool {
			return o.token != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(o.token)) == 1
		},
		watch: func(pid int, gone func()) (proc, error) {
			var fd int
			err := o.fds.Do(func() (err error) { fd, err = unix.PidfdOpen(pid, 0); return err })
			if err != nil {
				return nil, fmt.Errorf("pidfd_open: %w", err)
			}
			go watchPidfd(pid, fd, gone)
			return pidfdProc(fd), nil
		},
		reap:      reapAll,
		waitChild: waitChild,
		notifyManager: func(msg string) error {
			if o.manager == "" {
				return nil
			}
			return osutil.SendNotify(o.manager, msg)
		},
		answer:   func(to, refusal string) error { return link.Answer(o.ackFD, to, refusal) },
		ttyAlive: ttyAlive,
		trim:     osutil.Trim,
		endService: func() {
			o.endTrees()
			o.pidLock.Release()
			o.pidLock = nil
		},
	}
}

// startMaster starts the first master: this binary with the keeper's own
// command line, in a process group of its own (a terminal's ^C reaches the
// keeper only, which forwards it once). It is not killed with the keeper
// (no PDEATHSIG): like every later master it watches the keeper's pidfd
// and, the keeper gone, kills its workers' whole trees itself. SIGKILLed
// with a SIGKILLed keeper, it never did, and helpers that left their
// worker's group (setsid) ran on holding the port.
func (o *osSys) startMaster(gone func()) (int, proc, error) {
	o.manager = os.Getenv("NOTIFY_SOCKET")
	activated := os.Getenv("LISTEN_PID") == strconv.Itoa(o.self)
	offer := link.Offer{KeeperPID: o.self, Notify: o.sock.Addr(), OOMScoreAdj: o.oomOrig, Token: o.token}
	o.setupTrees(&offer)
	cmd := &exec.Cmd{
		Path:        o.kc.Args[0],
		Args:        o.kc.Args,
		Env:         offer.Env(os.Environ(), activated),
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if activated {
		// Sockets from a systemd .socket unit: the master takes them at
		// the same fd numbers (LISTEN_PID names the keeper; the master
		// accepts that).
		n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		for i := 0; i < n; i++ {
			cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(3+i), "activated"))
		}
	}
	sp := spawn.New(spawn.BlockAcrossExec)
	if err := sp.Start(cmd); err != nil {
		return 0, nil, err
	}
	pid := cmd.Process.Pid
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("pidfd of master %d: %w", pid, err)
	}
	cmd.Process.Release() // the keeper reaps it (and every orphan) itself
	go watchPidfd(pid, pidfd, gone)
	return pid, pidfdProc(pidfd), nil
}

// pidfdProc is a master's pidfd.
type pidfdProc int

func (p pidfdProc) signal(sig syscall.Signal) error {
	return unix.PidfdSendSignal(int(p), sig, nil, 0)
}

func (p pidfdProc) close() { unix.Close(int(p)) }

// watchPidfd calls gone once pid (whose pidfd is fd) has exited: the
// pidfd becomes readable then, whether or not the keeper is its parent (a
// new master is the old master's child until the old one exits).
func watchPidfd(pid, fd int, gone func()) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		// Believe the pidfd only when the kernel says the process is gone:
		// anything else (an error, POLLNVAL) is no proof, and a master
		// taken for dead would end the service.
		if err == nil && fds[0].Revents&unix.POLLIN != 0 {
			if serr := unix.PidfdSendSignal(fd, 0, nil, 0); errors.Is(serr, syscall.ESRCH) {
				break
			}
		}
		// Fall back to /proc, every 100 ms, for this master, and to the
		// pidfd again: a zombie answers the pidfd's signal 0, and a /proc
		// read that fails for a reason of the keeper's own (EMFILE) proves
		// nothing, but once the keeper has reaped the master the pidfd says
		// ESRCH, whatever /proc says.
		for !procGone(pid) {
			if serr := unix.PidfdSendSignal(fd, 0, nil, 0); errors.Is(serr, syscall.ESRCH) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		break
	}
	gone()
}

// procGone is osutil.Gone, a variable for tests (a /proc that cannot be
// read).
var procGone = osutil.Gone

// reapAll collects every exited child: masters re-parented to the keeper,
// and orphans of any process below it (PID 1's duty in a container).
func reapAll() []reaped {
	var out []reaped
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return out
		}
		out = append(out, reaped{pid, waitStatus(ws)})
	}
}

// waitChild waits for the child pid.
func waitChild(pid int) (int, bool) {
	var ws syscall.WaitStatus
	if got, err := syscall.Wait4(pid, &ws, 0, nil); err == nil && got == pid {
		return waitStatus(ws), true
	}
	return 0, false
}

// waitStatus is a process's status as a shell reports it: the exit code,
// or 128 + the signal that killed it.
func waitStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// writePIDFile takes the pid file for the keeper's life (package
// pidfile): a file nobody holds is stale and replaced, with a log line.
func (o *osSys) writePIDFile() error {
	if o.kc.PIDFile == "" {
		return nil
	}
	l, stale, err := pidfile.Take(o.kc.PIDFile, o.self)
	if err != nil {
		return err
	}
	o.pidLock = l
	o.stalePID = stale
	switch was := l.Replaced(); {
	case stale != 0 && stale != o.self:
		o.log.Warn("stale pid file replaced", logevent.PIDFileStale, zap.String("reason", "no keeper holds it"),
			zap.String("pid_file", o.kc.PIDFile), zap.Int("stale_pid", stale))
	case stale == 0 && was != "":
		// Not a pid (garbage, a torn write): as stale, and said so.
		o.log.Warn("stale pid file replaced", logevent.PIDFileStale, zap.String("reason", "not a pid"),
			zap.String("pid_file", o.kc.PIDFile), zap.String("content", was))
	}
	return nil
}

// watchTTY reports when the terminal f hangs up.
func watchTTY(f *os.File, hung chan<- time.Time) {
	defer f.Close()
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: 0}} // POLLHUP is always reported
	for {
		if _, err := unix.Poll(fds, -1); errors.Is(err, syscall.EINTR) {
			continue
		} else if err != nil {
			return
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			hung <- time.Now()
			return
		}
	}
}

// ttyAlive reports whether this process's controlling terminal is still
// there (after a hangup, opening it fails).
func ttyAlive() bool {
	f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// newToken returns 128 random bits in hex for link.EnvToken, or "" if the
// system has no randomness to give (then only the executable's path
// tells a master).
func newToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return ""
	}
	return hex.EncodeToString(b)
}
