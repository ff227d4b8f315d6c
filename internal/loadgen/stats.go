package loadgen

import (
	"math"
	"sort"
	"time"
)

// Latency describes the latencies of successful requests, in milliseconds.
type Latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// Summarize gives the nearest-rank percentiles of ds; ds is not modified.
func Summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(p float64) float64 { return MS(s[nearestRank(len(s), p)]) }
	return Latency{N: len(s), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: MS(s[len(s)-1])}
}

// OKLatencies are the latencies of the successful samples.
func OKLatencies(samples []Sample) []time.Duration {
	out := make([]time.Duration, 0, len(samples))
	for _, s := range samples {
		if !s.Failed {
			out = append(out, s.Latency)
		}
	}
	return out
}

// Dist describes a small set of measurements (one per upgrade, say).
type Dist struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Max    float64 `json:"max"`
}

// DistOf describes vs; vs is not modified.
func DistOf(vs []float64) Dist {
	if len(vs) == 0 {
		return Dist{}
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return Dist{N: len(s), Min: s[0], Median: median(s), P90: s[nearestRank(len(s), 0.90)], Max: s[len(s)-1]}
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

// MS is d in milliseconds.
func MS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Window is a span of time, around one upgrade say.
type Window struct{ From, To time.Time }

// SplitByWindows separates the successful latencies of requests that
// overlapped a window from the others.
func SplitByWindows(samples []Sample, wins []Window) (in, out []time.Duration) {
	spans := unionOf(wins)
	for _, s := range samples {
		if s.Failed {
			continue
		}
		if overlaps(spans, s.Start, s.End()) {
			in = append(in, s.Latency)
		} else {
			out = append(out, s.Latency)
		}
	}
	return in, out
}

// unionOf merges overlapping windows into sorted, disjoint ones.
func unionOf(wins []Window) []Window {
	s := append([]Window(nil), wins...)
	sort.Slice(s, func(i, j int) bool { return s[i].From.Before(s[j].From) })
	var out []Window
	for _, w := range s {
		if n := len(out); n > 0 && !w.From.After(out[n-1].To) {
			if w.To.After(out[n-1].To) {
				out[n-1].To = w.To
			}
			continue
		}
		out = append(out, w)
	}
	return out
}

// overlaps reports whether [from, to] meets one of the sorted, disjoint spans.
func overlaps(spans []Window, from, to time.Time) bool {
	i := sort.Search(len(spans), func(i int) bool { return !spans[i].To.Before(from) })
	return i < len(spans) && !spans[i].From.After(to)
}
