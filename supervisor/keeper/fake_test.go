//go:build linux

package keeper

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/notify"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeOS is the keeper's seam for in-process tests: masters are records,
// signals are logged, the clock moves only when the test says so. Nothing
// is started, signalled or reaped for real.
type fakeOS struct {
	now      time.Time
	nextPid  int
	startErr error
	procs    map[int]*fakeProc // by pid: the last process of that pid
	gone     map[int]func()    // watchers still waiting, by pid
	parents  map[int]int       // what /proc says of a process's parent
	parentErr,
	watchErr map[int]error
	notBaton map[int]bool // runs another program
	// exitsAtExe: the process exits as the keeper reads its executable
	// (a zombie's cannot be read), between its two reads of /proc.
	exitsAtExe map[int]bool
	zombies    []reaped    // children waiting to be reaped
	children   map[int]int // a blocking wait's result, by pid
	manager    []string    // messages to the service manager
	answers    []string    // "to: refusal" ("" refusal: accepted)
	answerErr  error       // what answering returns
	ttyDead    bool
	trims      int // trim calls
	ended      int // endService calls
	endedAt    int // masters the keeper knew when it ended the service
	k          *keeper
}

type fakeProc struct {
	pid     int
	signals []syscall.Signal
	closed  bool
}

func (p *fakeProc) signal(sig syscall.Signal) error {
	if p.closed {
		return fmt.Errorf("pidfd_send_signal: %w", syscall.EBADF)
	}
	p.signals = append(p.signals, sig)
	return nil
}

func (p *fakeProc) close() { p.closed = true }

func newFakeOS() *fakeOS {
	return &fakeOS{now: time.Unix(1_700_000_000, 0), nextPid: 100, procs: map[int]*fakeProc{}, gone: map[int]func(){},
		parents: map[int]int{}, parentErr: map[int]error{}, watchErr: map[int]error{}, notBaton: map[int]bool{},
		exitsAtExe: map[int]bool{},
		children:   map[int]int{}}
}

func (f *fakeOS) add(pid int, gone func()) *fakeProc {
	p := &fakeProc{pid: pid}
	f.procs[pid] = p
	f.gone[pid] = gone
	return p
}

func (f *fakeOS) sys() sys {
	return sys{
		now: func() time.Time { return f.now },
		startMaster: func(gone func()) (int, proc, error) {
			if f.startErr != nil {
				return 0, nil, f.startErr
			}
			pid := f.nextPid
			f.nextPid++
			f.parents[pid] = keeperPid
			return pid, f.add(pid, gone), nil
		},
		parent: func(pid int) (int, error) {
			if err := f.parentErr[pid]; err != nil {
				return 0, err
			}
			ppid, ok := f.parents[pid]
			if !ok {
				return 0, fmt.Errorf("read /proc/%d/stat: %w", pid, fs.ErrNotExist)
			}
			return ppid, nil
		},
		sameProgram: func(pid int) bool {
			if f.exitsAtExe[pid] {
				delete(f.parents, pid)
				return false
			}
			return !f.notBaton[pid]
		},
		knowsToken: func(tok string) bool { return tok != "" && tok == fakeToken },
		watch: func(pid int, gone func()) (proc, error) {
			if err := f.watchErr[pid]; err != nil {
				return nil, err
			}
			return f.add(pid, gone), nil
		},
		reap: func() []reaped {
			out := f.zombies
			f.zombies = nil
			return out
		},
		waitChild: func(pid int) (int, bool) {
			s, ok := f.children[pid]
			delete(f.children, pid)
			return s, ok
		},
		notifyManager: func(msg string) error { f.manager = append(f.manager, msg); return nil },
		answer: func(to, refusal string) error {
			f.answers = append(f.answers, to+": "+refusal)
			return f.answerErr
		},
		ttyAlive: func() bool { return !f.ttyDead },
		trim:     func() int64 { f.trims++; return 0 },
		endService: func() {
			f.ended++
			f.endedAt = len(f.k.masters)
		},
	}
}

