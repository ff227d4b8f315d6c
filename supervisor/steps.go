//go:build linux

package supervisor

import (
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
)

// startSteps are the moments of a new master's start after an upgrade,
// from the old master's USR2 to this generation serving, so that its
// "handover complete" line can say where baton's own time went (the steps
// object: milliseconds each step took, in order). Owned by the loop (Run
// fills the marks before the loop starts).
type startSteps struct {
	names []string
	at    []time.Time
	cpu   []time.Duration // this process's CPU time then; -1: not this process's step
	// preflightCPU is the old master's CPU time in its pre-flight checks
	// (the preflight step), -1 when unknown.
	preflightCPU time.Duration
	// longest is the longest start-up of one worker of the generation:
	// from its process started (exec done) to its readiness. The app's
	// part of the handover; spawning them is baton's.
	longest time.Duration
}

// mark records that the step name ended at t, when this process had used
// cpu (processCPU; -1 for a step of another process).
func (s *startSteps) mark(name string, t time.Time, cpu time.Duration) {
	s.names = append(s.names, name)
	s.at = append(s.at, t)
	s.cpu = append(s.cpu, cpu)
}

// processCPU is the CPU time this process has used (user and system, every
// thread) since it started; 0 when unknown.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// initCPU is processCPU when this package was initialised (initDone).
var initCPU = processCPU()

// last returns when the step name ended last, or the zero time.
func (s *startSteps) last(name string) time.Time {
	for i := len(s.names) - 1; i >= 0; i-- {
		if s.names[i] == name {
			return s.at[i]
		}
	}
	return time.Time{}
}

// workerStarted notes one worker's start-up (started -> ready).
func (s *startSteps) workerStarted(d time.Duration) { s.longest = max(s.longest, d) }

// stepsSince is the steps as logged: each name with the milliseconds from
// the previous mark (the first from start), as a zap object.
type stepsSince struct {
	start time.Time
	s     *startSteps
}

func (o stepsSince) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	prev := o.start
	for i, name := range o.s.names {
		enc.AddFloat64(name, ms(o.s.at[i].Sub(prev)))
		prev = o.s.at[i]
	}
	return nil
}

// stepsCPU is the CPU time this process used in each of its steps (ms),
// beside stepsSince's wall time: on a busy machine the two differ by the
// time spent waiting for a CPU.
type stepsCPU struct{ s *startSteps }

func (o stepsCPU) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	var prev time.Duration // the process started with none
	for i, name := range o.s.names {
		c := o.s.cpu[i]
		if c < 0 {
			if name == "preflight" && o.s.preflightCPU >= 0 {
				enc.AddFloat64(name, ms(o.s.preflightCPU))
			}
			continue
		}
		enc.AddFloat64(name, ms(c-prev))
		prev = c
	}
	return nil
}
