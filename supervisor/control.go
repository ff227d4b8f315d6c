package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The control protocol: a client connects to the master's unix socket,
// writes one JSON request line, and reads one JSON reply line. "stop" keeps
// the connection open after its reply until the master has exited, so a
// client that waits for EOF waits for the stop.
//
//	{"cmd":"status"}  -> Status
//	{"cmd":"reload"}  -> ReloadResult, once the upgrade succeeded or failed
//	{"cmd":"stop"}    -> {"ok":true,"master_pid":N}, then EOF at exit

// ControlRequest is a client's request line.
type ControlRequest struct {
	Cmd string `json:"cmd"`
}

// Reload outcome codes; cmd/baton uses them as exit codes.
const (
	ReloadOK       = 0 // the new generation took over
	ReloadRollback = 1 // the new generation failed and was thrown away
	ReloadRefused  = 2 // no upgrade was started
)

// ReloadResult answers a reload.
type ReloadResult struct {
	OK                bool     `json:"ok"`
	Code              int      `json:"code"`
	Reason            string   `json:"reason,omitempty"`
	Stderr            []string `json:"stderr,omitempty"` // last lines of the failing worker
	OldMasterPID      int      `json:"old_master_pid"`
	NewMasterPID      int      `json:"new_master_pid,omitempty"`
	Generation        int      `json:"generation,omitempty"`
	TotalMS           float64  `json:"total_ms,omitempty"`
	WorkersStartingMS float64  `json:"workers_starting_ms,omitempty"`
	BatonMS           float64  `json:"baton_ms,omitempty"`
}

// Status answers a status request.
type Status struct {
	MasterPID   int            `json:"master_pid"`
	Version     string         `json:"version"` // baton's, of this master
	Generation  int            `json:"generation"`
	State       string         `json:"state"` // starting, serving, upgrading, stopping, handed-over
	UptimeMS    float64        `json:"uptime_ms"`
	Listeners   []string       `json:"listeners"`
	Workers     []WorkerStatus `json:"workers"`
	Previous    *PrevStatus    `json:"previous,omitempty"` // the draining previous generation
	LastUpgrade *ReloadResult  `json:"last_upgrade,omitempty"`
}

// WorkerStatus is one worker in a Status.
type WorkerStatus struct {
	Index    int     `json:"index"`
	PID      int     `json:"pid"`
	State    string  `json:"state"` // starting, ready, draining
	UptimeMS float64 `json:"uptime_ms"`
	Restarts int     `json:"restarts"`
}

// PrevStatus is the previous generation while its master drains it.
type PrevStatus struct {
	MasterPID   int     `json:"master_pid"`
	Generation  int     `json:"generation"`
	State       string  `json:"state"`
	WorkerPIDs  []int   `json:"worker_pids"`
	DrainLeftMS float64 `json:"drain_left_ms"`
}

// DefaultControlPath is where the control socket lives when --control is
// not given: beside the pid file (app.pid -> app.sock), else in the
// runtime directory.
func DefaultControlPath(pidFile string) string {
	if pidFile != "" {
		return strings.TrimSuffix(pidFile, ".pid") + ".sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "baton", "control.sock")
	}
	return "/run/baton/control.sock"
}

// ctlConn is one accepted control connection with its request.
type ctlConn struct {
	conn *net.UnixConn
	req  ControlRequest
}

func (c *ctlConn) reply(v any) {
	c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	b, _ := json.Marshal(v)
	c.conn.Write(append(b, '\n'))
}

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
	refuse := func(reason string) {
		b, _ := json.Marshal(map[string]any{"ok": false, "code": ReloadRefused, "reason": reason})
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(append(b, '\n'))
		c.Close()
	}
	// Checked after reading, so the client reads our answer rather than
	// an EPIPE on its request.
	if uid, err := peerUID(c); err != nil || (uid != 0 && uid != os.Getuid()) {
		m.log.Warn("control connection refused: foreign user", zap.Int("peer_uid", uid))
		refuse("permission denied: the control socket accepts only the master's user and root")
		return
	}
	req, err := DecodeControlRequest(line)
	if err != nil {
		refuse(err.Error())
		return
	}
	m.post(&ctlConn{conn: c, req: req})
}

// DecodeControlRequest parses one request line.
func DecodeControlRequest(line []byte) (ControlRequest, error) {
	var req ControlRequest
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("bad control request: %w", err)
	}
	if dec.More() {
		return ControlRequest{}, fmt.Errorf("bad control request: more than one JSON value on the line")
	}
	switch req.Cmd {
	case "status", "reload", "stop":
		return req, nil
	}
	return req, fmt.Errorf("bad control request: unknown cmd %q (want status, reload or stop)", req.Cmd)
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
	case "status":
		c.reply(m.status())
		c.conn.Close()
	case "reload":
		if reason := m.requestUpgrade("control"); reason != "" {
			c.reply(ReloadResult{Code: ReloadRefused, Reason: reason, OldMasterPID: m.self})
			c.conn.Close()
			return
		}
		m.reloadWaiters = append(m.reloadWaiters, c)
	case "stop":
		c.reply(map[string]any{"ok": true, "master_pid": m.self})
		// Held open: the client sees EOF when this process exits.
		m.stopWaiters = append(m.stopWaiters, c)
		m.stop("control")
	}
}

func (m *master) status() Status {
	st := Status{
		MasterPID:  m.self,
		Version:    m.cfg.Version,
		Generation: m.gen,
		UptimeMS:   ms(time.Since(m.startAt)),
		Listeners:  specStrings(m.cfg.Listen),
	}
	switch {
	case m.phase == phaseBooting:
		st.State = "starting"
	case m.phase == phaseStopping:
		st.State = "stopping"
	case m.phase == phaseHandedOver:
		st.State = "handed-over"
	case m.upgrading:
		st.State = "upgrading"
	default:
		st.State = "serving"
	}
	for i, s := range m.slots {
		if w := s.cur; w != nil {
			st.Workers = append(st.Workers, WorkerStatus{Index: i, PID: w.pid, State: w.state.String(),
				UptimeMS: ms(time.Since(w.started)), Restarts: s.restarts})
		}
	}
	for _, w := range m.procs {
		if w.state == stateDraining && (w.index >= len(m.slots) || m.slots[w.index].cur != w) {
			st.Workers = append(st.Workers, WorkerStatus{Index: w.index, PID: w.pid, State: w.state.String(),
				UptimeMS: ms(time.Since(w.started))})
		}
	}
	if m.parentAlive && m.phase != phaseBooting {
		ppid := os.Getppid()
		st.Previous = &PrevStatus{MasterPID: ppid, Generation: m.gen - 1, State: "draining",
			WorkerPIDs: childrenOf(ppid, m.self), DrainLeftMS: max(0, ms(time.Until(m.parentDeadline)))}
	}
	st.LastUpgrade = m.lastUpgrade
	return st
}

// childrenOf lists pid's child processes other than skip, from /proc.
func childrenOf(pid, skip int) []int {
	out := []int{}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			var c int
			if _, err := fmt.Sscan(f, &c); err == nil && c != skip {
				out = append(out, c)
			}
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