// keeperPid is the fake keeper's own pid.
const keeperPid = 1

// lk is a keeper under test: its state, its fake OS, its log entries.
type lk struct {
	t    *testing.T
	k    *keeper
	f    *fakeOS
	logs *observer.ObservedLogs
	// reopened counts ReopenLogs calls.
	reopened int
	// queued are messages on the notify socket that the loop has not
	// read yet; barriers counts the loop's barriers on it.
	queued   []notify.Msg
	barriers int
}

// newLK starts a keeper on a fake OS; its first master is pid 100.
func newLK(t *testing.T) *lk {
	t.Helper()
	l := &lk{t: t, f: newFakeOS()}
	core, logs := observer.New(zap.DebugLevel)
	l.logs = logs
	l.k = newKeeper(Config{ReopenLogs: func() error { l.reopened++; return nil }}, l.f.sys(), keeperPid, zap.New(core))
	l.f.k = l.k
	if !l.k.startFirst() {
		t.Fatal("startFirst failed on the fake OS")
	}
	return l
}

// note delivers a datagram from pid on the keeper's notify socket.
func (l *lk) note(pid int, kv ...string) {
	f := map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		f[k] = v
	}
	l.k.onNote(notify.Msg{PID: pid, Fields: f})
}

// announce has pid announce itself as a master, waiting for an answer.
// fakeToken is the fake keeper's link.EnvToken.
const fakeToken = "f00d"

func (l *lk) announce(pid int) {
	l.note(pid, link.KeyRegister+"=1", link.KeyAckTo+"=@baton-ack-"+fmt.Sprint(pid))
}

// ready has pid say that its generation serves, as a master does.
func (l *lk) ready(pid int) { l.note(pid, "READY=1", fmt.Sprintf("MAINPID=%d", pid)) }

// child makes pid a new master that parent started (tableflip's re-exec).
func (l *lk) child(pid, parent int) { l.f.parents[pid] = parent }

// exit ends master pid with status, reapable by the keeper when reaped
// is true (else its parent, another master, reaps it), and runs the loop's
// handling of its exit. It returns the keeper's exit status and whether
// the keeper exited.
func (l *lk) exit(pid, status int, reaped bool) (int, bool) {
	l.t.Helper()
	gone := l.f.gone[pid]
	if gone == nil {
		l.t.Fatalf("exit(%d): no watcher for that pid", pid)
	}
	delete(l.f.gone, pid)
	if reaped {
		l.f.zombies = append(l.f.zombies, struct{ pid, status int }{pid, status})
		l.k.reap() // SIGCHLD
	}
	gone()
	barrier := func() { l.barriers++ }
	queued := func() (notify.Msg, bool) {
		if len(l.queued) == 0 {
			return notify.Msg{}, false
		}
		msg := l.queued[0]
		l.queued = l.queued[1:]
		return msg, true
	}
	return l.k.onGone(<-l.k.exited, barrier, queued)
}

// sent is what pid has been sent so far.
func (l *lk) sent(pid int) []syscall.Signal { return l.f.procs[pid].signals }

func (l *lk) wantSent(pid int, want ...syscall.Signal) {
	l.t.Helper()
	if got := l.sent(pid); !slices.Equal(got, want) {
		l.t.Fatalf("master %d was sent %v, want %v", pid, got, want)
	}
}

// events counts the log entries with the given event name.
func (l *lk) events(name string) int {
	n := 0
	for _, e := range l.logs.All() {
		for _, f := range e.Context {
			if f.Key == "event" && f.String == name {
				n++
			}
		}
	}
	return n
}

func (l *lk) wantAnswers(want ...string) {
	l.t.Helper()
	if !slices.Equal(l.f.answers, want) {
		l.t.Fatalf("answers %q, want %q", l.f.answers, want)
	}
}
