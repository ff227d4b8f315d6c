package supervisor

import (
	"syscall"
	"testing"
)

// An upgrade asked for while the first generation boots is held, not
// refused, and starts once the generation is ready; a second request
// merges into it.
func TestUpgradeHeldWhileFirstGenerationBoots(t *testing.T) {
	l := newLoop(t, testConfig(2))
	l.signal(syscall.SIGUSR2)
	l.signal(syscall.SIGHUP)
	if l.m.up.running || l.upg.calls.Load() != 0 {
		t.Fatal("upgrade started before the first generation was ready")
	}
	if l.m.up.queuedAt.IsZero() {
		t.Fatal("upgrade asked for while booting was dropped, not held")
	}
	l.ready(l.proc(0))
	l.ready(l.proc(1))
	if !l.m.up.running || !l.m.up.queuedAt.IsZero() {
		t.Fatalf("held upgrade not started once ready (running %v)", l.m.up.running)
	}
	l.upg.results <- errUpgrade
	l.awaitEvent()
	if l.upg.calls.Load() != 1 {
		t.Fatalf("%d upgrades, want the two requests merged into 1", l.upg.calls.Load())
	}
}

// A stop while booting drops the held upgrade: nothing starts afterwards.
func TestHeldUpgradeDroppedByStop(t *testing.T) {
	l := newLoop(t, testConfig(1))
	l.signal(syscall.SIGUSR2)
	l.signal(syscall.SIGTERM)
	if !l.m.up.queuedAt.IsZero() {
		t.Fatal("held upgrade survived a stop")
	}
	l.exitDrained()
	if !l.m.finished() || l.upg.calls.Load() != 0 {
		t.Fatal("stop while booting did not end the master cleanly")
	}
}

// USR1 reaches ready workers at once; a starting one gets it once it is
// ready (its handler may not be installed yet: USR1's default kills).
func TestUSR1OnlyToReadyWorkers(t *testing.T) {
	l := serving(t, testConfig(2))
	l.exit(l.proc(1), exitStatus{code: 1}) // crash: a replacement starts
	l.advance(backoffMin)
	repl := l.proc(2)
	l.signal(syscall.SIGUSR1)
	if !l.proc(0).got(syscall.SIGUSR1) {
		t.Fatal("ready worker did not get USR1")
	}
	if repl.got(syscall.SIGUSR1) {
		t.Fatal("starting worker got USR1 before it was ready")
	}
	l.ready(repl)
	if !repl.got(syscall.SIGUSR1) {
		t.Fatal("USR1 held for a starting worker not sent once it was ready")
	}
}
