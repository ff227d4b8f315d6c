package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// notifySocket is the master's private sd_notify(3) endpoint. It is an
// abstract unix datagram socket: nothing on disk to clean up, and it goes
// away with the master. SO_PASSCRED makes the kernel attach the sender's pid
// to every datagram, so a message is attributed to the process that sent it,
// not to what it claims.
type notifySocket struct {
	conn *net.UnixConn
	addr string
}

type notifyMsg struct {
	pid    int
	fields map[string]string
}

func openNotifySocket() (*notifySocket, error) {
	var b [8]byte
	rand.Read(b[:])
	addr := "@baton/" + hex.EncodeToString(b[:])
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", addr, err)
	}
	rc, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("notify socket %s: SO_PASSCRED: %w", addr, err)
	}
	return &notifySocket{conn: c, addr: addr}, nil
}

// run reads datagrams until the socket is closed, handing each to deliver.
func (n *notifySocket) run(deliver func(notifyMsg)) {
	buf := make([]byte, 64<<10) // room for a failure report with stderr lines
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		pid := senderPid(oob[:noob])
		if pid <= 0 {
			continue
		}
		deliver(notifyMsg{pid: pid, fields: parseNotify(buf[:nb])})
	}
}

func (n *notifySocket) close() { n.conn.Close() }

func senderPid(oob []byte) int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if cred, err := syscall.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return 0
}

// parseNotify splits an sd_notify datagram: newline-separated KEY=VALUE
// assignments. Lines without '=' are ignored, as systemd does.
func parseNotify(b []byte) map[string]string {
	fields := make(map[string]string)
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			fields[k] = v
		}
	}
	return fields
}

// sendNotify sends one datagram to an sd_notify socket address.
func sendNotify(addr, msg string) error {
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

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd wants
// in MONOTONIC_USEC= beside RELOADING=1 (without it systemd may ignore the
// reload notification).
func monotonicUsec() string {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, uintptr(unsafe.Pointer(&ts)), 0)
	return strconv.FormatInt(ts.Sec*1e6+ts.Nsec/1e3, 10)
}
