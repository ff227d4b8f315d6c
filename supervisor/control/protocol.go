// Package control is baton's control protocol: the one place that names
// each command and each wire key, used by the master (which answers) and by
// cmd/baton (which asks).
//
// A client connects to the master's unix socket, writes one JSON request
// line, and reads one JSON reply line:
//
//	{"cmd":"status"}             -> Status
//	{"cmd":"reload"}             -> Progress lines as the upgrade goes, then
//	                                ReloadResult, once it succeeded or failed
//	{"cmd":"reload","no_wait":true} the same, but refused at once while the
//	                                previous generation drains
//	{"cmd":"scale","workers":N}  -> ScaleResult
//	{"cmd":"stop"}               -> StopAck, then the connection stays open until the master exits
//
// A reload's reply is zero or more Progress lines (they have an "event"
// key) and one final ReloadResult line (it has none). A master older than
// the Progress lines sends the final line alone, which clients accept.
//
//	{"cmd":"promote"}            -> RolloutAck: end the bake of a blue-green or canary upgrade now
//	{"cmd":"rollback"}           -> RolloutAck: send users back to the old generation, drop the new one
//
// Any request may instead be answered by a Refusal (ok false, code 2), for
// example from a peer of another user or for a malformed line.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Cmd is a control command.
type Cmd string

// The commands, in the order help texts list them.
const (
	CmdStatus Cmd = "status"
	CmdReload Cmd = "reload"
	CmdScale  Cmd = "scale"
	CmdStop   Cmd = "stop"
	// CmdPromote and CmdRollback act on a blue-green or canary upgrade
	// under way (its checks or its bake).
	CmdPromote  Cmd = "promote"
	CmdRollback Cmd = "rollback"
)

// Commands lists every command the master answers.
var Commands = []Cmd{CmdStatus, CmdReload, CmdScale, CmdStop, CmdPromote, CmdRollback}

// RolloutAck answers promote and rollback: the order is given; the reload
// request, if any, reports the outcome.
type RolloutAck struct {
	OK         bool   `json:"ok"`
	Generation int    `json:"generation"` // the new generation
	Stage      string `json:"stage"`      // where the upgrade was: checking, smoke-test, bake
}

// Step is one stage of an upgrade as baton reload reports it. AtMS is
// milliseconds since the upgrade began.
type Step struct {
	Name   string  `json:"name"` // ready, health-check, smoke-test, switch, bake, promote, rollback
	AtMS   float64 `json:"at_ms"`
	Detail string  `json:"detail,omitempty"`
}

// Request is a client's request line.
type Request struct {
	Cmd Cmd `json:"cmd"`
	// NoWait (reload only): refuse instead of waiting while the previous
	// generation drains.
	NoWait bool `json:"no_wait,omitempty"`
	// Workers (scale only, required): the worker count to run, at least 1.
	Workers int `json:"workers,omitempty"`
}

// MaxWorkers is the most workers one master runs, from --workers or a
// scale request alike. Each worker's exit is waited for by a goroutine
// blocked in waitid(2), which holds an OS thread, and a Go program dies
// (with a dump of every goroutine) past 10000 threads; this leaves room
// for the rest, and a typo of a zero too many is refused.
const MaxWorkers = 4096

// Reload outcome codes; cmd/baton uses them as exit codes.
const (
	ReloadOK       = 0 // the new generation took over
	ReloadRollback = 1 // the new generation failed and was thrown away
	ReloadRefused  = 2 // no upgrade was started, or the request was refused
)

