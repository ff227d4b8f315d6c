//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

type report struct {
	Machine  machine         `json:"machine"`
	Config   config          `json:"config"`
	Direct   *steadySide     `json:"direct,omitempty"`
	Steady   *steadyResult   `json:"steady,omitempty"`
	Upgrades *upgradesResult `json:"upgrades,omitempty"`
	// The same upgrades with --strategy blue-green, beside shared.
	UpgradesBlueGreen *upgradesResult `json:"upgrades_blue_green,omitempty"`
	Naive             *naiveResult    `json:"naive,omitempty"`
	Scaling           []scalingRow    `json:"scaling,omitempty"`
	Peers             *peersResult    `json:"peers,omitempty"`
	IdleMemory        *idleMemResult  `json:"idle_memory,omitempty"`
	Soak              *soakResult     `json:"soak,omitempty"`
	// The handover phases run with -baseline's binary, just before the
	// same phases with this tree's.
	Baseline *report  `json:"baseline,omitempty"`
	Targets  []target `json:"targets"`
	Notes    []string `json:"notes,omitempty"`
	Error    string   `json:"error,omitempty"`
}

type config struct {
	Quick               bool    `json:"quick"`
	Upgrades            int     `json:"upgrades"`
	Concurrency         int     `json:"concurrency"`
	KeepAlive           float64 `json:"keep_alive_share"`
	NaiveRestarts       int     `json:"naive_restarts"`
	Workers             int     `json:"workers"`
	IntervalMS          float64 `json:"interval_ms"`
	SlowClients         int     `json:"slow_clients"`
	SlowMS              int     `json:"slow_request_ms"`
	Rounds              int     `json:"steady_rounds"`
	RoundSeconds        float64 `json:"steady_round_seconds"`
	ScalingWorkers      []int   `json:"scaling_workers"`
	ScalingUpgrades     int     `json:"scaling_upgrades"`
	ScalingProbePauseMS float64 `json:"scaling_probe_pause_ms"`
	SkipSteady          bool    `json:"skip_steady"`
	SkipNaive           bool    `json:"skip_naive"`
	SkipScaling         bool    `json:"skip_scaling"`
	SkipPeers           bool    `json:"skip_peers"`
	IdleAfterS          float64 `json:"idle_after_s"`
	PeerUpgrades        int     `json:"peer_upgrades"`
	PeerRounds          int     `json:"peer_rounds"`
}

func configOf(o options) config {
	return config{
		Quick: o.quick, Upgrades: o.upgrades, Concurrency: o.concurrency, KeepAlive: o.keepAlive,
		NaiveRestarts: o.naiveRestarts, Workers: o.workers, IntervalMS: msOf(o.interval),
		SlowClients: o.slowClients, SlowMS: o.slowMS, Rounds: o.rounds, RoundSeconds: o.roundDur.Seconds(),
		ScalingWorkers: o.scalingWorkers, ScalingUpgrades: o.scalingUpgrades, ScalingProbePauseMS: msOf(o.scalingProbePause),
		SkipSteady: o.skipSteady, SkipNaive: o.skipNaive, SkipScaling: o.skipScaling,
		SkipPeers: o.skipPeers, IdleAfterS: o.idleAfter.Seconds(), PeerUpgrades: o.peerUpgrades, PeerRounds: o.peerRounds,
	}
}

// target is one of the figures the team compares against.
type target struct {
	Name     string `json:"name"`
	Want     string `json:"target"`
	Measured string `json:"measured"`
	Status   string `json:"status"` // met, missed or not measured
	Note     string `json:"note,omitempty"`
}

const (
	met         = "met"
	missed      = "MISSED"
	notMeasured = "not measured"
)

func status(ok bool) string {
	if ok {
		return met
	}
	return missed
}

