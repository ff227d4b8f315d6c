// Package harness reads the JSON log that baton's processes share (every
// master a `baton run` starts inherits its stderr, and so do workers) and
// lets a caller wait for an entry by its event name. It is the one log
// harness of the end-to-end tests (cmd/baton) and the benchmark
// (scripts/zdbench): they wait on the stable `event` field, never on a
// message's wording. It also holds what both read of /proc (a process's
// children, its descriptors), a poll with a deadline, and a buffer a
// command writes while the caller reads.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Event is one JSON log entry, its fields as encoding/json decodes them
// (numbers are float64).
type Event map[string]any

// Name is the entry's stable event name ("" for an entry without one).
func (e Event) Name() string { return e.Str("event") }

// Str is field k as a string, "" if absent or not a string.
func (e Event) Str(k string) string { s, _ := e[k].(string); return s }

// Float is field k as a number, 0 if absent.
func (e Event) Float(k string) float64 { f, _ := e[k].(float64); return f }

// Int is field k as an int, 0 if absent.
func (e Event) Int(k string) int { return int(e.Float(k)) }

// Bool is field k as a bool, false if absent.
func (e Event) Bool(k string) bool { b, _ := e[k].(bool); return b }

// Named returns a match for entries with event name.
func Named(name string) func(Event) bool {
	return func(e Event) bool { return e.Name() == name }
}

// maxOther bounds the non-entry lines kept: a long benchmark's workers may
// print many; the last ones are what a report shows.
const maxOther = 10000

// Tail collects the entries read from one stream. Lines that are not JSON
// entries (a worker's own output, baton's one-line errors) are kept apart.
// Safe for concurrent use.
type Tail struct {
	mu      sync.Mutex
	events  []Event
	at      []time.Time // when each entry was read
	base    int         // index of events[0]: Forget drops older entries
	other   []string
	closed  bool
	changed chan struct{} // closed and replaced on every line and at EOF
}

// New reads r until EOF (every writer gone) or a read error, in a
// goroutine, and closes it then.
func New(r io.ReadCloser) *Tail {
	t := &Tail{changed: make(chan struct{})}
	q := &lineQueue{}
	q.cond = sync.NewCond(&q.mu)
	// Two stages: one goroutine only drains the pipe, so that the writers
	// (baton's log sink, which drops entries rather than block a master)
	// never wait on the parsing; the other parses what has arrived, a
	// batch at a time, and wakes the waiters once per batch.
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			q.put(append([]byte(nil), sc.Bytes()...))
		}
		q.end()
	}()
	go func() {
		for {
			lines, done := q.take()
			now := time.Now()
			evs := make([]Event, len(lines))
			for i, line := range lines {
				if json.Unmarshal(line, &evs[i]) != nil || evs[i]["msg"] == nil {
					evs[i] = nil
				}
			}
			t.mu.Lock()
			for i, ev := range evs {
				if ev != nil {
					t.events = append(t.events, ev)
					t.at = append(t.at, now)
					continue
				}
				t.other = append(t.other, string(lines[i]))
				if len(t.other) > maxOther {
					t.other = t.other[len(t.other)-maxOther/2:]
				}
			}
			if done {
				t.closed = true
			}
			close(t.changed)
			t.changed = make(chan struct{})
			t.mu.Unlock()
			if done {
				return
			}
		}
	}()
	return t
}

// lineQueue hands lines from the pipe's reader to the parser.
type lineQueue struct {
	mu    sync.Mutex
	cond  *sync.Cond
	lines [][]byte
	ended bool
}

func (q *lineQueue) put(line []byte) {
	q.mu.Lock()
	q.lines = append(q.lines, line)
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *lineQueue) end() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
	q.cond.Signal()
}

// take blocks until there are lines or the end, and returns every line
// queued, and whether the reader has ended (then no line follows).
func (q *lineQueue) take() ([][]byte, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.lines) == 0 && !q.ended {
		q.cond.Wait()
	}
	lines := q.lines
	q.lines = nil
	return lines, q.ended
}

// Len is the number of entries read so far: a mark to wait from.
func (t *Tail) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.base + len(t.events)
}

// Forget drops the entries with index < upTo; indices stay as they were,
// and Slice, Count, Problem and Dump see only what is kept. A soak of
// thousands of upgrades must not keep every line in memory.
func (t *Tail) Forget(upTo int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := min(max(upTo-t.base, 0), len(t.events))
	t.events = append([]Event(nil), t.events[n:]...)
	t.at = append([]time.Time(nil), t.at[n:]...)
	t.base += n
}

// Slice returns the entries kept with index in [from, to); to < 0 means
// all.
func (t *Tail) Slice(from, to int) []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	if to < 0 || to-t.base > len(t.events) {
		to = t.base + len(t.events)
	}
	from, to = max(from-t.base, 0), to-t.base
	if from > to {
		return nil
	}
	return append([]Event(nil), t.events[from:to]...)
}

// ReadAt is when entry i was read; i must not have been forgotten.
func (t *Tail) ReadAt(i int) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.at[i-t.base]
}

// Count is how many entries so far have event name.
func (t *Tail) Count(name string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, ev := range t.events {
		if ev.Name() == name {
			n++
		}
	}
	return n
}

// Wait blocks until an entry at index >= from satisfies match and returns
// it with its index. It fails after timeout, when ctx ends, or when every
// writer has gone (EOF) first; the error says which, with what waited
// for and the last warning baton logged.
func (t *Tail) Wait(ctx context.Context, from int, timeout time.Duration, what string, match func(Event) bool) (Event, int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		t.mu.Lock()
		// Only entries that arrived since the last look: a flood of lines
		// must not make every wait quadratic.
		from = max(from, t.base)
		for ; from < t.base+len(t.events); from++ {
			if match(t.events[from-t.base]) {
				ev := t.events[from-t.base]
				t.mu.Unlock()
				return ev, from, nil
			}
		}
		closed, changed := t.closed, t.changed
		t.mu.Unlock()
		if closed {
			return nil, -1, fmt.Errorf("waiting for %s: every baton process exited%s", what, t.Problem())
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, -1, fmt.Errorf("waiting for %s: nothing within %s%s", what, timeout, t.Problem())
		case <-ctx.Done():
			return nil, -1, fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		}
	}
}

// WaitClosed reports whether every writer has gone within timeout.
func (t *Tail) WaitClosed(timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		t.mu.Lock()
		closed, changed := t.closed, t.changed
		t.mu.Unlock()
		if closed {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

// Problem names the last warning or error baton logged and the last line
// that was not a log entry, as " (…)" to append to a one-line error, or "".
func (t *Tail) Problem() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for i := len(t.events) - 1; i >= 0; i-- {
		ev := t.events[i]
		if l := ev.Str("level"); l == "warn" || l == "error" {
			s := ev.Str("msg")
			if r := ev.Str("reason"); r != "" {
				s += ": " + r
			} else if e := ev.Str("error"); e != "" {
				s += ": " + e
			}
			parts = append(parts, "last baton warning: "+strconv.Quote(s))
			break
		}
	}
	if n := len(t.other); n > 0 {
		parts = append(parts, "last worker output: "+strconv.Quote(t.other[n-1]))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

// Dump is everything read so far, entries as JSON lines, other lines
// prefixed with "| ": for a failing test's report.
func (t *Tail) Dump() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	for _, ev := range t.events {
		j, _ := json.Marshal(ev)
		b.Write(j)
		b.WriteByte('\n')
	}
	for _, l := range t.other {
		b.WriteString("| " + l + "\n")
	}
	return b.String()
}
