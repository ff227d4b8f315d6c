package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// Errors of the client, to tell the outcomes apart (cmd/baton maps them to
// exit codes): no master answered the dial, the master refused, or it gave
// no answer in time (the outcome is unknown).
var (
	ErrNoMaster = errors.New("no master")
	ErrRefused  = errors.New("refused")
	ErrNoAnswer = errors.New("no answer")
)

// Conn is one request in flight on the control socket.
type Conn struct {
	path string
	conn net.Conn
	r    *bufio.Reader
}

// Send dials the control socket at path, sends cmd, and returns the
// connection for reading the reply. timeout bounds the dial and everything
// read on the connection afterwards. Errors wrap ErrNoMaster, or
// ErrPathTooLong for a path no unix socket can have (no master can be
// there, and "no master" would hide the cause).
func Send(path string, cmd Cmd, timeout time.Duration) (*Conn, error) {
	return SendRequest(path, Request{Cmd: cmd}, timeout)
}

// SendRequest is Send with a request that carries arguments.
func SendRequest(path string, req Request, timeout time.Duration) (*Conn, error) {
	if err := CheckPath(path); err != nil {
		return nil, fmt.Errorf("control socket %q: %w", path, err)
	}
	c, err := net.DialTimeout("unix", path, min(timeout, 5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrNoMaster, path, osutil.Cause(err))
	}
	c.SetDeadline(time.Now().Add(timeout))
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w at %s: send %s: %w", ErrNoMaster, path, req.Cmd, err)
	}
	return &Conn{path: path, conn: c, r: bufio.NewReader(c)}, nil
}

// Reload reads a reload's reply: each Progress line is handed to
// onProgress (nil: skipped) as it arrives, blocking the read while it
// runs, and the final line goes into res. Errors are Reply's.
func (c *Conn) Reload(onProgress func(Progress), res *ReloadResult) error {
	for {
		line, err := c.line()
		if err != nil {
			return err
		}
		var probe struct {
			Event *string `json:"event"`
		}
		if json.Unmarshal(line, &probe) == nil && probe.Event != nil {
			var p Progress
			if err := json.Unmarshal(line, &p); err != nil {
				return fmt.Errorf("%w: bad progress line from master: %w", ErrNoAnswer, err)
			}
			if onProgress != nil {
				onProgress(p)
			}
			continue
		}
		if err := json.Unmarshal(line, res); err != nil {
			return fmt.Errorf("%w: bad answer from master: %w", ErrNoAnswer, err)
		}
		return nil
	}
}

func (c *Conn) line() ([]byte, error) {
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%w within the timeout; the outcome is unknown", ErrNoAnswer)
		}
		return nil, fmt.Errorf("%w: control connection closed: %w", ErrNoAnswer, err)
	}
	return line, nil
}

// Reply reads one reply line into v (a *Status, *ReloadResult,
// *ScaleResult or *StopAck); for a *ReloadResult it skips the Progress
// lines before it. A Refusal instead of what was asked is an error wrapping
// ErrRefused; a reload's own failure is not an error here (see
// ReloadResult.Code). No line before the deadline, or a closed connection,
// is an error wrapping ErrNoAnswer.
func (c *Conn) Reply(v any) error {
	if res, isReload := v.(*ReloadResult); isReload {
		return c.Reload(nil, res)
	}
	line, err := c.line()
	if err != nil {
		return err
	}
	// A reload's result carries its own refusal; anything else may be a
	// refusal instead of what was asked.
	var r struct {
		OK     *bool  `json:"ok"`
		Reason string `json:"reason"`
	}
	if json.Unmarshal(line, &r) == nil && r.OK != nil && !*r.OK {
		return fmt.Errorf("%w: %s", ErrRefused, r.Reason)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("%w: bad answer from master: %w", ErrNoAnswer, err)
	}
	return nil
}

// WaitClosed blocks until the master closes the connection (after a stop:
// when it exits) or the deadline passes, which is an error wrapping
// ErrNoAnswer.
func (c *Conn) WaitClosed() error {
	if _, err := io.Copy(io.Discard, c.r); err != nil {
		return fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	return nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }

// Call sends cmd and reads its one reply into v; see Send and Reply.
func Call(path string, cmd Cmd, timeout time.Duration, v any) error {
	c, err := Send(path, cmd, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Reply(v)
}

// WaitExited polls every 5 ms until pid has exited (gone or a zombie) or
// timeout passes, and reports whether it has. After a stop the master's
// fds close a moment before it becomes a zombie, so EOF alone is early.
func WaitExited(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !osutil.Gone(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// LocalPID returns pid, a master's pid in the result, as this process
// sees it: the same number in the masters' pid namespace, translated when
// the client runs in a namespace above it (the host of a container), 0
// when this client cannot see it (a namespace beside or above its own).
func (r ReloadResult) LocalPID(pid int) int {
	if pid <= 0 {
		return 0
	}
	return osutil.PIDFromNamespace(r.PIDNamespace, pid)
}

// LocalPIDs returns the ack's master and keeper pids as this process sees
// them: the same numbers in the master's pid namespace, translated when
// the client runs in a namespace above it (the host of a container), 0 for
// a process this client cannot see (a namespace beside or above its own).
func (a StopAck) LocalPIDs() (master, keeper int) {
	master = osutil.PIDFromNamespace(a.PIDNamespace, a.MasterPID)
	if a.KeeperPID != 0 {
		keeper = osutil.PIDFromNamespace(a.PIDNamespace, a.KeeperPID)
	}
	return master, keeper
}
