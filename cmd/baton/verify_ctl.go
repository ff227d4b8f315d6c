//go:build linux

package main

import (
	"context"
	"errors"

	"github.com/baton-sh/baton/internal/verify"
	"github.com/baton-sh/baton/supervisor/control"
	"github.com/urfave/cli/v2"
)

// This file is verify's only contact with the control protocol (package
// control): the rest of verify sees verify.Outcome and the two functions
// below.

// triggerUpgrade asks the master behind --control/--pid-file for one upgrade
// (a verify.Trigger) and blocks until its outcome, as `baton reload` does: for at most --timeout,
// or until ctx ends. An error means no outcome arrived (no master, no answer
// in time, ctx ended); the upgrade may then still be under way.
func triggerUpgrade(ctx context.Context, c *cli.Context) (verify.Outcome, error) {
	path, err := controlPath(c)
	if err != nil {
		return verify.Outcome{}, err
	}
	conn, err := control.Send(path, control.CmdReload, c.Duration("timeout"))
	if err != nil {
		return verify.Outcome{}, &exitCode{control.ReloadRefused, err.Error()}
	}
	defer conn.Close()
	// Closing the connection is how a blocked read learns that ctx ended.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var res control.ReloadResult
	if err := conn.Reply(&res); err != nil {
		if ctx.Err() != nil {
			return verify.Outcome{}, errors.New("stopped waiting for the outcome: " + context.Cause(ctx).Error())
		}
		return verify.Outcome{}, &exitCode{exitUnknown, err.Error()}
	}
	return verify.Outcome{
		Started: res.Code != control.ReloadRefused, OK: res.Code == control.ReloadOK,
		Reason: res.Reason, Stderr: res.Stderr,
		OldMasterPID: res.OldMasterPID, NewMasterPID: res.NewMasterPID, Generation: res.Generation,
		OldMasterHere: res.LocalPID(res.OldMasterPID),
		TotalMS:       res.TotalMS, AppMS: res.WorkersStartingMS, BatonMS: res.BatonMS,
		ChecksMS: res.ChecksMS, BakeMS: res.BakeMS,
	}, nil
}