// ReloadResult answers a reload. Durations are milliseconds.
type ReloadResult struct {
	OK     bool     `json:"ok"`
	Code   int      `json:"code"`
	Reason string   `json:"reason,omitempty"`
	Stderr []string `json:"stderr,omitempty"` // last lines of the failing step's output
	// OutputOf names whose output Stderr holds: "the hook's output", "the
	// smoke test's output", "worker 1's stderr".
	OutputOf string `json:"output_of,omitempty"`
	// FailedStep names the step that failed: before-upgrade, start,
	// health-check, smoke-test, switch, bake, promote.
	FailedStep   string `json:"failed_step,omitempty"`
	OldMasterPID int    `json:"old_master_pid"`
	NewMasterPID int    `json:"new_master_pid,omitempty"`
	// PIDNamespace is the masters' pid namespace ("pid:[N]"), in which
	// both pids are numbers; see ReloadResult.LocalPID.
	PIDNamespace      string  `json:"pid_namespace,omitempty"`
	Generation        int     `json:"generation,omitempty"`
	TotalMS           float64 `json:"total_ms,omitempty"`
	WorkersStartingMS float64 `json:"workers_starting_ms,omitempty"` // the app's start-up: every new worker ready
	// Blue-green and canary: the checks before the switch (health check,
	// smoke test) and the bake after it, both outside the app's start-up.
	ChecksMS float64 `json:"checks_ms,omitempty"`
	BakeMS   float64 `json:"bake_ms,omitempty"`
	BatonMS  float64 `json:"baton_ms,omitempty"` // the rest: baton's own part of TotalMS
	// Blue-green and canary only: the strategy, each step taken, and when
	// users were switched to the new generation (ms since the upgrade
	// began; 0 if never).
	Strategy string  `json:"strategy,omitempty"`
	Steps    []Step  `json:"steps,omitempty"`
	SwitchMS float64 `json:"switch_ms,omitempty"`
	HookMS   float64 `json:"hook_ms,omitempty"`   // the --before-upgrade command, before TotalMS began
	WaitedMS float64 `json:"waited_ms,omitempty"` // waiting for the previous generation's drain, before the hook
}

// Progress events, in the order an upgrade emits them. Worker events come
// once per worker; output events only with tagged worker output.
const (
	EvWaiting         = "waiting"          // queued behind the previous generation's drain
	EvPreflight       = "preflight"        // pre-flight checks passed
	EvHookStarted     = "hook_started"     // --before-upgrade started
	EvHookOutput      = "hook_output"      // one line the hook wrote
	EvHookFinished    = "hook_finished"    // it exited 0
	EvMasterStarted   = "master_started"   // the new master runs (PID)
	EvWorkerStarted   = "worker_started"   // Worker, PID
	EvWorkerReady     = "worker_ready"     // Worker, PID, DurationMS: its start-up
	EvWorkerOutput    = "worker_output"    // one line a new worker wrote (Stream, Line)
	EvGenerationReady = "generation_ready" // every new worker ready: the handover follows
	EvHandover        = "handover"         // the new master took over; the old generation drains (Count workers)
	EvStopped         = "stopped_accepting"
	EvFailed          = "failed" // the upgrade failed; the final line says why
	// Blue-green and canary (Message says the detail): the candidate's
	// rollout steps (rollout_ready, rollout_health-check, rollout_switch,
	// ...) and one line per failed health probe with its answer.
	EvHealthProbe = "health_probe"
)

