//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/internal/harness"
	"github.com/baton-sh/baton/internal/loadgen"
)

// evWorkerReady is the log event of a worker that became ready.
const evWorkerReady = "worker_ready"

// The soak (make soak): N upgrades back to back of an instant app under
// load, with the same harness and load as the upgrades phase, and a summary
// of what a long life costs: failed requests, handover percentiles, and the
// keeper's and master's memory and fds at the start, after a warm-up and at
// the end. Memory stays bounded on zdbench's side too: no per-request
// samples, and the log's events are forgotten after every upgrade.

// soakPoint is the keeper's and the serving master's state after Upgrade
// upgrades.
type soakPoint struct {
	Upgrade    int     `json:"upgrade"`
	AtS        float64 `json:"at_s"`
	Keeper     memInfo `json:"keeper"`
	KeeperFDs  int     `json:"keeper_fds"`
	Master     memInfo `json:"master"`
	MasterFDs  int     `json:"master_fds"`
	MasterPID  int     `json:"master_pid"`
	LoadAvg1   string  `json:"loadavg"`
	Generation int     `json:"generation"`
}

type soakResult struct {
	Strategy    string        `json:"strategy"`
	Workers     int           `json:"workers"`
	Concurrency int           `json:"concurrency"`
	KeepAlive   float64       `json:"keep_alive_share"`
	Kill        bool          `json:"kill"`
	Kills       int           `json:"workers_killed"`
	Requested   int           `json:"upgrades_requested"`
	Done        int           `json:"upgrades_done"` // handed over or failed; fewer if the soak stopped early
	HandedOver  int           `json:"upgrades_handed_over"`
	Failures    []string      `json:"upgrade_failures,omitempty"` // the first few
	Seconds     float64       `json:"seconds"`
	Requests    requestCounts `json:"requests"`
	// FailedOn splits the failed requests by connection: on one a killed
	// worker held, queued at a kill, or other (see harness.Attribute).
	FailedOn harness.Attribution `json:"failed_on"`
	// HeldAtKills and QueuedAtKills add up the connections the killed
	// workers held, and those waiting unaccepted, at their kills.
	HeldAtKills   int         `json:"connections_held_at_kills"`
	QueuedAtKills int         `json:"connections_queued_at_kills"`
	Handover      soakDist    `json:"handover_ms"` // USR2 received -> new generation serving
	BatonPart     soakDist    `json:"baton_ms"`
	AppStartup    soakDist    `json:"app_startup_ms"`
	Start         soakPoint   `json:"start"`
	Warm          soakPoint   `json:"warm"` // after the warm-up
	End           soakPoint   `json:"end"`
	Trace         []soakPoint `json:"trace"`
}

// soakDist is loadgen.Dist with the tail a long run has enough samples for.
type soakDist struct {
	loadgen.Dist
	P99 float64 `json:"p99"`
}

func soakDistOf(vs []float64) soakDist {
	d := soakDist{Dist: loadgen.DistOf(vs)}
	if len(vs) > 0 {
		s := append([]float64(nil), vs...)
		sort.Float64s(s)
		d.P99 = s[min(max(int(math.Ceil(0.99*float64(len(s))))-1, 0), len(s)-1)]
	}
	return d
}

// soakWarmup is how many upgrades pass before the memory baseline that
// growth is measured from: the first upgrades fill pools and caches once.
func soakWarmup(n int) int { return min(100, max(n/10, 1)) }

