//go:build linux

package osutil

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExitWatch waits for one process's exit through a pidfd in Go's poller,
// so that the goroutine waiting holds no OS thread. A blocking wait (waitid
// or poll on the pidfd) holds one thread per process waited for, for the
// process's whole life: a master with 64 workers ran 64 such threads, each
// a task counted against pids.max and about 50 KiB of stacks, and a new
// master made one per worker while its generation started.
type ExitWatch struct {
	f *os.File
}

// WatchExit opens a watch on pid, a child of this process or not. The pid
// must name the intended process when this is called (an unreaped child,
// or one known alive by other means): the pidfd then names that process,
// never a later holder of the pid. The error wraps pidfd_open's (ESRCH: no
// such process; EINVAL: a kernel older than 5.10, without PIDFD_NONBLOCK).
// It does not block.
func WatchExit(pid int) (*ExitWatch, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// A non-blocking fd given to os.NewFile is registered with the poller.
	return &ExitWatch{f: os.NewFile(uintptr(fd), "pidfd")}, nil
}

// Close closes a watch that will not be waited for.
func (w *ExitWatch) Close() { w.f.Close() }

// Wait blocks the calling goroutine (not its thread) until the process
// has exited: its pidfd is readable from then on, whether or not it was
// reaped. It leaves a child unreaped. Then it closes the watch; call it
// once. A nil error means the process has exited; any other is the
// poller's or poll's, and proves nothing about the process.
func (w *ExitWatch) Wait() error {
	defer w.f.Close()
	rc, err := w.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("wait for exit: %w", err)
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		// The poller is edge-triggered: ask the pidfd itself whether it
		// is readable, and if not, wait for the edge.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, syscall.EINTR) || (err == nil && n == 0) {
			return false
		}
		if err == nil && fds[0].Revents&unix.POLLIN == 0 {
			err = fmt.Errorf("revents %#x", fds[0].Revents)
		}
		perr = err
		return true
	})
	if err != nil {
		return fmt.Errorf("wait for exit: %w", err)
	}
	if perr != nil {
		return fmt.Errorf("wait for exit: poll pidfd: %w", perr)
	}
	return nil
}
