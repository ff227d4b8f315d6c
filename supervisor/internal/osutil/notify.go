package osutil

import (
	"fmt"
	"net"
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
