package main

import (
	"bytes"
	"context"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/baton-sh/baton/scripts/zdbench/loadgen"
)

// loadPlan is the traffic of one phase. Fresh-connection clients and the
// probe report which generation answered them and when: a new connection is
// what shows when the new generation starts accepting and the old one stops.
type loadPlan struct {
	addr        string
	clients     int
	keepAlive   float64 // share of clients that reuse their connection
	slowClients int     // clients that keep one slow request in flight each
	slowMS      int
	probe       bool // one more client, back to back on fresh connections
	tracker     *genTracker
	bound       time.Duration // every client stops by then at the latest
}

type loadOut struct {
	main  *loadgen.Result // keep-alive and fresh clients together
	slow  *loadgen.Result
	probe *loadgen.Result
}

// startLoad starts the plan's clients; wait returns once all have stopped
// (at ctx's end or the plan's bound).
func startLoad(ctx context.Context, pl loadPlan) (wait func() loadOut) {
	var (
		wg    sync.WaitGroup
		ka    = int(math.Round(float64(pl.clients) * pl.keepAlive))
		fresh = pl.clients - ka
		out   loadOut
		parts [2]*loadgen.Result
	)
	onFresh := func([]byte) {}
	if pl.tracker != nil {
		onFresh = pl.tracker.saw
	}
	run := func(dst **loadgen.Result, cfg loadgen.Config) {
		cfg.Network, cfg.Addr, cfg.Duration = "tcp", pl.addr, pl.bound
		wg.Add(1)
		go func() {
			defer wg.Done()
			*dst = loadgen.Run(ctx, cfg)
		}()
	}
	// loadgen.Run treats 0 clients as its default of 16: skip empty groups.
	if ka > 0 {
		run(&parts[0], loadgen.Config{Clients: ka, KeepAlive: 1})
	}
	if fresh > 0 {
		run(&parts[1], loadgen.Config{Clients: fresh, KeepAlive: 0, OnResponse: onFresh})
	}
	if pl.slowClients > 0 {
		run(&out.slow, loadgen.Config{
			Clients: pl.slowClients, KeepAlive: 0.5,
			Path:    "/?sleep=" + strconv.Itoa(pl.slowMS),
			Timeout: time.Duration(pl.slowMS)*time.Millisecond + 10*time.Second,
		})
	}
	if pl.probe {
		run(&out.probe, loadgen.Config{Clients: 1, KeepAlive: 0, OnResponse: onFresh})
	}
	return func() loadOut {
		wg.Wait()
		out.main = merge(parts[0], parts[1])
		if out.slow == nil {
			out.slow = merge()
		}
		if out.probe == nil {
			out.probe = merge()
		}
		return out
	}
}

// merge adds up results; nil ones are skipped.
func merge(rs ...*loadgen.Result) *loadgen.Result {
	m := &loadgen.Result{Failed: map[string]int{}}
	for _, r := range rs {
		if r == nil {
			continue
		}
		m.Requests += r.Requests
		m.Retried += r.Retried
		for k, v := range r.Failed {
			m.Failed[k] += v
		}
		for _, e := range r.Examples {
			if len(m.Examples) < 5 {
				m.Examples = append(m.Examples, e)
			}
		}
		m.Samples = append(m.Samples, r.Samples...)
		m.Elapsed = max(m.Elapsed, r.Elapsed)
	}
	return m
}

// genSeen is when responses from one generation were seen.
type genSeen struct {
	first, last time.Time
	n           int
}

// genTracker records, per generation named in hello's answer, the first and
// last response seen on a fresh connection.
type genTracker struct {
	mu   sync.Mutex
	gens map[int]*genSeen
}

func newGenTracker() *genTracker { return &genTracker{gens: map[int]*genSeen{}} }

func (t *genTracker) saw(body []byte) {
	at := time.Now()
	g, ok := generationOf(body)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.gens[g]
	if s == nil {
		t.gens[g] = &genSeen{first: at, last: at, n: 1}
		return
	}
	if at.Before(s.first) {
		s.first = at
	}
	if at.After(s.last) {
		s.last = at
	}
	s.n++
}

func (t *genTracker) get(gen int) (genSeen, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.gens[gen]
	if s == nil {
		return genSeen{}, false
	}
	return *s, true
}

// generationOf reads "generation=G" from hello's answer.
func generationOf(body []byte) (int, bool) {
	const key = "generation="
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return 0, false
	}
	n, digits := 0, 0
	for _, c := range body[i+len(key):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
		digits++
	}
	return n, digits > 0
}

// latSummary describes the latencies of successful requests.
type latSummary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func summarize(ds []time.Duration) latSummary {
	if len(ds) == 0 {
		return latSummary{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(p float64) float64 { return msOf(s[nearestRank(len(s), p)]) }
	return latSummary{N: len(s), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: msOf(s[len(s)-1])}
}

// okLatencies are the latencies of a result's successful requests.
func okLatencies(samples []loadgen.Sample) []time.Duration {
	out := make([]time.Duration, 0, len(samples))
	for _, s := range samples {
		if !s.Failed {
			out = append(out, s.Latency)
		}
	}
	return out
}

// dist describes a small set of measurements (one per upgrade, say).
type dist struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Max    float64 `json:"max"`
}

func distOf(vs []float64) dist {
	if len(vs) == 0 {
		return dist{}
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return dist{N: len(s), Min: s[0], Median: median(s), P90: s[nearestRank(len(s), 0.90)], Max: s[len(s)-1]}
}

// median of sorted values.
func median(s []float64) float64 {
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func nearestRank(n int, p float64) int {
	i := int(math.Ceil(p*float64(n))) - 1
	return min(max(i, 0), n-1)
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// window is a span of time around one upgrade.
type window struct{ from, to time.Time }

// splitByWindows separates the successful latencies of requests that
// overlapped a window from the others.
func splitByWindows(samples []loadgen.Sample, wins []window) (in, out []time.Duration) {
	spans := unionOf(wins)
	for _, s := range samples {
		if s.Failed {
			continue
		}
		if overlaps(spans, s.Start, s.Start.Add(s.Latency)) {
			in = append(in, s.Latency)
		} else {
			out = append(out, s.Latency)
		}
	}
	return in, out
}

// unionOf merges overlapping windows into sorted, disjoint ones.
func unionOf(wins []window) []window {
	s := append([]window(nil), wins...)
	sort.Slice(s, func(i, j int) bool { return s[i].from.Before(s[j].from) })
	var out []window
	for _, w := range s {
		if n := len(out); n > 0 && !w.from.After(out[n-1].to) {
			if w.to.After(out[n-1].to) {
				out[n-1].to = w.to
			}
			continue
		}
		out = append(out, w)
	}
	return out
}

// overlaps reports whether [from, to] meets one of the sorted, disjoint spans.
func overlaps(spans []window, from, to time.Time) bool {
	i := sort.Search(len(spans), func(i int) bool { return !spans[i].to.Before(from) })
	return i < len(spans) && !spans[i].from.After(to)
}
