// Package supervisor is baton's master: it keeps N workers of a server
// running on sockets it owns, and hands them over to a new generation on
// upgrade.
//
// One goroutine, the loop in master.run, owns all mutable state: workers by
// pid, worker slots, the phase, upgrade bookkeeping. Everything else (signal
// delivery, process waits, the notify socket reader, readiness probes,
// timers, the control socket) only posts events to it.
//
// Signals and what the loop does with them:
//
//	USR2, HUP          upgrade through tableflip (requestUpgrade)
//	TERM, INT, QUIT    drain every worker, then exit; a second TERM/INT kills them
//	TTIN, TTOU         one worker more / less
//	USR1               forwarded to every worker
//
// Phases of a master: booting (its workers are starting; a failure here
// ends the master, and for an upgrade means rollback), serving (crashed
// workers are replaced with backoff), stopping, and handed-over (a new
// master took over; drain, then exit without touching the pid file or unix
// socket paths, which now belong to the new master).
package supervisor
