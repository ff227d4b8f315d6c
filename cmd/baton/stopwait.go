//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// keeperSilentAfter is how long baton stop lets a stopped keeper (state T:
// SIGSTOP, a debugger, a frozen cgroup) be before it says so.
const keeperSilentAfter = time.Second

// waitKeeper waits up to timeout for the keeper to exit once its last
// master has. A stopped keeper cannot exit (nor reap, nor answer): that is
// said on stderr within keeperSilentAfter, once, and the wait goes on,
// since a SIGCONT lets it finish at once. It reports whether the keeper
// exited, and whether it was stopped when the wait ended.
func waitKeeper(pid int, timeout time.Duration) (exited, stopped bool) {
	deadline := time.Now().Add(timeout)
	var stoppedSince time.Time
	said := false
	for {
		if control.WaitExited(pid, 0) {
			return true, false
		}
		state := procState(pid)
		stopped = state == 'T' || state == 't'
		switch {
		case !stopped:
			stoppedSince = time.Time{}
		case stoppedSince.IsZero():
			stoppedSince = time.Now()
		case !said && time.Since(stoppedSince) >= keeperSilentAfter:
			said = true
			fmt.Fprintf(os.Stderr, "baton: keeper %d is stopped (state %c: SIGSTOP or a debugger) and does not answer; waiting up to %s for it (kill -CONT %d lets it finish)\n",
				pid, state, timeout.Round(time.Second), pid)
		}
		if time.Now().After(deadline) {
			return false, stopped
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procState is pid's state letter from /proc/PID/stat, 0 if unreadable.
func procState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2]
	}
	return 0
}
