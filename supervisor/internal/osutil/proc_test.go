//go:build linux

package osutil

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

// ChildrenOf finds a child whichever of this process's threads forked it,
// and leaves out skip.
func TestChildrenOf(t *testing.T) {
	var cmds []*exec.Cmd
	for range 3 {
		c := exec.Command("sleep", "30")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		cmds = append(cmds, c)
	}
	kids := ChildrenOf(os.Getpid(), cmds[0].Process.Pid)
	for i, c := range cmds {
		if got := slices.Contains(kids, c.Process.Pid); got != (i > 0) {
			t.Fatalf("ChildrenOf(self, skip %d) = %v: child %d (pid %d) listed %v, want %v", cmds[0].Process.Pid, kids, i, c.Process.Pid, got, i > 0)
		}
	}
	if got := ChildrenOf(cmds[1].Process.Pid, 0); got == nil || len(got) != 0 {
		t.Fatalf("ChildrenOf(sleep) = %#v, want empty and not nil", got)
	}
}
