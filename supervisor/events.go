//go:build linux

package supervisor

import (
	"github.com/baton-sh/baton/supervisor/internal/notify"

	"syscall"
	"time"
)

// event is something for the master's loop to handle. The set is sealed
// (isEvent is unexported): every kind is declared here, and each names the
// worker, slot or connection it is about, never a pid, which the kernel
// reuses.
type event interface{ isEvent() }

type (
	evSignal struct{ sig syscall.Signal }
	evExit   struct {
		w      *worker
		status exitStatus
	}
	evReady          struct{ w *worker }
	evReadyTimeout   struct{ w *worker }
	evDrainTimeout   struct{ w *worker }
	evRestart        struct{ s *slot }
	evNotify         notify.Msg
	evControl        struct{ c *ctlConn }
	evUpgradeDone    struct{ err error }
	evParentExited   struct{}
	evWatchdog       struct{}
	evStopAckTimeout struct{}
	evKeeperGone     struct{}
	evAcceptCheck    struct{} // sample the accept queues (hints.go)
	evRefuseCheck    struct{} // have the workers let go of the sockets? (refuse.go)
	evTreeCheck      struct{} // are exited workers' trees empty? (tree.go)
	evHookLeftCheck  struct{} // are past hooks' groups empty? (hookleft.go)
	evHookExit       struct {
		h      *hookRun
		status exitStatus
	}
	evHookTimeout struct{ h *hookRun }
	evHookOutput  struct {
		h            *hookRun
		stream, line string
	}
	// Blue-green and canary (bluegreen.go).
	evCheckDone struct {
		c      *candidate
		stage  stage
		err    error
		output []string // a smoke test's last output lines
	}
	evProbe struct { // one health probe's outcome
		c      *candidate
		stage  stage
		answer string
		err    error
	}
	evBakeDone       struct{ c *candidate }
	evProbeDue       struct{ c *candidate } // time for the next health probe
	evHealthTimeout  struct{ c *candidate } // --health-timeout passed
	evSwitchBackWait struct{}
	evQueueIdle      struct {
		left   int // connections still queued at the bound
		waited time.Duration
	}
)

func (evSignal) isEvent()         {}
func (evProbe) isEvent()          {}
func (evExit) isEvent()           {}
func (evReady) isEvent()          {}
func (evReadyTimeout) isEvent()   {}
func (evDrainTimeout) isEvent()   {}
func (evRestart) isEvent()        {}
func (evNotify) isEvent()         {}
func (evControl) isEvent()        {}
func (evUpgradeDone) isEvent()    {}
func (evParentExited) isEvent()   {}
func (evWatchdog) isEvent()       {}
func (evStopAckTimeout) isEvent() {}
func (evKeeperGone) isEvent()     {}
func (evAcceptCheck) isEvent()    {}
func (evRefuseCheck) isEvent()    {}
func (evTreeCheck) isEvent()      {}
func (evHookLeftCheck) isEvent()  {}
func (evHookExit) isEvent()       {}
func (evHookTimeout) isEvent()    {}
func (evHookOutput) isEvent()     {}
func (evCheckDone) isEvent()      {}
func (evBakeDone) isEvent()       {}
func (evProbeDue) isEvent()       {}
func (evHealthTimeout) isEvent()  {}
func (evSwitchBackWait) isEvent() {}
func (evQueueIdle) isEvent()      {}
