package loadgen

import (
	"context"
	"math"
	"sync"
	"time"
)

// Mix is the traffic of a zero-downtime check: clients that keep their
// connection alive, clients that connect anew for every request (a new
// connection is what shows when a new generation starts accepting and the
// old one stops), clients that always have a slow request in flight (what a
// drain must let finish), and optionally a probe.
type Mix struct {
	Network string // "tcp" or "unix"
	Addr    string
	Host    string // Host header; default "loadgen"
	Path    string // default "/"

	Clients   int     // keep-alive and fresh clients together
	KeepAlive float64 // share of Clients that reuse their connection, 0..1

	SlowClients int // extra clients sending SlowPath, half on kept-alive connections
	SlowPath    string
	SlowTimeout time.Duration // per slow request; default Timeout

	// Probe adds one more client on fresh connections, back to back, or
	// ProbePause apart.
	Probe      bool
	ProbePause time.Duration
	// OnFresh sees the body of every successful answer on a fresh
	// connection (fresh clients and the probe), from many goroutines.
	OnFresh func(body []byte)

	Timeout       time.Duration // per request; default 5s
	Duration      time.Duration // every client stops by then at the latest
	Budget        *Budget       // shared request cap, or nil
	ReleaseHeader string        // see Config.ReleaseHeader
	NoSamples     bool          // see Config.NoSamples
	MaxFailures   int           // see Config.MaxFailures; per group of clients
}

// MixResult holds each group's result; a group with no clients has an empty
// one, never nil.
type MixResult struct {
	Main  *Result // keep-alive and fresh clients together
	Slow  *Result
	Probe *Result
}

// All is every group's result added up.
func (r MixResult) All() *Result { return Merge(r.Main, r.Slow, r.Probe) }

// StartMix starts the mix's clients and returns at once; wait blocks until
// all have stopped (at ctx's end, the budget's or Duration) and returns what
// they saw.
func StartMix(ctx context.Context, m Mix) (wait func() MixResult) {
	var (
		wg    sync.WaitGroup
		ka    = int(math.Round(float64(m.Clients) * m.KeepAlive))
		fresh = m.Clients - ka
		out   MixResult
		parts [2]*Result
	)
	base := Config{Network: m.Network, Addr: m.Addr, Host: m.Host, Path: m.Path, Duration: m.Duration,
		Timeout: m.Timeout, Budget: m.Budget, ReleaseHeader: m.ReleaseHeader, NoSamples: m.NoSamples,
		MaxFailures: m.MaxFailures}
	run := func(dst **Result, cfg Config) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			*dst = Run(ctx, cfg)
		}()
	}
	with := func(clients int, keepAlive float64, onResponse func([]byte)) Config {
		c := base
		c.Clients, c.KeepAlive, c.OnResponse = clients, keepAlive, onResponse
		return c
	}
	// Run treats 0 clients as its default of 16: skip empty groups.
	if ka > 0 {
		run(&parts[0], with(ka, 1, nil))
	}
	if fresh > 0 {
		run(&parts[1], with(fresh, 0, m.OnFresh))
	}
	if m.SlowClients > 0 {
		c := with(m.SlowClients, 0.5, nil)
		c.Path = m.SlowPath
		if m.SlowTimeout > 0 {
			c.Timeout = m.SlowTimeout
		}
		run(&out.Slow, c)
	}
	if m.Probe {
		c := with(1, 0, m.OnFresh)
		c.Pause = m.ProbePause
		run(&out.Probe, c)
	}
	return func() MixResult {
		wg.Wait()
		out.Main = Merge(parts[0], parts[1])
		if out.Slow == nil {
			out.Slow = Merge()
		}
		if out.Probe == nil {
			out.Probe = Merge()
		}
		return out
	}
}

// Merge adds up results; nil ones are skipped.
func Merge(rs ...*Result) *Result {
	m := &Result{Failed: map[string]int{}}
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
		m.FailedConns = append(m.FailedConns, r.FailedConns...)
		m.FailedDropped += r.FailedDropped
		m.Samples = append(m.Samples, r.Samples...)
		m.Elapsed = max(m.Elapsed, r.Elapsed)
	}
	return m
}
