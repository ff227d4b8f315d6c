//go:build linux

package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"github.com/baton-sh/baton/supervisor/sockets"
	"go.uber.org/zap"
)

// This file checks who is in the reuseport groups of blue-green and
// canary (sockets/members.go): before every switch of users (the start of
// an upgrade, the switch, a canary's promotion), once a generation's
// workers are ready (a worker that bound its own socket), and every
// memberCheckInterval while serving.

// memberCheckInterval is how often a serving master looks for foreign
// sockets in its groups. One check is two sock_diag dumps of listening
// sockets, about 0.1-0.4 ms (BenchmarkMembershipCheck), so once a second
// costs at most 0.04% of a core; the checks before each switch are what
// keep users off a foreign socket, this one finds it for the status.
const memberCheckInterval = time.Second

type evMemberCheck struct{}
type evMembers struct {
	foreign []sockets.Listener
	err     error
}

func (evMemberCheck) isEvent() {}
func (evMembers) isEvent()     {}

// groupState is the master's view of its groups' membership. Owned by
// the loop.
type groupState struct {
	foreign   []control.ForeignSocket // as last seen
	prev      map[uint64]bool         // the previous generation's sockets, while its master lived
	running   bool                    // a periodic check is under way
	soleSteer bool                    // Steer(0) attached since the group held our socket alone
	uncertain string                  // classic: why baton no longer knows its socket's index ("" while it does)
}

// allowed returns the socket inodes that may be in the groups now: ours,
// the candidate's (held by its master) and, while the previous master
// lives, its generation's.
func (m *master) allowed() map[uint64]bool {
	own := map[uint64]bool{}
	for _, ino := range m.lns.Inodes() {
		own[ino] = true
	}
	if c := m.rollout.cand; c != nil && c.stage < stageRolledBack {
		inos := c.sockets
		if inos == nil {
			inos = sockets.SocketInodes(c.pid)
		}
		for _, ino := range inos {
			own[ino] = true
		}
	}
	if m.origin.parentAlive {
		ppid := os.Getppid()
		if m.group.prev == nil {
			m.group.prev = map[uint64]bool{}
		}
		for _, ino := range sockets.SocketInodes(ppid) {
			m.group.prev[ino] = true
			own[ino] = true
		}
	}
	return own
}

// parseInodes reads a list socketInodes wrote: nil for "" (a master that
// did not say), else the inodes (empty if none parsed).
func parseInodes(s string) []uint64 {
	if s == "" {
		return nil
	}
	out := []uint64{}
	for _, f := range strings.Split(s, ",") {
		if ino, err := strconv.ParseUint(f, 10, 64); err == nil {
			out = append(out, ino)
		}
	}
	return out
}

// socketInodes is this generation's socket inodes for the next master
// (envPrevSockets) and for the old one (reportSockets), comma-separated;
// "" unless its sockets are steered.
func (m *master) socketInodes() string {
	if m.lns == nil || !m.cfg.Rollout.Strategy.steered() {
		return ""
	}
	var b strings.Builder
	for i, ino := range m.lns.Inodes() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(ino, 10))
	}
	return b.String()
}

// foreignNow runs the check at once (before a switch).
func (m *master) foreignNow() ([]sockets.Listener, error) {
	if m.lns == nil || !m.cfg.Rollout.Strategy.steered() {
		return nil, nil
	}
	return sockets.Foreign(m.lns.Specs(), m.allowed())
}

// describeForeign says in one line what is in the group that should not
// be, naming workers of ours and the previous generation's leftovers.
func (m *master) describeForeign(fs []sockets.Listener) string {
	parts := make([]string, 0, len(fs))
	for _, f := range fs {
		parts = append(parts, m.labelForeign(f).Detail)
	}
	return strings.Join(parts, "; ")
}

func (m *master) labelForeign(f sockets.Listener) control.ForeignSocket {
	fs := control.ForeignSocket{Address: f.Addr.String(), Inode: f.Inode, UID: f.UID, PID: f.PID, Command: f.Command, Kind: "foreign"}
	switch {
	case m.group.prev[f.Inode]:
		fs.Kind = "leftover"
		fs.Detail = "generation " + strconv.Itoa(m.gen-1) + "'s " + f.String() + ", still listening after its master exited"
	case f.PID != 0 && m.procs[f.PID] != nil:
		w := m.procs[f.PID]
		fs.Kind = "worker"
		fs.Detail = fmt.Sprintf("worker %d (pid %d) opened its own %s: under --strategy %s a worker must accept on the socket baton passes it (LISTEN_FDS, fd 3), not bind its own (gunicorn: no --reuse-port)",
			w.index, f.PID, f.String(), m.cfg.Rollout.Strategy)
	default:
		fs.Detail = "a " + f.String() + " that baton did not open"
	}
	if ours, ok := sockets.Shadows(f, m.lns.Specs()); ok {
		fs.Shadows = ours.String()
		fs.Detail += fmt.Sprintf("; bound to the more specific address %s, it takes every connection to %s whatever the steering (the kernel prefers it over baton's %s)",
			f.Addr.Addr(), f.Addr, ours)
	}
	return fs
}

