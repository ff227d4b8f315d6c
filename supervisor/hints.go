//go:build linux

package supervisor

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Hints turn the two most common mistakes of a server's first run under
// baton into advice: a server that binds a port itself instead of using the
// socket it inherits, and one that never says READY=1.

// docWorkerContract is the README section a hint points at.
const docWorkerContract = "https://github.com/baton-sh/baton#the-worker-contract"

// HintInheritedSocket is the advice for a server that binds a port itself.
const HintInheritedSocket = "a server under baton must not bind its port itself but serve on the socket baton passes it (fd 3, LISTEN_FDS); see " + docWorkerContract

// HintBlockingAccept is the advice for a Python worker that died of
// BlockingIOError: the inherited socket is non-blocking, and another
// worker may take a connection between its wake-up and its accept().
const HintBlockingAccept = "the worker died of BlockingIOError: the socket baton passes is non-blocking and shared by every worker, so accept() may find the connection already taken; catch BlockingIOError in the accept loop (socketserver and selectors-based servers do), see " + docWorkerContract

// HintNoNotify is the advice for a worker that never spoke on NOTIFY_SOCKET.
const HintNoNotify = "it sent nothing on $NOTIFY_SOCKET: a server that does not send READY=1 (sd_notify) needs --ready delay:DURATION (ready once alive that long) or --ready exec:COMMAND (a probe)"

// startHint returns advice for a worker that failed to start or to become
// ready, from its last stderr lines and whether it ever sent a notify
// message; "" when there is none to give.
func startHint(stderr []string, timedOut, notified, byNotify bool) string {
	for _, l := range stderr {
		l = strings.ToLower(l)
		if strings.Contains(l, "address already in use") || strings.Contains(l, "eaddrinuse") {
			return "the worker said \"address already in use\": " + HintInheritedSocket
		}
		if strings.Contains(l, "blockingioerror") {
			return HintBlockingAccept
		}
	}
	if timedOut && byNotify && !notified {
		return HintNoNotify
	}
	return ""
}

// withHint appends a hint to a failure reason.
func withHint(reason, hint string) string {
	if hint == "" {
		return reason
	}
	return reason + "; " + hint
}

const (
	acceptCheckEvery = time.Second
	acceptStall      = 5 * time.Second // a queue that has not shrunk this long gets a warning
)

// acceptWatch notices connections that wait in a TCP listener's accept
// queue while nobody takes them: what a server that listens on a port of
// its own, and never accepts on the inherited one, looks like from the
// master. The kernel reports a listener's queue length (tcpi_unacked) and
// limit (tcpi_sacked) in TCP_INFO; a queue that stays non-empty without ever
// shrinking over acceptStall is not being served. A full queue is left
// alone: it may as well be a server that accepts, but too slowly.
type acceptWatch struct {
	socks []*watchedSock
}

type watchedSock struct {
	name   string
	file   *os.File
	last   uint32
	since  time.Time // when the queue was first seen non-empty and not shrinking
	warned bool
}

// newAcceptWatch watches the TCP sockets among files (others are skipped).
func newAcceptWatch(files []*os.File, names []string) *acceptWatch {
	a := &acceptWatch{}
	for i, f := range files {
		if _, _, err := listenQueue(f); err == nil && i < len(names) {
			a.socks = append(a.socks, &watchedSock{name: names[i], file: f})
		}
	}
	return a
}

// check samples every queue and returns a warning per socket that has just
// been stalled for acceptStall.
func (a *acceptWatch) check(now time.Time, log *zap.Logger) {
	for _, s := range a.socks {
		q, limit, err := listenQueue(s.file)
		if err != nil {
			continue
		}
		switch {
		case q == 0 || q < s.last || q >= limit:
			s.since, s.warned = time.Time{}, false
		case s.since.IsZero():
			s.since = now
		case !s.warned && now.Sub(s.since) >= acceptStall:
			s.warned = true
			log.Warn("connections wait on a listening socket and no worker accepts them", logevent.AcceptStalled,
				zap.String("listener", s.name), zap.Uint32("queued", q), zap.Duration("for", now.Sub(s.since)),
				zap.String("hint", "are the workers accepting? "+HintInheritedSocket))
		}
		s.last = q
	}
}

// listenQueue returns a listening TCP socket's accept queue length and limit.
func listenQueue(f *os.File) (queued, limit uint32, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var info *unix.TCPInfo
	var serr error
	err = rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, 0, err
	}
	if info.State != unix.BPF_TCP_LISTEN {
		return 0, 0, fmt.Errorf("not a listening TCP socket")
	}
	return info.Unacked, info.Sacked, err
}

// startAcceptWatch posts evAcceptCheck every acceptCheckEvery until the
// master is done.
func (m *master) startAcceptWatch() {
	m.accepts = newAcceptWatch(m.files, specStrings(m.cfg.Listen))
	if len(m.accepts.socks) == 0 {
		return
	}
	go func() {
		t := time.NewTicker(acceptCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m.post(evAcceptCheck{})
			case <-m.done:
				return
			}
		}
	}()
}

// onAcceptCheck runs in the loop: only a serving master with a ready worker
// expects its queues to drain.
func (m *master) onAcceptCheck() {
	if m.phase != phaseServing {
		return
	}
	for _, w := range m.procs {
		if w.state == stateReady {
			m.accepts.check(m.sys.now(), m.log)
			return
		}
	}
}
