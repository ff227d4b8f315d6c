package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

type workerState int

const (
	stateStarting workerState = iota
	stateReady
	stateDraining
)

func (s workerState) String() string {
	return [...]string{"starting", "ready", "draining"}[s]
}

// worker is one running server process. Only the master's loop touches it.
type worker struct {
	index   int
	pid     int
	state   workerState
	started time.Time
	drainAt time.Time
	killed  bool // SIGKILLed at the drain deadline
	log     *zap.Logger
	cancel  context.CancelFunc // stops its probe and timers
	pipes   *workerPipes       // its stderr (and stdout, when tagged)
	// notified: it sent something on NOTIFY_SOCKET (for the hint when
	// --ready notify times out)
	notified bool
}

// slot is a worker index: the worker holding it now and its crash history.
type slot struct {
	cur      *worker
	backoff  time.Duration
	restarts int
	pending  bool // a restart is scheduled
}

const (
	backoffMin    = 100 * time.Millisecond
	backoffMax    = 10 * time.Second
	backoffStable = 10 * time.Second // up this long: the next crash restarts at backoffMin again
)

// stripEnv reports whether a variable of baton's own environment must not
// reach workers: systemd's per-process protocol variables (they describe
// baton, not the worker), tableflip's sentinel, and baton's own.
func stripEnv(kv string) bool {
	k, _, _ := strings.Cut(kv, "=")
	return k == "NOTIFY_SOCKET" ||
		strings.HasPrefix(k, "LISTEN_") ||
		strings.HasPrefix(k, "WATCHDOG_") ||
		strings.HasPrefix(k, "TABLEFLIP_") ||
		strings.HasPrefix(k, "BATON_")
}

func workerBaseEnv(environ []string) []string {
	out := make([]string, 0, len(environ)+8)
	for _, kv := range environ {
		if !stripEnv(kv) {
			out = append(out, kv)
		}
	}
	return out
}

// exitReason describes how a process ended, for logs and failure reports.
func exitReason(ps *os.ProcessState) string {
	if ps == nil {
		return "unknown"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "signal " + sigName(ws.Signal())
	}
	return "exit status " + strconv.Itoa(ps.ExitCode())
}

func exitFields(ps *os.ProcessState) []zap.Field {
	if ps == nil {
		return nil
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return []zap.Field{zap.String("signal", sigName(ws.Signal()))}
	}
	return []zap.Field{zap.Int("exit_code", ps.ExitCode())}
}

// runProbe runs the exec: readiness command until it exits 0 or ctx ends.
func runProbe(ctx context.Context, probe, dir string, env []string, ready func()) {
	for {
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", probe)
		cmd.Dir = dir
		cmd.Env = env
		if err := cmd.Run(); err == nil && ctx.Err() == nil {
			ready()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *worker) String() string {
	return fmt.Sprintf("worker %d (pid %d)", w.index, w.pid)
}

// stderrTail returns the last lines the worker wrote to stderr.
func (w *worker) stderrTail() []string {
	if w.pipes == nil {
		return nil
	}
	return w.pipes.tail.snapshot()
}
