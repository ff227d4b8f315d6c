//go:build linux

package supervisor

import (
	"bufio"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// In-process tests of the deploy pipeline's state machine: the hook, the
// queue, the worker count, scale, progress lines.

// recConn is a held control connection whose lines the test reads.
type recConn struct {
	net.Conn
	mu     sync.Mutex
	buf    strings.Builder
	closed chan struct{}
	wrote  chan struct{} // a token after each write, for waits on lines
}

func newRecConn() *recConn {
	return &recConn{closed: make(chan struct{}), wrote: make(chan struct{}, 1)}
}

func (c *recConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case c.wrote <- struct{}{}:
	default:
	}
	return c.buf.Write(b)
}
func (c *recConn) Close() error                     { close(c.closed); return nil }
func (c *recConn) SetWriteDeadline(time.Time) error { return nil }

// lines waits for the connection to be closed and returns what was
// written: progress events, then the result.
func (c *recConn) lines(t *testing.T) ([]control.Progress, control.ReloadResult) {
	t.Helper()
	select {
	case <-c.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("reload connection not closed within 5 s")
	}
	var ps []control.Progress
	var res control.ReloadResult
	sc := bufio.NewScanner(strings.NewReader(c.buf.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"event"`) {
			var p control.Progress
			json.Unmarshal(sc.Bytes(), &p)
			ps = append(ps, p)
		} else if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			t.Fatalf("bad final line %q", sc.Text())
		}
	}
	return ps, res
}

func events(ps []control.Progress) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Event)
	}
	return out
}

func (l *loop) reload(noWait bool) *recConn {
	rc := newRecConn()
	l.m.onControl(&ctlConn{conn: rc, req: control.Request{Cmd: control.CmdReload, NoWait: noWait}})
	l.step()
	return rc
}

func hookConfig(workers int) Config {
	cfg := testConfig(workers)
	cfg.BeforeUpgrade = "migrate"
	cfg.BeforeUpgradeTimeout = 2 * time.Second
	return cfg
}

func TestHookFailureFailsTheUpgradeBeforeAnythingStarts(t *testing.T) {
	l := serving(t, hookConfig(2))
	rc := l.reload(false)
	hook := l.proc(2)
	if hook.spec.argv[2] != "migrate" || !strings.Contains(strings.Join(hook.spec.env, " "), "BATON_GENERATION=2") {
		t.Fatalf("hook started as %q with env %q", hook.spec.argv, hook.spec.env)
	}
	hook.spec.onLine("stderr", "column already exists")
	l.step()
	l.exit(hook, exitStatus{code: 1})
	ps, res := rc.lines(t)
	if res.Code != control.ReloadRollback || !strings.Contains(res.Reason, "exit status 1") ||
		len(res.Stderr) != 1 || res.Stderr[0] != "column already exists" {
		t.Fatalf("result %+v", res)
	}
	if n := l.upg.calls.Load(); n != 0 {
		t.Fatalf("tableflip Upgrade called %d times after the hook failed", n)
	}
	if got := strings.Join(events(ps), " "); got != "preflight hook_started hook_output failed" {
		t.Fatalf("progress %q", got)
	}
	if l.m.up.running || l.m.phase != phaseServing || len(l.m.procs) != 2 {
		t.Fatal("the generation or the upgrade state was touched")
	}
	// The next upgrade may go.
	if why := l.m.requestUpgrade("test", false); why != "" {
		t.Fatal(why)
	}
}

func TestHookTimeoutKillsItsGroup(t *testing.T) {
	l := serving(t, hookConfig(1))
	rc := l.reload(false)
	hook := l.proc(1)
	l.advance(2*time.Second - time.Millisecond)
	if hook.gotGroup(syscall.SIGKILL) {
		t.Fatal("killed before its timeout")
	}
	l.advance(time.Millisecond)
	if !hook.gotGroup(syscall.SIGKILL) {
		t.Fatal("not killed at its timeout")
	}
	l.exit(hook, exitStatus{code: -1, signal: syscall.SIGKILL})
	_, res := rc.lines(t)
	if res.Code != control.ReloadRollback || !strings.Contains(res.Reason, "--before-upgrade-timeout 2s") {
		t.Fatalf("result %+v", res)
	}
	if l.upg.calls.Load() != 0 {
		t.Fatal("upgrade launched after the hook timed out")
	}
}

func TestHookSuccessLaunchesTheUpgrade(t *testing.T) {
	l := serving(t, hookConfig(1))
	l.signal(syscall.SIGTTIN)
	l.ready(l.proc(1))
	rc := l.reload(false)
	l.exit(l.proc(2), exitStatus{code: 0})
	// The upgrade goroutine calls Upgrade; its result ends the wait.
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if l.upg.calls.Load() != 1 {
		t.Fatalf("Upgrade calls %d after the hook succeeded", l.upg.calls.Load())
	}
	if l.os.env[envNextWorkers] != "2" {
		t.Fatalf("next master's worker count %q, want 2 as TTIN left it", l.os.env[envNextWorkers])
	}
	if !strings.Contains(l.os.env[envMetrics], `"worker_starts":2`) {
		t.Fatalf("next master's metrics %q", l.os.env[envMetrics])
	}
	ps, res := rc.lines(t)
	if res.Code != control.ReloadRollback || !strings.Contains(strings.Join(events(ps), " "), "hook_finished") {
		t.Fatalf("progress %v, result %+v", events(ps), res)
	}
}

func TestBeforeStartRunsTheHookFirst(t *testing.T) {
	cfg := hookConfig(2)
	cfg.BeforeStart = true
	l := newLoop(t, cfg)
	if l.started() != 1 || l.proc(0).spec.argv[2] != "migrate" {
		t.Fatalf("%d started; want the hook alone", l.started())
	}
	l.exit(l.proc(0), exitStatus{code: 0})
	if l.started() != 3 {
		t.Fatalf("%d started after the hook; want it and 2 workers", l.started())
	}
	l.ready(l.proc(1))
	l.ready(l.proc(2))
	if l.m.phase != phaseServing {
		t.Fatal("not serving")
	}

	l = newLoop(t, cfg)
	l.exit(l.proc(0), exitStatus{code: 2})
	if l.m.bootErr == nil || !strings.Contains(l.m.bootErr.Error(), "exit status 2") || !l.m.finished() || l.started() != 1 {
		t.Fatalf("failed hook at start: bootErr %v, finished %v, started %d", l.m.bootErr, l.m.finished(), l.started())
	}
}

func TestStopWaitsForTheHook(t *testing.T) {
	l := serving(t, hookConfig(1))
	rc := l.reload(false)
	hook := l.proc(1)
	l.signal(syscall.SIGTERM)
	if !hook.gotGroup(syscall.SIGTERM) {
		t.Fatal("the hook was not passed the stop")
	}
	l.exitDrained()
	if l.m.finished() {
		t.Fatal("finished while the hook runs")
	}
	l.exit(hook, exitStatus{code: 0})
	if !l.m.finished() || l.upg.calls.Load() != 0 {
		t.Fatalf("finished %v, Upgrade calls %d", l.m.finished(), l.upg.calls.Load())
	}
	if _, res := rc.lines(t); res.Code != control.ReloadRollback {
		t.Fatalf("result %+v", res)
	}
}

// A new master whose previous generation still drains queues one upgrade;
// later requests merge into it, and it runs when the old master exits.
func TestUpgradeQueuedBehindTheDrain(t *testing.T) {
	l := serving(t, testConfig(1))
	l.m.origin.parentAlive = true
	l.m.origin.parentDeadline = l.m.sys.now().Add(4 * time.Second)
	rc1 := l.reload(false)
	l.signal(syscall.SIGUSR2)
	rc2 := l.reload(false)
	refused := l.reload(true)
	if _, res := refused.lines(t); res.Code != control.ReloadRefused || !strings.Contains(res.Reason, "still draining") {
		t.Fatalf("--no-wait: %+v", res)
	}
	st := l.m.status()
	if !st.UpgradeQueued || l.m.up.running || l.upg.calls.Load() != 0 {
		t.Fatalf("queued %v, running %v: the upgrade did not wait", st.UpgradeQueued, l.m.up.running)
	}
	l.advance(time.Second)
	l.m.handle(evParentExited{})
	l.step()
	if !l.m.up.running {
		t.Fatal("the queued upgrade did not start when the old master exited")
	}
	if why := l.m.requestUpgrade("test", true); !strings.Contains(why, "already under way") {
		t.Fatalf("a request during the upgrade: %q", why)
	}
	l.upg.results <- nil
	l.awaitEvent()
	l.exitDrained()
	for i, rc := range []*recConn{rc1, rc2} {
		ps, res := rc.lines(t)
		if !res.OK || res.WaitedMS != 1000 {
			t.Fatalf("request %d: %+v", i, res)
		}
		if ps[0].Event != control.EvWaiting || !strings.Contains(ps[0].Message, "at most 4s left") {
			t.Fatalf("request %d: first step %+v", i, ps[0])
		}
	}
	if n := l.upg.calls.Load(); n != 1 {
		t.Fatalf("%d upgrades for three requests, want 1", n)
	}
}

func TestQueuedUpgradeDroppedOnStop(t *testing.T) {
	l := serving(t, testConfig(1))
	l.m.origin.parentAlive = true
	rc := l.reload(false)
	l.signal(syscall.SIGTERM)
	if _, res := rc.lines(t); res.Code != control.ReloadRefused || !strings.Contains(res.Reason, "stopping") {
		t.Fatalf("%+v", res)
	}
}

func TestScale(t *testing.T) {
	l := serving(t, testConfig(2))
	c := &ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdScale, Workers: 4}}
	l.m.onControl(c)
	l.step()
	if len(l.m.slots) != 4 || l.started() != 4 {
		t.Fatalf("%d slots, %d started after scale 4", len(l.m.slots), l.started())
	}
	st := l.m.status()
	if st.WorkersConfigured != 4 || st.WorkersCurrent != 2 {
		t.Fatalf("status: configured %d current %d", st.WorkersConfigured, st.WorkersCurrent)
	}
	if prev, err := l.m.scale(1); err != nil || prev != 4 || len(l.m.slots) != 1 {
		t.Fatalf("scale 1: %d %v, %d slots", prev, err, len(l.m.slots))
	}
	for i := 1; i < 4; i++ {
		if !l.proc(i).got(syscall.SIGTERM) {
			t.Fatalf("worker %d not drained by scale 1", i)
		}
	}
	l.signal(syscall.SIGTERM)
	if _, err := l.m.scale(3); err == nil {
		t.Fatal("scale while stopping accepted")
	}
}

// A new master reports each step of its start to the old master when a
// reload request follows the upgrade, and none when nobody does (SIGUSR2):
// only whether it took over.
func TestNewMasterReportsSteps(t *testing.T) {
	for _, followed := range []bool{true, false} {
		f, upg := newFakeOS(), newFakeUpgrader()
		m := newMaster(testConfig(2), f.sys(), upg, 2)
		m.origin.parentNotify, m.origin.parentToken, m.origin.parentAlive = "@old", "tok", true
		m.origin.followed = followed
		l := &loop{t: t, m: m, os: f, upg: upg}
		m.boot()
		l.step()
		l.ready(l.proc(0))
		l.ready(l.proc(1))
		var got []string
		ready := 0
		for _, r := range f.reports {
			if _, js, ok := strings.Cut(r, reportProgress+"="); ok && strings.HasPrefix(r, reportToken+"=tok\n") {
				var p control.Progress
				json.Unmarshal([]byte(js), &p)
				got = append(got, p.Event+"/"+strconv.Itoa(p.Generation))
			}
			if strings.Contains(r, reportReady+"=") {
				ready++
			}
		}
		want := "master_started/2 worker_started/2 worker_started/2 worker_ready/2 worker_ready/2 generation_ready/2"
		if !followed {
			want = ""
		}
		if strings.Join(got, " ") != want || ready != 1 {
			t.Fatalf("followed %v: steps %q and %d ready reports, want %q and 1", followed, got, ready, want)
		}
	}
}
