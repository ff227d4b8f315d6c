//go:build linux

package keeper

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

// The keeper makes the service's cgroup v2 subtree, in which masters make
// a cgroup per generation and per worker (supervisor/tree.go), and ends
// whatever is left of the service when it exits.
//
// Where the keeper is alone in its cgroup (systemd with Delegate=yes, a
// container with its own cgroup namespace) the subtree is that cgroup: the
// keeper moves itself, and so every master, into a leaf "keeper" (a cgroup
// with processes cannot have children with controllers: the no internal
// process rule) and generations go beside it in "generations". Elsewhere
// (a shell's session, the root cgroup) it makes "baton-PID" beside itself.
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
	o.endStaleBase(own)
	removeStaleBases(own)
	return cgroup.Make(filepath.Join(own, "baton-"+strconv.Itoa(o.self)))
}

// endStaleBase ends what a SIGKILLed keeper left in its subtree: the
// stale pid file names that keeper, so baton-STALEPID beside ours is this
// service's, and whatever still runs there (a helper that left its group,
// holding the listening socket) would make this start fail on the port.
// A subtree of another service, not named by our pid file, is left alone.
func (o *osSys) endStaleBase(own string) {
	if o.stalePID <= 0 || o.stalePID == o.self || !osutil.Gone(o.stalePID) && osutil.SameProgram(o.stalePID) {
		return
	}
	g := cgroup.Group(filepath.Join(own, "baton-"+strconv.Itoa(o.stalePID)))
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

// removeStaleBases removes the empty subtrees of keepers that are gone
// (SIGKILLed: nothing removed them), beside our own. A keeper is known by
// where it runs, not by its binary: baton-PID is made beside its keeper,
// which stays there, so a live PID in our cgroup may be that keeper, of
// another service or another build of baton (a deploy's new binary, a
// test's), whose subtree is empty only for a moment (before its first
// generation's cgroup, between workers). Removing it then made that
// keeper's masters fall back to the subreaper or fail to make worker
// cgroups. A reused pid in our cgroup leaves an empty directory behind,
// which harms nobody.
func removeStaleBases(own string) {
	dirs, _ := filepath.Glob(filepath.Join(own, "baton-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "baton-"))
		if err != nil {
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
