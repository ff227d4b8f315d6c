package main

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// asyncSink stands between baton's logger and its output (stderr, a pipe
// to journald or a log shipper, a file), so that the supervisor never
// stalls or dies because of its log: a Write only queues the entry, a
// goroutine writes it out; when the queue is full (the reader is stuck)
// entries are dropped and counted, and the count is logged once the output
// moves again. A write error (EPIPE: the reader went away) drops the entry
// too; SIGPIPE itself is caught in main.
type asyncSink struct {
	out     io.Writer
	sync    func() error // the output's Sync, or nil
	notice  func(dropped uint64) []byte
	queue   chan []byte
	dropped atomic.Uint64 // entries not written, in total
	pending atomic.Int64  // entries queued, not yet written or dropped
}

// logQueue is how many entries wait for a slow output before baton drops
// them: a few seconds of a busy master with tagged worker output.
const logQueue = 4096

// newAsyncSink starts the writer goroutine for out; notice renders the
// "entries dropped" line in the log's format.
func newAsyncSink(out io.Writer, sync func() error, notice func(dropped uint64) []byte) *asyncSink {
	s := &asyncSink{out: out, sync: sync, notice: notice, queue: make(chan []byte, logQueue)}
	go s.run()
	return s
}

// Write queues a copy of b and never blocks.
func (s *asyncSink) Write(b []byte) (int, error) {
	s.pending.Add(1)
	select {
	case s.queue <- append([]byte(nil), b...):
	default:
		s.pending.Add(-1)
		s.dropped.Add(1)
	}
	return len(b), nil
}

func (s *asyncSink) run() {
	var told uint64
	for b := range s.queue {
		if d := s.dropped.Load(); d > told {
			if _, err := s.out.Write(s.notice(d - told)); err == nil {
				told = d
			}
		}
		if _, err := s.out.Write(b); err != nil {
			s.dropped.Add(1)
			told++ // the notice for it could not be written either
		}
		s.pending.Add(-1)
	}
}

// errLogStuck is Sync's error when the output did not take the queued
// entries in time; saying so on that same output would block.
var errLogStuck = errors.New("log output stuck")

// Sync waits up to a second for the queued entries to be written (a stuck
// output must not hold up an exit), then syncs the output.
func (s *asyncSink) Sync() error {
	deadline := time.Now().Add(time.Second)
	for s.pending.Load() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d entries not written", errLogStuck, s.pending.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.sync != nil {
		return s.sync()
	}
	return nil
}
