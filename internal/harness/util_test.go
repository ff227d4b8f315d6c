//go:build linux

package harness

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Children names a child this test started while it lives, and leaves it
// out once it is a zombie; FDs names a descriptor this test opened.
func TestChildrenAndFDs(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	pid := cmd.Process.Pid
	defer cmd.Wait()
	if !slices.Contains(Children(os.Getpid()), pid) {
		t.Fatalf("children %v, want %d among them", Children(os.Getpid()), pid)
	}
	cmd.Process.Kill()
	if !Until(5*time.Second, func() bool { return !slices.Contains(Children(os.Getpid()), pid) }) {
		t.Fatalf("zombie %d still listed: %v", pid, Children(os.Getpid()))
	}

	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fds, err := FDs(os.Getpid())
	if err != nil || !slices.Contains(fds, strconv.Itoa(int(f.Fd()))) {
		t.Fatalf("FDs %v, %v; want fd %d among them", fds, err, f.Fd())
	}
	if _, err := FDs(-1); err == nil {
		t.Fatal("FDs of pid -1: no error")
	}
}

func TestUntilAndBuffer(t *testing.T) {
	if Until(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("Until true for a condition that never holds")
	}
	var b Buffer
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); fmt.Fprintf(&b, "%d", i) }()
	}
	if !Until(5*time.Second, func() bool { return len(b.String()) == 4 }) {
		t.Fatalf("buffer %q after 4 writes", b.String())
	}
	wg.Wait()
}
