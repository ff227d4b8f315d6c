//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startPID1Keeper runs baton run as PID 1 of a pid namespace of its own
// (unshare, as a container's entrypoint does) with extra args, and skips
// visibly where that or a cgroup cannot be had. It returns the launcher
// and the keeper's subtree (a cgroup directory, seen from here).
func startPID1Keeper(t *testing.T, args ...string) (*baton, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root for unshare --pid --mount-proc")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("SKIP: unshare (util-linux) not installed")
	}
	run := append([]string{"--pid", "--fork", "--mount-proc", bin("baton"), "run", "--log-format", "json"}, args...)
	b := launch(t, exec.Command(unshare, run...), nil)
	keeper := endNamespaceOnCleanup(t, b)
	eventually(t, 10*time.Second, "unshare to start baton", func() bool {
		if kids := childPids(b.pid); len(kids) == 1 {
			*keeper = kids[0]
		}
		return *keeper > 0
	})
	ev := b.log.wait(t, "process_trees", nil, 10*time.Second)
	if ev.str("mechanism") != "cgroup" {
		t.Skipf("SKIP: no cgroup v2 baton can write here: %s", ev.str("reason"))
	}
	b.waitReady()
	// The keeper's cgroup path is its namespace's view; the test shares
	// its cgroup namespace, so it is the same here.
	return b, ev.str("cgroup")
}

// livePids lists the live processes in cgroup dir and below it, as pids
// here.
func livePids(dir string) []int {
	var out []int
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && alive(pid) {
				out = append(out, pid)
			}
		}
		return nil
	})
	return out
}

// Two keepers, each PID 1 of its own pid namespace, beside each other in
// one cgroup (containers, unshare): each has a subtree of its own. Before,
// both made and shared "baton-1" (the pid alone named it): a stop of one
// SIGKILLed the other's workers and removed its subtree, and the other's
// replacement workers then ran outside any cgroup. A third keeper, here,
// whose stale pid file names 1 (the number those keepers have in their
// namespaces) leaves their subtrees alone; before, it ended "baton-1",
// another namespace's live keeper's.
func TestPID1KeepersOfTwoPidNamespacesKeepTheirOwnTrees(t *testing.T) {
	t.Parallel()
	addrA, addrB := freeAddr(t), freeAddr(t)
	a, baseA := startPID1Keeper(t, "-l", addrA, "-w", "2", "--", bin("hello"))
	b, baseB := startPID1Keeper(t, "-l", addrB, "-w", "2", "--", bin("hello"))
	if baseA == baseB {
		t.Fatalf("two PID 1 keepers of two pid namespaces share the subtree %s", baseA)
	}
	workersB := livePids(baseB)
	workersA := livePids(baseA)
	if len(workersB) < 2 || len(workersA) < 2 {
		t.Fatalf("workers in the subtrees: %v in %s, %v in %s; want 2 each", workersA, baseA, workersB, baseB)
	}

	// A stale pid file naming 1, as a container's earlier life leaves it:
	// the keeper here must not take another namespace's baton-...-1 for it.
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	if err := os.WriteFile(pidFile, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startTreeBaton(t, "cgroup", nil, "-l", freeAddr(t), "-w", "1", "--pid-file", pidFile, "--", bin("hello"))
	c.waitReady()
	if n := c.log.count("survivor_killed"); n != 0 {
		t.Fatalf("a keeper with a stale pid file naming 1 killed %d processes; log:\n%s", n, c.log.dump())
	}
	for _, pid := range append(append([]int{}, workersA...), workersB...) {
		if !alive(pid) {
			t.Fatalf("worker %d of a PID 1 keeper was killed by a keeper whose stale pid file names 1", pid)
		}
	}
	if code, out := c.ctl(t, "stop", "--timeout", "10s"); code != 0 {
		t.Fatalf("stop of the third keeper: exit %d:\n%s", code, out)
	}

	if code, out := a.ctl(t, "stop", "--timeout", "10s"); code != 0 {
		t.Fatalf("stop of keeper A: exit %d:\n%s", code, out)
	}
	if code := a.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("keeper A's unshare exited %d, want 0", code)
	}
	for _, pid := range workersB {
		if !alive(pid) {
			t.Fatalf("worker %d of keeper B was killed by keeper A's stop; B's log:\n%s", pid, b.log.dump())
		}
	}
	if _, err := os.Stat(baseB); err != nil {
		t.Fatalf("keeper B's subtree after A's stop: %v", err)
	}

	// B's replacement for a worker killed here starts in B's subtree.
	from := b.log.len()
	killOurs(workersB[0])
	b.log.waitFrom(t, from, "worker_ready", nil, 15*time.Second)
	got := livePids(baseB)
	if len(got) < 2 {
		t.Fatalf("after a worker of keeper B was replaced, %v in its subtree %s; want 2 workers; log:\n%s", got, baseB, b.log.dump())
	}
	mustGet(t, addrB, "/")
}

// pidNamespace returns the inode of this process's pid namespace, as a
// keeper here names its subtree with it.
func pidNamespace(t *testing.T) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.Ino, 10)
}