func targetsOf(r *report, o options) []target {
	var ts []target

	t := target{Name: "failed requests during upgrades", Want: "0 over 50 upgrades at concurrency 64", Status: notMeasured}
	if u := r.Upgrades; u != nil {
		t.Measured = fmt.Sprintf("%d failed of %d, %d/%d upgrades handed over, concurrency %d",
			u.Total.Failed, u.Total.Requests, u.HandedOver, u.Requested, u.Concurrency)
		t.Status = status(u.Total.Failed == 0 && u.HandedOver == u.Requested && u.Requested > 0)
		if u.Requested < 50 || u.Concurrency < 64 {
			t.Note = "smaller run than the target's"
		}
	}
	ts = append(ts, t)

	t = target{Name: "slow requests during upgrades", Want: "every one completes with 200", Status: notMeasured}
	if u := r.Upgrades; u != nil && u.Slow.Requests > 0 {
		t.Measured = fmt.Sprintf("%d of %d failed", u.Slow.Failed, u.Slow.Requests)
		t.Status = status(u.Slow.Failed == 0)
	}
	ts = append(ts, t)

	t = target{Name: "throughput through baton", Want: ">= 0.98 of direct", Status: notMeasured}
	if s := r.Steady; s != nil && len(s.Ratios) > 0 {
		t.Measured = fmt.Sprintf("%.3f (median of %d rounds)", s.RatioMedian, len(s.Ratios))
		t.Status = status(s.RatioMedian >= 0.98)
	}
	ts = append(ts, t)

	t = target{Name: "baton's part of a handover, 4 workers, no load", Want: "<= 10 ms median", Status: notMeasured}
	for _, row := range r.Scaling {
		if row.Workers == 4 && row.AppDelayMS == 0 && row.BatonPart.N > 0 {
			t.Measured = fmt.Sprintf("%.1f ms (%d upgrades)", row.BatonPart.Median, row.BatonPart.N)
			t.Status = status(row.BatonPart.Median <= 10)
		}
	}
	ts = append(ts, t)
	t = target{Name: "baton's part of a handover, 4 workers, under load", Want: "<= 20 ms median, shared and blue-green", Status: notMeasured}
	var parts []string
	ok := true
	for _, u := range []*upgradesResult{r.Upgrades, r.UpgradesBlueGreen} {
		if u != nil && u.Workers == 4 && u.BatonPart.N > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f ms (%d clients)", strategyOf(u), u.BatonPart.Median, u.Concurrency))
			ok = ok && u.BatonPart.Median <= 20
		}
	}
	if len(parts) > 0 {
		t.Measured, t.Status = strings.Join(parts, ", "), status(ok)
	}
	ts = append(ts, t)
	t = target{Name: "baton's part of a handover, 64 workers", Want: "<= 100 ms median", Status: notMeasured}
	for _, row := range r.Scaling {
		if row.Workers == 64 && row.BatonPart.N > 0 {
			t.Measured = fmt.Sprintf("%.1f ms with %d ms app start-up", row.BatonPart.Median, row.AppDelayMS)
			t.Status = status(row.BatonPart.Median <= 100)
		}
	}
	ts = append(ts, t)

	t = target{Name: "keeper + master PSS at rest, 4 workers", Want: "<= 10 MiB", Status: notMeasured}
	if p := r.Peers; p != nil {
		if bt := p.side("baton"); bt != nil && bt.MasterPSS.N > 0 && bt.KeeperPSS.N > 0 {
			sum := bt.MasterPSS.Median + bt.KeeperPSS.Median
			t.Measured = fmt.Sprintf("%.2f MiB (keeper %.2f + master %.2f, medians of the peers phase)", sum, bt.KeeperPSS.Median, bt.MasterPSS.Median)
			t.Status = status(sum <= 10)
		}
	}
	if u := r.Upgrades; t.Status == notMeasured && u != nil && u.Masters.PSSLastMB > 0 {
		sum := u.Masters.PSSLastMB + u.Masters.KeeperPSSLastMB
		t.Measured = fmt.Sprintf("%.2f MiB (keeper %.2f + master %.2f, after the last upgrade)", sum, u.Masters.KeeperPSSLastMB, u.Masters.PSSLastMB)
		t.Status = status(sum <= 10)
	}
	ts = append(ts, t)

	ts = append(ts, idleTarget(r.IdleMemory))

	t = target{Name: "fd and memory growth across upgrades", Want: "none (make soak for thousands)", Status: notMeasured}
	if u := r.Upgrades; u != nil && u.HandedOver >= 2 {
		m := u.Masters
		t.Measured = fmt.Sprintf("fds %d -> %d, master RSS %.1f -> %.1f MiB, keeper PSS %.1f -> %.1f MiB (first -> last upgrade)",
			m.FDsFirst, m.FDsLast, m.RSSFirstMB, m.RSSLastMB, m.KeeperPSSFirstMB, m.KeeperPSSLastMB)
		// The bound: flat within 0.5 MiB (make soak shows it over
		// thousands of upgrades).
		t.Status = status(!m.FDGrowth && !m.RSSGrowth && m.KeeperPSSLastMB <= m.KeeperPSSFirstMB+0.5)
	}
	ts = append(ts, t)
	return ts
}

