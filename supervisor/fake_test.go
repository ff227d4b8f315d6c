//go:build linux

package supervisor

import (
	"context"
	"errors"
	"math"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/sockets"
	"github.com/baton-sh/baton/supervisor/tasks"
)

// fakeOS is the in-process seam for loop tests: processes are records,
// signals are logged, the clock moves only when the test says so.
type fakeOS struct {
	mu       sync.Mutex
	now      time.Time
	timers   []*fakeTimer
	nextPid  int
	reusePid int // if set, the next start gets this pid
	startErr error
	// startErrFor, if set, fails the starts it returns an error for;
	// startTakes is how far each start moves the clock (a slow fork).
	startErrFor func(p procSpec) error
	startTakes  time.Duration
	procs       []*fakeProc
	manager     []string // messages to the service manager
	reports     []string // messages to the old master's notify socket
	env         map[string]string
	headroom    tasks.Headroom // zero: unlimited
	tree        int64          // tasks of any process's tree
	hits        int64          // pids.events max
	// headroomReads and hitsReads count the reads of the task limits.
	headroomReads, hitsReads int
	// The rollout's checks: what the next health probes and smoke tests
	// answer (nil: pass), the runs seen, and the canary shares set.
	// probeFail, if set, fails every probe once probeErrs is used up.
	probeErrs []error
	probeFail error
	probes    int
	smokeErr  error
	smokeHold chan struct{} // if set, a smoke test runs until it is closed (or stopped)
	smokes    []smokeRun
	steers    []int
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

type fakeProc struct {
	os      *fakeOS
	pid     int
	exited  func(exitStatus)
	spec    procSpec
	reaped  bool
	signals []syscall.Signal // to the process
	group   []syscall.Signal // to its process group
}

func newFakeOS() *fakeOS {
	return &fakeOS{now: time.Unix(1_700_000_000, 0), nextPid: 100, env: map[string]string{}}
}

func (f *fakeOS) sys() sys {
	start := func(p procSpec, exited func(exitStatus)) (process, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.startErr != nil {
			return nil, f.startErr
		}
		if f.startErrFor != nil {
			if err := f.startErrFor(p); err != nil {
				return nil, err
			}
		}
		f.now = f.now.Add(f.startTakes)
		pid := f.nextPid
		if f.reusePid != 0 {
			pid, f.reusePid = f.reusePid, 0
		} else {
			f.nextPid++
		}
		fp := &fakeProc{os: f, pid: pid, exited: exited, spec: p}
		f.procs = append(f.procs, fp)
		return fp, nil
	}
	return sys{
		start: start,
		startAll: func(ps []procSpec, exited []func(exitStatus)) []started {
			out := make([]started, len(ps))
			for i := range ps {
				out[i].proc, out[i].err = start(ps[i], exited[i])
				f.mu.Lock()
				out[i].at = f.now
				f.mu.Unlock()
			}
			return out
		},
		now: func() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now },
		afterFunc: func(d time.Duration, fn func()) func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			t := &fakeTimer{at: f.now.Add(d), f: fn}
			f.timers = append(f.timers, t)
			return func() { f.mu.Lock(); t.stopped = true; f.mu.Unlock() }
		},
		notifyManager: func(msg string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.manager = append(f.manager, msg)
			return nil
		},
		notifyTo: func(addr, msg string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.reports = append(f.reports, msg)
			return nil
		},
		keepNotify: func(string) func() { return func() {} },
		setenv:     func(k, v string) { f.mu.Lock(); f.env[k] = v; f.mu.Unlock() },
		parentOf:   func(int) int { return 0 }, // no process has a parent here
		headroom: func() tasks.Headroom {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.headroomReads++
			if f.headroom.Max == 0 {
				return tasks.Headroom{Left: math.MaxInt64}
			}
			return f.headroom
		},
		treeTasks: func(int) int64 { return f.tree },
		limitHits: func() int64 { f.mu.Lock(); defer f.mu.Unlock(); f.hitsReads++; return f.hits },
		healthProbe: func(context.Context, string, HealthCheck) (string, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.probes++
			if len(f.probeErrs) == 0 {
				if f.probeFail != nil {
					return "", f.probeFail
				}
				return "200", nil
			}
			err := f.probeErrs[0]
			f.probeErrs = f.probeErrs[1:]
			if err == nil {
				return "200", nil
			}
			return "", err
		},
		smokeTest: func(ctx context.Context, s smokeRun) ([]string, error) {
			f.mu.Lock()
			f.smokes = append(f.smokes, s)
			hold, err := f.smokeHold, f.smokeErr
			f.mu.Unlock()
			if hold != nil {
				select {
				case <-hold:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			if err != nil {
				return []string{"smoke: checkout broken"}, err
			}
			return nil, nil
		},
		waitQueueEmpty: func([]*os.File, time.Duration) int { return 0 },
		steer: func(_ *sockets.Set, canary int) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.steers = append(f.steers, canary)
			return nil
		},
	}
}

func (p *fakeProc) Pid() int { return p.pid }

func (p *fakeProc) Signal(sig syscall.Signal) error { return p.record(&p.signals, sig) }

func (p *fakeProc) SignalGroup(sig syscall.Signal) error { return p.record(&p.group, sig) }

// record logs sig unless the process was reaped, as osProcess refuses.
func (p *fakeProc) record(to *[]syscall.Signal, sig syscall.Signal) error {
	p.os.mu.Lock()
	defer p.os.mu.Unlock()
	if p.reaped {
		return os.ErrProcessDone
	}
	*to = append(*to, sig)
	return nil
}

func (p *fakeProc) StderrTail() []string {
	return []string{"last words of " + string(rune('0'+p.pid%10))}
}

