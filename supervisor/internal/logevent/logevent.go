// Package logevent names baton's log entries that tests, tools and log
// pipelines act on. Each such entry carries one field, Key ("event"), whose
// value is a stable snake_case name; the message beside it is prose for
// people and may be reworded. Under systemd the journald core writes the
// same name as EVENT=.
//
// A name, once released, keeps its meaning: add names, do not rename them.
// The README's "Log events" table lists them for users.
package logevent

import "go.uber.org/zap"

// Key is the field every named entry carries.
const Key = "event"

func named(name string) zap.Field { return zap.String(Key, name) }

// A master's life (fields: generation, master_pid).
var (
	MasterStarting   = named("master_starting")   // upgrade: true when an old master started it
	SocketsActivated = named("sockets_activated") // count: sockets taken from systemd socket activation
	GenerationReady  = named("generation_ready")  // a first generation serves; workers, workers_starting
	GenerationFailed = named("generation_failed") // its workers did not come up; reason, reason_code
	MasterStopping   = named("master_stopping")   // trigger: the signal or command
	MasterStopped    = named("master_stopped")    // a stopped master exits
	KeeperGone       = named("keeper_gone")       // the keeper died: workers killed, master exits
)

// Workers (fields: worker, pid).
var (
	WorkerStarted          = named("worker_started")           // restarts
	WorkerReady            = named("worker_ready")             // startup
	WorkerReadyTimeout     = named("worker_ready_timeout")     // not ready within --ready-timeout
	WorkerCrashed          = named("worker_crashed")           // exited while serving; exit_code or signal
	WorkerRestartScheduled = named("worker_restart_scheduled") // backoff
	WorkerDraining         = named("worker_draining")          // signal: the drain signal sent
	WorkerDrainTimeout     = named("worker_drain_timeout")     // SIGKILLed at --drain-timeout
	WorkerDrained          = named("worker_drained")           // drain, killed
	WorkerOutput           = named("worker_output")            // stream, line (tagged output)
	WorkerCountIncreased   = named("worker_count_increased")   // workers: the new count
	WorkerCountUnchanged   = named("worker_count_unchanged")   // TTOU with one worker left, TTIN past the task limit (limit)
	USR1Forwarded          = named("usr1_forwarded")           // workers, held_for_starting
	AcceptStalled          = named("accept_stalled")           // connections queue and no worker accepts
	NotifyUnknownSender    = named("notify_unknown_sender")    // sender_pid: not a worker, not a master
	ControlRefused         = named("control_refused")          // peer_uid: a foreign user's connection
)

// Upgrades, on the old master (fields: new_generation) and the new one.
var (
	UpgradeRequested     = named("upgrade_requested")      // trigger
	UpgradeQueued        = named("upgrade_queued")         // waits for the previous generation's drain
	UpgradeMerged        = named("upgrade_merged")         // joined the upgrade already queued
	UpgradeRefused       = named("upgrade_refused")        // reason
	UpgradeHeld          = named("upgrade_held")           // trigger: asked for while the first generation boots
	TaskLimitHit         = named("task_limit_hit")         // times, headroom: pids.max was hit during an upgrade
	HookLeftovers        = named("hook_leftovers")         // the hook's group outlived it: SIGTERM sent, kill_after
	UpgradeFailed        = named("upgrade_failed")         // reason; the old generation keeps serving
	UpgradeExecBusy      = named("upgrade_exec_busy")      // binary, attempt, of, pause: exec failed with ETXTBSY, retried
	HookOutput           = named("hook_output")            // stream, line of --before-upgrade
	HandedOver           = named("handed_over")            // old master: new_master_pid, handover
	HandoverComplete     = named("handover_complete")      // new master: workers, total, baton
	PreviousMasterExited = named("previous_master_exited") // new master: goroutines
)

// Blue-green and canary (fields: new_generation).
var (
	RolloutCandidate   = named("rollout_candidate")    // new master: ready, waiting for the checks
	SmokeTestOutput    = named("smoke_test_output")    // line
	RolloutSwitched    = named("rollout_switched")     // weight_percent, switched_at_unix_ns, since_upgrade
	RolloutPromoted    = named("rollout_promoted")     // trigger, at_unix_ns
	RolloutRollback    = named("rollout_rollback")     // reason, was_switched, at_unix_ns
	RolloutProbeFailed = named("rollout_probe_failed") // probe, stage, answer: one failed health probe
	// The first master's sockets are bound and steered: strategy,
	// steering ("ebpf" or "classic"), tcp_migrate_req, migration (how a
	// closing socket's queue survives: "ebpf", "sysctl" or "none"),
	// ebpf_unavailable (classic: why not eBPF).
	RolloutSocketsReady = named("rollout_sockets_ready")
	// A socket baton did not open listens on a --listen address: kind
	// (foreign, leftover, worker), address, inode, holder_pid,
	// holder_command, detail, action.
	ForeignSocket = named("foreign_socket")
	// The last foreign socket is gone.
	ForeignSocketsGone = named("foreign_sockets_gone")
	// Classic BPF only: a foreign socket left the group while others
	// remain, so baton no longer knows its socket's index and users may
	// reach a foreign one: left, present (details), holder_pids, detail.
	SteeringUncertain = named("steering_uncertain")
	// Classic BPF only: the old master's socket left its group at the end
	// of a handover and the program now returns the new generation's
	// index: address, index (-1: none attached), strays,
	// still_listening, unsure, error. The new master: resteered_at_exit
	// after the old master exited, the group holding its socket alone.
	SteeringHandedOff = named("steering_handed_off")
	// The old master closes its socket with connections still queued (its
	// workers are gone): left, migration ("ebpf", "sysctl", "none"), reset
	// (true: migration "none", the kernel resets them).
	QueueAtClose = named("queue_at_close")
)

// The keeper (field: keeper_pid).
var (
	KeeperStopping   = named("keeper_stopping")   // signal, masters: a stop forwarded to every master
	MasterRegistered = named("master_registered") // master_pid: a new master announced itself
	MasterExited     = named("master_exited")     // master_pid, status
	KeeperExiting    = named("keeper_exiting")    // status: no master left
	SignalHeld       = named("signal_held")       // signal: no master of record yet
	MasterRefused    = named("master_refused")    // sender_pid, error: an announcement not accepted
	TerminalHungUp   = named("terminal_hung_up")  // the terminal went: stopping
	// master_pid, trigger (generation_ready, master_exited), masters,
	// binary_bytes_unmapped: memory given back, the keeper is at rest
	KeeperAtRest = named("keeper_at_rest")
)

// A generation's whole process tree, a stop's sockets, the pid file.
var (
	ProcessTrees         = named("process_trees")          // keeper: mechanism (cgroup, subreaper), cgroup or reason
	WorkerLeftovers      = named("worker_leftovers")       // a drained worker exited; pids of its tree drain until deadline
	SurvivorKilled       = named("survivor_killed")        // pid, command, generation, worker, reason: SIGKILLed leftover
	OldGenerationDrained = named("old_generation_drained") // old master: its whole tree is gone; it exits
	ListenersRefused     = named("listeners_refused")      // a stop: refused, kept_for_systemd, waited
	PIDFileStale         = named("pid_file_stale")         // keeper: stale_pid, pid_file: replaced
)
