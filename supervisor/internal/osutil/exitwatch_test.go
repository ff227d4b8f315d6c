//go:build linux

package osutil

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Wait returns once the process has exited, and leaves it unreaped (a
// zombie, its pid still taken) for its parent to reap.
func TestExitWatchWaitsWithoutReaping(t *testing.T) {
	c := exec.Command("sleep", "30")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	w, err := WatchExit(c.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v while the process runs", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the process was killed")
	}
	st, err := ReadStat(c.Process.Pid)
	if err != nil || st.State != 'Z' {
		t.Fatalf("after Wait: state %q, %v; want an unreaped zombie", st.State, err)
	}
}
