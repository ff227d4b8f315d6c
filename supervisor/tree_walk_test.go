//go:build linux

package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/baton-sh/baton/supervisor/internal/cgroup"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// movingTable is a process table in which one move happens after a given
// number of reads of children: what a process whose parent exits does to
// a walk of /proc, at the moment the kernel chooses.
type movingTable struct {
	reads, moveAt int
	before, after map[int][]int // children by pid, before and after the move
	markers       map[int]string
}

func (t *movingTable) children(pid int) []int {
	state := t.before
	if t.reads >= t.moveAt {
		state = t.after
	}
	t.reads++
	return state[pid]
}

func (t *movingTable) marker(pid int) (string, bool) {
	v, ok := t.markers[pid]
	return v, ok
}

// The subreaper mechanism finds a worker's helper wherever it is at each
// read: below its worker, or (the worker exited in between, or the
// helper's own parent did) among the keeper's children by its marker. At
// every moment the move can happen the helper is found; before, a move
// between the read of the keeper's children and that of the worker's lost
// it (a helper that then missed the drain signal and was SIGKILLed at the
// deadline, with requests in flight).
func TestWalkMarkedFindsProcessesThatMove(t *testing.T) {
	const keeper, master = 1, 5
	cases := []struct {
		name          string
		roots         []int
		before, after map[int][]int
		want          int
	}{
		{
			// worker 10's helper 11; the worker exits: 11 goes to the keeper.
			name:   "worker exits",
			roots:  []int{10},
			before: map[int][]int{keeper: {master}, master: {10}, 10: {11}},
			after:  map[int][]int{keeper: {master, 11}},
			want:   11,
		},
		{
			// an orphan 30 of the tree, at the keeper, has a child 31; 30
			// exits: 31 goes to the keeper too.
			name:   "orphan's parent exits",
			before: map[int][]int{keeper: {master, 30}, 30: {31}},
			after:  map[int][]int{keeper: {master, 31}},
			want:   31,
		},
	}
	for _, c := range cases {
		for moveAt := 0; moveAt <= 6; moveAt++ {
			pt := &movingTable{moveAt: moveAt, before: c.before, after: c.after,
				markers: map[int]string{10: "1.5.1", 11: "1.5.1", 30: "1.5.1", 31: "1.5.1"}}
			got := walkMarked(pt, keeper, c.roots, func(v string) bool { return v == "1.5.1" })
			if !slices.Contains(got, c.want) {
				t.Errorf("%s, moved after %d reads: tree %v lacks %d", c.name, moveAt, got, c.want)
			}
			if slices.Contains(got, master) {
				t.Errorf("%s, moved after %d reads: tree %v holds the master %d (no marker)", c.name, moveAt, got, master)
			}
		}
	}
}

// A tree killed twice, at its worker's drain deadline and again when that
// worker's exit is handled, while the survivor SIGKILLed the first time is
// still dying (listed, not yet a zombie), counts and logs that survivor
// once. Before, old_generation_drained said survivors_killed 2 for one
// helper (seen under load, with the worker itself killed at the deadline).
// The dying survivor is a live process listed in a directory that stands
// for the worker's cgroup: its cgroup.procs names it and a "kill" of it
// (a write of cgroup.kill) kills nothing.
func TestKilledSurvivorIsCountedOnce(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(sleep.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	m := &master{log: zap.New(core), trees: trees{mode: treeCgroup}}
	tree := &procTree{w: &worker{index: 0, pid: os.Getpid(), exited: true}, cg: cgroup.Group(dir)}
	m.killTree(tree, "drain timeout")
	m.killTree(tree, "worker exited")
	if got := logs.FilterField(logevent.SurvivorKilled).Len(); m.trees.killed != 1 || got != 1 {
		t.Fatalf("one survivor killed twice: counted %d, logged %d times; want 1 and 1", m.trees.killed, got)
	}
}
