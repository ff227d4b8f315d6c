//go:build linux

package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/cgroup"
	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// A generation is its whole process tree: every process a worker starts
// belongs to that worker, and so to its generation, wherever it goes (a
// helper that calls setsid, a double fork, `sh -c 'helper & exec server'`).
// Each worker has a tree; when the worker drains, its tree gets the drain
// signal with it; when the worker exits, what is left of its tree is ended
// (at once after a crash, at the drain deadline after a drain); a master's
// drain or stop is over only once every tree of its generation is empty.
//
// Two mechanisms find a tree:
//   - cgroup: the keeper made a cgroup v2 subtree for the service
//     (link.EnvCgroup); each generation gets a cgroup in it and each worker a
//     cgroup in that, which the worker is cloned into (CLONE_INTO_CGROUP,
//     so nothing it starts is ever outside). Exact: nothing leaves a cgroup
//     by forking, and cgroup.kill ends it at once.
//   - subreaper: where no cgroup can be made, the keeper, a child
//     subreaper, adopts every orphan; each worker gets a marker in its
//     environment (envTree), which its descendants inherit, and a tree is
//     the worker's descendants plus the keeper's children carrying its
//     marker, and theirs. A process that clears its environment and
//     leaves its parent escapes this; the keeper still ends whatever is
//     left of the service when it exits.

// envTree marks a worker's processes in the subreaper mechanism:
// GENERATION.MASTER_PID.SEQ, one value per worker process started.
const envTree = "BATON_TREE"

// Tree mechanisms as status reports them.
const (
	treeCgroup    = link.TreesCgroup
	treeSubreaper = link.TreesSubreaper
)

// treeCheckEvery is how often trees with leftovers are looked at.
const treeCheckEvery = 50 * time.Millisecond

// procTree is one worker's process tree.
type procTree struct {
	w      *worker
	cg     cgroup.Group // cgroup mechanism, else ""
	marker string       // envTree value
	// After the worker's exit: when what is left gets SIGKILL, and
	// whether it got it.
	deadline time.Time
	killed   bool
	// counted: the survivors already logged and counted in trees.killed.
	// A tree can be killed twice (at its worker's drain deadline, then
	// again when that worker's exit is handled) while a process SIGKILLed
	// the first time is still dying, not yet a zombie, and so still
	// listed; it is one survivor. Keyed by pid within this one tree: its
	// kills come moments apart, far less time than the kernel takes to
	// hand the pid of a process still dying, then reaped, to another.
	counted map[int]bool
}

// trees is the master's side of its generation's trees.
type trees struct {
	mode     string       // treeCgroup, treeSubreaper, or "" (in-process tests: none)
	why      string       // why not a cgroup (subreaper)
	base     cgroup.Group // the service's cgroup subtree (cgroup mode)
	gen      cgroup.Group // this generation's cgroup (cgroup mode)
	seq      int
	ahead    []treeAhead        // index i: worker i's first cgroup, made before the spawn (prepareTrees)
	left     map[*procTree]bool // worker exited, tree not yet empty
	checking bool               // a check is scheduled
	killed   int                // survivors (tree members, not workers) SIGKILLed so far
}

// treeAhead is a worker's cgroup made before its spawn, with its directory
// open for CLONE_INTO_CGROUP.
type treeAhead struct {
	g   cgroup.Group
	dir *os.File
	seq int
}

// treesMade is what prepareTrees made: the generation's cgroup (or why
// not) and the first cgroup of each of its workers.
type treesMade struct {
	gen   cgroup.Group
	err   error
	ahead []treeAhead
}

// prepareTrees makes the cgroup of generation gen of master self under the
// keeper's subtree base (nothing when base is ""), and one for each of its
// first workers, named as newTree names them (worker-INDEX.SEQ). Run
// calls it off the loop while it waits for the keeper and opens the
// sockets: four mkdirs and opens were a tenth of the spawn's CPU, on the
// way to every worker's fork. Blocks for the mkdirs; a worker's cgroup that
// cannot be made is left to newTree.
func prepareTrees(base string, gen, self, workers int) treesMade {
	if base == "" {
		return treesMade{}
	}
	g, err := cgroup.Make(filepath.Join(base, fmt.Sprintf("gen-%d.%d", gen, self)))
	if err != nil {
		return treesMade{err: err}
	}
	made := treesMade{gen: g, ahead: make([]treeAhead, workers)}
	for i := range made.ahead {
		seq := i + 1
		w, err := cgroup.Make(filepath.Join(g.Path(), fmt.Sprintf("worker-%d.%d", i, seq)))
		if err != nil {
			continue
		}
		if f, err := w.Open(); err == nil {
			made.ahead[i] = treeAhead{g: w, dir: f, seq: seq}
		}
	}
	return made
}

// discard removes what prepareTrees made, when the master fails before
// setupTrees.
func (t treesMade) discard() {
	for _, a := range t.ahead {
		if a.dir != nil {
			a.dir.Close()
		}
	}
	if t.gen != "" {
		t.gen.Remove(0)
	}
}

