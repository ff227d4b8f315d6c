//go:build linux

package verify

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// Report is what `baton verify` prints; --json prints it as is.
// Times "_s" are seconds since the load started; "_ms" are milliseconds
// since the upgrade was triggered unless said otherwise.
type Report struct {
	URL      string   `json:"url"`
	Verified bool     `json:"verified"`
	Problems []string `json:"problems,omitempty"`

	Seconds          float64 `json:"seconds"`
	KeepAliveClients int     `json:"keep_alive_clients"`
	FreshClients     int     `json:"fresh_clients"`
	SlowClients      int     `json:"slow_clients"`
	SlowPath         string  `json:"slow_path,omitempty"`

	Requests     int            `json:"requests"`
	Failed       int            `json:"failed"`
	FailedByKind map[string]int `json:"failed_by_kind"`
	// Retried requests were sent again, once, after the server closed an
	// idle kept-alive connection as they were sent (RFC 9112 §9.3.1).
	Retried      int `json:"retried"`
	SlowRequests int `json:"slow_requests"`
	SlowFailed   int `json:"slow_failed"`
	// FailedBefore failed before the first upgrade was triggered.
	FailedBefore int `json:"failed_before_first_upgrade"`

	LatencySteady   loadgen.Latency `json:"latency_steady"`
	LatencyUpgrades loadgen.Latency `json:"latency_around_upgrades"`

	Upgrades      []upgradeReport `json:"upgrades"`
	NotAttempted  int             `json:"upgrades_not_attempted"`
	VersionHeader string          `json:"version_header,omitempty"`
	Releases      []releaseSeen   `json:"releases,omitempty"`
	FirstFailures []failureReport `json:"first_failures,omitempty"`

	timeline *timeline // for --report (verify_html.go)
}

type upgradeReport struct {
	N            int      `json:"n"`
	Outcome      string   `json:"outcome"` // handed-over, rolled-back, refused, unknown
	Reason       string   `json:"reason,omitempty"`
	Stderr       []string `json:"stderr,omitempty"`
	SentAtS      float64  `json:"sent_at_s"`
	OldMasterPID int      `json:"old_master_pid,omitempty"`
	NewMasterPID int      `json:"new_master_pid,omitempty"`
	Generation   int      `json:"generation,omitempty"`
	// As baton measured them: the request to the new generation ready.
	HandoverMS   float64 `json:"handover_ms,omitempty"`
	AppStartupMS float64 `json:"app_startup_ms,omitempty"`
	BatonMS      float64 `json:"baton_ms,omitempty"`
	ChecksMS     float64 `json:"checks_ms,omitempty"` // blue-green/canary checks
	BakeMS       float64 `json:"bake_ms,omitempty"`   // blue-green/canary bake
	// As verify saw them.
	AnsweredMS float64  `json:"answered_ms"`
	OldGoneMS  *float64 `json:"old_generation_gone_ms,omitempty"`
	// Requests that failed after this upgrade was triggered and before the
	// next one.
	Failed       int            `json:"failed"`
	FailedByKind map[string]int `json:"failed_by_kind,omitempty"`
	// With --version-header: the release answering before and after, the
	// first answer from the new one and the last from the old one.
	ReleaseBefore string   `json:"release_before,omitempty"`
	ReleaseAfter  string   `json:"release_after,omitempty"`
	FirstNewMS    *float64 `json:"first_new_release_ms,omitempty"`
	LastOldMS     *float64 `json:"last_old_release_ms,omitempty"`
}

type releaseSeen struct {
	Release   string  `json:"release"`
	Responses int     `json:"responses"`
	Failed    int     `json:"failed"` // non-2xx answers carrying it
	FirstS    float64 `json:"first_s"`
	LastS     float64 `json:"last_s"`
}

// failureReport is a group of alike failures (same kind, path, message,
// upgrade and release), listed at the first one's time.
type failureReport struct {
	AtS          float64 `json:"at_s"` // when the first one failed
	Count        int     `json:"count"`
	Kind         string  `json:"kind"`
	Path         string  `json:"path"`
	Error        string  `json:"error"`
	AfterUpgrade int     `json:"after_upgrade"` // 0: before the first
	Release      string  `json:"release,omitempty"`
}

// maxListedFailures is how many groups of failures a report lists.
const maxListedFailures = 10

type taggedSample struct {
	loadgen.Sample
	path string
}

func (r *Report) problem(s string) { r.Problems = append(r.Problems, s) }

