//go:build linux

// Package notify is the sd_notify(3) endpoint that the keeper and every
// master read: a master's workers write to the master's, masters to the
// keeper's.
package notify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// Socket is a private sd_notify(3) endpoint (a master's, or the keeper's): a unix
// datagram socket at a filesystem path, as systemd hands services
// (/run/systemd/notify), since not every sd_notify client understands an
// abstract "@name". It lives in a directory of its own that only baton's
// user (and, with --user/--group, the workers' group) can enter, and is
// removed at close; a directory left by a SIGKILLed master is swept by the
// next one. SO_PASSCRED makes the kernel attach the sender's pid to every
// datagram, so a message is attributed to the process that sent it, not to
// what it claims.
type Socket struct {
	conn *net.UnixConn
	addr string // the socket's path
	dir  string // its private directory, removed at close
	self int

	mu       sync.Mutex
	barriers map[string]chan struct{}
	nextID   int
}

// Addr is the socket's path, for NOTIFY_SOCKET.
func (n *Socket) Addr() string { return n.addr }

// Msg is one datagram: who sent it (the kernel says, SO_PASSCRED) and its
// KEY=VALUE assignments.
type Msg struct {
	PID    int
	Fields map[string]string
}

// notifyDirPrefix names the private directories of notify sockets.
const notifyDirPrefix = "baton-notify."

// maxNotifyBase is the longest base directory for which
// BASE/baton-notify.NNNNNNNNNN/notify fits a unix socket address (107 bytes
// and a NUL).
const maxNotifyBase = 107 - len("/"+notifyDirPrefix+"0123456789/notify")

// notifyBase is where notify socket directories are made: systemd's
// RuntimeDirectory=, the user's runtime directory, /run for root, else the
// temporary directory.
func notifyBase(cred *syscall.Credential) string {
	// Workers of another user (--user) must get through every directory
	// above the socket's own: root's $XDG_RUNTIME_DIR (/run/user/0, 0700)
	// does not let them.
	other := cred != nil && cred.Uid != uint32(os.Geteuid())
	ok := func(d string) bool {
		return d != "" && len(d) <= maxNotifyBase && syscall.Access(d, 2|1 /* W_OK|X_OK */) == nil &&
			(!other || traversable(d))
	}
	for _, d := range []string{os.Getenv("RUNTIME_DIRECTORY"), os.Getenv("XDG_RUNTIME_DIR")} {
		if ok(d) {
			return d
		}
	}
	if os.Geteuid() == 0 && ok("/run") {
		return "/run"
	}
	if d := os.TempDir(); ok(d) {
		return d
	}
	return "/tmp"
}

// traversable reports whether every directory from / down to d lets
// anyone through (the x bit for others).
func traversable(d string) bool {
	for p := filepath.Clean(d); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if p == "/" {
			return true
		}
	}
}

// Sweep removes the notify directories that Open would make its own in
// (for cred), that this user owns and whose socket nobody reads any more
// (their master was SIGKILLed). It dials every live socket there, one per
// running master and keeper on the machine, so a master calls it once it
// serves, not on the way to its first spawn. Blocks for the dials; errors
// are ignored (a directory left is litter, not a fault).
func Sweep(cred *syscall.Credential) { sweepNotifyDirs(notifyBase(cred)) }

func sweepNotifyDirs(base string) {
	socks, _ := filepath.Glob(filepath.Join(base, notifyDirPrefix+"*", "notify"))
	for _, sock := range socks {
		var st syscall.Stat_t
		if syscall.Lstat(filepath.Dir(sock), &st) != nil || int(st.Uid) != os.Geteuid() {
			continue
		}
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err == nil {
			c.Close()
			continue // a live master's
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			os.RemoveAll(filepath.Dir(sock))
		}
	}
}

