//go:build linux

package main

import (
	"context"
	"fmt"
	"github.com/baton-sh/baton/internal/harness"
	"strconv"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// Bounds given to baton; the benchmark's own waits are a little longer, so
// that baton's report of a failure arrives before zdbench gives up.
const (
	readyTimeout = 60 * time.Second
	drainTimeout = 30 * time.Second
)

// pause waits d unless ctx ends first.
func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func allKinds(m map[string]int) map[string]int {
	out := map[string]int{}
	for _, k := range failureKinds {
		out[k] = 0
	}
	for k, v := range m {
		out[k] += v
	}
	return out
}

var failureKinds = loadgen.Kinds

// ---- 1 and 2: steady state, direct vs. under baton ----

type steadyRun struct {
	Round       int             `json:"round"`
	Kind        string          `json:"kind"`
	Requests    int             `json:"requests"`
	Failed      int             `json:"failed"`
	Seconds     float64         `json:"seconds"`
	RPS         float64         `json:"rps"`
	Latency     loadgen.Latency `json:"latency"`
	MasterRSSMB float64         `json:"master_rss_mb,omitempty"`
	MasterCPUMS *float64        `json:"master_cpu_ms,omitempty"`
}

type steadySide struct {
	RPSMedian float64         `json:"rps_median"`
	Requests  int             `json:"requests"`
	Failed    int             `json:"failed"`
	Latency   loadgen.Latency `json:"latency"` // every round pooled
}

type steadyResult struct {
	Workers      int         `json:"workers"`
	Concurrency  int         `json:"concurrency"`
	KeepAlive    float64     `json:"keep_alive_share"`
	Rounds       int         `json:"rounds"`
	RoundSeconds float64     `json:"round_seconds"`
	Direct       steadySide  `json:"direct"`
	Baton        steadySide  `json:"baton"`
	Ratios       []float64   `json:"throughput_ratios"`
	RatioMedian  float64     `json:"throughput_ratio_median"`
	MasterRSSMB  float64     `json:"master_rss_mb_max"`
	MasterCPUMS  float64     `json:"master_cpu_ms"`
	LoadSeconds  float64     `json:"master_cpu_load_seconds"`
	MasterCPUPct float64     `json:"master_cpu_percent_of_one_core"`
	Runs         []steadyRun `json:"runs"`
}

// steadyPhase alternates direct and baton runs, swapping which goes first
// each round, so that drift in the machine's load hits both alike; the ratio
// is taken within each round and its median reported.
func (b *bench) steadyPhase(ctx context.Context) (*steadyResult, error) {
	o := b.opts
	res := &steadyResult{Workers: 1, Concurrency: o.concurrency, KeepAlive: o.keepAlive,
		Rounds: o.rounds, RoundSeconds: o.roundDur.Seconds()}
	lat := map[string][]time.Duration{}
	var rpsD, rpsB []float64
	for r := range o.rounds {
		order := []string{"direct", "baton"}
		if r%2 == 1 {
			order = []string{"baton", "direct"}
		}
		got := map[string]steadyRun{}
		for _, kind := range order {
			run, l, err := b.steadyOnce(ctx, kind, r+1)
			if err != nil {
				return res, fmt.Errorf("steady round %d (%s): %w", r+1, kind, err)
			}
			b.progress("steady round %d/%d %-6s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  failed %d",
				r+1, o.rounds, kind, run.RPS, run.Latency.P50, run.Latency.P99, run.Failed)
			got[kind] = run
			res.Runs = append(res.Runs, run)
			lat[kind] = append(lat[kind], l...)
		}
		d, bt := got["direct"], got["baton"]
		rpsD, rpsB = append(rpsD, d.RPS), append(rpsB, bt.RPS)
		if d.RPS > 0 {
			res.Ratios = append(res.Ratios, bt.RPS/d.RPS)
		}
		res.MasterRSSMB = max(res.MasterRSSMB, bt.MasterRSSMB)
		if bt.MasterCPUMS != nil {
			res.MasterCPUMS += *bt.MasterCPUMS
			res.LoadSeconds += bt.Seconds
		}
		for kind, side := range map[string]*steadySide{"direct": &res.Direct, "baton": &res.Baton} {
			side.Requests += got[kind].Requests
			side.Failed += got[kind].Failed
		}
	}
	res.Direct.RPSMedian = loadgen.DistOf(rpsD).Median
	res.Baton.RPSMedian = loadgen.DistOf(rpsB).Median
	res.Direct.Latency = loadgen.Summarize(lat["direct"])
	res.Baton.Latency = loadgen.Summarize(lat["baton"])
	res.RatioMedian = loadgen.DistOf(res.Ratios).Median
	if res.LoadSeconds > 0 {
		res.MasterCPUPct = res.MasterCPUMS / 10 / res.LoadSeconds
	}
	return res, nil
}

func (b *bench) steadyOnce(ctx context.Context, kind string, round int) (steadyRun, []time.Duration, error) {
	o := b.opts
	run := steadyRun{Round: round, Kind: kind}
	var (
		addr   string
		master int
		stop   func() error
	)
	if kind == "direct" {
		a, err := harness.FreeAddr()
		if err != nil {
			return run, nil, err
		}
		h, _, err := b.startHello(ctx, a)
		if h != nil {
			defer func() { b.noteErr(h.stop()) }()
		}
		if err != nil {
			return run, nil, err
		}
		addr, stop = a, h.stop
	} else {
		p, err := b.startBaton(ctx, 1, nil)
		if p != nil {
			defer func() { b.noteErr(p.stop()) }()
		}
		if err != nil {
			return run, nil, err
		}
		addr, master, stop = p.addr, p.master, p.stop
	}
	cfg := loadgen.Config{Network: "tcp", Addr: addr, Clients: o.concurrency, KeepAlive: o.keepAlive}
	// Connections, goroutines and the CPU frequency settle in the first
	// moments of a run; those are not what is compared.
	warm := cfg
	warm.Duration = 300 * time.Millisecond
	loadgen.Run(ctx, warm)
	var cpu0 time.Duration
	if master != 0 {
		cpu0, _ = procCPU(master)
	}
	cfg.Duration = o.roundDur
	res := loadgen.Run(ctx, cfg)
	if master != 0 {
		if cpu1, err := procCPU(master); err == nil {
			ms := msOf(cpu1 - cpu0)
			run.MasterCPUMS = &ms
		}
		if rss, err := procRSS(master); err == nil {
			run.MasterRSSMB = float64(rss) / (1 << 20)
		}
	}
	if err := ctx.Err(); err != nil {
		return run, nil, err
	}
	b.noteErr(stop())
	run.Requests = res.Requests
	run.Failed = res.Failures()
	run.Seconds = res.Elapsed.Seconds()
	if run.Seconds > 0 {
		run.RPS = float64(res.Requests-run.Failed) / run.Seconds
	}
	l := loadgen.OKLatencies(res.Samples)
	run.Latency = loadgen.Summarize(l)
	if run.Failed > 0 {
		b.note("steady %s round %d: %d failed requests %v; first: %q", kind, round, run.Failed, res.Failed, res.Examples)
	}
	return run, l, nil
}

// ---- 3: upgrades under load ----

type upgradeRec struct {
	N              int      `json:"n"`
	OldGeneration  int      `json:"old_generation"`
	NewGeneration  int      `json:"new_generation"`
	OldMaster      int      `json:"old_master_pid"`
	NewMaster      int      `json:"new_master_pid,omitempty"`
	HandedOver     bool     `json:"handed_over"`
	Failure        string   `json:"failure,omitempty"`
	SentAtS        float64  `json:"sent_at_s"`
	LateMS         float64  `json:"late_ms"` // behind its due time: the old master was still draining
	FirstNewMS     *float64 `json:"first_new_response_ms"`
	LastOldMS      *float64 `json:"last_old_response_ms"`
	LoggedMS       float64  `json:"handover_logged_ms"`
	TotalMS        float64  `json:"log_total_ms"`
	AppStartupMS   float64  `json:"app_startup_ms"`
	BatonMS        float64  `json:"baton_ms"`
	OldDrainMS     float64  `json:"old_drain_ms"`
	KilledWorkers  int      `json:"old_workers_killed"`
	FailedInWindow int      `json:"failed_requests_in_window"`
	MasterFDs      int      `json:"master_fds"`
	MasterRSSMB    float64  `json:"master_rss_mb"`
	PIDFileOK      bool     `json:"pid_file_ok"`
}

type requestCounts struct {
	Requests int            `json:"requests"`
	Failed   int            `json:"failed"`
	ByKind   map[string]int `json:"failed_by_kind"`
	Retried  int            `json:"retried"`
	Examples []string       `json:"first_failures,omitempty"`
}

func countsOf(r *loadgen.Result) requestCounts {
	return requestCounts{Requests: r.Requests, Failed: r.Failures(), ByKind: allKinds(r.Failed),
		Retried: r.Retried, Examples: r.Examples}
}

type mastersSummary struct {
	FDsFirst     int            `json:"fds_first"`
	FDsLast      int            `json:"fds_last"`
	FDsMin       int            `json:"fds_min"`
	FDsMax       int            `json:"fds_max"`
	FDKindsFirst map[string]int `json:"fd_kinds_first"`
	FDKindsLast  map[string]int `json:"fd_kinds_last"`
	RSSFirstMB   float64        `json:"rss_mb_first"`
	RSSLastMB    float64        `json:"rss_mb_last"`
	RSSMaxMB     float64        `json:"rss_mb_max"`
	// PSS and RSS of the master and of the keeper once the master is alone,
	// after the first and the last upgrade (MiB).
	PSSFirstMB       float64 `json:"pss_mb_first"`
	PSSLastMB        float64 `json:"pss_mb_last"`
	KeeperPSSFirstMB float64 `json:"keeper_pss_mb_first"`
	KeeperPSSLastMB  float64 `json:"keeper_pss_mb_last"`
	KeeperRSSLastMB  float64 `json:"keeper_rss_mb_last"`
	FDGrowth         bool    `json:"fd_growth"`
	RSSGrowth        bool    `json:"rss_growth"`
}

type upgradesResult struct {
	Workers        int             `json:"workers"`
	Concurrency    int             `json:"concurrency"`
	KeepAlive      float64         `json:"keep_alive_share"`
	SlowClients    int             `json:"slow_clients"`
	SlowMS         int             `json:"slow_request_ms"`
	IntervalMS     float64         `json:"interval_ms"`
	Requested      int             `json:"upgrades_requested"`
	HandedOver     int             `json:"upgrades_handed_over"`
	Total          requestCounts   `json:"all_requests"`
	Load           requestCounts   `json:"load_requests"`
	Slow           requestCounts   `json:"slow_requests"`
	Probe          requestCounts   `json:"probe_requests"`
	LatencySteady  loadgen.Latency `json:"latency_steady"`
	LatencyUpgrade loadgen.Latency `json:"latency_around_upgrades"`
	FirstNew       loadgen.Dist    `json:"first_new_response_ms"`
	LastOld        loadgen.Dist    `json:"last_old_response_ms"`
	LogTotal       loadgen.Dist    `json:"log_total_ms"`
	AppStartup     loadgen.Dist    `json:"app_startup_ms"`
	BatonPart      loadgen.Dist    `json:"baton_ms"`
	OldDrain       loadgen.Dist    `json:"old_drain_ms"`
	Late           int             `json:"upgrades_late"`
	Masters        mastersSummary  `json:"masters"`
	List           []upgradeRec    `json:"upgrades"`
	Strategy       string          `json:"strategy"`
	Switch         loadgen.Dist    `json:"switch_ms"` // blue-green: USR2 received -> users switched
	Steps          []stepDist      `json:"steps"`     // each step of the new masters' start
	LoadAvg        string          `json:"loadavg"`   // at the end of the phase
}

// upgradesPhase upgrades baton every interval while clients of every kind
// keep it busy, and checks that nobody notices.
// strategy is baton's --strategy: shared or blue-green.
func (b *bench) upgradesPhase(ctx context.Context, strategy string) (*upgradesResult, error) {
	o := b.opts
	res := &upgradesResult{Workers: o.workers, Concurrency: o.concurrency, KeepAlive: o.keepAlive,
		SlowClients: o.slowClients, SlowMS: o.slowMS, IntervalMS: msOf(o.interval), Requested: o.upgrades,
		Strategy: strategy}
	p, err := b.startBaton(ctx, o.workers, nil, "--strategy", strategy)
	if p != nil {
		defer func() { b.noteErr(p.stop()) }()
	}
	if err != nil {
		return res, err
	}

	tr := newGenTracker()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	wait := startLoad(loadCtx, loadPlan{
		addr: p.addr, clients: o.concurrency, keepAlive: o.keepAlive,
		slowClients: o.slowClients, slowMS: o.slowMS, probe: true, tracker: tr,
		bound: time.Duration(o.upgrades)*(o.interval+drainTimeout) + 5*time.Minute,
	})
	// Every return below must stop the clients before baton stops, or they
	// would count its shutdown as failures.
	var hs []handover
	var dues []time.Time
	loopErr := func() error {
		// The first slow requests must be in flight before the first upgrade.
		if err := pause(ctx, max(time.Second, time.Duration(o.slowMS)*time.Millisecond)); err != nil {
			return err
		}
		// An upgrade is due an interval after the previous one, or as soon
		// as the previous old master has exited if that takes longer: baton
		// refuses an upgrade while a generation still drains.
		due := time.Now()
		for k := range o.upgrades {
			if k > 0 {
				due = hs[k-1].sent.Add(o.interval)
			}
			if err := pause(ctx, time.Until(due)); err != nil {
				return err
			}
			h, err := p.upgrade(ctx)
			hs, dues = append(hs, h), append(dues, due)
			if err != nil {
				return fmt.Errorf("upgrade %d/%d: %w", k+1, o.upgrades, err)
			}
			if h.ok {
				b.progress("upgrade %d/%d: generation %d serving after %.1f ms (app %.1f ms, baton %.1f ms); old master gone after %.0f ms",
					k+1, o.upgrades, h.newGen, h.totalMS, h.startingMS, h.batonMS, msOf(h.parentGone.Sub(h.logged)))
			} else {
				b.progress("upgrade %d/%d FAILED: %s", k+1, o.upgrades, h.failure)
			}
		}
		// Requests that began around the last upgrade must end before
		// the load stops, for the window after it to be complete.
		return pause(ctx, time.Second)
	}()
	stopLoad()
	out := wait()
	start := time.Now()
	if len(hs) > 0 {
		start = dues[0]
	}

	var failed []loadgen.Sample
	for _, r := range []*loadgen.Result{out.Main, out.Slow, out.Probe} {
		for _, s := range r.Samples {
			if s.Failed {
				failed = append(failed, s)
			}
		}
	}
	var wins []loadgen.Window
	var firstNew, lastOld, total, starting, part, drain, switched []float64
	for i, h := range hs {
		rec := upgradeRec{
			N: i + 1, OldGeneration: h.oldGen, NewGeneration: h.newGen, OldMaster: h.oldPID,
			NewMaster: h.newPID, HandedOver: h.ok, Failure: h.failure,
			SentAtS: h.sent.Sub(start).Seconds(), LateMS: max(0, msOf(h.sent.Sub(dues[i]))),
			KilledWorkers: h.killedWorkers, MasterFDs: h.fds, MasterRSSMB: h.rssMB, PIDFileOK: h.pidFileOK,
		}
		if rec.LateMS > 50 {
			res.Late++
		}
		if h.sent.IsZero() {
			res.List = append(res.List, rec)
			continue
		}
		end := h.logged
		if end.IsZero() {
			end = time.Now()
		}
		w := loadgen.Window{From: h.sent, To: end.Add(time.Second)}
		wins = append(wins, w)
		for _, s := range failed {
			if !s.Start.After(w.To) && !s.Start.Add(s.Latency).Before(w.From) {
				rec.FailedInWindow++
			}
		}
		if h.ok {
			res.HandedOver++
			rec.LoggedMS = msOf(h.logged.Sub(h.sent))
			rec.TotalMS, rec.AppStartupMS, rec.BatonMS = h.totalMS, h.startingMS, h.batonMS
			total, starting, part = append(total, h.totalMS), append(starting, h.startingMS), append(part, h.batonMS)
			if h.switchMS > 0 {
				switched = append(switched, h.switchMS)
			}
			if !h.parentGone.IsZero() {
				rec.OldDrainMS = msOf(h.parentGone.Sub(h.logged))
				drain = append(drain, rec.OldDrainMS)
			}
			if s, ok := tr.get(h.newGen); ok {
				v := msOf(s.first.Sub(h.sent))
				rec.FirstNewMS = &v
				firstNew = append(firstNew, v)
			}
			if s, ok := tr.get(h.oldGen); ok {
				v := msOf(s.last.Sub(h.sent))
				rec.LastOldMS = &v
				lastOld = append(lastOld, v)
			}
			if !h.pidFileOK {
				b.note("upgrade %d: pid file did not name the new master %d", i+1, h.newPID)
			}
			if h.killedWorkers > 0 {
				b.note("upgrade %d: %d old workers killed at the drain timeout", i+1, h.killedWorkers)
			}
		}
		res.List = append(res.List, rec)
	}
	res.FirstNew, res.LastOld = loadgen.DistOf(firstNew), loadgen.DistOf(lastOld)
	res.Switch = loadgen.DistOf(switched)
	res.LogTotal, res.AppStartup, res.BatonPart, res.OldDrain = loadgen.DistOf(total), loadgen.DistOf(starting), loadgen.DistOf(part), loadgen.DistOf(drain)

	res.Load, res.Slow, res.Probe = countsOf(out.Main), countsOf(out.Slow), countsOf(out.Probe)
	res.Total = countsOf(loadgen.Merge(out.Main, out.Slow, out.Probe))
	in, steady := loadgen.SplitByWindows(out.Main.Samples, wins)
	res.LatencyUpgrade, res.LatencySteady = loadgen.Summarize(in), loadgen.Summarize(steady)
	res.Masters = mastersOf(hs)
	res.Steps, res.LoadAvg = stepDists(hs), loadAvg()
	if loopErr != nil {
		return res, loopErr
	}
	return res, nil
}

// mastersOf compares the masters that took over: each is a new process, so a
// leak shows as a later master holding more than an earlier one.
func mastersOf(hs []handover) mastersSummary {
	var m mastersSummary
	first := true
	for _, h := range hs {
		if !h.ok || h.fds == 0 {
			continue
		}
		if first {
			m.FDsFirst, m.FDsMin, m.FDKindsFirst, m.RSSFirstMB = h.fds, h.fds, h.fdKinds, h.rssMB
			m.PSSFirstMB, m.KeeperPSSFirstMB = h.mem.pssMB(), h.keeperMem.pssMB()
			first = false
		}
		m.FDsLast, m.FDKindsLast, m.RSSLastMB = h.fds, h.fdKinds, h.rssMB
		m.PSSLastMB, m.KeeperPSSLastMB, m.KeeperRSSLastMB = h.mem.pssMB(), h.keeperMem.pssMB(), h.keeperMem.rssMB()
		m.FDsMin, m.FDsMax, m.RSSMaxMB = min(m.FDsMin, h.fds), max(m.FDsMax, h.fds), max(m.RSSMaxMB, h.rssMB)
	}
	m.FDGrowth = m.FDsLast > m.FDsFirst
	// RSS of a fresh process varies by a few hundred KB with timing (GC,
	// page faults); only more than that is a trend.
	m.RSSGrowth = m.RSSLastMB > m.RSSFirstMB+1
	return m
}

// ---- 4: naive restarts ----

type naiveRec struct {
	N              int     `json:"n"`
	StopMS         float64 `json:"stop_ms"`
	DowntimeMS     float64 `json:"downtime_ms"`
	FailedRequests int     `json:"failed_requests"`
}

type naiveResult struct {
	Restarts         int           `json:"restarts"`
	Concurrency      int           `json:"concurrency"`
	SlowClients      int           `json:"slow_clients"`
	IntervalMS       float64       `json:"interval_ms"`
	Total            requestCounts `json:"all_requests"`
	Slow             requestCounts `json:"slow_requests"`
	FailedPerRestart loadgen.Dist  `json:"failed_per_restart"`
	Downtime         loadgen.Dist  `json:"downtime_ms"`
	Stop             loadgen.Dist  `json:"stop_ms"`
	List             []naiveRec    `json:"list"`
}

// naivePhase is what "systemctl restart" does to a server that owns its
// socket: stop it (gracefully), then start it again.
func (b *bench) naivePhase(ctx context.Context) (*naiveResult, error) {
	o := b.opts
	res := &naiveResult{Restarts: o.naiveRestarts, Concurrency: o.concurrency, SlowClients: o.slowClients,
		IntervalMS: msOf(o.interval)}
	addr, err := harness.FreeAddr()
	if err != nil {
		return res, err
	}
	h, _, err := b.startHello(ctx, addr)
	if h != nil {
		defer func() { b.noteErr(h.stop()) }()
	}
	if err != nil {
		return res, err
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	wait := startLoad(loadCtx, loadPlan{
		addr: addr, clients: o.concurrency, keepAlive: o.keepAlive,
		slowClients: o.slowClients, slowMS: o.slowMS,
		bound: time.Duration(o.naiveRestarts)*(o.interval+drainTimeout) + 5*time.Minute,
	})
	var terms []time.Time
	loopErr := func() error {
		if err := pause(ctx, max(time.Second, time.Duration(o.slowMS)*time.Millisecond)); err != nil {
			return err
		}
		for k := range o.naiveRestarts {
			if k > 0 {
				if err := pause(ctx, time.Until(terms[k-1].Add(o.interval))); err != nil {
					return err
				}
			}
			term := time.Now()
			terms = append(terms, term)
			if err := h.stop(); err != nil {
				return fmt.Errorf("restart %d: %w", k+1, err)
			}
			exited := time.Now()
			next, up, err := b.startHello(ctx, addr)
			if next != nil {
				h = next
			}
			if err != nil {
				return fmt.Errorf("restart %d: %w", k+1, err)
			}
			rec := naiveRec{N: k + 1, StopMS: msOf(exited.Sub(term)), DowntimeMS: msOf(up.Sub(term))}
			res.List = append(res.List, rec)
			b.progress("naive restart %d/%d: stopped in %.0f ms, answering again after %.0f ms",
				k+1, o.naiveRestarts, rec.StopMS, rec.DowntimeMS)
		}
		return pause(ctx, time.Second)
	}()
	stopLoad()
	out := wait()
	all := loadgen.Merge(out.Main, out.Slow)
	res.Total, res.Slow = countsOf(all), countsOf(out.Slow)
	// A failure belongs to the restart whose SIGTERM came last before it.
	for _, s := range all.Samples {
		if !s.Failed {
			continue
		}
		for i := len(terms) - 1; i >= 0; i-- {
			if !s.Start.Add(s.Latency).Before(terms[i]) {
				if i < len(res.List) {
					res.List[i].FailedRequests++
				}
				break
			}
		}
	}
	var failed, down, stop []float64
	for _, r := range res.List {
		failed, down, stop = append(failed, float64(r.FailedRequests)), append(down, r.DowntimeMS), append(stop, r.StopMS)
	}
	res.FailedPerRestart, res.Downtime, res.Stop = loadgen.DistOf(failed), loadgen.DistOf(down), loadgen.DistOf(stop)
	return res, loopErr
}

// ---- 5: handover time against worker count and app start-up ----

type scalingRow struct {
	Workers      int          `json:"workers"`
	AppDelayMS   int          `json:"hello_startup_ms"`
	Upgrades     int          `json:"upgrades"`
	HandedOver   int          `json:"handed_over"`
	Total        loadgen.Dist `json:"log_total_ms"`
	AppStartup   loadgen.Dist `json:"app_startup_ms"`
	BatonPart    loadgen.Dist `json:"baton_ms"`
	FirstNew     loadgen.Dist `json:"first_new_response_ms"`
	MasterRSSMB  float64      `json:"master_rss_mb_max"`
	MasterFDsMax int          `json:"master_fds_max"`
	ProbeFailed  int          `json:"probe_failed"`
	Failures     []string     `json:"failures,omitempty"`
	Steps        []stepDist   `json:"steps"`
	LoadAvg      string       `json:"loadavg"` // at the end
}

// scalingPhase measures handovers with only a probe as load: what grows with
// the worker count is baton's part (spawning, readiness, signalling), which a
// busy machine would blur.
func (b *bench) scalingPhase(ctx context.Context) ([]scalingRow, error) {
	var rows []scalingRow
	for _, w := range b.opts.scalingWorkers {
		for _, delay := range []int{0, 500} {
			row, err := b.scalingOnce(ctx, w, delay)
			rows = append(rows, row)
			if err != nil {
				return rows, fmt.Errorf("scaling, %d workers, start-up %d ms: %w", w, delay, err)
			}
			b.progress("scaling %2d workers, app start-up %3d ms: total %.1f ms, app %.1f ms, baton %.1f ms (median of %d)",
				w, delay, row.Total.Median, row.AppStartup.Median, row.BatonPart.Median, row.HandedOver)
		}
	}
	return rows, nil
}

func (b *bench) scalingOnce(ctx context.Context, workers, delayMS int) (scalingRow, error) {
	row := scalingRow{Workers: workers, AppDelayMS: delayMS, Upgrades: b.opts.scalingUpgrades}
	p, err := b.startBaton(ctx, workers, []string{"HELLO_STARTUP_MS=" + strconv.Itoa(delayMS)})
	if p != nil {
		defer func() { b.noteErr(p.stop()) }()
	}
	if err != nil {
		return row, err
	}
	tr := newGenTracker()
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	wait := startLoad(probeCtx, loadPlan{addr: p.addr, probe: true, probePause: b.opts.scalingProbePause, tracker: tr,
		bound: time.Duration(row.Upgrades)*(readyTimeout+drainTimeout) + 5*time.Minute})
	var hs []handover
	var loopErr error
	for range row.Upgrades {
		h, err := p.upgrade(ctx)
		hs = append(hs, h)
		if err != nil {
			loopErr = err
			break
		}
	}
	stopProbe()
	out := wait()
	row.ProbeFailed = out.Probe.Failures()
	var total, starting, part, first []float64
	for _, h := range hs {
		if !h.ok {
			if h.failure != "" {
				row.Failures = append(row.Failures, h.failure)
			}
			continue
		}
		row.HandedOver++
		total, starting, part = append(total, h.totalMS), append(starting, h.startingMS), append(part, h.batonMS)
		if s, ok := tr.get(h.newGen); ok {
			first = append(first, msOf(s.first.Sub(h.sent)))
		}
		row.MasterRSSMB = max(row.MasterRSSMB, h.rssMB)
		row.MasterFDsMax = max(row.MasterFDsMax, h.fds)
	}
	row.Total, row.AppStartup, row.BatonPart, row.FirstNew = loadgen.DistOf(total), loadgen.DistOf(starting), loadgen.DistOf(part), loadgen.DistOf(first)
	row.Steps, row.LoadAvg = stepDists(hs), loadAvg()
	return row, loopErr
}
