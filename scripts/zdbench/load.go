package main

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/baton-sh/baton/cmd/baton/loadgen"
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

// startLoad starts the plan's clients; wait returns once all have stopped
// (at ctx's end or the plan's bound).
func startLoad(ctx context.Context, pl loadPlan) (wait func() loadgen.MixResult) {
	m := loadgen.Mix{
		Network: "tcp", Addr: pl.addr, Clients: pl.clients, KeepAlive: pl.keepAlive,
		SlowClients: pl.slowClients, SlowPath: "/?sleep=" + strconv.Itoa(pl.slowMS),
		SlowTimeout: time.Duration(pl.slowMS)*time.Millisecond + 10*time.Second,
		Probe:       pl.probe, Duration: pl.bound,
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

func msOf(d time.Duration) float64 { return loadgen.MS(d) }