func buildReport(p Plan, start time.Time, res loadgen.MixResult, ups []upgradeRun) *Report {
	all := res.All()
	slow := p.slowClients()
	rep := &Report{
		URL: p.URL, Seconds: all.Elapsed.Seconds(),
		KeepAliveClients: int(float64(p.Concurrency-slow)*0.5 + 0.5), SlowClients: slow, SlowPath: p.Slow,
		Requests: all.Requests, Failed: all.Failures(), FailedByKind: kindsOf(all.Failed), Retried: all.Retried,
		SlowRequests: res.Slow.Requests, SlowFailed: res.Slow.Failures(),
		VersionHeader: p.VersionHeader, NotAttempted: p.Reloads - len(ups),
	}
	rep.FreshClients = p.Concurrency - slow - rep.KeepAliveClients
	since := func(t time.Time) float64 { return t.Sub(start).Seconds() }

	var samples []taggedSample
	for _, g := range []struct {
		r    *loadgen.Result
		path string
	}{{res.Main, p.Target}, {res.Slow, p.Slow}, {res.Probe, p.Target}} {
		for _, s := range g.r.Samples {
			samples = append(samples, taggedSample{s, g.path})
		}
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i].End().Before(samples[j].End()) })
	// afterUpgrade is the number of upgrades triggered by t: a failure
	// belongs to the last upgrade triggered before it happened.
	afterUpgrade := func(t time.Time) int {
		return sort.Search(len(ups), func(i int) bool { return ups[i].sent.After(t) })
	}

	var wins []loadgen.Window
	for _, u := range ups {
		ur := upgradeReport{N: u.n, SentAtS: since(u.sent), AnsweredMS: loadgen.MS(u.answered.Sub(u.sent)),
			OldMasterPID: u.out.OldMasterPID, NewMasterPID: u.out.NewMasterPID, Generation: u.out.Generation,
			HandoverMS: u.out.TotalMS, AppStartupMS: u.out.AppMS, BatonMS: u.out.BatonMS,
			ChecksMS: u.out.ChecksMS, BakeMS: u.out.BakeMS,
			Reason: u.out.Reason, Stderr: u.out.Stderr, FailedByKind: map[string]int{}}
		switch {
		case u.err != nil:
			ur.Outcome, ur.Reason = "unknown", u.err.Error()
			rep.problem(fmt.Sprintf("upgrade %d: %s", u.n, ur.Reason))
		case !u.out.Started:
			ur.Outcome = "refused"
			rep.problem(fmt.Sprintf("upgrade %d not started: %s", u.n, ur.Reason))
		case !u.out.OK:
			ur.Outcome = "rolled-back"
			rep.problem(fmt.Sprintf("upgrade %d rolled back: %s", u.n, ur.Reason))
		default:
			ur.Outcome = "handed-over"
		}
		end := u.answered
		if !u.gone.IsZero() {
			ms := loadgen.MS(u.gone.Sub(u.sent))
			ur.OldGoneMS = &ms
			end = u.gone
		}
		wins = append(wins, loadgen.Window{From: u.sent, To: end})
		rep.Upgrades = append(rep.Upgrades, ur)
	}
	if rep.NotAttempted > 0 {
		rep.problem(fmt.Sprintf("%d of %d upgrades not attempted", rep.NotAttempted, p.Reloads))
	}

	releases := map[string]*releaseSeen{}
	var order []string
	groups := map[failureReport]int{} // keyed with AtS and Count zero
	for _, s := range samples {
		k := afterUpgrade(s.End())
		if s.Failed {
			if k == 0 {
				rep.FailedBefore++
			} else {
				rep.Upgrades[k-1].Failed++
				rep.Upgrades[k-1].FailedByKind[s.Kind]++
			}
			f := failureReport{Kind: s.Kind, Path: s.path, Error: s.Err, AfterUpgrade: k, Release: s.Release}
			if i, ok := groups[f]; ok {
				rep.FirstFailures[i].Count++
			} else if len(rep.FirstFailures) < maxListedFailures {
				groups[f] = len(rep.FirstFailures)
				f.AtS, f.Count = since(s.End()), 1
				rep.FirstFailures = append(rep.FirstFailures, f)
			}
		}
		if s.Release == "" {
			continue
		}
		rs := releases[s.Release]
		if rs == nil {
			rs = &releaseSeen{Release: s.Release, FirstS: since(s.End())}
			releases[s.Release] = rs
			order = append(order, s.Release)
		}
		rs.Responses++
		if s.Failed {
			rs.Failed++
		}
		rs.LastS = since(s.End())
	}
	for _, name := range order {
		rep.Releases = append(rep.Releases, *releases[name])
	}
	if p.VersionHeader != "" {
		releaseChanges(rep, samples, ups)
	}
	if rep.Failed > 0 {
		var by []string
		for _, k := range loadgen.Kinds {
			if n := rep.FailedByKind[k]; n > 0 {
				by = append(by, fmt.Sprintf("%s %d", k, n))
			}
		}
		when := "before the first upgrade"
		if rep.FailedBefore == 0 {
			for _, u := range rep.Upgrades {
				if u.Failed > 0 {
					when = fmt.Sprintf("from upgrade %d on", u.N)
					break
				}
			}
		}
		rep.problem(fmt.Sprintf("%d of %d requests failed (%s), %s", rep.Failed, rep.Requests, strings.Join(by, ", "), when))
	}
	// Slow requests are slow by design; their latency would hide the rest.
	in, steady := loadgen.SplitByWindows(res.Main.Samples, wins)
	rep.LatencyUpgrades, rep.LatencySteady = loadgen.Summarize(in), loadgen.Summarize(steady)
	rep.timeline = newTimeline(start, rep.Seconds, samples, res.Main.Samples, rep)
	return rep
}

