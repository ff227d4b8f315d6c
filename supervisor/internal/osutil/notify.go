package osutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// SendNotify sends one sd_notify(3) datagram to addr: a path, or an
// abstract name written "@name". It blocks for 100 ms at most (a full queue: the message is dropped
// with an error).
// (go-systemd's daemon.SdNotify sends only to $NOTIFY_SOCKET; baton also
// reports to the old master's socket.)
func SendNotify(addr, msg string) error { return SendNotifyWait(addr, msg, 100*time.Millisecond) }

// SendNotifyWait is SendNotify waiting up to wait for room in the reader's
// queue: for a message that must arrive (a new master announcing itself to
// the keeper, whose queue holds 10 datagrams by default and which a loaded
// machine may not schedule for longer than 100 ms).
func SendNotifyWait(addr, msg string, wait time.Duration) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	defer c.Close()
	// A reader that stopped reading (a stalled service manager) fills the
	// queue; the sender must not hang on it.
	c.SetWriteDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	return nil
}

// Notifier sends sd_notify datagrams to one address over one socket,
// connected at the first send (and again after a send that failed: the
// reader may have bound a new socket at the path). For a peer a process
// writes to often: SendNotify's socket, connect and close per message were
// about a third of a new master's CPU between its workers' readiness and
// its handover. Safe for concurrent use; Close it when the peer is done
// with (it holds an fd).
type Notifier struct {
	addr string

	mu sync.Mutex
	c  *net.UnixConn
}

// NewNotifier returns a Notifier for addr; it opens nothing yet.
func NewNotifier(addr string) *Notifier { return &Notifier{addr: addr} }

// Send is SendNotifyWait over the Notifier's socket: it blocks for wait
// at most (a full queue), then fails; a failed send is retried once on a
// new socket.
func (n *Notifier) Send(msg string, wait time.Duration) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var err error
	for range 2 {
		if n.c == nil {
			if n.c, err = net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.addr, Net: "unixgram"}); err != nil {
				n.c = nil
				return fmt.Errorf("notify %s: %w", n.addr, err)
			}
		}
		n.c.SetWriteDeadline(time.Now().Add(wait))
		if _, err = n.c.Write([]byte(msg)); err == nil {
			return nil
		}
		n.c.Close()
		n.c = nil
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break // a full queue: another socket would find it full too
		}
	}
	return fmt.Errorf("notify %s: %w", n.addr, err)
}

// Close closes the Notifier's socket; a later Send opens another.
func (n *Notifier) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.c != nil {
		n.c.Close()
		n.c = nil
	}
}
