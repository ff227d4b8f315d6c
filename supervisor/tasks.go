//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/spawn"
	"github.com/baton-sh/baton/supervisor/tasks"
	"go.uber.org/zap"
)

// This file owns the master's task budget. A cgroup's pids.max (systemd's
// TasksMax=, a container's --pids-limit) and RLIMIT_NPROC count every
// thread. Go aborts the whole process, workers and all, when it cannot
// create an OS thread, at moments baton does not choose; a fork that fails
// half way through a start leaves a generation half up. So:
//
//   - start, upgrade, TTIN and baton scale are checked first against the
//     tightest limit (package tasks) and refused in one line naming the
//     numbers when what they would add does not fit;
//   - a master creates its spare threads (reserveThreads) before its
//     boot, or after an upgrade once its generation serves, so that an upgrade's blocking calls find one idle
//     instead of asking the kernel while the new generation is taking the
//     last tasks;
//   - a new master that died while the cgroup's limit was hit says so in
//     the reload's reason.
//
// The estimates: a worker is a process (with its own threads) plus one
// task of margin, the master's thread waiting for it where the kernel
// (before 5.10, without PIDFD_NONBLOCK) makes that wait a blocking call
// (sys.go; newer kernels wait through the poller, no thread per worker); a
// new generation needs what the running one uses (this master's threads
// and its workers' trees). At the first start nothing runs yet: two tasks
// per worker are a floor.

// spareThreads is how many threads a master keeps idle for an upgrade. An
// upgrade was measured to add 1 to 2 threads to the old master (waiting
// for the new master, tableflip's pipes); a --before-upgrade hook one more.
const spareThreads = 4

// reserveThreads makes n more OS threads exist at once, then lets them go
// idle: Go keeps idle threads for reuse and never ends them, so the next
// n blocking calls need no thread from the kernel.
func reserveThreads(n int) {
	var locked, release sync.WaitGroup
	locked.Add(n)
	release.Add(1)
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread() // one thread each, all at the same time
			locked.Done()
			release.Wait()
			runtime.UnlockOSThread()
		}()
	}
	locked.Wait()
	release.Done()
}

// tasksShort is the refusal of work that does not fit under a task limit:
// its message names the numbers, limit the kind of limit
// (tasks.LimitPidsMax or tasks.LimitNproc), for a log's `limit` field.
type tasksShort struct {
	msg   string
	limit string
}

func (e *tasksShort) Error() string { return e.msg }

// shortLimit is the kind of task limit err is a refusal for, "" if it is
// not one.
func shortLimit(err error) string {
	var e *tasksShort
	if errors.As(err, &e) {
		return e.limit
	}
	return ""
}

// fitTasks returns a *tasksShort naming the numbers when need more tasks
// do not fit under the tightest limit; what says what they are for.
func (m *master) fitTasks(need int64, what string) error {
	return fitIn(m.sys.headroom(), need, what)
}

// fitIn is fitTasks under headroom h.
func fitIn(h tasks.Headroom, need int64, what string) error {
	if h.Unlimited() || need <= h.Left {
		return nil
	}
	return &tasksShort{msg: fmt.Sprintf("%s needs about %d tasks, but %s", what, need, h), limit: h.Limit}
}

// startTasks checks that n workers fit, at a master's start. A new master
// whose old one found no task limit in its pre-flight checks, just before
// it re-executed baton, does not look again: reading the limits (this
// process's cgroups in /proc/self/cgroup, the pids hierarchy's mount in
// /proc/self/mountinfo, each pids.max) was about 0.3 ms of CPU on the way
// to its first spawn.
func (m *master) startTasks(n int) error {
	if m.origin.noTaskLimit {
		return nil
	}
	spawners := min(n, spawn.MaxThreads)
	return m.fitTasks(int64(2*n+spareThreads+spawners), fmt.Sprintf("starting %d workers (2 tasks each, %d spare threads and %d spawning threads)", n, spareThreads, spawners))
}

// passTaskLimit, as an upgrade launches, tells the new master whether the
// pre-flight checks just found no task limit (envNoTaskLimit), and notes
// the cgroups' pids.max hits to compare with if it fails (tasksReason).
// With no limit nothing can be hit, and nothing is read: after a
// --before-upgrade hook, which may have run for minutes since the checks,
// the limits are read again, here and by the new master.
func (m *master) passTaskLimit() {
	u := &m.up
	if u.noTaskLimit && u.hookTook == 0 {
		u.limitHits = -1
		m.sys.setenv(envNoTaskLimit, "1")
		return
	}
	u.limitHits = m.sys.limitHits()
	m.sys.setenv(envNoTaskLimit, "")
}

// perWorker is the tasks one more worker takes: its process tree as the
// running workers measure (at least 1), and one of margin (a waiting
// thread on kernels before 5.10).
func (m *master) perWorker() int64 {
	var sum, n int64
	for _, w := range m.procs {
		if w.state == stateReady {
			sum += m.sys.treeTasks(w.pid)
			n++
		}
	}
	if n == 0 {
		return 2
	}
	return max(sum/n, 1) + 1
}

// upgradeTasks checks that a new generation like this one fits. Without a
// limit it counts nothing: walking this generation's process trees in /proc
// cost the pre-flight checks of every upgrade about a millisecond of CPU.
func (m *master) upgradeTasks() error {
	h := m.sys.headroom()
	m.up.noTaskLimit = h.Unlimited()
	if m.up.noTaskLimit {
		return nil
	}
	own := m.sys.treeTasks(m.self) // this master's threads, its workers' trees
	return fitIn(h, own, fmt.Sprintf("an upgrade (a new master and %d workers, as many tasks as this generation's %d)", len(m.slots), own))
}

// addTasks checks that k more workers fit (TTIN, baton scale).
func (m *master) addTasks(k int) error {
	per := m.perWorker()
	what := fmt.Sprintf("%d more workers (%d tasks each)", k, per)
	if k == 1 {
		what = fmt.Sprintf("1 more worker (%d tasks)", per)
	}
	return m.fitTasks(int64(k)*per, what)
}

// tasksReason explains a new master's failure when the cgroup's pids.max
// was hit while it ran (hits: the counter when the upgrade started).
func (m *master) tasksReason(hits int64, reason string) string {
	if hits < 0 {
		return reason // no limit when it launched
	}
	now := m.sys.limitHits()
	if now <= hits {
		return reason
	}
	m.log.Warn("the cgroup's task limit was hit during the upgrade", logevent.TaskLimitHit, zap.Int64("times", now-hits), zap.Stringer("headroom", m.sys.headroom()))
	return fmt.Sprintf("new master ran out of tasks: pids.max was hit %d times during the upgrade (fork or thread creation failed with EAGAIN; %s): %s",
		now-hits, m.sys.headroom(), reason)
}

// osTasks is the real seam's part for tasks.
var osTasks = struct {
	headroom  func() tasks.Headroom
	treeTasks func(pid int) int64
	limitHits func() int64
}{tasks.Find, tasks.Tree, tasks.LimitHits}