func (b *bench) soak(ctx context.Context) (*soakResult, error) {
	o := b.opts
	res := &soakResult{Strategy: o.soakStrategy, Workers: o.workers, Concurrency: o.concurrency,
		KeepAlive: o.keepAlive, Kill: o.soakKill, Requested: o.soak}
	p, err := b.startBaton(ctx, o.workers, nil, "--strategy", o.soakStrategy)
	if p != nil {
		defer func() { b.noteErr(p.stop()) }()
	}
	if err != nil {
		return res, err
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	wait := loadgen.StartMix(loadCtx, loadgen.Mix{
		Network: "tcp", Addr: p.addr, Clients: o.concurrency, KeepAlive: o.keepAlive, Probe: true,
		Duration: time.Duration(o.soak)*(drainTimeout/10) + 10*time.Minute, NoSamples: true,
	})
	t0 := time.Now()
	point := func(n int) soakPoint {
		pt := soakPoint{Upgrade: n, AtS: time.Since(t0).Seconds(), MasterPID: p.master, Generation: p.gen,
			LoadAvg1: loadAvg()}
		// At rest: startBaton and upgrade return once the keeper and
		// the master have said so.
		pt.Keeper, _ = procMem(p.keeper)
		pt.KeeperFDs, _ = procFDs(p.keeper)
		pt.Master, _ = procMem(p.master)
		pt.MasterFDs, _ = procFDs(p.master)
		return pt
	}
	if err := pause(ctx, time.Second); err != nil {
		return res, err
	}
	res.Start = point(0)
	res.Trace = append(res.Trace, res.Start)
	every := max(o.soak/20, 1)
	var total, part, app []float64
	var kills []harness.HeldConns // one per kill, a few connections each
	loopErr := func() error {
		for k := 1; k <= o.soak; k++ {
			from := p.log.Len()
			h, err := p.upgrade(ctx)
			if err != nil {
				return fmt.Errorf("upgrade %d/%d: %w", k, o.soak, err)
			}
			res.Done = k
			if h.ok {
				res.HandedOver++
				total, part, app = append(total, h.totalMS), append(part, h.batonMS), append(app, h.startingMS)
			} else if len(res.Failures) < 5 {
				res.Failures = append(res.Failures, fmt.Sprintf("upgrade %d: %s", k, h.failure))
			}
			if o.soakKill && rand.IntN(4) == 0 {
				held, err := b.soakKill(ctx, p)
				if held != nil {
					kills = append(kills, *held)
					res.Kills++
					res.HeldAtKills += len(held.Held)
					res.QueuedAtKills += len(held.Queued)
				}
				if err != nil {
					return fmt.Errorf("after upgrade %d: %w", k, err)
				}
			}
			p.log.Forget(from)
			if k == soakWarmup(o.soak) {
				res.Warm = point(k)
			}
			if k%every == 0 || k == o.soak {
				pt := point(k)
				res.Trace = append(res.Trace, pt)
				b.progress("soak %d/%d: handover median %.1f ms; keeper PSS %.2f MiB, master PSS %.2f MiB, fds %d/%d",
					k, o.soak, loadgen.DistOf(total).Median, pt.Keeper.pssMB(), pt.Master.pssMB(), pt.KeeperFDs, pt.MasterFDs)
			}
		}
		return nil
	}()
	res.End = point(res.Done)
	res.Seconds = time.Since(t0).Seconds()
	stopLoad()
	out := wait()
	all := out.All()
	res.Requests = countsOf(all)
	res.FailedOn = harness.Attribute(kills, all.FailedConns, all.FailedDropped)
	res.Handover, res.BatonPart, res.AppStartup = soakDistOf(total), soakDistOf(part), soakDistOf(app)
	return res, loopErr
}

// soakKill SIGKILLs one of the serving master's workers and waits until its
// replacement is ready: a crash between upgrades, as in real life. Just
// before the kill it stops the worker and its descendants (SIGSTOP) and
// reads which client connections they hold, so that the failures the kill
// causes can be told from any other (held is nil when nothing was killed).
// Stopped, the worker accepts nothing more: what it held then is exactly
// what dies with it.
func (b *bench) soakKill(ctx context.Context, p *batonProc) (held *harness.HeldConns, err error) {
	kids := harness.Children(p.master)
	if len(kids) == 0 {
		return nil, fmt.Errorf("master %d has no workers to kill", p.master)
	}
	from := p.log.Len()
	victim := kids[rand.IntN(len(kids))]
	if !harness.Ours(p.dir, victim) {
		return nil, nil // not a worker of this run (it exited meanwhile)
	}
	pids, err := harness.StopTree(victim, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("stop worker %d before its kill: %w", victim, err)
	}
	snap, snapErr := harness.SnapshotConns(pids)
	killErr := syscall.Kill(victim, syscall.SIGKILL)
	for _, d := range pids[1:] {
		syscall.Kill(d, syscall.SIGCONT) // its descendants carry on, as after a crash
	}
	if killErr != nil {
		syscall.Kill(victim, syscall.SIGCONT)
		return nil, fmt.Errorf("SIGKILL worker %d: %w", victim, killErr)
	}
	if snapErr != nil {
		return nil, fmt.Errorf("connections of worker %d: %w", victim, snapErr)
	}
	_, _, err = p.log.Wait(ctx, from, readyTimeout+10*time.Second,
		fmt.Sprintf("a replacement for worker pid %d", victim), func(e harness.Event) bool {
			return e.Name() == evWorkerReady && e.Int("master_pid") == p.master
		})
	return &snap, err
}

func printSoak(w io.Writer, r *report) {
	s := r.Soak
	fmt.Fprintf(w, "\nSoak: %d upgrades (--strategy %s) of hello, %d workers, %d clients (%.0f%% keep-alive) + 1 probe",
		s.Requested, s.Strategy, s.Workers, s.Concurrency, s.KeepAlive*100)
	if s.Kill {
		fmt.Fprintf(w, ", %d workers SIGKILLed between upgrades", s.Kills)
	}
	fmt.Fprintln(w)
	per := 0.0
	if s.Done > 0 {
		per = s.Seconds * 1000 / float64(s.Done)
	}
	fmt.Fprintf(w, "took %.0f s (%.0f ms per upgrade); load average %s at start, %s at end\n",
		s.Seconds, per, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd)
	fmt.Fprintf(w, "requests: %d, failed %d (%s), retried %d\n", s.Requests.Requests, s.Requests.Failed,
		byKind(s.Requests.ByKind), s.Requests.Retried)
	a := s.FailedOn
	fmt.Fprintf(w, "failed requests by connection: %d on connections the SIGKILLed workers held (%s), %d queued unaccepted at a kill, %d other",
		harness.Total(a.Held), byKind(a.Held), harness.Total(a.Queued), harness.Total(a.Other))
	if a.Unlisted > 0 {
		fmt.Fprintf(w, ", %d unattributed (past the load generator's list)", a.Unlisted)
	}
	fmt.Fprintf(w, "; the kills found %d held and %d queued connections\n", s.HeldAtKills, s.QueuedAtKills)
	for _, e := range a.OtherExamples {
		fmt.Fprintf(w, "  other: %s\n", e)
	}
	fmt.Fprintf(w, "upgrades handed over: %d of %d done (%d asked for)\n", s.HandedOver, s.Done, s.Requested)
	for _, f := range s.Failures {
		fmt.Fprintf(w, "  %s\n", f)
	}
	tw := table(w)
	fmt.Fprintln(tw, "\tmedian\tp90\tp99\tmax")
	for _, row := range []struct {
		name string
		d    soakDist
	}{{"handover (USR2 -> new generation serving)", s.Handover}, {"baton's part (handover - app start-up)", s.BatonPart}, {"app start-up", s.AppStartup}} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", row.name, ms(row.d.Median), ms(row.d.P90), ms(row.d.P99), ms(row.d.Max))
	}
	tw.Flush()
	tw = table(w)
	fmt.Fprintln(tw, "\tafter upgrade\tPSS\tRSS\tanon (PSS)\tfds\tload average")
	mib := func(v int64) string { return fmt.Sprintf("%.2f MiB", float64(v)/(1<<20)) }
	for _, row := range []struct {
		name string
		pt   soakPoint
	}{{"start", s.Start}, {"warmed up", s.Warm}, {"end", s.End}} {
		fmt.Fprintf(tw, "keeper, %s\t%d\t%s\t%s\t%s\t%d\t%s\n", row.name, row.pt.Upgrade, mib(row.pt.Keeper.PSS), mib(row.pt.Keeper.RSS), mib(row.pt.Keeper.PSSAnon), row.pt.KeeperFDs, row.pt.LoadAvg1)
		fmt.Fprintf(tw, "master, %s\t%d\t%s\t%s\t%s\t%d\t%s\n", row.name, row.pt.Upgrade, mib(row.pt.Master.PSS), mib(row.pt.Master.RSS), mib(row.pt.Master.PSSAnon), row.pt.MasterFDs, row.pt.LoadAvg1)
	}
	tw.Flush()
	fmt.Fprintf(w, "keeper + master PSS: %s at start, %s at the end; growth after warm-up: keeper %+.2f MiB, master %+.2f MiB\n",
		mib(s.Start.Keeper.PSS+s.Start.Master.PSS), mib(s.End.Keeper.PSS+s.End.Master.PSS),
		float64(s.End.Keeper.PSS-s.Warm.Keeper.PSS)/(1<<20), float64(s.End.Master.PSS-s.Warm.Master.PSS)/(1<<20))
	// A leak is anonymous memory; each master is a new process whose
	// share of the binary's pages varies by some hundred KiB with what it
	// touched since its trim, so its PSS at one point is noisy.
	fmt.Fprintf(w, "anonymous (PSS) growth after warm-up: keeper %+.2f MiB, master %+.2f MiB\n",
		float64(s.End.Keeper.PSSAnon-s.Warm.Keeper.PSSAnon)/(1<<20), float64(s.End.Master.PSSAnon-s.Warm.Master.PSSAnon)/(1<<20))
}

// byKind is "refused 0, reset 3, ..." in failureKinds' order.
func byKind(m map[string]int) string {
	var kinds []string
	for _, k := range failureKinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(kinds, ", ")
}

// soakVerdict is the soak's pass or fail, for make soak's exit status: every
// upgrade asked for handed over, and no request failed except on a
// connection a SIGKILLed worker held, or that was queued unaccepted at its
// port, at the kill (a SIGKILL loses what its process held, whatever the
// supervisor does). nil when it passed.
func soakVerdict(s *soakResult) error {
	var bad []string
	if s.HandedOver < s.Requested {
		bad = append(bad, fmt.Sprintf("%d of %d upgrades handed over", s.HandedOver, s.Requested))
	}
	a := s.FailedOn
	explained := harness.Total(a.Held) + harness.Total(a.Queued)
	if n := s.Requests.Failed - explained; n > 0 {
		bad = append(bad, fmt.Sprintf("%d of %d requests failed outside the killed workers' connections", n, s.Requests.Requests))
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("soak failed: %s", strings.Join(bad, "; "))
}
