//go:build linux

package main

import (
	"context"
	"errors"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/urfave/cli/v2"
)

// This file is verify's only contact with the control protocol (package
// control): the rest of verify sees upgradeOutcome and the two functions
// below.

// upgradeOutcome is what verify needs to know of one upgrade.
type upgradeOutcome struct {
	Started      bool     // false: the master refused (pre-flight, already upgrading, draining)
	OK           bool     // the new generation took over
	Reason       string   // why not OK
	Stderr       []string // last stderr lines of the worker that failed
	OldMasterPID int
	NewMasterPID int
	Generation   int     // the new generation's number
	TotalMS      float64 // baton's handover time: request to new generation ready
	AppMS        float64 // of which the workers' own start-up
	BatonMS      float64 // of which baton's part
}

// triggerUpgrade asks the master behind --control/--pid-file for one upgrade
// and blocks until its outcome, as `baton reload` does: for at most --timeout,
// or until ctx ends. An error means no outcome arrived (no master, no answer
// in time, ctx ended); the upgrade may then still be under way.
func triggerUpgrade(ctx context.Context, c *cli.Context) (upgradeOutcome, error) {
	path, err := controlPath(c)
	if err != nil {
		return upgradeOutcome{}, err
	}
	conn, err := control.Send(path, control.CmdReload, c.Duration("timeout"))
	if err != nil {
		return upgradeOutcome{}, &exitCode{control.ReloadRefused, err.Error()}
	}
	defer conn.Close()
	// Closing the connection is how a blocked read learns that ctx ended.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var res control.ReloadResult
	if err := conn.Reply(&res); err != nil {
		if ctx.Err() != nil {
			return upgradeOutcome{}, errors.New("stopped waiting for the outcome: " + context.Cause(ctx).Error())
		}
		return upgradeOutcome{}, &exitCode{exitUnknown, err.Error()}
	}
	return upgradeOutcome{
		Started: res.Code != control.ReloadRefused, OK: res.Code == control.ReloadOK,
		Reason: res.Reason, Stderr: res.Stderr,
		OldMasterPID: res.OldMasterPID, NewMasterPID: res.NewMasterPID, Generation: res.Generation,
		TotalMS: res.TotalMS, AppMS: res.WorkersStartingMS, BatonMS: res.BatonMS,
	}, nil
}

// waitMasterGone waits until the old master of a handover has exited, so
// that its generation's drain is over (a next upgrade is refused until
// then). It blocks for at most timeout, or until ctx ends, and reports
// whether the master is gone. It reads /proc, so it only works on the
// master's host, which the unix control socket implies.
func waitMasterGone(ctx context.Context, pid int, timeout time.Duration) bool {
	if pid <= 0 {
		return true
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		// Short slices, so that ctx ending is noticed promptly.
		if control.WaitExited(pid, min(left, 100*time.Millisecond)) {
			return true
		}
		if ctx.Err() != nil || left <= 0 {
			return false
		}
	}
}
