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
func SendNotify(addr, msg string) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	defer c.Close()
	// A reader that stopped reading (a stalled service manager) fills the
	// queue; the sender must not hang on it.
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	return nil
}
