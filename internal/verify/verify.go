//go:build linux

// Package verify is the engine of `baton verify`: bounded HTTP/1.1 load
// against a running service while upgrades are triggered one after
// another, and the report of every failed request by kind and by upgrade.
// cmd/baton parses the command line into a Plan, supplies the Trigger
// (the control socket) and prints the Report.
package verify

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
	"github.com/baton-sh/baton/supervisor/control"
)

// Plan is a checked `baton verify` command line.
type Plan struct {
	URL            string // as given, for reports
	Network, Addr  string // where to connect: "tcp" and a resolved IP:port, or "unix" and a path
	Host           string // Host header
	Target         string // request target (path and query)
	Slow           string // slow request target, or ""
	Reloads        int
	Interval       time.Duration
	Concurrency    int
	RequestTimeout time.Duration
	Duration       time.Duration
	MaxRequests    int
	VersionHeader  string
	UpgradeTimeout time.Duration
	Report         string // --report FILE (.html or .svg), or ""
}

// Clients split: a quarter of --concurrency (at least one) sends --slow;
// the rest is half keep-alive, half fresh connections.
func (p Plan) slowClients() int {
	if p.Slow == "" {
		return 0
	}
	return max(1, p.Concurrency/4)
}

// Outcome is what verify needs to know of one upgrade.
type Outcome struct {
	Started      bool     // false: the master refused (pre-flight, already upgrading, draining)
	OK           bool     // the new generation took over
	Reason       string   // why not OK
	Stderr       []string // last stderr lines of the worker that failed
	OldMasterPID int      // in the masters' pid namespace, as reported
	NewMasterPID int
	// OldMasterHere is the old master's pid as this process sees it (it
	// may run in another pid namespace: the host of a container checks
	// one inside); 0 when it cannot see it, and then its exit is not
	// waited for.
	OldMasterHere int
	Generation    int     // the new generation's number
	TotalMS       float64 // baton's handover time: request to new generation ready
	AppMS         float64 // of which the workers' own start-up
	BatonMS       float64 // of which baton's part
	ChecksMS      float64 // of which blue-green/canary checks (0 for shared)
	BakeMS        float64 // of which the bake (0 for shared)
}

// upgradeRun is one triggered upgrade as verify saw it.
type upgradeRun struct {
	n        int
	sent     time.Time // request sent to the master
	answered time.Time // outcome received (zero if none)
	gone     time.Time // old master exited (zero if not seen)
	out      Outcome
	err      error // no outcome
}

// Trigger asks for one upgrade and blocks until its outcome (or ctx ends).
// An error means no outcome arrived; the upgrade may still be under way.
type Trigger func(ctx context.Context) (Outcome, error)

// Run checks that the service answers, then runs the load and p.Reloads
// upgrades one after another through trigger, and returns the report. It
// blocks for at most about p.Duration (plus the last bounded waits). Its
// error says that the service did not answer before any upgrade: nothing
// was upgraded then.
func Run(parent context.Context, p Plan, trigger Trigger) (*Report, error) {
	// The service must answer before anything is upgraded, or every later
	// failure would be blamed on an upgrade.
	probe := &loadgen.Client{Network: p.Network, Addr: p.Addr, Host: p.Host, Timeout: p.RequestTimeout}
	_, err := probe.Do(p.Target)
	probe.Close()
	if err != nil {
		return nil, fmt.Errorf("GET %s before any upgrade: %w; nothing was upgraded", p.URL, err)
	}

	ctx, cancel := context.WithTimeoutCause(parent, p.Duration, fmt.Errorf("--duration %s reached", p.Duration))
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	budget := loadgen.NewBudget(p.MaxRequests)
	slow := p.slowClients()
	start := time.Now()
	wait := loadgen.StartMix(loadCtx, loadgen.Mix{
		Network: p.Network, Addr: p.Addr, Host: p.Host, Path: p.Target,
		Clients: p.Concurrency - slow, KeepAlive: 0.5,
		SlowClients: slow, SlowPath: p.Slow,
		Timeout: p.RequestTimeout, Duration: p.Duration, Budget: budget, ReleaseHeader: p.VersionHeader,
	})
	loadDone := make(chan loadgen.MixResult, 1)
	go func() { loadDone <- wait() }()
	var (
		res       loadgen.MixResult
		loadEnded bool // the load stopped by itself (--max-requests)
	)
	// pause waits d with the load running; false if the load or ctx ended.
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
		case res = <-loadDone:
			loadEnded = true
		}
		return false
	}

	var ups []upgradeRun
	func() {
		if !pause(p.Interval) {
			return
		}
		for k := 1; k <= p.Reloads; k++ {
			u := upgradeRun{n: k, sent: time.Now()}
			u.out, u.err = trigger(ctx)
			u.answered = time.Now()
			if u.err == nil && u.out.OK {
				left := min(p.UpgradeTimeout, time.Until(start.Add(p.Duration)))
				// Another namespace's pid names someone else here (its
				// 1 is our init): wait only on what we can see.
				if here := u.out.OldMasterHere; here > 0 && waitMasterGone(ctx, here, max(left, 0)) {
					u.gone = time.Now()
				}
			}
			ups = append(ups, u)
			if u.err != nil || !u.out.OK {
				// The release in place failed once; trying again says little more.
				pause(p.Interval)
				return
			}
			if !pause(p.Interval) {
				return
			}
		}
	}()
	cause := context.Cause(ctx)
	stopLoad()
	if !loadEnded {
		res = <-loadDone
	}
	rep := buildReport(p, start, res, ups)
	switch {
	case parent.Err() != nil:
		rep.problem("interrupted")
	case ctx.Err() != nil:
		rep.problem(cause.Error() + " before the check ended")
	}
	if budget.Exhausted() {
		rep.problem("--max-requests " + strconv.Itoa(p.MaxRequests) + " reached before the check ended")
	}
	rep.Verified = len(rep.Problems) == 0
	return rep, nil
}

// waitMasterGone waits until the old master of a handover has exited, so
// that its generation's drain is over (a next upgrade is refused until
// then). It blocks for at most timeout, or until ctx ends, and reports
// whether the master is gone. It reads /proc, so it only works on the
// master's host, which the unix control socket implies.
func waitMasterGone(ctx context.Context, pid int, timeout time.Duration) bool {
	if pid <= 0 {
		return true
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		// Short slices, so that ctx ending is noticed promptly.
		if control.WaitExited(pid, min(left, 100*time.Millisecond)) {
			return true
		}
		if ctx.Err() != nil || left <= 0 {
			return false
		}
	}
}
