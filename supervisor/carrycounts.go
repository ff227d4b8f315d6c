//go:build linux

package supervisor

import (
	"encoding/json"
	"maps"
)

// The counters travel to the next master in its environment when an
// upgrade is launched (envMetrics), but the old master goes on counting
// after that: workers that crash during a bake, and above all its workers'
// drained exits after the handover. This file sends what it counted since
// the launch to the new master, which serves the metrics from then on, so
// that baton_worker_exits_total{reason="drained"} moves with each upgrade.

// orderCounts is the key of the old master's datagram to the new one: the
// JSON of the counts since the last one sent.
const orderCounts = "BATON_COUNTS"

// counts is the part of the carried counters a master still adds to after
// it launched an upgrade.
type counts struct {
	Starts   float64            `json:"s,omitempty"`
	Exits    map[string]float64 `json:"e,omitempty"`
	Restarts map[string]float64 `json:"r,omitempty"`
}

func (mt *metrics) counts() counts {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	return counts{Starts: mt.c.WorkerStarts, Exits: maps.Clone(mt.c.WorkerExits), Restarts: maps.Clone(mt.c.WorkerRestarts)}
}

// minus is what a counted beyond b.
func (a counts) minus(b counts) counts {
	d := counts{Starts: a.Starts - b.Starts, Exits: map[string]float64{}, Restarts: map[string]float64{}}
	for k, v := range a.Exits {
		if v > b.Exits[k] {
			d.Exits[k] = v - b.Exits[k]
		}
	}
	for k, v := range a.Restarts {
		if v > b.Restarts[k] {
			d.Restarts[k] = v - b.Restarts[k]
		}
	}
	return d
}

func (d counts) empty() bool { return d.Starts <= 0 && len(d.Exits) == 0 && len(d.Restarts) == 0 }

// merge adds counts from the previous master.
func (mt *metrics) merge(d counts) {
	mt.add(func(c *carried) {
		c.WorkerStarts += max(d.Starts, 0)
		for k, v := range d.Exits {
			c.WorkerExits[k] += v
		}
		for k, v := range d.Restarts {
			c.WorkerRestarts[k] += v
		}
	})
}

// passCounts sends the new master what this one counted since it last
// did, once it has handed over. Called by the loop after every event.
func (m *master) passCounts() {
	u := &m.up
	if m.phase != phaseHandedOver || u.childNotify == "" {
		return
	}
	now := m.met.counts()
	d := now.minus(u.passed)
	if d.empty() {
		return
	}
	b, _ := json.Marshal(d)
	if m.sys.notifyTo(u.childNotify, reportToken+"="+u.token+"\n"+orderCounts+"="+string(b)) == nil {
		u.passed = now
	}
}

// onCounts takes the previous master's counts; false when fields hold none.
func (m *master) onCounts(fields map[string]string) bool {
	js, ok := fields[orderCounts]
	if !ok {
		return false
	}
	var d counts
	if json.Unmarshal([]byte(js), &d) == nil {
		m.met.merge(d)
	}
	return true
}
