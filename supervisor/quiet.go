//go:build linux

package supervisor

import (
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// quietListeners takes the listening sockets out of the master's epoll set.
//
// The master never accepts, but Go registers every non-blocking fd wrapped
// in an os.File with its netpoller, and tableflip wraps its copies of the
// sockets that way (os.NewFile on inherited and dup'd fds). Each incoming
// connection then woke the master's poller thread for nothing: 20 000
// epoll_pwait returns in 4 s at 5 000 connections/s, about 2% of a core, on
// the path of every connection. Nobody in the master waits on these fds, so
// removing them from epoll changes nothing else; when an fd is closed later,
// the runtime's own EPOLL_CTL_DEL fails with ENOENT, which it ignores.
// Sockets are matched by inode, so every dup is covered; the control socket
// has another inode and stays.
func quietListeners(files []*os.File) {
	inodes := make(map[uint64]bool)
	for _, f := range files {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	var epfds, socks []int
	for _, fd := range osutil.OwnFds() {
		switch {
		case fd.Link == "anon_inode:[eventpoll]":
			epfds = append(epfds, fd.Num)
		case strings.HasPrefix(fd.Link, "socket:["):
			if ino, err := strconv.ParseUint(fd.Link[8:len(fd.Link)-1], 10, 64); err == nil && inodes[ino] {
				socks = append(socks, fd.Num)
			}
		}
	}
	for _, ep := range epfds {
		for _, fd := range socks {
			syscall.EpollCtl(ep, syscall.EPOLL_CTL_DEL, fd, &syscall.EpollEvent{})
		}
	}
}