// foreignAction says what the foreign socket f receives of users'
// connections and what baton can do about it: ebpf is the steering,
// soleSteer that the classic program returns 0 with baton's socket at
// index 0 (a socket that joins takes a higher index; one that leaves moves
// the last socket into its own slot, never baton's out of slot 0).
func foreignAction(f sockets.Listener, specs []sockets.Spec, ebpf, soleSteer bool) string {
	if ours, ok := sockets.Shadows(f, specs); ok {
		return fmt.Sprintf("it takes every connection to %s whatever the steering: bound to that address, not to baton's %s, it is outside baton's reuseport group and the kernel prefers it; stop it", f.Addr, ours)
	}
	switch {
	case ebpf:
		return "it receives no connections: the eBPF map holds only baton's sockets"
	case soleSteer:
		return "it receives no connections: baton's socket is index 0 of the group and the classic program returns 0; a joining socket takes a higher index"
	}
	return "cannot re-steer: classic BPF picks sockets by the kernel's order, which the foreign socket shares; stop it, or run baton with CAP_BPF"
}

// checkBeforeSwitch refuses a change of steering while a foreign socket
// is in a group: "" when none is.
func (m *master) checkBeforeSwitch() string {
	fs, err := m.foreignNow()
	if err != nil {
		m.log.Warn("membership check failed; switching anyway", zap.Error(err))
		return ""
	}
	if len(fs) == 0 {
		return ""
	}
	return "a socket baton does not own is in the reuseport group: " + m.describeForeign(fs)
}

// reasonWorkerOwnSocket is generation_failed's reason_code when a worker
// bound its own socket on a --listen address: stable, for tests and tools
// (the reason beside it is prose).
const reasonWorkerOwnSocket = "worker_own_socket"

// checkWorkerSockets fails a generation whose workers bound their own
// socket on a --listen address, once they are ready: "" when none did.
func (m *master) checkWorkerSockets() string {
	if m.lns == nil || !m.cfg.Rollout.Strategy.steered() {
		return ""
	}
	members, err := sockets.Members(m.lns.Specs())
	if err != nil {
		m.log.Warn("membership check failed", zap.Error(err))
		return ""
	}
	own := map[uint64]bool{}
	for _, ino := range m.lns.Inodes() {
		own[ino] = true
	}
	byIno := map[uint64]sockets.Listener{}
	for _, l := range members {
		if !own[l.Inode] {
			byIno[l.Inode] = l
		}
	}
	// The previous generation's sockets, as its master named them, are
	// no worker's: with nothing else in the groups (the usual case) the
	// walk below, /proc reads of every worker's tasks and fds (1-1.5 ms of
	// CPU before the candidate can report), is not needed.
	for _, ino := range m.origin.prevSockets {
		delete(byIno, ino)
	}
	if len(byIno) == 0 {
		return ""
	}
	// One sentence per address, naming every worker that bound its own.
	var addrs []string
	who := map[string][]string{}
	for _, s := range m.slots {
		w := s.cur
		if w == nil {
			continue
		}
		for _, pid := range append([]int{w.pid}, osutil.ChildrenOf(w.pid, 0)...) {
			for _, ino := range sockets.SocketInodes(pid) {
				if l, ok := byIno[ino]; ok {
					delete(byIno, ino)
					a := l.Addr.String()
					if who[a] == nil {
						addrs = append(addrs, a)
					}
					who[a] = append(who[a], fmt.Sprintf("worker %d (pid %d, socket inode %d)", w.index, pid, l.Inode))
				}
			}
		}
	}
	bad := make([]string, 0, len(addrs))
	for _, a := range addrs {
		bad = append(bad, fmt.Sprintf("%s opened its own socket on %s: under --strategy %s a worker must accept on the socket baton passes it (LISTEN_FDS, fd 3), not bind its own (gunicorn: no --reuse-port)",
			strings.Join(who[a], ", "), a, m.cfg.Rollout.Strategy))
	}
	return strings.Join(bad, "; ")
}

// scheduleMemberCheck arms the next periodic check.
func (m *master) scheduleMemberCheck() {
	if m.lns == nil || !m.cfg.Rollout.Strategy.steered() {
		return
	}
	m.sys.afterFunc(memberCheckInterval, func() { m.post(evMemberCheck{}) })
}

