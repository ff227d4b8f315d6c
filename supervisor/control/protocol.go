// Package control is baton's control protocol: the one place that names
// each command and each wire key, used by the master (which answers) and by
// cmd/baton (which asks).
//
// A client connects to the master's unix socket, writes one JSON request
// line, and reads one JSON reply line:
//
//	{"cmd":"status"}  -> Status
//	{"cmd":"reload"}  -> ReloadResult, once the upgrade succeeded or failed
//	{"cmd":"stop"}    -> StopAck, then the connection stays open until the master exits
//	{"cmd":"promote"} -> RolloutAck: end the bake of a blue-green or canary upgrade now
//	{"cmd":"rollback"} -> RolloutAck: send users back to the old generation, drop the new one
//
// Any request may instead be answered by a Refusal (ok false, code 2), for
// example from a peer of another user or for a malformed line.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Cmd is a control command.
type Cmd string

// The commands, in the order help texts list them.
const (
	CmdStatus Cmd = "status"
	CmdReload Cmd = "reload"
	CmdStop   Cmd = "stop"
	// CmdPromote and CmdRollback act on a blue-green or canary upgrade
	// under way (its checks or its bake).
	CmdPromote  Cmd = "promote"
	CmdRollback Cmd = "rollback"
)

// Commands lists every command the master answers.
var Commands = []Cmd{CmdStatus, CmdReload, CmdStop, CmdPromote, CmdRollback}

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
}

// Reload outcome codes; cmd/baton uses them as exit codes.
const (
	ReloadOK       = 0 // the new generation took over
	ReloadRollback = 1 // the new generation failed and was thrown away
	ReloadRefused  = 2 // no upgrade was started, or the request was refused
)

// ReloadResult answers a reload. Durations are milliseconds.
type ReloadResult struct {
	OK                bool     `json:"ok"`
	Code              int      `json:"code"`
	Reason            string   `json:"reason,omitempty"`
	Stderr            []string `json:"stderr,omitempty"` // last lines of the failing worker
	OldMasterPID      int      `json:"old_master_pid"`
	NewMasterPID      int      `json:"new_master_pid,omitempty"`
	Generation        int      `json:"generation,omitempty"`
	TotalMS           float64  `json:"total_ms,omitempty"`
	WorkersStartingMS float64  `json:"workers_starting_ms,omitempty"`
	BatonMS           float64  `json:"baton_ms,omitempty"`
	// Blue-green and canary only: the strategy, each step taken, and when
	// users were switched to the new generation (ms since the upgrade
	// began; 0 if never).
	Strategy string  `json:"strategy,omitempty"`
	Steps    []Step  `json:"steps,omitempty"`
	SwitchMS float64 `json:"switch_ms,omitempty"`
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
	MasterPID   int            `json:"master_pid"`
	KeeperPID   int            `json:"keeper_pid,omitempty"` // the stable process above the masters
	Version     string         `json:"version"`              // baton's, of this master
	Generation  int            `json:"generation"`
	State       string         `json:"state"` // one of the State* constants
	UptimeMS    float64        `json:"uptime_ms"`
	Listeners   []string       `json:"listeners"`
	Workers     []WorkerStatus `json:"workers"`
	Previous    *PrevStatus    `json:"previous,omitempty"` // the draining previous generation
	LastUpgrade *ReloadResult  `json:"last_upgrade,omitempty"`
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
}

// StopAck answers a stop at once; the master then holds the connection
// open until it exits.
type StopAck struct {
	OK        bool `json:"ok"`
	MasterPID int  `json:"master_pid"`
	KeeperPID int  `json:"keeper_pid,omitempty"` // exits last, once no master is left
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
			return req, nil
		}
	}
	names := make([]string, len(Commands))
	for i, c := range Commands {
		names[i] = string(c)
	}
	return Request{}, fmt.Errorf("%w: unknown cmd %q (want %s)", ErrBadRequest, req.Cmd, strings.Join(names, ", "))
}

// DefaultPath is where the control socket lives when --control is not
// given: beside the pid file (app.pid -> app.sock), else in the runtime
// directory.
func DefaultPath(pidFile string) string {
	if pidFile != "" {
		return strings.TrimSuffix(pidFile, ".pid") + ".sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "baton", "control.sock")
	}
	return "/run/baton/control.sock"
}
