// Package supervisor is baton's master: it keeps N workers of a server
// running on sockets it owns, and hands them over to a new generation on
// upgrade. Run is the entry point, once per process.
//
// Linux only: every file but this one builds only on Linux (pidfds,
// PR_SET_CHILD_SUBREAPER, PDEATHSIG, SO_REUSEPORT groups steered by classic
// BPF or eBPF, /proc), so that vet on another system skips the package instead of
// failing on the first Linux call.
//
// One goroutine, the loop in master.run, owns all mutable state: workers,
// worker slots, the phase, upgrade bookkeeping. Everything else (signal
// delivery, process waits, the notify socket reader, readiness probes,
// timers, the control socket) only posts events to it. Events are a sealed
// set (events.go) and name the worker, slot or connection they are about,
// never a pid: the kernel reuses pids, and a late timer for a worker that
// is gone must find nothing to act on.
//
// Where each concern lives:
//
//	master.go     the loop, signal dispatch, phases, boot and stop
//	workers.go    a generation's workers: spawn (a generation's forks at
//	              once), exit, crash restart with backoff, drain, TTIN/TTOU,
//	              and the timers of each
//	release.go    what one generation runs: its directory and command,
//	              resolved once at its boot, so every worker of it (a crash's
//	              replacement, a TTIN worker) runs the same release
//	steps.go      when each step of a new master's start ended, and its CPU
//	              time: the handover line's steps and steps_cpu
//	readiness.go  when a worker counts as ready (notify, delay:, exec:)
//	upgrade.go    the handover protocol, both ends, and its state in two
//	              structs. originState is a new master's part in the
//	              upgrade that started it (what the old master passed,
//	              the takeover, the old master's exit): only upgrade.go
//	              writes it, the rest of the master reads it.
//	              upgradeState is an old master's part in the upgrade it
//	              runs: upgrade.go runs it; queue.go, signals.go and
//	              hook.go hold it before it starts (queuedAt/By, hookTook,
//	              waited); carrycounts.go passes counts (childNotify,
//	              passed); bluegreen.go records why a rollout failed
//	              (reason, stderr, outputOf, failedStep); control.go and
//	              progress.go hold the reloads waiting on it (waiters);
//	              master.go and workers.go only read it, and so do
//	              members.go and rolloutview.go (running, at)
//	startfail.go  a new master's failure before its loop runs (a flag it
//	              cannot use, its sockets), reported to the old master as
//	              a failed boot is
//	hook.go       --before-upgrade: run by the old master before an upgrade
//	queue.go      the one upgrade waiting for the previous generation's drain
//	progress.go   a reload's progress lines, and a new master's steps sent
//	              to the old master that streams them
//	metrics.go    --metrics: Prometheus exposition, carried across masters
//	strategy.go   --strategy and the rollout flags, their checks
//	bluegreen.go  blue-green and canary, both ends: candidate, checks in
//	              order, the health stage's retries and --health-timeout,
//	              switch, bake and its one pending probe, promote,
//	              rollback; orders to the new master on its notify socket.
//	              Every decision is the loop's, on the seam's clock
//	rolloutview.go what baton status and the progress lines show of a
//	              rollout (stage, checks, probe answers), and the promote
//	              order's timings; it observes, bluegreen.go decides
//	checks.go     the health probe, the smoke test and its relay, which
//	              reach only the candidate; emptying an accept queue (the
//	              real half of the seam's rollout calls)
//	members.go    who is in blue-green's reuseport groups: checked before
//	              every switch, when workers are ready, and every second
//	control.go    the master's side of the control protocol (package
//	              control has the wire types and the client)
//	systemd.go    sd_notify to the service manager, watchdog
//	env.go        what a worker's environment is made of
//	sys.go        the OS seam: process start, signals, clock and timers,
//	              notifications, and the rollout's contacts with the
//	              candidate (health probe, smoke test, accept-queue wait,
//	              steering share); tests swap in a fake (fake_test.go)
//	output.go     tagged worker output, inherit mode's stderr tee, and the
//	              stderr tail of failures
//	hints.go      advice for the usual first-run mistakes: a server binding
//	              its own port, one that never sends READY=1
//	shim.go       the trampoline that sets LISTEN_PID
//	trim.go       giving back start-up's memory once a keeper or master
//	              is at rest (internal/osutil's Trim), and a master's again
//	              2 s after its first seconds at rest and after a burst of
//	              scrapes or status requests (settle)
//	quiet.go      keeping the listening sockets out of the master's epoll
//	refuse.go     a stop's refusal of new connections once the workers
//	              have let go of the sockets (sockets/refuse.go)
//	config.go     Config, its checks, and ConfigError
//	tree.go       a generation's whole process tree: a cgroup per
//	              generation and worker, or the subreaper's orphans by an
//	              environment marker; leftovers drained, killed, logged
//
// Sub-packages:
//
//	keeper            the one process `baton run` stays for the service's
//	                  life: starts the first master, adopts later ones as a
//	                  child subreaper, forwards signals, relays sd_notify,
//	                  owns the pid file and the service's cgroup subtree
//	control           the control protocol's wire types and client
//	sockets           the master's side of the listening sockets;
//	                  reuseport.go: per-generation sockets and the classic
//	                  BPF program that steers between them; ebpf.go: the
//	                  eBPF program over a map of baton's sockets;
//	                  members.go: the sock_diag membership check
//	internal/link     the keeper<->master protocol, both ends: the variables
//	                  the keeper gives masters, the announcement handshake,
//	                  stop and exit messages; nothing else reads them
//	internal/notify   the sd_notify socket the keeper and every master read
//	internal/spawn    the OS threads children are forked from (for
//	                  PDEATHSIG; one per CPU, 2 to 4, each for the
//	                  process's life), and the signal mask they inherit
//	internal/pidfile  the pid file, locked (F_OFD_SETLK) for the keeper's
//	                  life: held means running, unheld means stale
//	internal/osutil   /proc, own fds, sd_notify sending, Trim
//	internal/logevent the stable "event" names of the log entries tests,
//	                  tools and journald act on; every such entry carries one
//	internal/cgroup   cgroup v2: make, clone into, list, kill
//	internal/account  --user, --group and socket owners: os/user (the
//	                  static binary reads /etc/passwd, /etc/group), then
//	                  getent for accounts only NSS knows
//	earlysig          the signals baton gives a meaning to, caught from the
//	                  first package init so that none takes its default
//	                  action before a loop reads it
//	tasks             the task limits (pids.max, RLIMIT_NPROC): the
//	                  headroom checked before a fork, and pids.max's hits
//
// Signals and what the loop does with them:
//
//	USR2, HUP          upgrade through tableflip (requestUpgrade); queued
//	                   while the previous generation drains
//	TERM, INT, QUIT    drain every worker, then exit; a second TERM/INT kills them
//	TTIN, TTOU         one worker more / less (the count survives upgrades)
//	USR1               reopen the log file, and forwarded to every ready
//	                   worker (starting ones get it once ready)
//
// Signals are caught from the first package init (package earlysig) and
// never given back to their default actions; before the first generation
// is ready an upgrade is held, not refused (signals.go). Task limits
// (pids.max, RLIMIT_NPROC) are checked before a start, an upgrade, TTIN and
// scale, and a master keeps spare threads (tasks.go, package tasks).
// A hook's leftovers end with it (hookleft.go).
//
// Phases of a master: booting (its workers are starting; a failure here
// ends the master, and for an upgrade means rollback), serving (crashed
// workers are replaced with backoff), stopping, and handed-over (a new
// master took over; drain, then exit without touching the pid file or unix
// socket paths, which now belong to the new master).
package supervisor
