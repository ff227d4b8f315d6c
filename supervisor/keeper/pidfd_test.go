//go:build linux

package keeper

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A master's exit is seen once the keeper has reaped it even when /proc
// cannot be read (a keeper out of descriptors: EMFILE proves nothing about
// the master), through the pidfd: before, the watch kept reading /proc
// and the keeper never exited after its last master.
func TestPidfdWatchSeesAReapedProcessWithoutProc(t *testing.T) {
	defer func(f func(int) bool) { procGone = f }(procGone)
	procGone = func(int) bool { return false } // /proc unreadable
	cmd := exec.Command("sleep", "0.05")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep(1): " + err.Error())
	}
	pid := cmd.Process.Pid
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		cmd.Process.Kill() // by pid: ours
		cmd.Wait()
		t.Skip("no pidfd_open: " + err.Error())
	}
	defer unix.Close(fd)
	gone := make(chan struct{})
	go watchPidfd(pid, fd, func() { close(gone) })
	// A zombie first: its pidfd is readable and its signal 0 succeeds.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
		t.Fatal("a zombie the keeper has not reaped was taken for gone")
	case <-time.After(250 * time.Millisecond):
	}
	cmd.Wait() // reaped
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not see the reaped process within 5 s")
	}
}