func printReport(w io.Writer, r *report) {
	m := r.Machine
	fmt.Fprintf(w, "\nzdbench: baton zero-downtime benchmark\n")
	fmt.Fprintf(w, "machine: %d CPUs (%s), Linux %s, %s, %d MB RAM, %s\n", m.NProc, m.CPUModel, m.Kernel, m.GoVersion, m.MemTotalMB, m.Date)
	fmt.Fprintf(w, "load average: %s at start, %s at end (the load generator runs on this machine too)\n", m.LoadAvgStart, m.LoadAvgEnd)
	session := "a session of its own, as systemd starts a service"
	if m.ServerSession == "zdbench" {
		session = "zdbench's session, the load generator's (-same-session)"
	}
	fmt.Fprintf(w, "each server runs in %s; kernel autogroup (sched_autogroup_enabled): %s\n", session, m.Autogroup)
	if r.Soak != nil {
		printSoak(w, r)
		printNotes(w, r)
		return
	}

	if s := r.Steady; s != nil {
		fmt.Fprintf(w, "\n1-2. Steady state: hello with 1 worker process, concurrency %d (%.0f%% keep-alive); rounds: %d x %s, direct and baton alternating\n",
			s.Concurrency, s.KeepAlive*100, s.Rounds, time.Duration(s.RoundSeconds*float64(time.Second)))
		tw := table(w)
		fmt.Fprintln(tw, "  \treq/s (median)\tp50\tp99\tmax\trequests\tfailed\t")
		for _, row := range []struct {
			name string
			s    steadySide
		}{{"direct", s.Direct}, {"baton", s.Baton}} {
			fmt.Fprintf(tw, "  %s\t%.0f\t%s\t%s\t%s\t%d\t%d\t\n", row.name, row.s.RPSMedian,
				ms(row.s.Latency.P50), ms(row.s.Latency.P99), ms(row.s.Latency.Max), row.s.Requests, row.s.Failed)
		}
		tw.Flush()
		var rs []string
		for _, x := range s.Ratios {
			rs = append(rs, fmt.Sprintf("%.3f", x))
		}
		fmt.Fprintf(w, "  throughput baton/direct: median %.3f (per round: %s)\n", s.RatioMedian, strings.Join(rs, " "))
		fmt.Fprintf(w, "  baton master: RSS %.1f MB, CPU %.0f ms over %.1f s of load (%.2f%% of one core)\n",
			s.MasterRSSMB, s.MasterCPUMS, s.LoadSeconds, s.MasterCPUPct)
	}

	if u := r.Upgrades; u != nil {
		printUpgrades(w, "3", u)
	}
	if u := r.UpgradesBlueGreen; u != nil {
		printUpgrades(w, "3b", u)
	}

	if n := r.Naive; n != nil {
		fmt.Fprintf(w, "\n4. Naive restart (SIGTERM hello, wait for exit, start it again) under the same load, %d restarts\n", n.Restarts)
		tw := table(w)
		fmt.Fprintf(tw, "  requests\ttotal\tfailed\t%s\t\n", strings.Join(failureKinds, "\t"))
		fmt.Fprintf(tw, "  all\t%d\t%d\t", n.Total.Requests, n.Total.Failed)
		for _, k := range failureKinds {
			fmt.Fprintf(tw, "%d\t", n.Total.ByKind[k])
		}
		fmt.Fprintln(tw)
		tw.Flush()
		tw = table(w)
		fmt.Fprintln(tw, "  per restart\tmedian\tp90\tmax\t")
		fmt.Fprintf(tw, "  failed requests\t%.0f\t%.0f\t%.0f\t\n", n.FailedPerRestart.Median, n.FailedPerRestart.P90, n.FailedPerRestart.Max)
		fmt.Fprintf(tw, "  downtime: SIGTERM -> answering again (ms)\t%.1f\t%.1f\t%.1f\t\n", n.Downtime.Median, n.Downtime.P90, n.Downtime.Max)
		fmt.Fprintf(tw, "  of which stopping: SIGTERM -> exit (ms)\t%.1f\t%.1f\t%.1f\t\n", n.Stop.Median, n.Stop.P90, n.Stop.Max)
		tw.Flush()
		fmt.Fprintf(w, "  (failed requests: clients retry at once, so the count grows with downtime x concurrency)\n")
	}

	if len(r.Scaling) > 0 {
		probe := "a probe on fresh connections back to back"
		if r.Config.ScalingProbePauseMS > 0 {
			probe = fmt.Sprintf("a probe on a fresh connection every %g ms", r.Config.ScalingProbePauseMS)
		}
		fmt.Fprintf(w, "\n5. Handover time against worker count (medians over %d upgrades each; no load: %s)\n", r.Scaling[0].Upgrades, probe)
		tw := table(w)
		fmt.Fprintln(tw, "  workers\tapp start-up\ttotal (ms)\tapp (ms)\tbaton (ms)\tfirst new response (ms)\tmaster RSS\tfailures\t")
		for _, row := range r.Scaling {
			fmt.Fprintf(tw, "  %d\t%d ms\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f MB\t%d\t\n", row.Workers, row.AppDelayMS,
				row.Total.Median, row.AppStartup.Median, row.BatonPart.Median, row.FirstNew.Median, row.MasterRSSMB,
				row.Upgrades-row.HandedOver+row.ProbeFailed)
		}
		tw.Flush()
	}

	printSteps(w, r)

	if p := r.Peers; p != nil {
		printPeers(w, p)
	}
	if m := r.IdleMemory; m != nil {
		printIdle(w, m)
	}

	fmt.Fprintf(w, "\nTargets\n")
	tw := table(w)
	for _, t := range r.Targets {
		note := ""
		if t.Note != "" {
			note = " (" + t.Note + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s%s\t\n", t.Name, t.Want, t.Status, t.Measured, note)
	}
	tw.Flush()
	printNotes(w, r)
	fmt.Fprintf(w, "\nSummary (Markdown; handover: USR2 sent -> first response of the new generation on a fresh connection)\n\n%s", markdownSummary(r))
}

func printNotes(w io.Writer, r *report) {
	if len(r.Notes) > 0 {
		fmt.Fprintf(w, "\nNotes\n")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(w, "\nSTOPPED EARLY: %s\n", r.Error)
	}
}

func printPeers(w io.Writer, p *peersResult) {
	fmt.Fprintf(w, "\n6. Peers under the same load: %d workers each, %d upgrades each in %d round(s) (order rotating), every %s; concurrency %d (%.0f%% keep-alive) + 1 probe, no slow clients\n",
		p.Workers, p.Upgrades, p.Rounds, time.Duration(p.IntervalMS*float64(time.Millisecond)), p.Concurrency, p.KeepAlive*100)
	for _, m := range p.Missing {
		fmt.Fprintf(w, "  not installed, left out: %s\n", m)
	}
	tw := table(w)
	fmt.Fprintf(tw, "  server\tupgrade\thanded over\trequests\treq/s\tfailed\t%s\tretried\t\n", strings.Join(failureKinds, "\t"))
	for _, s := range p.Sides {
		fmt.Fprintf(tw, "  %s\t%s\t%d/%d\t%d\t%.0f\t%d\t", s.Name, s.Upgrade, s.HandedOver, s.Requested, s.Requests.Requests, s.RPS, s.Requests.Failed)
		for _, k := range failureKinds {
			fmt.Fprintf(tw, "%d\t", s.Requests.ByKind[k])
		}
		fmt.Fprintf(tw, "%d\t\n", s.Requests.Retried)
	}
	tw.Flush()
	tw = table(w)
	fmt.Fprintln(tw, "  (ms)\tfirst new response\t\tlast old response\t\told master gone\t\tbaton's part\t\t")
	fmt.Fprintln(tw, "  server\tmedian\tp90\tmedian\tp90\tmedian\tp90\tmedian\tp90\t")
	for _, s := range p.Sides {
		fmt.Fprintf(tw, "  %s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t\n", s.Name, s.FirstNew.Median, s.FirstNew.P90,
			s.LastOld.Median, s.LastOld.P90, s.OldGone.Median, s.OldGone.P90, distCell(s.BatonPart.Median, s.BatonPart.N), distCell(s.BatonPart.P90, s.BatonPart.N))
	}
	tw.Flush()
	fmt.Fprintln(w, "  Memory of the supervisor's own processes (MiB, medians at the start of each round and after each upgrade; PSS shares")
	fmt.Fprintln(w, "  each page among the processes that map it, so PSS adds up across processes and RSS does not)")
	tw = table(w)
	fmt.Fprintln(tw, "  server\tmaster PSS\tmaster RSS\tkeeper PSS\tkeeper RSS\tsupervisor PSS (sum)\t")
	for _, s := range p.Sides {
		fmt.Fprintf(tw, "  %s\t%.2f\t%.2f\t%s\t%s\t%.2f\t\n", s.Name, s.MasterPSS.Median, s.MasterRSS.Median,
			mibCell(s.KeeperPSS), mibCell(s.KeeperRSS), s.MasterPSS.Median+s.KeeperPSS.Median)
	}
	tw.Flush()
	for _, s := range p.Sides {
		if s.Error != "" {
			fmt.Fprintf(w, "  %s FAILED: %s\n", s.Name, s.Error)
		}
		if len(s.Requests.Examples) > 0 {
			fmt.Fprintf(w, "  %s first failures: %q\n", s.Name, s.Requests.Examples)
		}
	}
	bt := p.side("baton")
	if bt == nil || bt.HandedOver == 0 {
		return
	}
	fmt.Fprintln(w, "  baton beside each (ratio baton/peer: below 1, baton is faster or smaller)")
	tw = table(w)
	fmt.Fprintln(tw, "  \tfirst new response median\tp90\told master gone median\tp90\tfailed requests\tsupervisor PSS (median)\t")
	for _, s := range p.Sides {
		if s.Name == "baton" || s.HandedOver == 0 {
			continue
		}
		fmt.Fprintf(tw, "  baton/%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Name,
			ratio(bt.FirstNew.Median, s.FirstNew.Median), ratio(bt.FirstNew.P90, s.FirstNew.P90),
			ratio(bt.OldGone.Median, s.OldGone.Median), ratio(bt.OldGone.P90, s.OldGone.P90),
			failedRatio(bt.Requests, s.Requests), ratio(bt.MasterPSS.Median+bt.KeeperPSS.Median, s.MasterPSS.Median))
	}
	tw.Flush()
}

// ratio is a/b for the report; "-" when b is 0.
func distCell(v float64, n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func mibCell(d loadgen.Dist) string {
	if d.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", d.Median)
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// failedRatio compares failure rates (per request); two zeros are equal.
func failedRatio(a, b requestCounts) string {
	s := fmt.Sprintf("%d vs %d", a.Failed, b.Failed)
	switch {
	case a.Failed == 0 && b.Failed == 0:
		return s + " (1.00)"
	case b.Failed == 0 || a.Requests == 0 || b.Requests == 0:
		return s
	}
	ra := float64(a.Failed) / float64(a.Requests)
	rb := float64(b.Failed) / float64(b.Requests)
	return fmt.Sprintf("%s (rate ratio %.2f)", s, ra/rb)
}

// markdownSummary is the README's table: one row per scenario measured.
func markdownSummary(r *report) string {
	var b strings.Builder
	b.WriteString("| scenario | requests | failed | handover median | handover p90 | baton's part median | master PSS | master RSS | keeper PSS | keeper RSS |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	row := func(name, requests, failed, med, p90, part, mem string) {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", name, requests, failed, med, p90, part, mem)
	}
	counts := func(c requestCounts) (string, string) { return strconv.Itoa(c.Requests), strconv.Itoa(c.Failed) }
	msCell := func(v float64, n int) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f ms", v)
	}
	mib := func(vs ...float64) string {
		var cells []string
		for _, v := range vs {
			if v <= 0 {
				cells = append(cells, "-")
			} else {
				cells = append(cells, fmt.Sprintf("%.1f MiB", v))
			}
		}
		return strings.Join(cells, " | ")
	}
	for _, u := range []*upgradesResult{r.Upgrades, r.UpgradesBlueGreen} {
		if u == nil {
			continue
		}
		req, failed := counts(u.Total)
		m := u.Masters
		row(fmt.Sprintf("baton %s, %d upgrades, %d workers, %d clients + %d slow", strategyOf(u), u.Requested, u.Workers, u.Concurrency, u.SlowClients),
			req, failed, msCell(u.FirstNew.Median, u.FirstNew.N), msCell(u.FirstNew.P90, u.FirstNew.N), msCell(u.BatonPart.Median, u.BatonPart.N),
			mib(m.PSSLastMB, m.RSSLastMB, m.KeeperPSSLastMB, m.KeeperRSSLastMB))
	}
	for _, row0 := range r.Scaling {
		if row0.AppDelayMS == 0 && row0.Workers == 4 {
			row(fmt.Sprintf("baton shared, %d upgrades, %d workers, no load (handover: logged total)", row0.Upgrades, row0.Workers),
				"-", strconv.Itoa(row0.Upgrades-row0.HandedOver+row0.ProbeFailed), msCell(row0.Total.Median, row0.Total.N), msCell(row0.Total.P90, row0.Total.N),
				msCell(row0.BatonPart.Median, row0.BatonPart.N), mib(0, row0.MasterRSSMB, 0, 0))
		}
	}
	if n := r.Naive; n != nil {
		req, failed := counts(n.Total)
		row(fmt.Sprintf("naive stop/start of hello, %d restarts (handover: downtime)", n.Restarts),
			req, failed, msCell(n.Downtime.Median, n.Downtime.N), msCell(n.Downtime.P90, n.Downtime.N), "-", mib(0, 0, 0, 0))
	}
	if p := r.Peers; p != nil {
		for _, s := range p.Sides {
			name := fmt.Sprintf("%s, %s: %d upgrades, %d workers, %d clients", s.Name, s.Upgrade, s.Requested, p.Workers, p.Concurrency)
			if s.Error != "" {
				name += " (FAILED: see below)"
			}
			req, failed := counts(s.Requests)
			row(name, req, failed, msCell(s.FirstNew.Median, s.FirstNew.N), msCell(s.FirstNew.P90, s.FirstNew.N), msCell(s.BatonPart.Median, s.BatonPart.N),
				mib(s.MasterPSS.Median, s.MasterRSS.Median, s.KeeperPSS.Median, s.KeeperRSS.Median))
		}
		for _, m := range p.Missing {
			fmt.Fprintf(&b, "| %s: not installed | - | - | - | - | - | - | - | - | - |\n", m)
		}
	}
	return b.String()
}

func table(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func ms(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2f ms", v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

// writeJSON writes the report through a temporary file, so that an
// interrupted run never leaves half a file behind.
func writeJSON(path string, r *report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("results directory: %w", err)
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

func strategyOf(u *upgradesResult) string {
	if u.Strategy == "" {
		return "shared"
	}
	return u.Strategy
}

// printUpgrades prints one upgrades phase; num is its section number.
func printUpgrades(w io.Writer, num string, u *upgradesResult) {
	fmt.Fprintf(w, "\n%s. Upgrades under load (--strategy %s): %d workers, %d upgrades every %s; concurrency %d (%.0f%% keep-alive) + %d slow clients (/?sleep=%d) + 1 probe\n",
		num, strategyOf(u), u.Workers, u.Requested, time.Duration(u.IntervalMS*float64(time.Millisecond)), u.Concurrency, u.KeepAlive*100, u.SlowClients, u.SlowMS)
	fmt.Fprintf(w, "  handed over: %d/%d", u.HandedOver, u.Requested)
	if u.Late > 0 {
		fmt.Fprintf(w, " (%d sent more than 50 ms after their due time: the previous old generation was still draining)", u.Late)
	}
	fmt.Fprintln(w)
	tw := table(w)
	fmt.Fprintf(tw, "  requests\ttotal\tfailed\t%s\tretried\t\n", strings.Join(failureKinds, "\t"))
	for _, row := range []struct {
		name string
		c    requestCounts
	}{{"all", u.Total}, {"load", u.Load}, {"slow", u.Slow}, {"probe", u.Probe}} {
		fmt.Fprintf(tw, "  %s\t%d\t%d\t", row.name, row.c.Requests, row.c.Failed)
		for _, k := range failureKinds {
			fmt.Fprintf(tw, "%d\t", row.c.ByKind[k])
		}
		fmt.Fprintf(tw, "%d\t\n", row.c.Retried)
	}
	tw.Flush()
	if len(u.Total.Examples) > 0 {
		fmt.Fprintf(w, "  first failures: %q\n", u.Total.Examples)
	}
	tw = table(w)
	fmt.Fprintln(tw, "  latency (load clients)\trequests\tp50\tp99\tmax\t")
	fmt.Fprintf(tw, "  steady state\t%d\t%s\t%s\t%s\t\n", u.LatencySteady.N, ms(u.LatencySteady.P50), ms(u.LatencySteady.P99), ms(u.LatencySteady.Max))
	fmt.Fprintf(tw, "  USR2 .. handover+1s\t%d\t%s\t%s\t%s\t\n", u.LatencyUpgrade.N, ms(u.LatencyUpgrade.P50), ms(u.LatencyUpgrade.P99), ms(u.LatencyUpgrade.Max))
	tw.Flush()
	tw = table(w)
	fmt.Fprintln(tw, "  handover (ms, over upgrades)\tmedian\tp90\tmax\t")
	for _, row := range []struct {
		name string
		d    loadgen.Dist
	}{
		{"USR2 sent -> first response of new generation (fresh conn.)", u.FirstNew},
		{"USR2 sent -> last response of old generation (fresh conn.)", u.LastOld},
		{"total (log: USR2 received -> new generation serving)", u.LogTotal},
		{"  app start-up (log: workers_starting)", u.AppStartup},
		{"  baton's part (total - app start-up)", u.BatonPart},
		{"old generation drain (handover -> old master exited)", u.OldDrain},
		{"blue-green: users switched (log: USR2 received -> switch)", u.Switch},
	} {
		if row.d.N == 0 && strings.HasPrefix(row.name, "blue-green") {
			continue // a shared-strategy phase switches nobody
		}
		fmt.Fprintf(tw, "  %s\t%.1f\t%.1f\t%.1f\t\n", row.name, row.d.Median, row.d.P90, row.d.Max)
	}
	tw.Flush()
	mm := u.Masters
	fmt.Fprintf(w, "  new masters once alone: fds first %d, last %d (min %d, max %d); RSS first %.1f MB, last %.1f MB, max %.1f MB\n",
		mm.FDsFirst, mm.FDsLast, mm.FDsMin, mm.FDsMax, mm.RSSFirstMB, mm.RSSLastMB, mm.RSSMaxMB)
	if mm.FDGrowth {
		fmt.Fprintf(w, "  fd kinds first: %v; last: %v\n", mm.FDKindsFirst, mm.FDKindsLast)
	}
	var bad []string
	for _, rec := range u.List {
		if !rec.HandedOver || rec.FailedInWindow > 0 {
			s := fmt.Sprintf("#%d", rec.N)
			if rec.Failure != "" {
				s += " (" + rec.Failure + ")"
			}
			if rec.FailedInWindow > 0 {
				s += fmt.Sprintf(" %d failed requests", rec.FailedInWindow)
			}
			bad = append(bad, s)
		}
	}
	if len(bad) > 0 {
		fmt.Fprintf(w, "  upgrades with problems: %s\n", strings.Join(bad, ", "))
	}
}
