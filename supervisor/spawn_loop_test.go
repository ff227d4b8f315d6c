//go:build linux

package supervisor

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// A generation's workers are forked at once, so one that cannot start is
// known only after the others were forked: every one forked is recorded in
// its slot and drained with the failed generation, none is restarted, and
// the reason names the one that failed.
func TestBootOneOfManyCannotStart(t *testing.T) {
	f, upg := newFakeOS(), newFakeUpgrader()
	m := newMaster(testConfig(4), f.sys(), upg, 1)
	f.startErrFor = func(p procSpec) error {
		if slices.Contains(p.env, "BATON_WORKER=2") {
			return errors.New("fork: resource temporarily unavailable")
		}
		return nil
	}
	l := &loop{t: t, m: m, os: f, upg: upg}
	m.boot()
	l.step()
	if !errors.Is(m.bootErr, ErrBootFailed) || !strings.Contains(m.bootErr.Error(), "worker 2 could not start") {
		t.Fatalf("bootErr %v, want worker 2 named", m.bootErr)
	}
	if l.started() != 3 {
		t.Fatalf("%d workers forked, want the 3 that could start", l.started())
	}
	// Recorded in slot order, the failed slot empty.
	if got := l.slotPids(); !slices.Equal(got, []int{100, 101, 0, 102}) {
		t.Fatalf("slots hold pids %v, want [100 101 0 102]", got)
	}
	for i := 0; i < l.started(); i++ {
		if !l.proc(i).got(m.cfg.DrainSignal) {
			t.Fatalf("worker pid %d not drained with the failed generation", l.proc(i).pid)
		}
	}
	l.advance(time.Minute)
	l.exitDrained()
	if l.started() != 3 || !m.finished() {
		t.Fatalf("%d started, finished %v: a failed boot must restart none and end", l.started(), m.finished())
	}
}

// The app's start-up in a handover is its slowest worker's own (its
// process started -> ready); the forks before it are baton's part.
func TestHandoverAppStartupIsSlowestWorker(t *testing.T) {
	f, upg := newFakeOS(), newFakeUpgrader()
	m := newMaster(testConfig(4), f.sys(), upg, 2)
	t0 := f.now
	m.origin.parentAlive, m.origin.parentPID, m.origin.parentNotify, m.origin.parentToken = true, 1, "@old", "tok"
	m.origin.start = t0.Add(-5 * time.Millisecond) // the old master's USR2
	f.startTakes = 10 * time.Millisecond           // each fork
	l := &loop{t: t, m: m, os: f, upg: upg}
	m.boot()
	l.step()
	// Forks returned at t0+10, +20, +30, +40 ms; every worker is ready at
	// t0+100 ms: the slowest took 90 ms (worker 0).
	l.advance(60 * time.Millisecond)
	for i := range 4 {
		l.ready(l.proc(i))
	}
	if m.phase != phaseServing {
		t.Fatalf("phase %d, want serving", m.phase)
	}
	var res control.ReloadResult
	for _, r := range f.reports {
		if _, js, ok := strings.Cut(r, reportReady+"="); ok {
			js, _, _ = strings.Cut(js, "\n")
			if err := json.Unmarshal([]byte(js), &res); err != nil {
				t.Fatalf("ready report %q: %v", js, err)
			}
		}
	}
	if res.TotalMS != 105 || res.WorkersStartingMS != 90 || res.BatonMS != 15 {
		t.Fatalf("total %.1f ms, workers starting %.1f ms, baton %.1f ms; want 105, 90 (slowest worker), 15",
			res.TotalMS, res.WorkersStartingMS, res.BatonMS)
	}
	if got := m.steps.last("spawn").Sub(t0); got != 40*time.Millisecond {
		t.Fatalf("spawn step ended %s after boot, want 40ms", got)
	}
}
