//go:build linux

package osutil

import (
	"errors"
	"sync"
	"syscall"
)

// Reserve holds descriptors open on /dev/null for a process that must not
// be starved of them (the keeper): when an operation fails for lack of
// descriptors (EMFILE, ENFILE), one is closed and the operation tried
// again, then the reserve is filled up again once descriptors are free.
// Safe for concurrent use.
type Reserve struct {
	mu   sync.Mutex
	fds  []int
	want int
}

// NewReserve opens up to n descriptors on /dev/null (fewer if the limit
// is reached already; Held says how many).
func NewReserve(n int) *Reserve {
	r := &Reserve{want: n}
	r.refill()
	return r
}

// Held is the number of descriptors in reserve.
func (r *Reserve) Held() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.fds)
}

func (r *Reserve) refill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.fds) < r.want {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		r.fds = append(r.fds, fd)
	}
}

// Do runs f; if f fails for lack of descriptors, Do frees one from the
// reserve and runs f once more (up to the reserve's size), and returns
// f's last error. Descriptors f keeps open stay counted against the
// limit, so the reserve is filled up again only as far as it can.
func (r *Reserve) Do(f func() error) error {
	for {
		err := f()
		if !OutOfFDs(err) {
			r.refill()
			return err
		}
		r.mu.Lock()
		n := len(r.fds)
		if n > 0 {
			syscall.Close(r.fds[n-1])
			r.fds = r.fds[:n-1]
		}
		r.mu.Unlock()
		if n == 0 {
			return err
		}
	}
}

// OutOfFDs reports whether err is a lack of file descriptors, the
// process's (EMFILE) or the system's (ENFILE).
func OutOfFDs(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