// releaseChanges fills each upgrade's release before and after it, and
// when the new one first answered and the old one last did. samples are
// sorted by end.
func releaseChanges(rep *Report, samples []taggedSample, ups []upgradeRun) {
	// lastBefore is the release of the last answer that carried one before t.
	lastBefore := func(t time.Time) string {
		i := sort.Search(len(samples), func(i int) bool { return !samples[i].End().Before(t) })
		for i--; i >= 0; i-- {
			if r := samples[i].Release; r != "" {
				return r
			}
		}
		return ""
	}
	for i, u := range ups {
		ur := &rep.Upgrades[i]
		next := time.Now()
		if i+1 < len(ups) {
			next = ups[i+1].sent
		}
		ur.ReleaseBefore, ur.ReleaseAfter = lastBefore(u.sent), lastBefore(next)
		if ur.ReleaseBefore == ur.ReleaseAfter || ur.ReleaseAfter == "" {
			continue
		}
		for _, s := range samples {
			if s.End().Before(u.sent) || s.End().After(next) {
				continue
			}
			ms := loadgen.MS(s.End().Sub(u.sent))
			if s.Release == ur.ReleaseAfter && ur.FirstNewMS == nil {
				ur.FirstNewMS = &ms
			}
			if s.Release == ur.ReleaseBefore {
				ur.LastOldMS = &ms
			}
		}
	}
}

func kindsOf(m map[string]int) map[string]int {
	out := map[string]int{}
	for _, k := range loadgen.Kinds {
		out[k] = m[k]
	}
	return out
}

// WriteJSON writes the report as indented JSON (what --json prints).
func (r *Report) WriteJSON(w io.Writer) {
	b, _ := json.MarshalIndent(r, "", "  ")
	fmt.Fprintln(w, string(b))
}

