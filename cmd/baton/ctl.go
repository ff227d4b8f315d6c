package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/urfave/cli/v2"
)

// exitUnknown: baton reload gave up waiting; the outcome is not known.
const exitUnknown = 3

// exitCode carries a chosen exit status out of a command's Action.
type exitCode struct {
	code int
	msg  string
}

func (e *exitCode) Error() string { return e.msg }

// controlFlags are the flags every control command takes; timeoutUsage says
// what --timeout bounds for that command.
func controlFlags(timeout time.Duration, timeoutUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "control", EnvVars: []string{"BATON_CONTROL"},
			Usage: "the master's control socket (default: beside --pid-file, else $XDG_RUNTIME_DIR/baton/control.sock or /run/baton/control.sock)"},
		&cli.StringFlag{Name: "pid-file", EnvVars: []string{"BATON_PID_FILE"},
			Usage: "find the control socket beside this pid file (app.pid -> app.sock)"},
		&cli.DurationFlag{Name: "timeout", Value: timeout, Usage: timeoutUsage},
	}
}

func controlPath(c *cli.Context) string {
	if p := c.String("control"); p != "" {
		return p
	}
	return control.DefaultPath(c.String("pid-file"))
}

// call sends cmd to the master and reads its reply into v. The returned
// connection is open for a caller that waits for more (stop); it is nil on
// error. Errors are *exitCode with the status the command exits with.
func call(c *cli.Context, cmd control.Cmd, v any) (*control.Conn, error) {
	conn, err := control.Send(controlPath(c), cmd, c.Duration("timeout"))
	if err != nil {
		return nil, &exitCode{control.ReloadRefused, err.Error()}
	}
	if err := conn.Reply(v); err != nil {
		conn.Close()
		code := control.ReloadRefused
		if errors.Is(err, control.ErrNoAnswer) {
			code = exitUnknown
			err = fmt.Errorf("%w (--timeout %s)", err, c.Duration("timeout"))
		}
		return nil, &exitCode{code, err.Error()}
	}
	return conn, nil
}

func reloadCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "upgrade to a new generation and wait for the outcome (exit 0 took over, 1 rolled back, 2 not started, 3 unknown)",
		Flags: append(controlFlags(10*time.Minute, "how long to wait for the outcome of the upgrade (exit 3 if none by then)"),
			&cli.BoolFlag{Name: "json", Usage: "print the outcome as JSON"}),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			var res control.ReloadResult
			conn, err := call(c, control.CmdReload, &res)
			if err != nil {
				return err
			}
			conn.Close()
			if c.Bool("json") {
				b, _ := json.Marshal(res)
				fmt.Println(string(b))
			} else {
				printReload(os.Stdout, res)
			}
			if res.Code != control.ReloadOK {
				return &exitCode{res.Code, "reload failed: " + res.Reason}
			}
			return nil
		},
	}
}

// rolloutCommand is baton promote and baton rollback.
func rolloutCommand(cmd control.Cmd, onUsage cli.OnUsageErrorFunc) *cli.Command {
	usage := "end the bake of a blue-green or canary upgrade now: every new connection to the new generation"
	if cmd == control.CmdRollback {
		usage = "during a blue-green or canary upgrade: every new connection back to the old generation at once; the new one drains"
	}
	return &cli.Command{
		Name:         string(cmd),
		Usage:        usage,
		Flags:        controlFlags(10*time.Second, "how long to wait for the master's answer"),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			var ack control.RolloutAck
			conn, err := call(c, cmd, &ack)
			if err != nil {
				return err
			}
			conn.Close()
			fmt.Printf("%s: generation %d (was in %s); baton reload reports the outcome\n", cmd, ack.Generation, ack.Stage)
			return nil
		},
	}
}

