//go:build linux

package osutil

import (
	"math"
	"syscall"

	"golang.org/x/sys/unix"
)

// MarkCloexecFrom makes every fd >= first close-on-exec: one
// close_range(2) call (Linux 5.11), else fd by fd from the /proc/self/fd
// listing. (OwnFds reads every fd's link, which a new master's start paid
// for each inherited fd before its first spawn.)
func MarkCloexecFrom(first int) { markCloexecFrom(first, unix.CloseRange) }

// markCloexecFrom is MarkCloexecFrom with close_range(2) passed in: a test
// makes it fail as a kernel before 5.9 does (ENOSYS), or one before 5.11
// that knows no CLOSE_RANGE_CLOEXEC (EINVAL), to reach the fallback.
func markCloexecFrom(first int, closeRange func(first, last, flags uint) error) {
	if closeRange(uint(first), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	for _, fd := range OwnFds() {
		if fd.Num >= first {
			syscall.CloseOnExec(fd.Num)
		}
	}
}
