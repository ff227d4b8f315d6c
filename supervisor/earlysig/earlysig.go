//go:build linux

// Package earlysig catches the signals baton gives a meaning to from the
// first moment Go code of a `baton run` process runs, so that none takes
// its default action (HUP, INT, TERM kill; TTIN, TTOU stop the process;
// QUIT dumps goroutines) before the keeper's or master's loop reads them.
//
// Its init does the work: it imports nothing but the standard library, and
// Go initialises packages in dependency order, then by import path, so it
// runs before the heavy packages (zap, prometheus, cli) a master imports.
// The window left is the Go runtime's own start (well under a millisecond
// of a process's life); see the README's section on signals.
package earlysig

import (
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"
)

// Handled are the signals a keeper and a master give a meaning to.
var Handled = []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU}

// Variables a process that re-executes itself passes to its new image.
const (
	envCarried    = "BATON_EARLY_SIGNALS" // numbers of signals caught, not yet read
	envHUPIgnored = "BATON_HUP_IGNORED"   // "1": started with SIGHUP ignored (nohup)
)

var (
	once sync.Once
	c    chan os.Signal
	hup  bool
)

func init() {
	// Only baton run (the keeper) and baton master (each master, as the
	// keeper and tableflip start it) supervise; the client commands
	// (reload, stop, …) keep the default actions, so ^C ends them.
	if len(os.Args) > 1 && (os.Args[1] == "run" || os.Args[1] == "master") {
		Catch()
	}
}

// Catch makes every signal of Handled arrive on one buffered channel from
// now on (Chan returns it). It records first whether SIGHUP was ignored
// (nohup), which catching it undoes, and delivers again the signals a
// previous image of this process carried across its re-exec. Idempotent.
func Catch() {
	once.Do(func() {
		hup = signal.Ignored(syscall.SIGHUP) || os.Getenv(envHUPIgnored) == "1"
		c = make(chan os.Signal, 64)
		// A master starts with USR1, USR2, TTIN and TTOU blocked (its
		// parent's doing), so one sent before this point is pending.
		// Notify unblocks a signal before it installs the handler, and
		// Go's runtime has none for TTIN and TTOU until then: one that
		// is pending, or comes in between, would stop the process. So
		// take note of the pending ones, ignore them and TTIN/TTOU (the
		// kernel drops pending signals that become ignored; one in the
		// microseconds of Notify is lost, never stops us), then catch,
		// and deliver the noted ones to the channel.
		pending := pendingSignals()
		signal.Ignore(append(pending, syscall.SIGTTIN, syscall.SIGTTOU)...)
		signal.Notify(c, Handled...)
		for _, s := range pending {
			c <- s
		}
		carried := os.Getenv(envCarried)
		os.Unsetenv(envCarried)
		os.Unsetenv(envHUPIgnored)
		for _, f := range strings.Split(carried, ",") {
			if n, err := strconv.Atoi(f); err == nil && n > 0 && n < 65 {
				select {
				case c <- syscall.Signal(n):
				default:
				}
			}
		}
	})
}

// Chan returns the channel Catch set up (calling Catch if nothing did),
// with extra signals added to it. Signals caught before the caller reads
// wait in it, in order (up to 64; more of the kind are dropped, as the
// kernel merges pending signals too).
func Chan(extra ...os.Signal) chan os.Signal {
	Catch()
	if len(extra) > 0 {
		signal.Notify(c, extra...)
	}
	return c
}

// HUPIgnored reports whether the process started with SIGHUP ignored.
func HUPIgnored() bool {
	Catch()
	return hup
}

// Carry, called right before this process execs itself again, puts the
// signals caught and not yet read into the environment of the new image,
// which delivers them again. One arriving between Carry and the exec is
// lost: that window is a few microseconds.
func Carry() {
	if c == nil {
		return
	}
	var names []string
	for {
		select {
		case s := <-c:
			names = append(names, strconv.Itoa(int(s.(syscall.Signal))))
			continue
		default:
		}
		break
	}
	if len(names) > 0 {
		os.Setenv(envCarried, strings.Join(names, ","))
	}
	if hup {
		os.Setenv(envHUPIgnored, "1")
	}
}

// pendingSignals lists the signals of Handled pending for this thread or
// the process (those blocked when they came).
func pendingSignals() []os.Signal {
	var set uint64
	if _, _, e := syscall.RawSyscall(syscall.SYS_RT_SIGPENDING, uintptr(unsafe.Pointer(&set)), 8, 0); e != 0 {
		return nil
	}
	var out []os.Signal
	for _, s := range Handled {
		if set&(1<<(uint(s.(syscall.Signal))-1)) != 0 {
			out = append(out, s)
		}
	}
	return out
}