// Open binds a new notify socket. cred, when workers run as
// another user, names the group that may enter the directory and send.
// It sweeps nothing (Sweep does).
func Open(cred *syscall.Credential) (*Socket, error) {
	base := notifyBase(cred)
	dir, err := os.MkdirTemp(base, notifyDirPrefix) // mode 0700
	if err != nil {
		return nil, fmt.Errorf("notify socket directory in %s: %w", base, err)
	}
	addr := filepath.Join(dir, "notify")
	fail := func(what string, err error) (*Socket, error) {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("notify socket %s: %s: %w", addr, what, err)
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fail("bind", err)
	}
	if cred != nil && (cred.Uid != uint32(os.Geteuid()) || cred.Gid != uint32(os.Getegid())) {
		// The workers' group may enter and send; nobody else.
		for _, p := range []struct {
			path string
			mode os.FileMode
		}{{dir, 0o710}, {addr, 0o620}} {
			if err := os.Lchown(p.path, os.Geteuid(), int(cred.Gid)); err != nil {
				c.Close()
				return fail("chown for --group", err)
			}
			if err := os.Chmod(p.path, p.mode); err != nil {
				c.Close()
				return fail("chmod", err)
			}
		}
	} else if err := os.Chmod(addr, 0o600); err != nil {
		c.Close()
		return fail("chmod", err)
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
		return fail("SO_PASSCRED", err)
	}
	return &Socket{conn: c, addr: addr, dir: dir, self: os.Getpid(), barriers: make(map[string]chan struct{})}, nil
}

const notifyBarrier = "BATON_BARRIER"

// Barrier returns once every datagram queued on the socket before the call
// has been handed to deliver, or after timeout. Datagrams on one socket are
// read in order, so a barrier sent after a worker exited orders that
// worker's last READY=1 before the exit: a server that says READY=1 and
// dies at once was ready, not a failed start.
func (n *Socket) Barrier(timeout time.Duration) {
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

// Run reads datagrams until the socket is closed, handing each to deliver.
// Each is read into a buffer of its own size, learnt first (peekSize): a
// buffer with room for the largest (a failure report with stderr lines,
// tens of KiB) would be kept for the process's life, and one of 64 KiB
// made here lived on this goroutine's stack, which it doubled to 128 KiB
// in the keeper and in every master, for messages of a hundred bytes.
func (n *Socket) Run(deliver func(Msg)) {
	rc, err := n.conn.SyscallConn()
	if err != nil {
		return
	}
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		size, err := peekSize(rc)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			size = 64 << 10 // cannot tell: room for any message baton sends
		}
		buf := make([]byte, size)
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		pid := SenderPID(oob[:noob])
		if pid <= 0 {
			continue
		}
		fields := Parse(buf[:nb])
		if id, ok := fields[notifyBarrier]; ok && pid == n.self {
			n.mu.Lock()
			if ch := n.barriers[id]; ch != nil {
				close(ch)
			}
			n.mu.Unlock()
			continue
		}
		deliver(Msg{PID: pid, Fields: fields})
	}
}

// peekSize waits for the next datagram on rc and returns its length,
// leaving it queued (MSG_PEEK; MSG_TRUNC makes the kernel give the real
// length, not what fitted the empty buffer).
func peekSize(rc syscall.RawConn) (int, error) {
	var size int
	var serr error
	err := rc.Read(func(fd uintptr) bool {
		size, _, _, _, serr = syscall.Recvmsg(int(fd), nil, nil, syscall.MSG_PEEK|syscall.MSG_TRUNC)
		return !errors.Is(serr, syscall.EAGAIN)
	})
	if err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("peek at a notify datagram: %w", serr)
	}
	return size, nil
}

// Close closes the socket and removes its directory.
func (n *Socket) Close() {
	n.conn.Close()
	os.RemoveAll(n.dir)
}

// SenderPID is the pid in a datagram's SCM_CREDENTIALS, 0 if none.
func SenderPID(oob []byte) int {
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

// Parse splits an sd_notify datagram: newline-separated KEY=VALUE
// assignments. Lines without '=' are ignored, as systemd does.
func Parse(b []byte) map[string]string {
	fields := make(map[string]string)
	// systemd splits on "\n" and "\r" alike (strv_split_newlines).
	for _, line := range strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' || r == '\r' }) {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			fields[k] = v
		}
	}
	return fields
}
