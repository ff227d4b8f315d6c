//go:build linux

package supervisor

import (
	"time"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// A stop refuses new connections at once. Once the workers have been told
// to drain, nobody accepts from the listening sockets any more, yet the
// kernel would go on completing handshakes into their backlogs until the
// last copy closes: clients would hang there, then be reset. So the master
// shuts its sockets down for listening (sockets.Set.Refuse), which a load
// balancer sees as a fast refusal, as soon as its workers have let go of
// them: a worker still in accept() when the socket stops listening would
// see an error there and might exit with its requests in flight. A worker
// that still holds a socket after refuseGrace (one that keeps accepting
// while it drains) no longer holds the refusal back.

const (
	refuseGrace = time.Second
	refusePoll  = 20 * time.Millisecond
)

// refusal is the state of a stop's refusal of new connections.
type refusal struct {
	started bool
	at      time.Time
	done    bool
	inodes  []uint64
}

// refuseNew starts the refusal: on a stop of the master that serves (or of
// a first generation that failed to start), never of a new master whose
// old one still serves on the same sockets. A blue-green or canary
// candidate has sockets of its own in the group (users reach them once
// switched, during the bake), so it refuses on them too when stopped;
// left listening, they parked new clients while the old master's refused.
// It is called once the workers have been told to drain (drainAll):
// refuseGrace counts from then.
func (m *master) refuseNew() {
	sameSockets := m.origin.parentAlive && m.origin.servingAt.IsZero() && !m.cfg.Rollout.Strategy.steered()
	if m.lns == nil || m.refusal.started || sameSockets {
		return
	}
	m.refusal = refusal{started: true, at: m.sys.now(), inodes: m.lns.Inodes()}
	m.onRefuseCheck()
}

// onRefuseCheck refuses once no worker holds a listening socket, or the
// grace is over; until then it looks again every refusePoll.
func (m *master) onRefuseCheck() {
	r := &m.refusal
	if r.done || !r.started {
		return
	}
	waited := m.sys.now().Sub(r.at)
	if held := m.workersHolding(r.inodes); held > 0 && waited < refuseGrace {
		m.sys.afterFunc(refusePoll, func() { m.post(evRefuseCheck{}) })
		return
	}
	r.done = true
	refused, kept := m.lns.Refuse()
	m.log.Info("listening sockets refuse new connections", logevent.ListenersRefused, zap.Strings("refused", refused),
		zap.Strings("kept_for_systemd", kept), zap.Duration("waited", waited))
}

// workersHolding counts the live workers with one of the sockets open.
func (m *master) workersHolding(inodes []uint64) int {
	n := 0
	for _, w := range m.procs {
		if !w.exited && osutil.HoldsSocket(w.pid, inodes) {
			n++
		}
	}
	return n
}
