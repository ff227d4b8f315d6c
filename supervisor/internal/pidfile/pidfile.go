//go:build linux

// Package pidfile is baton's pid file: written and held by the keeper,
// asked about by a starting baton's checks.
package pidfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A pid file is this service's only while its keeper holds a write lock on
// it: an open file description lock (F_OFD_SETLK), which the kernel drops
// when the keeper exits however it exits, and which works across pid
// namespaces (a container's keeper is pid 1 there; the host sees the same
// lock). A pid file nobody holds is stale, whatever process its number
// names now: after a reboot or a container restart it is often an
// unrelated one.

// Lock is the keeper's held pid file.
type Lock struct {
	path string
	f    *os.File
	was  string
}

// Replaced is what the file held before Take wrote this keeper's pid:
// trimmed, at most its first 32 bytes, empty when the file was new or
// empty. It tells a stale file that named no pid at all (garbage, a
// truncated write) from a new one, both of which Take reports as pid 0.
func (l *Lock) Replaced() string { return l.was }

// ErrHeld is wrapped by Take's error when a running keeper
// holds the file.
var ErrHeld = errors.New("held by a running baton keeper")

// Take takes the pid file at path for this process and writes pid
// into it. It returns the pid the file named before when that was stale
// (0 when the file was new or empty). It does not block: a file another
// process holds fails with an error wrapping ErrHeld and naming the
// holder's pid as the file says it.
func Take(path string, pid int) (*Lock, int, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, 0, fmt.Errorf("--pid-file %q: %w", path, err)
		}
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			holder := readPID(f)
			f.Close()
			if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
				return nil, 0, fmt.Errorf("--pid-file %q: %w (pid %d)", path, ErrHeld, holder)
			}
			return nil, 0, fmt.Errorf("--pid-file %q: lock: %w", path, err)
		}
		// The holder we waited on may have removed the file before we
		// locked it: our lock is then on a name nobody else sees.
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &named) != nil ||
			held.Ino != named.Ino || held.Dev != named.Dev {
			f.Close()
			continue
		}
		was := readContent(f)
		stale, _ := strconv.Atoi(was)
		if err := f.Truncate(0); err == nil {
			_, err = f.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0)
		}
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("--pid-file %q: write: %w", path, err)
		}
		return &Lock{path: path, f: f, was: was}, stale, nil
	}
}

// Release removes the pid file while still holding it, then lets it go.
func (l *Lock) Release() {
	if l == nil {
		return
	}
	var held, named unix.Stat_t
	if unix.Fstat(int(l.f.Fd()), &held) == nil && unix.Stat(l.path, &named) == nil &&
		held.Ino == named.Ino && held.Dev == named.Dev {
		os.Remove(l.path)
	}
	l.f.Close()
}

// Holder reports whether a process holds the pid file at path, and
// the pid the file names. It takes no lock (F_OFD_GETLK only asks), so a
// check never makes a starting keeper fail.
func Holder(path string) (pid int, held bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return 0, false
	}
	return readPID(f), lk.Type != unix.F_UNLCK
}

// readPID is the number f holds, 0 if none.
func readPID(f *os.File) int {
	pid, _ := strconv.Atoi(readContent(f))
	return pid
}

// readContent is the file's first 32 bytes, trimmed.
func readContent(f *os.File) string {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	return strings.TrimSpace(string(b[:n]))
}
