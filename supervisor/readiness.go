//go:build linux

package supervisor

import (
	"github.com/baton-sh/baton/supervisor/internal/spawn"

	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// A readiness rule decides when a new worker counts as ready. To add one:
// a ReadyMode, its parsing in ParseReadyRule, and a readiness value in
// newReadiness.
type readiness interface {
	// watch starts watching a worker that has just started, with env its
	// environment; ready is called at most once, from any goroutine, when
	// the rule is met. The returned stop ends the watch; it is called when
	// the worker is ready or has exited, and may be called more than once.
	watch(w *worker, env []string, ready func()) (stop func())
	// byNotify reports whether READY=1 on the notify socket counts.
	byNotify() bool
}

func newReadiness(r ReadyRule, s sys, dir string) readiness {
	switch r.Mode {
	case ReadyDelay:
		return delayReadiness{delay: r.Delay, sys: s}
	case ReadyExec:
		return execReadiness{probe: r.Probe, dir: dir}
	}
	return notifyReadiness{}
}

// notifyReadiness: the worker sends READY=1 (sd_notify(3)).
type notifyReadiness struct{}

func (notifyReadiness) watch(*worker, []string, func()) func() { return func() {} }
func (notifyReadiness) byNotify() bool                         { return true }

// delayReadiness: the worker has stayed up for delay.
type delayReadiness struct {
	delay time.Duration
	sys   sys
}

func (d delayReadiness) watch(_ *worker, _ []string, ready func()) func() {
	return d.sys.afterFunc(d.delay, ready)
}
func (delayReadiness) byNotify() bool { return false }

// execReadiness: a probe command, run by /bin/sh -c every 100 ms in the
// workers' directory, exits 0. It gets BATON_WORKER_PID.
type execReadiness struct {
	probe string
	dir   string
}

func (e execReadiness) watch(w *worker, env []string, ready func()) func() {
	ctx, cancel := context.WithCancel(context.Background())
	penv := append(env[:len(env):len(env)], fmt.Sprintf("BATON_WORKER_PID=%d", w.pid))
	go func() {
		for {
			cmd := exec.CommandContext(ctx, "/bin/sh", "-c", e.probe)
			cmd.Dir = e.dir
			cmd.Env = penv
			err := spawn.StartUnblocked(cmd)
			if err == nil {
				err = cmd.Wait()
			}
			if err == nil && ctx.Err() == nil {
				ready()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return cancel
}
func (execReadiness) byNotify() bool { return false }

// ReadyMode says how a worker shows that it serves.
type ReadyMode int

const (
	ReadyNotify ReadyMode = iota // READY=1 on NOTIFY_SOCKET
	ReadyDelay                   // alive for Delay
	ReadyExec                    // Probe exits 0
)

// ReadyRule is a parsed --ready value.
type ReadyRule struct {
	Mode  ReadyMode
	Delay time.Duration
	Probe string
}

func (r ReadyRule) String() string {
	switch r.Mode {
	case ReadyDelay:
		return "delay:" + r.Delay.String()
	case ReadyExec:
		return "exec:" + r.Probe
	}
	return "notify"
}

// ParseReadyRule parses "notify", "delay:DURATION" or "exec:COMMAND".
func ParseReadyRule(s string) (ReadyRule, error) {
	mode, arg, _ := strings.Cut(s, ":")
	switch mode {
	case "notify":
		if arg == "" {
			return ReadyRule{Mode: ReadyNotify}, nil
		}
	case "delay":
		d, err := time.ParseDuration(arg)
		if err == nil && d >= 0 {
			return ReadyRule{Mode: ReadyDelay, Delay: d}, nil
		}
		return ReadyRule{}, badConfig("--ready", strconv.Quote(s), "want delay:DURATION such as delay:2s", nil)
	case "exec":
		if strings.TrimSpace(arg) != "" {
			return ReadyRule{Mode: ReadyExec, Probe: arg}, nil
		}
		return ReadyRule{}, badConfig("--ready", strconv.Quote(s), "exec: needs a command", nil)
	}
	return ReadyRule{}, badConfig("--ready", strconv.Quote(s), "want notify, delay:DURATION or exec:COMMAND", nil)
}