func printReload(w io.Writer, res control.ReloadResult) {
	defer printSteps(w, res)
	switch res.Code {
	case control.ReloadOK:
		fmt.Fprintf(w, "reload ok: generation %d serving, master %d -> %d, handover %.1f ms (workers starting %.1f ms, baton %.1f ms)\n",
			res.Generation, res.OldMasterPID, res.NewMasterPID, res.TotalMS, res.WorkersStartingMS, res.BatonMS)
	case control.ReloadRollback:
		fmt.Fprintf(w, "reload rolled back: generation %d failed after %.1f ms; master %d keeps serving\nreason: %s\n",
			res.Generation, res.TotalMS, res.OldMasterPID, res.Reason)
		if len(res.Stderr) > 0 {
			fmt.Fprintln(w, "last lines of the worker's stderr:")
			for _, l := range res.Stderr {
				fmt.Fprintln(w, "  | "+l)
			}
		}
	default:
		fmt.Fprintf(w, "reload not started: %s\n", res.Reason)
	}
}

// printSteps lists a blue-green or canary upgrade's steps.
func printSteps(w io.Writer, res control.ReloadResult) {
	if len(res.Steps) == 0 {
		return
	}
	fmt.Fprintf(w, "%s steps:\n", res.Strategy)
	for _, s := range res.Steps {
		fmt.Fprintf(w, "  %8.1f ms  %-12s %s\n", s.AtMS, s.Name, s.Detail)
	}
}

func statusCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:         "status",
		Usage:        "show the master, its workers and the last upgrade",
		Flags:        append(controlFlags(10*time.Second, "how long to wait for the master's answer"), &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			var st control.Status
			conn, err := call(c, control.CmdStatus, &st)
			if err != nil {
				return err
			}
			conn.Close()
			if c.Bool("json") {
				b, _ := json.MarshalIndent(st, "", "  ")
				fmt.Println(string(b))
				return nil
			}
			printStatus(os.Stdout, st)
			return nil
		},
	}
}

func printStatus(w io.Writer, st control.Status) {
	fmt.Fprintf(w, "master %d  generation %d  %s  up %s  baton %s\n", st.MasterPID, st.Generation, st.State, msDur(st.UptimeMS), st.Version)
	if st.KeeperPID != 0 {
		fmt.Fprintf(w, "keeper %d (the service's pid)\n", st.KeeperPID)
	}
	fmt.Fprintf(w, "listening on %s\n", strings.Join(st.Listeners, ", "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPID\tSTATE\tUPTIME\tRESTARTS")
	for _, wk := range st.Workers {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\n", wk.Index, wk.PID, wk.State, msDur(wk.UptimeMS), wk.Restarts)
	}
	tw.Flush()
	if p := st.Previous; p != nil {
		fmt.Fprintf(w, "previous generation %d (master %d) draining: %d processes, at most %s left\n",
			p.Generation, p.MasterPID, len(p.WorkerPIDs), msDur(p.DrainLeftMS))
	}
	if u := st.LastUpgrade; u != nil {
		fmt.Fprint(w, "last upgrade: ")
		printReload(w, *u)
	}
}

func msDur(ms float64) string {
	return (time.Duration(ms * float64(time.Millisecond))).Round(time.Millisecond).String()
}

func stopCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:         "stop",
		Usage:        "drain every worker, stop the master, and wait until it has exited",
		Flags:        controlFlags(2*time.Minute, "how long to wait for the master to exit (exit 3 if it still runs then)"),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			var ack control.StopAck
			conn, err := call(c, control.CmdStop, &ack)
			if err != nil {
				return err
			}
			defer conn.Close()
			// The master holds this connection until it exits.
			if err := conn.WaitClosed(); err != nil || !control.WaitExited(ack.MasterPID, 5*time.Second) {
				return &exitCode{exitUnknown, fmt.Sprintf("master %d still stopping after %s (--timeout)", ack.MasterPID, c.Duration("timeout"))}
			}
			// The keeper exits once no master is left: then nothing runs.
			if ack.KeeperPID != 0 && !control.WaitExited(ack.KeeperPID, c.Duration("timeout")) {
				return &exitCode{exitUnknown, fmt.Sprintf("keeper %d still running after %s (--timeout)", ack.KeeperPID, c.Duration("timeout"))}
			}
			fmt.Printf("master %d stopped\n", ack.MasterPID)
			return nil
		},
	}
}
