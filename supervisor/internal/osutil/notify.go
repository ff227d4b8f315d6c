package osutil

import (
	"fmt"
	"net"
)

// SendNotify sends one sd_notify(3) datagram to addr: a path, or an
// abstract name written "@name". It does not block beyond the send.
// (go-systemd's daemon.SdNotify sends only to $NOTIFY_SOCKET; baton also
// reports to the old master's socket.)
func SendNotify(addr, msg string) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("notify %s: %w", addr, err)
	}
	return nil
}
