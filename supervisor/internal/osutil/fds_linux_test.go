//go:build linux

package osutil

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// MarkCloexecFrom marks every fd from first on close-on-exec and leaves
// those below alone, with close_range(2) and, where the kernel has none
// (ENOSYS) or no CLOSE_RANGE_CLOEXEC (EINVAL), fd by fd.
func TestMarkCloexecFrom(t *testing.T) {
	for _, c := range []struct {
		name       string
		closeRange func(first, last, flags uint) error
		fallback   bool
	}{
		{"close_range", unix.CloseRange, false},
		{"no close_range (ENOSYS)", func(uint, uint, uint) error { return unix.ENOSYS }, true},
		{"no CLOSE_RANGE_CLOEXEC (EINVAL)", func(uint, uint, uint) error { return unix.EINVAL }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			// Copies without close-on-exec (F_DUPFD, not F_DUPFD_CLOEXEC),
			// far above what the runtime and the test have open: below,
			// the one to leave alone; from first on, two to mark.
			var fds []int
			for _, min := range []int{700, 1000, 1000} {
				fd, err := unix.FcntlInt(r.Fd(), unix.F_DUPFD, min)
				if err != nil {
					t.Fatalf("F_DUPFD %d: %v", min, err)
				}
				defer unix.Close(fd)
				fds = append(fds, fd)
			}
			for _, fd := range fds {
				if cloexec(t, fd) {
					t.Fatalf("fd %d close-on-exec before the call", fd)
				}
			}
			called := false
			markCloexecFrom(fds[1], func(first, last, flags uint) error {
				called = true
				return c.closeRange(first, last, flags)
			})
			if !called {
				t.Fatal("close_range not tried first")
			}
			if cloexec(t, fds[0]) {
				t.Errorf("fd %d below first (%d) marked close-on-exec", fds[0], fds[1])
			}
			for _, fd := range fds[1:] {
				if !cloexec(t, fd) {
					t.Errorf("fd %d not close-on-exec (fallback %v)", fd, c.fallback)
				}
			}
		})
	}
}

// cloexec reports whether fd, which must be open, is close-on-exec.
func cloexec(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("F_GETFD %d: %v", fd, err)
	}
	return flags&unix.FD_CLOEXEC != 0
}
