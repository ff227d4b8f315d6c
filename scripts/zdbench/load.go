//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
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
	probe       bool          // one more client on fresh connections,
	probePause  time.Duration // back to back, or this far apart
	tracker     *genTracker
	bound       time.Duration // every client stops by then at the latest
}

// startLoad starts the plan's clients; wait returns once all have stopped
// (at ctx's end or the plan's bound).
func startLoad(ctx context.Context, pl loadPlan) (wait func() loadgen.MixResult) {
	m := loadgen.Mix{
		Network: "tcp", Addr: pl.addr, Clients: pl.clients, KeepAlive: pl.keepAlive,
		SlowClients: pl.slowClients, SlowPath: "/?sleep=" + strconv.Itoa(pl.slowMS),
		SlowTimeout: time.Duration(pl.slowMS)*time.Millisecond + 10*time.Second,
		Probe:       pl.probe, ProbePause: pl.probePause, Duration: pl.bound,
	}
	if pl.tracker != nil {
		m.OnFresh = pl.tracker.saw
	}
	return loadgen.StartMix(ctx, m)
}

// genSeen is when responses from one generation were seen.
type genSeen struct {
	first, last time.Time
	n           int
}

// genTracker records, per generation named in the answer ("generation=G",
// from hello, the nginx config or the unicorn app), the first and last
// response seen on a fresh connection.
type genTracker struct {
	mu   sync.Mutex
	gens map[int]*genSeen
	// newGen is closed and replaced when a generation is seen for the first
	// time (not on every response: that would cost the load clients).
	newGen chan struct{}
}

func newGenTracker() *genTracker {
	return &genTracker{gens: map[int]*genSeen{}, newGen: make(chan struct{})}
}

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
		close(t.newGen)
		t.newGen = make(chan struct{})
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

// waitSeen blocks until an answer from generation gen has been seen on a
// fresh connection, timeout passes or ctx ends.
func (t *genTracker) waitSeen(ctx context.Context, gen int, timeout time.Duration) (genSeen, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		t.mu.Lock()
		var seen *genSeen
		if s := t.gens[gen]; s != nil {
			c := *s
			seen = &c
		}
		ch := t.newGen
		t.mu.Unlock()
		if seen != nil {
			return *seen, nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return genSeen{}, fmt.Errorf("no answer from generation %d on a fresh connection within %s", gen, timeout)
		case <-ctx.Done():
			return genSeen{}, fmt.Errorf("waiting for generation %d: %w", gen, ctx.Err())
		}
	}
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

func msOf(d time.Duration) float64 { return loadgen.MS(d) }
