//go:build linux

package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// This file is the master's side of the control protocol (package control
// names the commands and wire keys). A new command: a Cmd in package
// control, and a case in onControl.

// ctlConn is one accepted control connection with its request.
type ctlConn struct {
	conn   net.Conn
	req    control.Request
	stream *ctlStream // a held reload request's writer (progress.go)
	since  time.Time  // when it was held
	// writers counts held writers still flushing, so the master's exit
	// waits for their last line (nil in tests).
	writers *sync.WaitGroup
}

// reply writes one JSON line; a client that stopped reading cannot hold
// the loop for more than the write deadline.
func (c *ctlConn) reply(v any) {
	c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	b, _ := json.Marshal(v)
	c.conn.Write(append(b, '\n'))
}

func (c *ctlConn) close() { c.conn.Close() }

// serveControl accepts control connections until ln is closed, admitting
// only the master's own uid and root, and posts each request to the loop.
func (m *master) serveControl(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: do not spin
			continue
		}
		go m.readControl(c)
	}
}

func (m *master) readControl(c *net.UnixConn) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReaderSize(c, 4096).ReadSlice('\n')
	if err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	cc := &ctlConn{conn: c, writers: &m.writers}
	refuse := func(reason string) {
		cc.reply(control.NewRefusal(reason))
		cc.close()
	}
	// Checked after reading, so the client reads our answer rather than
	// an EPIPE on its request.
	if uid, err := peerUID(c); err != nil || (uid != 0 && uid != os.Getuid()) {
		m.log.Warn("control connection refused: foreign user", logevent.ControlRefused, zap.Int("peer_uid", uid))
		refuse("permission denied: the control socket accepts only the master's user and root")
		return
	}
	if cc.req, err = control.DecodeRequest(line); err != nil {
		refuse(err.Error())
		return
	}
	m.post(evControl{cc})
}

func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// onControl runs in the loop.
func (m *master) onControl(c *ctlConn) {
	switch c.req.Cmd {
	case control.CmdStatus:
		c.reply(m.status())
		c.close()
		m.unsettle() // trim.go
	case control.CmdReload:
		// Held before the request is made, so that it hears every step
		// (progress.go), the wait in a queue included.
		c.hold(m.sys.now())
		m.up.waiters = append(m.up.waiters, c)
		if reason := m.requestUpgrade("control", !c.req.NoWait); reason != "" {
			m.up.waiters = m.up.waiters[:len(m.up.waiters)-1]
			c.finish(control.ReloadResult{Code: control.ReloadRefused, Reason: reason, OldMasterPID: m.self})
		}
	case control.CmdScale:
		prev, err := m.scale(c.req.Workers)
		if err != nil {
			c.reply(control.NewRefusal("scale: " + err.Error())) // the client says "refused"
		} else {
			c.reply(control.ScaleResult{OK: true, Previous: prev, Workers: len(m.slots)})
		}
		c.close()
	case control.CmdPromote, control.CmdRollback:
		m.onRolloutCmd(c)
	case control.CmdStop:
		c.reply(control.StopAck{OK: true, MasterPID: m.self, KeeperPID: m.keeperPID(), PIDNamespace: osutil.PIDNamespace()})
		// Held open: the client sees EOF when this process exits.
		m.stopWaiters = append(m.stopWaiters, c)
		m.stop("control")
		if m.keeperPID() != 0 {
			// The keeper stops every other master too: one starting a new
			// generation must not take over after the stop.
			m.sdNotify(link.StopMsg)
		}
	}
}

func (m *master) status() control.Status {
	now := m.sys.now()
	st := control.Status{
		MasterPID:  m.self,
		KeeperPID:  m.keeperPID(),
		Version:    m.cfg.Version,
		Generation: m.gen,
		State:      m.stateName(),
		UptimeMS:   ms(now.Sub(m.startAt)),
		Listeners:  specStrings(m.cfg.Listen),

		WorkersConfigured: len(m.slots),
		UpgradeQueued:     !m.up.queuedAt.IsZero(),
	}
	if m.cfg.LogDropped != nil {
		st.LogDropped = m.cfg.LogDropped()
	}
	if len(m.pinned.command) > 0 {
		st.Release = &control.Release{Dir: m.pinned.dir, Command: m.pinned.command[0]}
	}
	for i, s := range m.slots {
		if w := s.cur; w != nil {
			if w.state == stateReady {
				st.WorkersCurrent++
			}
			st.Workers = append(st.Workers, control.WorkerStatus{Index: i, PID: w.pid, State: w.state.String(),
				UptimeMS: ms(now.Sub(w.started)), Restarts: s.restarts})
		}
	}
	for _, w := range m.procs {
		if w.state == stateDraining && (w.index >= len(m.slots) || m.slots[w.index].cur != w) {
			st.Workers = append(st.Workers, control.WorkerStatus{Index: w.index, PID: w.pid, State: w.state.String(),
				UptimeMS: ms(now.Sub(w.started))})
		}
	}
	if m.origin.parentAlive && m.phase != phaseBooting {
		ppid := os.Getppid()
		st.Previous = &control.PrevStatus{MasterPID: ppid, Generation: m.gen - 1, State: "draining",
			WorkerPIDs: osutil.ChildrenOf(ppid, m.self), DrainLeftMS: max(0, ms(m.origin.parentDeadline.Sub(now))),
			Processes: m.generationProcs(m.gen - 1)}
	}
	st.LastUpgrade = m.up.last
	st.Rollout = m.rolloutStatus(now)
	st.ProcessTrees, st.TreeCgroup, st.TreeReason = m.trees.mode, m.trees.base.Path(), m.trees.why
	if m.lns != nil && m.cfg.Rollout.Strategy.steered() {
		st.Steering = "classic"
		if m.lns.EBPF() {
			st.Steering = "ebpf"
		}
		st.ForeignSockets = m.group.foreign
		st.SteeringUncertain = m.group.uncertain
	}
	return st
}