// WriteText writes the report for people.
func (r *Report) WriteText(w io.Writer) {
	clients := fmt.Sprintf("%d keep-alive, %d fresh-connection", r.KeepAliveClients, r.FreshClients)
	if r.SlowClients > 0 {
		clients += fmt.Sprintf(", %d slow (%s)", r.SlowClients, r.SlowPath)
	}
	fmt.Fprintf(w, "verify %s: %d upgrade(s) under load from %s clients\n", r.URL, len(r.Upgrades)+r.NotAttempted, clients)
	for _, u := range r.Upgrades {
		fmt.Fprintf(w, "upgrade %d at +%.2fs: ", u.N, u.SentAtS)
		switch u.Outcome {
		case "handed-over":
			// Checks and bake apart from the app's start-up, as baton
			// reload reports them (blue-green and canary only).
			parts := fmt.Sprintf("app %.1f ms", u.AppStartupMS)
			if u.ChecksMS > 0 || u.BakeMS > 0 {
				parts += fmt.Sprintf(", checks %.1f ms, bake %.1f ms", u.ChecksMS, u.BakeMS)
			}
			fmt.Fprintf(w, "generation %d serving (master %d -> %d), handover %.1f ms (%s, baton %.1f ms)",
				u.Generation, u.OldMasterPID, u.NewMasterPID, u.HandoverMS, parts, u.BatonMS)
			if u.OldGoneMS != nil {
				fmt.Fprintf(w, ", old generation gone after %.0f ms", *u.OldGoneMS)
			}
		case "rolled-back":
			fmt.Fprintf(w, "ROLLED BACK after %.1f ms: %s", u.AnsweredMS, u.Reason)
		case "refused":
			fmt.Fprintf(w, "NOT STARTED: %s", u.Reason)
		default:
			fmt.Fprintf(w, "NO OUTCOME: %s", u.Reason)
		}
		fmt.Fprintf(w, "; %d failed after it%s\n", u.Failed, kindList(u.FailedByKind))
		for _, l := range u.Stderr {
			fmt.Fprintln(w, "  | "+l)
		}
		if u.ReleaseAfter != "" && u.ReleaseBefore != u.ReleaseAfter {
			fmt.Fprintf(w, "  release %s -> %s", orNone(u.ReleaseBefore), u.ReleaseAfter)
			if u.FirstNewMS != nil {
				fmt.Fprintf(w, ": first answer from %s after %.0f ms", u.ReleaseAfter, *u.FirstNewMS)
			}
			if u.LastOldMS != nil {
				fmt.Fprintf(w, ", last from %s after %.0f ms", orNone(u.ReleaseBefore), *u.LastOldMS)
			}
			fmt.Fprintln(w)
		} else if r.VersionHeader != "" && u.ReleaseAfter != "" {
			fmt.Fprintf(w, "  release unchanged: %s\n", u.ReleaseAfter)
		}
	}
	if r.NotAttempted > 0 {
		fmt.Fprintf(w, "%d upgrade(s) not attempted\n", r.NotAttempted)
	}
	fmt.Fprintf(w, "requests: %d in %.1f s, %d failed%s, %d retried (sent again once: the server had closed the idle kept-alive connection, RFC 9112 §9.3.1)\n",
		r.Requests, r.Seconds, r.Failed, kindList(r.FailedByKind), r.Retried)
	if r.SlowClients > 0 {
		fmt.Fprintf(w, "slow requests (%s): %d, %d failed\n", r.SlowPath, r.SlowRequests, r.SlowFailed)
	}
	if r.FailedBefore > 0 {
		fmt.Fprintf(w, "%d failed before the first upgrade: the service fails without one\n", r.FailedBefore)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "latency ms\tn\tp50\tp90\tp99\tmax\t")
	for _, row := range []struct {
		name string
		l    loadgen.Latency
	}{{"steady", r.LatencySteady}, {"around upgrades", r.LatencyUpgrades}} {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, row.l.N, row.l.P50, row.l.P90, row.l.P99, row.l.Max)
	}
	tw.Flush()
	if len(r.Releases) > 0 {
		fmt.Fprintf(w, "releases (%s):\n", r.VersionHeader)
		for _, rs := range r.Releases {
			fmt.Fprintf(w, "  %-12s %7d answers (%d non-2xx), +%.2fs to +%.2fs\n", rs.Release, rs.Responses, rs.Failed, rs.FirstS, rs.LastS)
		}
	} else if r.VersionHeader != "" {
		fmt.Fprintf(w, "releases: no answer carried a %s header\n", r.VersionHeader)
	}
	if len(r.FirstFailures) > 0 {
		fmt.Fprintf(w, "first failures (%d in all):\n", r.Failed)
		for _, f := range r.FirstFailures {
			after := "before any upgrade"
			if f.AfterUpgrade > 0 {
				after = fmt.Sprintf("after upgrade %d", f.AfterUpgrade)
			}
			rel := ""
			if f.Release != "" {
				rel = ", release " + f.Release
			}
			fmt.Fprintf(w, "  +%.3fs  %6dx  %-8s GET %s: %s (%s%s)\n", f.AtS, f.Count, f.Kind, f.Path, strings.Join(strings.Fields(f.Error), " "), after, rel)
		}
	}
	if r.Verified {
		fmt.Fprintf(w, "verified: %d upgrade(s) handed over, %d requests, none failed\n", len(r.Upgrades), r.Requests)
	} else {
		fmt.Fprintf(w, "NOT verified: %s\n", strings.Join(r.Problems, "; "))
	}
}

// kindList is " (eof 2, reset 1)" for the kinds that occurred, else "".
func kindList(m map[string]int) string {
	var parts []string
	for _, k := range loadgen.Kinds {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