// Progress is one step of a reload, sent as it happens. ElapsedMS counts
// from when the master took the request.
type Progress struct {
	Event      string  `json:"event"` // one of the Ev* constants
	ElapsedMS  float64 `json:"elapsed_ms"`
	Message    string  `json:"message"` // the step in words, for people
	Generation int     `json:"generation,omitempty"`
	Worker     *int    `json:"worker,omitempty"`
	PID        int     `json:"pid,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	Count      int     `json:"count,omitempty"`
	Stream     string  `json:"stream,omitempty"` // stdout or stderr, for output events
	Line       string  `json:"line,omitempty"`
}

// IsOutput reports whether p is a line of a process's output rather than a
// step (clients show those only when asked to follow logs).
func (p Progress) IsOutput() bool { return p.Event == EvWorkerOutput || p.Event == EvHookOutput }

// ScaleResult answers a scale request.
type ScaleResult struct {
	OK       bool `json:"ok"`
	Previous int  `json:"previous"` // the worker count before
	Workers  int  `json:"workers"`  // the worker count now configured
}

// Master states as Status.State reports them.
const (
	StateStarting   = "starting"
	StateServing    = "serving"
	StateUpgrading  = "upgrading"
	StateStopping   = "stopping"
	StateHandedOver = "handed-over"
)

// Status answers a status request. Durations are milliseconds.
type Status struct {
	MasterPID  int      `json:"master_pid"`
	KeeperPID  int      `json:"keeper_pid,omitempty"` // the stable process above the masters
	Version    string   `json:"version"`              // baton's, of this master
	Generation int      `json:"generation"`
	State      string   `json:"state"` // one of the State* constants
	UptimeMS   float64  `json:"uptime_ms"`
	Listeners  []string `json:"listeners"`
	Release    *Release `json:"release,omitempty"`     // what this generation's workers run
	LogDropped uint64   `json:"log_dropped,omitempty"` // log entries baton's log output could not take
	// WorkersConfigured is the count the master keeps running (--workers,
	// changed by TTIN, TTOU and scale, carried into the next generation);
	// WorkersCurrent how many of them are ready now.
	WorkersConfigured int            `json:"workers_configured"`
	WorkersCurrent    int            `json:"workers_current"`
	Workers           []WorkerStatus `json:"workers"`
	// UpgradeQueued: an upgrade waits for the previous generation's drain.
	UpgradeQueued bool          `json:"upgrade_queued,omitempty"`
	Previous      *PrevStatus   `json:"previous,omitempty"` // the draining previous generation
	LastUpgrade   *ReloadResult `json:"last_upgrade,omitempty"`
	// ProcessTrees is how a generation's whole process tree is found:
	// "cgroup" (TreeCgroup names the service's cgroup v2 directory) or
	// "subreaper" (the keeper adopts orphans, attributed by a marker in
	// their environment).
	ProcessTrees string `json:"process_trees,omitempty"`
	TreeCgroup   string `json:"tree_cgroup,omitempty"`
	// TreeReason says why there is no cgroup (subreaper only).
	TreeReason string `json:"tree_reason,omitempty"`
	// Steering is how blue-green and canary pick a generation's socket:
	// "ebpf" (a map of baton's sockets) or "classic" (the kernel's order).
	Steering string `json:"steering,omitempty"`
	// ForeignSockets are sockets in a reuseport group that baton did not
	// open, as the last membership check saw them.
	ForeignSockets []ForeignSocket `json:"foreign_sockets,omitempty"`
	// SteeringUncertain is set under classic steering once a foreign
	// socket left a group while others remained: baton no longer knows
	// which index is its socket, and users may reach a foreign one. It
	// says so, naming the sockets; "" otherwise.
	SteeringUncertain string `json:"steering_uncertain,omitempty"`
	// Rollout is the blue-green or canary upgrade under way, seen from the
	// old master that runs it; nil when none.
	Rollout *RolloutStatus `json:"rollout,omitempty"`
}

// Rollout stages as RolloutStatus.Stage reports them, in order.
const (
	StageStarting    = "starting"     // the new generation's workers are starting
	StageHealthCheck = "health-check" // probing the candidate, no user reaches it
	StageSmokeTest   = "smoke-test"   // --smoke-test runs against it
	StageBaking      = "baking"       // users switched (all, or the canary share); old generation warm
	StagePromoting   = "promoting"    // the new master was told to take over
	StageRollingBack = "rolling-back" // users are back on the old generation; the new one drains
)

// RolloutStages lists every stage, for gauges and docs.
var RolloutStages = []string{StageStarting, StageHealthCheck, StageSmokeTest, StageBaking, StagePromoting, StageRollingBack}

// RolloutStatus is a blue-green or canary upgrade under way. Durations are
// milliseconds.
type RolloutStatus struct {
	Strategy   string  `json:"strategy"`
	Generation int     `json:"generation"`           // the candidate's
	MasterPID  int     `json:"master_pid,omitempty"` // the candidate's master, once it runs
	Stage      string  `json:"stage"`                // one of the Stage* constants
	ElapsedMS  float64 `json:"elapsed_ms"`           // since the upgrade began
	// Checks holds each check run so far (health-check, smoke-test,
	// bake-health), in order.
	Checks []CheckStatus `json:"checks,omitempty"`
	// CanaryPercent is the share of new connections the candidate gets
	// (100 for blue-green once switched; 0 before the switch).
	CanaryPercent int     `json:"canary_percent"`
	BakeLeftMS    float64 `json:"bake_left_ms,omitempty"`
	// Commands are the control commands that act on this stage.
	Commands []string `json:"commands,omitempty"`
}

// CheckStatus is one check of a candidate.
type CheckStatus struct {
	Name       string `json:"name"`                  // health-check, smoke-test, bake-health
	State      string `json:"state"`                 // running, passed, failed
	Probes     int    `json:"probes"`                // health probes sent (0 for a smoke test)
	Failed     int    `json:"failed"`                // of them, failed
	LastAnswer string `json:"last_answer,omitempty"` // "200", "answered 500", an error, a smoke test's exit
}

// ForeignSocket is a listening socket on a --listen address that baton did
// not open for a generation it runs.
type ForeignSocket struct {
	Address string `json:"address"`
	Inode   uint64 `json:"inode"`
	UID     uint32 `json:"uid"`
	PID     int    `json:"pid,omitempty"` // a holder, where /proc shows one
	Command string `json:"command,omitempty"`
	Kind    string `json:"kind"` // foreign, leftover (a previous generation's), worker (bound by our worker)
	// Shadows is baton's wildcard address (0.0.0.0:P) when this socket
	// is bound to a more specific one of the same port (127.0.0.1:P): it
	// is then outside baton's group and takes every connection to its
	// own address whatever the steering. "" otherwise.
	Shadows string `json:"shadows,omitempty"`
	Detail  string `json:"detail"`
}

// Release is what a generation runs, resolved once when it booted: every
// worker of the generation, replacements included, starts from it.
type Release struct {
	Dir     string `json:"dir"`     // working directory, symlinks resolved
	Command string `json:"command"` // the executable's path
}

// WorkerStatus is one worker in a Status.
type WorkerStatus struct {
	Index    int     `json:"index"`
	PID      int     `json:"pid"`
	State    string  `json:"state"` // starting, ready, draining
	UptimeMS float64 `json:"uptime_ms"`
	Restarts int     `json:"restarts"`
}

// PrevStatus is the previous generation while its master drains it.
type PrevStatus struct {
	MasterPID   int     `json:"master_pid"`
	Generation  int     `json:"generation"`
	State       string  `json:"state"`
	WorkerPIDs  []int   `json:"worker_pids"`
	DrainLeftMS float64 `json:"drain_left_ms"`
	// Processes is every process left of that generation's tree (its
	// workers and whatever they started), found by Status.ProcessTrees.
	Processes []int `json:"processes,omitempty"`
}

// StopAck answers a stop at once; the master then holds the connection
// open until it exits.
type StopAck struct {
	OK        bool `json:"ok"`
	MasterPID int  `json:"master_pid"`
	KeeperPID int  `json:"keeper_pid,omitempty"` // exits last, once no master is left
	// PIDNamespace is the master's pid namespace ("pid:[N]"): both pids
	// are numbers there, which a client in another namespace (the host of
	// a container) must translate, or cannot see at all.
	PIDNamespace string `json:"pid_namespace,omitempty"`
}

// Refusal answers any request the master will not carry out.
type Refusal struct {
	OK     bool   `json:"ok"` // always false
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// NewRefusal returns the Refusal for reason.
func NewRefusal(reason string) Refusal {
	return Refusal{Code: ReloadRefused, Reason: reason}
}

// ErrBadRequest is wrapped by DecodeRequest's errors.
var ErrBadRequest = errors.New("bad control request")

// DecodeRequest parses one request line. Unknown keys, a second value on
// the line and unknown commands are errors wrapping ErrBadRequest.
func DecodeRequest(line []byte) (Request, error) {
	var req Request
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Request{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if dec.More() {
		return Request{}, fmt.Errorf("%w: more than one JSON value on the line", ErrBadRequest)
	}
	for _, c := range Commands {
		if req.Cmd == c {
			if err := checkArgs(req); err != nil {
				return Request{}, err
			}
			return req, nil
		}
	}
	names := make([]string, len(Commands))
	for i, c := range Commands {
		names[i] = string(c)
	}
	return Request{}, fmt.Errorf("%w: unknown cmd %q (want %s)", ErrBadRequest, req.Cmd, strings.Join(names, ", "))
}

// checkArgs refuses arguments that do not belong to the command, and a
// scale without a sane count.
func checkArgs(req Request) error {
	if req.NoWait && req.Cmd != CmdReload {
		return fmt.Errorf("%w: no_wait is for reload only", ErrBadRequest)
	}
	if req.Cmd != CmdScale {
		if req.Workers != 0 {
			return fmt.Errorf("%w: workers is for scale only", ErrBadRequest)
		}
		return nil
	}
	if req.Workers < 1 || req.Workers > MaxWorkers {
		return fmt.Errorf("%w: scale workers %d: want 1 to %d", ErrBadRequest, req.Workers, MaxWorkers)
	}
	return nil
}