func (m *master) onMemberCheck() {
	switch {
	case m.phase == phaseBooting:
		m.scheduleMemberCheck()
		return
	case m.phase != phaseServing:
		return
	case m.group.running || m.up.running:
		// During an upgrade the new master's socket listens before it
		// reports (and is known); the checks before each switch cover
		// that time.
		m.scheduleMemberCheck()
		return
	}
	m.group.running = true
	specs, allowed := m.lns.Specs(), m.allowed()
	go func() {
		fs, err := sockets.Foreign(specs, allowed)
		m.post(evMembers{fs, err})
	}()
}

// onMembers takes a periodic check's result: a warning when the foreign
// sockets change, the status, and a re-steer where it is safe.
func (m *master) onMembers(ev evMembers) {
	m.group.running = false
	defer m.scheduleMemberCheck()
	if ev.err != nil || m.phase != phaseServing || m.up.running {
		return
	}
	var now []control.ForeignSocket
	for _, f := range ev.foreign {
		now = append(now, m.labelForeign(f))
	}
	changed := len(now) != len(m.group.foreign)
	for i := 0; !changed && i < len(now); i++ {
		changed = now[i].Inode != m.group.foreign[i].Inode
	}
	gone := leftSince(m.group.foreign, now)
	m.group.foreign = now
	upgrading := m.rollout.cand != nil || m.up.running || m.origin.parentAlive
	if len(now) == 0 {
		if changed {
			m.log.Info("reuseport group holds only baton's sockets again", logevent.ForeignSocketsGone)
		}
		// Alone in the group, our socket is index 0 of the kernel's
		// order: a classic program attached now sends users to it, and
		// keeps doing so when a stray joins later (at a higher index).
		if !upgrading && !m.group.soleSteer {
			if err := m.lns.Claim(false); err == nil && m.steer(0) == nil {
				m.group.soleSteer = true
				m.group.uncertain = ""
			}
		}
		return
	}
	if !changed {
		return
	}
	ebpf := m.lns.EBPF()
	resteered := ""
	if ebpf && !upgrading {
		if err := m.lns.Claim(false); err == nil && m.steer(0) == nil {
			resteered = " (re-steered: map re-claimed, program re-attached)"
		}
	}
	for i, f := range now {
		action := foreignAction(ev.foreign[i], m.lns.Specs(), ebpf, m.group.soleSteer)
		if _, shadow := sockets.Shadows(ev.foreign[i], m.lns.Specs()); !shadow {
			action += resteered
		}
		m.log.Warn("foreign socket in the reuseport group", logevent.ForeignSocket, zap.String("kind", f.Kind), zap.String("address", f.Address),
			zap.Uint64("inode", f.Inode), zap.Int("holder_pid", f.PID), zap.String("holder_command", f.Command),
			zap.String("detail", f.Detail), zap.String("action", action))
	}
	if !ebpf && !m.group.soleSteer && len(gone) > 0 {
		m.steeringUncertain(gone, now)
	}
}

// leftSince returns the sockets of before that are not in now.
func leftSince(before, now []control.ForeignSocket) []control.ForeignSocket {
	in := make(map[uint64]bool, len(now))
	for _, f := range now {
		in[f.Inode] = true
	}
	var out []control.ForeignSocket
	for _, f := range before {
		if !in[f.Inode] {
			out = append(out, f)
		}
	}
	return out
}

// steeringUncertain warns, under classic steering, that a foreign socket
// left the group while others remain. The kernel moves the group's last
// socket into the slot of one that leaves; baton cannot read the group's
// order, so it no longer knows whether its own socket moved and whether
// the index its program returns now names a foreign socket (a stray that
// restarts: [stray 0, ours 1], the stray leaves, ours moves to 0, the
// restarted stray joins at 1 and takes every user). It stays said in
// baton status until the group holds baton's socket alone and users are
// steered to index 0 again.
func (m *master) steeringUncertain(gone, now []control.ForeignSocket) {
	names := func(fs []control.ForeignSocket) (string, []int) {
		var parts []string
		var pids []int
		for _, f := range fs {
			parts = append(parts, f.Detail)
			pids = append(pids, f.PID)
		}
		return strings.Join(parts, "; "), pids
	}
	left, _ := names(gone)
	present, pids := names(now)
	m.group.uncertain = "classic steering no longer knows which index of the reuseport group is baton's socket: a foreign socket left (" + left +
		") while others remain, and users may be reaching " + present +
		"; stop it (baton then steers to its socket alone), or run baton as root or with CAP_BPF, whose eBPF steering chooses only baton's sockets"
	m.log.Warn("classic steering lost track of baton's socket in the reuseport group: users may be reaching a foreign socket", logevent.SteeringUncertain,
		zap.String("left", left), zap.String("present", present), zap.Ints("holder_pids", pids), zap.String("detail", m.group.uncertain))
}
