//go:build linux

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
// stalls or dies because of its log: a goroutine writes the entries out of
// a bounded queue. The master's own entries never wait: when the queue is
// full (the reader is stuck) they are dropped and counted, and the count
// is logged once the output moves again. Relayed worker output (written
// from the pumps' goroutines, never the loop's) may only fill half the
// queue, so it cannot crowd out the master's entries; past that it waits
// for room, as a worker writing to a slow pipe would, but for at most
// relayWait: then the output counts as stuck and relayed entries are
// dropped until the queue has drained. A write error (EPIPE: the reader
// went away) drops the entry too; SIGPIPE itself is caught in main.
type asyncSink struct {
	out     io.Writer
	sync    func() error // the output's Sync, or nil
	notice  func(dropped uint64) []byte
	queue   chan []byte
	room    chan struct{} // signalled after each entry written
	stuck   atomic.Bool   // a relayed entry waited relayWait in vain
	dropped atomic.Uint64 // entries not written, in total
	pending atomic.Int64  // entries queued, not yet written or dropped
}

const (
	// logQueue is how many entries wait for a slow output: a few seconds
	// of a busy master with tagged worker output.
	logQueue = 4096
	// relayWait bounds how long relayed output waits for room.
	relayWait = time.Second
)

// newAsyncSink starts the writer goroutine for out; notice renders the
// "entries dropped" line in the log's format.
func newAsyncSink(out io.Writer, sync func() error, notice func(dropped uint64) []byte) *asyncSink {
	s := &asyncSink{out: out, sync: sync, notice: notice, queue: make(chan []byte, logQueue), room: make(chan struct{}, 1)}
	go s.run()
	return s
}

// Write queues a copy of b (one of the master's entries) and never blocks.
func (s *asyncSink) Write(b []byte) (int, error) {
	s.enqueue(b)
	return len(b), nil
}

func (s *asyncSink) enqueue(b []byte) bool {
	s.pending.Add(1)
	select {
	case s.queue <- append([]byte(nil), b...):
		return true
	default:
		s.pending.Add(-1)
		s.dropped.Add(1)
		return false
	}
}

// relayed is the writer for relayed worker output; see asyncSink.
func (s *asyncSink) relayed() io.Writer { return relayWriter{s} }

type relayWriter struct{ s *asyncSink }

// Write queues a copy of b, waiting up to relayWait for room.
func (w relayWriter) Write(b []byte) (int, error) {
	s := w.s
	deadline := time.Now().Add(relayWait)
	for len(s.queue) >= logQueue/2 {
		if s.stuck.Load() || time.Now().After(deadline) {
			s.stuck.Store(true)
			s.dropped.Add(1)
			return len(b), nil
		}
		select {
		case <-s.room:
		case <-time.After(10 * time.Millisecond):
		}
	}
	s.enqueue(b)
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
		if len(s.queue) < logQueue/4 {
			s.stuck.Store(false)
		}
		select {
		case s.room <- struct{}{}:
		default:
		}
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