// setupTrees picks the mechanism for this master's generation, as its
// keeper's link says, with the cgroups prepareTrees made. A cgroup that
// cannot be made falls back to the subreaper, with a warning.
func (m *master) setupTrees(l link.Link, made treesMade) {
	m.trees.left = make(map[*procTree]bool)
	base := l.Cgroup
	if base == "" {
		m.trees.mode, m.trees.why = treeSubreaper, l.TreesWhy
		return
	}
	if made.err != nil {
		m.log.Warn("generation cgroup not made: process trees tracked by the subreaper", zap.Error(made.err))
		m.trees.mode, m.trees.why = treeSubreaper, made.err.Error()
		return
	}
	m.trees.mode, m.trees.base, m.trees.gen = treeCgroup, cgroup.Group(base), made.gen
	// The names of those made ahead are taken: newTree's own start after.
	m.trees.ahead, m.trees.seq = made.ahead, len(made.ahead)
	m.log.Info("generation cgroup made", zap.String("cgroup", made.gen.Path()))
}

// newTree prepares the tree of the worker about to start in slot index.
// It returns the variables to add to the worker's environment and, in
// cgroup mode, the cgroup's directory for CLONE_INTO_CGROUP (the caller
// closes it once the worker started).
func (m *master) newTree(index int) (*procTree, []string, *os.File) {
	if m.trees.mode == "" {
		return nil, nil, nil
	}
	if m.trees.mode == treeCgroup && index < len(m.trees.ahead) && m.trees.ahead[index].dir != nil {
		a := m.trees.ahead[index]
		m.trees.ahead[index] = treeAhead{}
		return &procTree{marker: fmt.Sprintf("%d.%d.%d", m.gen, m.self, a.seq), cg: a.g}, nil, a.dir
	}
	m.trees.seq++
	t := &procTree{marker: fmt.Sprintf("%d.%d.%d", m.gen, m.self, m.trees.seq)}
	if m.trees.mode != treeCgroup {
		return t, []string{envTree + "=" + t.marker}, nil
	}
	g, err := cgroup.Make(filepath.Join(m.trees.gen.Path(), fmt.Sprintf("worker-%d.%d", index, m.trees.seq)))
	if err == nil {
		var f *os.File
		if f, err = g.Open(); err == nil {
			t.cg = g
			return t, nil, f
		}
	}
	// Its generation's cgroup still holds it: the worker's leftovers are
	// then ended with the generation.
	m.log.Warn("worker cgroup not made; the worker starts in its generation's", zap.Int("worker", index), zap.Error(err))
	return t, nil, nil
}

// members lists t's live processes other than the worker itself.
func (m *master) members(t *procTree) []int {
	var pids []int
	if t.cg != "" {
		pids = t.cg.Procs()
	} else {
		var roots []int
		if !t.w.exited {
			roots = []int{t.w.pid} // once reaped, its pid may be anyone's
		}
		pids = markedTree(m.keeperPID(), roots, func(env string) bool { return env == t.marker })
	}
	out := pids[:0]
	for _, p := range pids {
		if p != t.w.pid && !osutil.Gone(p) {
			out = append(out, p)
		}
	}
	return out
}

// signalTree sends sig to w's tree besides w itself (the caller signals
// w through its process).
func (m *master) signalTree(w *worker, sig syscall.Signal) {
	if w.tree == nil {
		return
	}
	for _, p := range m.members(w.tree) {
		syscall.Kill(p, sig)
	}
}

// killTree SIGKILLs what is left of t, logging each process as a survivor
// (pid, command, generation, worker), and reason says why. A process is
// logged and counted once however often its tree is killed.
func (m *master) killTree(t *procTree, reason string) {
	if t == nil {
		return
	}
	t.killed = true
	left := m.members(t)
	for _, p := range left {
		if t.counted[p] {
			continue
		}
		if t.counted == nil {
			t.counted = make(map[int]bool, len(left))
		}
		t.counted[p] = true
		m.trees.killed++
		m.log.Warn("survivor killed", logevent.SurvivorKilled, zap.Int("pid", p), zap.String("command", osutil.Command(p)),
			zap.Int("worker", t.w.index), zap.Int("worker_pid", t.w.pid), zap.String("reason", reason),
			zap.String("mechanism", m.trees.mode))
	}
	if t.cg != "" {
		if err := t.cg.Kill(); err != nil {
			m.log.Warn("kill worker cgroup failed", zap.Error(err))
		}
		return
	}
	for _, p := range left {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// treeAfterExit ends what is left of an exited worker's tree: at once
// unless the worker was draining (then at its drain deadline, the
// leftovers having had the drain signal with it).
func (m *master) treeAfterExit(w *worker) {
	t := w.tree
	if t == nil {
		return
	}
	if len(m.members(t)) == 0 {
		m.removeTree(t)
		return
	}
	m.trees.left[t] = true
	if w.state == stateDraining && !w.killed {
		t.deadline = w.drainAt.Add(m.cfg.DrainTimeout)
		m.log.Info("worker exited; its leftovers drain until the deadline", logevent.WorkerLeftovers, zap.Int("worker", w.index),
			zap.Int("worker_pid", w.pid), zap.Ints("pids", m.members(t)), zap.Time("deadline", t.deadline))
	} else {
		m.killTree(t, "worker exited")
	}
	m.scheduleTreeCheck()
}

func (m *master) scheduleTreeCheck() {
	if m.trees.checking || len(m.trees.left) == 0 {
		return
	}
	m.trees.checking = true
	m.sys.afterFunc(treeCheckEvery, func() { m.post(evTreeCheck{}) })
}

// onTreeCheck forgets trees that are empty and kills those past their
// deadline.
func (m *master) onTreeCheck() {
	m.trees.checking = false
	now := m.sys.now()
	for t := range m.trees.left {
		switch {
		case len(m.members(t)) == 0:
			delete(m.trees.left, t)
			m.removeTree(t)
		case !t.killed && !now.Before(t.deadline):
			m.killTree(t, "drain timeout")
		}
	}
	m.scheduleTreeCheck()
}

// killTrees SIGKILLs every tree of the generation (a second stop signal,
// a keeper gone).
func (m *master) killTrees() {
	for _, w := range m.procs {
		m.killTree(w.tree, "killed with the generation")
	}
	for t := range m.trees.left {
		m.killTree(t, "killed with the generation")
	}
}

func (m *master) removeTree(t *procTree) {
	if t != nil && t.cg != "" {
		if err := t.cg.Remove(0); err != nil {
			m.log.Debug("worker cgroup not removed", zap.Error(err))
		}
	}
}

// treesEmpty reports whether no exited worker's tree is left.
func (m *master) treesEmpty() bool { return len(m.trees.left) == 0 }

// closeTrees removes the generation's cgroup once the master is done.
func (m *master) closeTrees() {
	for _, a := range m.trees.ahead {
		if a.dir != nil {
			a.dir.Close() // never used: removed with the generation's
		}
	}
	m.trees.ahead = nil
	if m.trees.gen == "" {
		return
	}
	if m.trees.gen.Populated() {
		// Not a tree of a worker: nothing is known of it but its cgroup.
		m.trees.gen.Kill()
	}
	if err := m.trees.gen.Remove(time.Second); err != nil {
		m.log.Warn("generation cgroup not removed", zap.Error(err))
	}
}

// generationProcs lists every process of generation gen of this service
// (another master's, for status), and the mechanism that found them.
func (m *master) generationProcs(gen int) []int {
	prefix := strconv.Itoa(gen) + "."
	if m.trees.mode == treeCgroup {
		dirs, _ := filepath.Glob(filepath.Join(m.trees.base.Path(), fmt.Sprintf("gen-%d.*", gen)))
		var out []int
		for _, d := range dirs {
			out = append(out, cgroup.Group(d).Procs()...)
		}
		return out
	}
	return markedTree(m.keeperPID(), nil, func(env string) bool { return strings.HasPrefix(env, prefix) })
}

// markedTree is the subreaper mechanism's tree: roots and their
// descendants, and the keeper's children whose envTree value matches, and
// theirs.
func markedTree(keeper int, roots []int, match func(string) bool) []int {
	return walkMarked(osProcTable{}, keeper, roots, match)
}

// procTable is what the subreaper mechanism reads of the process table: a
// process's children and its envTree value. osProcTable reads /proc; the
// tests script tables whose processes move while they are read.
type procTable interface {
	children(pid int) []int
	marker(pid int) (string, bool)
}

type osProcTable struct{}

func (osProcTable) children(pid int) []int { return osutil.ChildrenOf(pid, 0) }
func (osProcTable) marker(pid int) (string, bool) {
	return osutil.Environ(pid, envTree)
}

// markedPasses bounds walkMarked's looks at the keeper's children; each
// pass after the first happens only if a process moved during the last.
const markedPasses = 4

// walkMarked is markedTree on table pt.
//
// The table changes while it is read, one file at a time: a process whose
// parent exits is re-parented at that instant to the nearest child
// subreaper, the keeper (masters are not subreapers), and never moves the
// other way. So the roots' descendants are read first and the keeper's
// children after: a process that left a root's subtree in between is then
// found at the keeper. (In the other order a helper whose worker exited
// between the two reads was in neither: it missed the drain signal, served
// on, and was SIGKILLed at the drain deadline with requests in flight.)
// The same holds one level down, below a keeper's child that exits while
// its children are read, so the keeper is looked at again until a pass
// finds nothing new. What is forked after its parent was read is not seen;
// no walk of /proc can see that, a cgroup does.
func walkMarked(pt procTable, keeper int, roots []int, match func(string) bool) []int {
	seen := map[int]bool{}
	var out []int
	walk := func(queue []int) {
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if seen[p] {
				continue
			}
			seen[p] = true
			out = append(out, p)
			queue = append(queue, pt.children(p)...)
		}
	}
	walk(roots)
	for pass := 0; keeper > 0 && pass < markedPasses; pass++ {
		var found []int
		for _, c := range pt.children(keeper) {
			if seen[c] {
				continue
			}
			if v, ok := pt.marker(c); ok && match(v) {
				found = append(found, c)
			}
		}
		if len(found) == 0 {
			break
		}
		walk(found)
	}
	return out
}
