package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// notifySocket is the master's private sd_notify(3) endpoint. It is an
// abstract unix datagram socket: nothing on disk to clean up, and it goes
// away with the master. SO_PASSCRED makes the kernel attach the sender's pid
// to every datagram, so a message is attributed to the process that sent it,
// not to what it claims.
type notifySocket struct {
	conn *net.UnixConn
	addr string
	self int

	mu       sync.Mutex
	barriers map[string]chan struct{}
	nextID   int
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
	return &notifySocket{conn: c, addr: addr, self: os.Getpid(), barriers: make(map[string]chan struct{})}, nil
}

const notifyBarrier = "BATON_BARRIER"

// barrier returns once every datagram queued on the socket before the call
// has been handed to deliver, or after timeout. Datagrams on one socket are
// read in order, so a barrier sent after a worker exited orders that
// worker's last READY=1 before the exit: a server that says READY=1 and
// dies at once was ready, not a failed start.
func (n *notifySocket) barrier(timeout time.Duration) {
	n.mu.Lock()
	n.nextID++
	id := strconv.Itoa(n.nextID)
	ch := make(chan struct{})
	n.barriers[id] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.barriers, id)
		n.mu.Unlock()
	}()
	if osutil.SendNotify(n.addr, notifyBarrier+"="+id) != nil {
		return
	}
	select {
	case <-ch:
	case <-time.After(timeout):
	}
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
		fields := parseNotify(buf[:nb])
		if id, ok := fields[notifyBarrier]; ok && pid == n.self {
			n.mu.Lock()
			if ch := n.barriers[id]; ch != nil {
				close(ch)
			}
			n.mu.Unlock()
			continue
		}
		deliver(notifyMsg{pid: pid, fields: fields})
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
	// systemd splits on "\n" and "\r" alike (strv_split_newlines).
	for _, line := range strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' || r == '\r' }) {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			fields[k] = v
		}
	}
	return fields
}