func (p *fakeProc) got(sig syscall.Signal) bool {
	p.os.mu.Lock()
	defer p.os.mu.Unlock()
	return slices.Contains(p.signals, sig)
}

func (p *fakeProc) gotGroup(sig syscall.Signal) bool {
	p.os.mu.Lock()
	defer p.os.mu.Unlock()
	return slices.Contains(p.group, sig)
}

// fakeUpgrader stands in for tableflip: Upgrade blocks until the test
// sends its result.
type fakeUpgrader struct {
	calls    atomic.Int32 // Upgrade calls
	results  chan error
	readies  int
	readyErr error
	exit     chan struct{}
}

func newFakeUpgrader() *fakeUpgrader {
	return &fakeUpgrader{results: make(chan error, 1), exit: make(chan struct{})}
}

func (u *fakeUpgrader) Upgrade() error                          { u.calls.Add(1); return <-u.results }
func (u *fakeUpgrader) Ready() error                            { u.readies++; return u.readyErr }
func (u *fakeUpgrader) Stop()                                   {}
func (u *fakeUpgrader) Exit() <-chan struct{}                   { return u.exit }
func (u *fakeUpgrader) HasParent() bool                         { return false }
func (u *fakeUpgrader) WaitForParent(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
func (u *fakeUpgrader) Registry() sockets.Registry              { return nil }

// loop drives one master's event loop in the test's goroutine.
type loop struct {
	t   *testing.T
	m   *master
	os  *fakeOS
	upg *fakeUpgrader
}

func testConfig(workers int) Config {
	return Config{
		Listen:       []sockets.Spec{{Name: "http", Network: "tcp", Addr: "127.0.0.1:1"}},
		Workers:      workers,
		ReadyTimeout: 5 * time.Second,
		DrainSignal:  syscall.SIGTERM,
		DrainTimeout: 3 * time.Second,
		Command:      []string{"/bin/sh"},
		WorkerOutput: OutputInherit,
	}
}

// newLoop boots a master of cfg on the fake OS; its workers are starting.
func newLoop(t *testing.T, cfg Config) *loop {
	t.Helper()
	f, upg := newFakeOS(), newFakeUpgrader()
	m := newMaster(cfg, f.sys(), upg, 1)
	l := &loop{t: t, m: m, os: f, upg: upg}
	m.boot()
	l.step()
	return l
}

// step handles every event already posted, and those they post.
func (l *loop) step() {
	for {
		select {
		case ev := <-l.m.events:
			l.m.handle(ev)
		default:
			return
		}
	}
}

// awaitEvent handles the next event, which another goroutine posts (the
// upgrader's), waiting at most 5 s for it.
func (l *loop) awaitEvent() {
	l.t.Helper()
	select {
	case ev := <-l.m.events:
		l.m.handle(ev)
		l.step()
	case <-time.After(5 * time.Second):
		l.t.Fatal("no event within 5 s")
	}
}

// advance moves the clock by d, firing due timers in time order and
// handling what they post.
func (l *loop) advance(d time.Duration) {
	l.os.mu.Lock()
	end := l.os.now.Add(d)
	l.os.mu.Unlock()
	for {
		l.os.mu.Lock()
		var next *fakeTimer
		for _, t := range l.os.timers {
			if !t.stopped && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			l.os.now = end
			l.os.mu.Unlock()
			return
		}
		next.stopped = true
		l.os.now = next.at
		l.os.mu.Unlock()
		next.f()
		l.step()
	}
}

func (l *loop) signal(sig syscall.Signal) {
	l.m.handle(evSignal{sig})
	l.step()
}

// proc returns the fake process started n-th (0-based).
func (l *loop) proc(n int) *fakeProc {
	l.t.Helper()
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	if n >= len(l.os.procs) {
		l.t.Fatalf("only %d processes started, want #%d", len(l.os.procs), n)
	}
	return l.os.procs[n]
}

func (l *loop) started() int {
	l.os.mu.Lock()
	defer l.os.mu.Unlock()
	return len(l.os.procs)
}

// ready sends READY=1 from p, as the notify socket would deliver it.
func (l *loop) ready(p *fakeProc) {
	l.m.handle(evNotify{PID: p.pid, Fields: map[string]string{"READY": "1"}})
	l.step()
}

// exit makes p exit with st; the master hears of it as from a real wait.
func (l *loop) exit(p *fakeProc, st exitStatus) {
	l.os.mu.Lock()
	p.reaped = true
	l.os.mu.Unlock()
	p.exited(st)
	l.step()
}

// exitDrained makes every process that was sent the drain signal exit 0.
func (l *loop) exitDrained() {
	for i := 0; i < l.started(); i++ {
		if p := l.proc(i); !p.reaped && p.got(l.m.cfg.DrainSignal) {
			l.exit(p, exitStatus{code: 0})
		}
	}
}

// serving boots n workers and makes each ready.
func serving(t *testing.T, cfg Config) *loop {
	l := newLoop(t, cfg)
	for i := 0; i < cfg.Workers; i++ {
		l.ready(l.proc(i))
	}
	if l.m.phase != phaseServing {
		t.Fatalf("phase %d after every worker was ready, want serving", l.m.phase)
	}
	return l
}

func (l *loop) slotPids() []int {
	var out []int
	for _, s := range l.m.slots {
		if s.cur == nil {
			out = append(out, 0)
		} else {
			out = append(out, s.cur.pid)
		}
	}
	return out
}

var errUpgrade = errors.New("child exited")

// discardConn is a control connection whose replies go nowhere.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error)      { return len(b), nil }
func (discardConn) Close() error                     { return nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }
