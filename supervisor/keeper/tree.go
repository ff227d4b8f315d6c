//go:build linux

package keeper

import (
	"errors"
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

// The keeper makes the service's cgroup v2 subtree, in which masters make
// a cgroup per generation and per worker (supervisor/tree.go), and ends
// whatever is left of the service when it exits.
//
// Where the keeper is alone in its cgroup (systemd with Delegate=yes, a
// container with its own cgroup namespace) the subtree is that cgroup: the
// keeper moves itself, and so every master, into a leaf "keeper" (a cgroup
// with processes cannot have children with controllers: the no internal
// process rule) and generations go beside it in "generations". Elsewhere
// (a shell's session, the root cgroup) it makes "baton-NS-PID" beside
// itself (NS: its pid namespace's inode, see baseName).
// No cgroup2, no write access: the masters track trees as the child
// subreaper sees them.

// keeperTrees is the keeper's side of the service's trees.
type keeperTrees struct {
	base cgroup.Group // the generations' parent, or "" (subreaper)
	why  string       // why there is no cgroup
}

// setupTrees makes the service's cgroup subtree if it can, and says so
// in the offer to the first master (and so to every later one).
func (o *osSys) setupTrees(offer *link.Offer) {
	base, err := o.makeBase()
	if err != nil {
		o.trees.why = err.Error()
		o.log.Info("process trees tracked by the subreaper", logevent.ProcessTrees, zap.String("mechanism", link.TreesSubreaper), zap.String("reason", o.trees.why))
		offer.TreesWhy = o.trees.why
		return
	}
	o.trees.base = base
	o.log.Info("process trees tracked by cgroup", logevent.ProcessTrees, zap.String("mechanism", link.TreesCgroup), zap.String("cgroup", base.Path()))
	offer.Cgroup = base.Path()
}

func (o *osSys) makeBase() (cgroup.Group, error) {
	if os.Getenv("BATON_NO_CGROUP") == "1" {
		return "", fmt.Errorf("BATON_NO_CGROUP=1")
	}
	own, err := cgroup.Own()
	if err != nil {
		return "", err
	}
	procs, err := os.ReadFile(filepath.Join(own, "cgroup.procs"))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", own, err)
	}
	if strings.TrimSpace(string(procs)) == strconv.Itoa(o.self) && filepath.Base(own) != "keeper" {
		// Alone: the cgroup is the service's (delegated to it).
		leaf, err := cgroup.Make(filepath.Join(own, "keeper"))
		if err != nil {
			return "", err
		}
		if err := leaf.Move(o.self); err != nil {
			leaf.Remove(0)
			return "", err
		}
		g, err := cgroup.Make(filepath.Join(own, "generations"))
		if err != nil {
			// Back where it was: nothing of baton's is left behind.
			cgroup.Group(own).Move(o.self)
			leaf.Remove(0)
		}
		return g, err
	}
	ns, err := pidNamespace()
	if err != nil {
		return "", err
	}
	o.endStaleBase(own, ns)
	removeStaleBases(own, ns)
	return makeOwnBase(filepath.Join(own, baseName(ns, o.self)))
}

// baseName names a keeper's subtree beside it: "baton-NS-PID", NS the
// inode of the keeper's pid namespace, PID its pid there. The pid alone
// is not unique: keepers that are each PID 1 of their own pid namespace
// (containers, unshare) sharing a cgroup all were "baton-1", and one's
// stop ended the other's workers and removed its subtree. Two live pid
// namespaces never share an inode, and in one a live pid is one process.
func baseName(ns uint64, pid int) string {
	return "baton-" + strconv.FormatUint(ns, 10) + "-" + strconv.Itoa(pid)
}

// parseBaseName is baseName's inverse; ok is false for any other name
// (another program's, or an older baton's "baton-PID", which is left
// alone: nothing says which namespace its pid is of).
func parseBaseName(name string) (ns uint64, pid int, ok bool) {
	nsStr, pidStr, found := strings.Cut(strings.TrimPrefix(name, "baton-"), "-")
	if !found || !strings.HasPrefix(name, "baton-") {
		return 0, 0, false
	}
	ns, err1 := strconv.ParseUint(nsStr, 10, 64)
	pid, err2 := strconv.Atoi(pidStr)
	return ns, pid, err1 == nil && err2 == nil && pid > 0
}

// pidNamespace returns the inode of this process's pid namespace
// (/proc/self/ns/pid), which names it among the live ones.
func pidNamespace() (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0, fmt.Errorf("pid namespace of the keeper: stat /proc/self/ns/pid: %w", err)
	}
	return st.Ino, nil
}

// makeOwnBase makes the keeper's subtree at dir, never adopting one in
// use. dir names this keeper's namespace and pid, so one that exists was
// left by a keeper of this namespace that had this pid and is gone (it
// is this process otherwise). Empty, it is removed and made anew; with
// processes in it (what that keeper's service left) it is not this
// keeper's to end: the error says so and the masters use the subreaper.
func makeOwnBase(dir string) (cgroup.Group, error) {
	g, err := cgroup.MakeNew(dir)
	if err == nil || !errors.Is(err, os.ErrExist) {
		return g, err
	}
	if old := cgroup.Group(dir); old.Populated() {
		return "", fmt.Errorf("cgroup %s exists and has processes: %w", dir, err)
	} else if rerr := old.Remove(0); rerr != nil {
		return "", fmt.Errorf("stale cgroup %s: %w", dir, rerr)
	}
	return cgroup.MakeNew(dir)
}

// endStaleBase ends what a SIGKILLed keeper left in its subtree: the
// stale pid file names that keeper, so baton-NS-STALEPID beside ours (NS
// our own pid namespace, in which the pid file's number was written, if
// by a keeper of ours) is this service's, and whatever still runs there (a
// helper that left its group, holding the listening socket) would make
// this start fail on the port. A pid file written in another namespace (a
// container's earlier life) names nothing here: its subtree, of another
// namespace, and any subtree not named by our pid file are left alone.
func (o *osSys) endStaleBase(own string, ns uint64) {
	if o.stalePID <= 0 || o.stalePID == o.self || !osutil.Gone(o.stalePID) && osutil.SameProgram(o.stalePID) {
		return
	}
	g := cgroup.Group(filepath.Join(own, baseName(ns, o.stalePID)))
	if _, err := os.Stat(g.Path()); err != nil {
		return
	}
	left := g.Procs()
	for _, pid := range left {
		o.log.Warn("survivor killed", logevent.SurvivorKilled, zap.Int("pid", pid), zap.String("command", osutil.Command(pid)),
			zap.String("reason", "left by a keeper that was killed"), zap.Int("stale_pid", o.stalePID))
	}
	if err := g.Kill(); err != nil {
		o.log.Warn("stale process tree not ended", zap.String("cgroup", g.Path()), zap.Error(err))
		return
	}
	if err := g.Remove(2 * time.Second); err != nil {
		o.log.Warn("stale process tree not removed", zap.String("cgroup", g.Path()), zap.Error(err))
	}
}

// removeStaleBases removes the empty subtrees of keepers of this pid
// namespace (ns) that are gone (SIGKILLed: nothing removed them), beside
// our own. Only this namespace's: a pid is judged where it was written,
// and a keeper of another namespace may be alive with a subtree empty for
// a moment. A keeper is known by where it runs, not by its binary: its
// subtree is made beside it, and it stays there, so a live PID in our
// cgroup may be that keeper, of another service or another build of baton
// (a deploy's new binary, a test's), whose subtree is empty only for a
// moment (before its first generation's cgroup, between workers).
// Removing it then made that keeper's masters fall back to the subreaper
// or fail to make worker cgroups. A reused pid in our cgroup, or another
// namespace's dead keeper, leaves an empty directory behind, which harms
// nobody.
func removeStaleBases(own string, ns uint64) {
	dirs, _ := filepath.Glob(filepath.Join(own, "baton-*"))
	for _, d := range dirs {
		dns, pid, ok := parseBaseName(filepath.Base(d))
		if !ok || dns != ns {
			continue
		}
		if cg, err := cgroup.Of(pid); !osutil.Gone(pid) && (err != nil || cg == own) {
			continue // it may be that keeper, alive; unknown counts as alive
		}
		if g := cgroup.Group(d); !g.Populated() {
			g.Remove(0)
		}
	}
}

// endTrees ends whatever is left of the service once no master is: in the
// subtree, or (subreaper) the keeper's remaining children, which are
// orphans of the service's workers. Each is logged as a survivor; the
// keeper reaps them.
func (o *osSys) endTrees() {
	var left []int
	if o.trees.base != "" {
		left = o.trees.base.Procs()
	} else {
		left = osutil.ChildrenOf(o.self, 0)
	}
	for _, p := range left {
		if osutil.Gone(p) {
			continue
		}
		gen, _ := osutil.Environ(p, "BATON_GENERATION")
		o.log.Warn("survivor killed", logevent.SurvivorKilled, zap.Int("pid", p), zap.String("command", osutil.Command(p)),
			zap.String("generation", gen), zap.String("reason", "left when the last master exited"))
		if o.trees.base == "" {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if o.trees.base != "" {
		if len(left) > 0 {
			o.trees.base.Kill()
		}
		if err := o.trees.base.Remove(2 * time.Second); err != nil {
			o.log.Warn("service cgroup not removed", zap.Error(err))
		}
	}
}
