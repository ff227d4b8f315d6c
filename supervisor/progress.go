//go:build linux

package supervisor

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// This file owns a reload's progress as its requester sees it. The master
// that took the request (the old one) holds the connection and writes
// control.Progress lines to it as steps happen, then the final
// ReloadResult. The new master's own steps (its start, each worker started
// and ready, worker output) reach the old master as datagrams on its notify
// socket, with the upgrade's token, and are passed on from there.

// reportProgress is the key of a new master's progress datagram: the JSON
// of one control.Progress.
const reportProgress = "BATON_PROGRESS"

// maxForwardedLines bounds the worker output a new master forwards to the
// old one while it starts: output is for watching a deploy, not a log
// transport.
const maxForwardedLines = 500

// streamBuffer is how many lines a held reload connection may lag behind
// before progress lines to it are dropped.
const streamBuffer = 256

// progressState is a new master's side: whether it still forwards worker
// output. Read from the output pumps' goroutines, hence atomic.
type progressState struct {
	forwarding atomic.Bool
	forwarded  atomic.Int32
}

// ctlStream writes a held reload connection's lines from a goroutine of its
// own, so a client that reads slowly never holds up the loop: when its
// buffer is full, progress lines are dropped; the final line never is.
type ctlStream struct {
	lines chan []byte
	final []byte // set before lines is closed
}

// hold makes c a reload request that is answered later, with progress
// lines until then. Loop only.
func (c *ctlConn) hold(now time.Time) {
	s := &ctlStream{lines: make(chan []byte, streamBuffer)}
	c.stream, c.since = s, now
	if c.writers != nil {
		c.writers.Add(1)
	}
	go func() {
		if c.writers != nil {
			defer c.writers.Done()
		}
		defer c.conn.Close()
		ok := true
		for b := range s.lines {
			if ok {
				c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
				_, err := c.conn.Write(b)
				ok = err == nil
			}
		}
		if ok {
			c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
			c.conn.Write(s.final)
		}
	}()
}

// send queues one progress line, stamped with the time since c's request
// arrived, or drops it when the client lags. Loop only.
func (c *ctlConn) send(p control.Progress, now time.Time) {
	if c.stream == nil {
		return
	}
	p.ElapsedMS = ms(now.Sub(c.since))
	b, _ := json.Marshal(p)
	select {
	case c.stream.lines <- append(b, '\n'):
	default:
	}
}

// finish answers c with res and closes it (after its queued lines, when it
// is held). Loop only; never blocks.
func (c *ctlConn) finish(res control.ReloadResult) {
	if c.stream == nil {
		c.reply(res)
		c.close()
		return
	}
	b, _ := json.Marshal(res)
	c.stream.final = append(b, '\n')
	close(c.stream.lines)
	c.stream = nil
}

// progress tells every held reload request about a step of the upgrade this
// master runs (as the old master).
func (m *master) progress(p control.Progress) {
	if len(m.up.waiters) == 0 {
		return
	}
	if p.Generation == 0 {
		p.Generation = m.gen + 1
	}
	now := m.sys.now()
	for _, c := range m.up.waiters {
		c.send(p, now)
	}
}

// step reports a step of this master's start to the old master that is
// upgrading to it, while this generation starts, when a reload request
// asked for the upgrade (no request joins an upgrade under way: it is
// refused or waits for the next). Elsewhere it does nothing: each report
// is a datagram that wakes the old master while the new generation starts
// (10 for 4 workers, 130 for 64), for nobody to read after a SIGUSR2.
func (m *master) step(p control.Progress) {
	if m.origin.parentNotify == "" || !m.origin.followed || m.phase != phaseBooting {
		return
	}
	m.sendStep(p)
}

func (m *master) sendStep(p control.Progress) {
	if p.Generation == 0 {
		p.Generation = m.gen
	}
	b, _ := json.Marshal(p)
	m.sys.notifyTo(m.origin.parentNotify, reportToken+"="+m.origin.parentToken+"\n"+reportProgress+"="+string(b))
}

// outputForwarder returns what a new worker's output pump calls for each
// line while this master's generation starts as an upgrade (for baton
// reload --follow-logs), or nil when there is no one to forward to.
func (m *master) outputForwarder(index int) func(stream, line string) {
	if m.origin.parentNotify == "" || !m.origin.followed {
		return nil
	}
	return func(stream, line string) {
		if !m.prog.forwarding.Load() || m.prog.forwarded.Add(1) > maxForwardedLines {
			return
		}
		i := index
		m.sendStep(control.Progress{Event: control.EvWorkerOutput, Worker: &i, Stream: stream, Line: line,
			Message: fmt.Sprintf("worker %d %s | %s", index, stream, line)})
	}
}

func intp(i int) *int { return &i }
