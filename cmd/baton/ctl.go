//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/sockets"
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
			Usage: "the master's control socket (default: from --pid-file or --listen as baton run derives it, else the one service's socket in $XDG_RUNTIME_DIR/baton, /run/baton for root)"},
		&cli.StringFlag{Name: "pid-file", EnvVars: []string{"BATON_PID_FILE"},
			Usage: "find the control socket of the service with this pid file (app.pid -> app.sock)"},
		&cli.StringSliceFlag{Name: "listen", Aliases: []string{"l"}, EnvVars: []string{"BATON_LISTEN"},
			Usage: "find the control socket of the service with these --listen values (one service with no --pid-file)"},
		&cli.DurationFlag{Name: "timeout", Value: timeout, Usage: timeoutUsage},
	}
}

// controlPath is the control socket a client command talks to: --control,
// else derived from --pid-file or --listen the way baton run derives it,
// else the only one in the default directory. More than one there is an
// error: a deploy must not reload whichever service it finds first.
func controlPath(c *cli.Context) (string, error) {
	// A stray word before the flags makes cli stop reading flags there,
	// silently: --pid-file after it would be ignored and the command would
	// reach another master. Refuse instead.
	want := 0
	if c.Command != nil && c.Command.Name == "scale" {
		want = 1
	}
	if c.NArg() > want {
		return "", &usageError{fmt.Errorf("unexpected argument %q (flags go before it; see baton %s --help)", c.Args().Get(want), c.Command.Name)}
	}
	if d := c.Duration("timeout"); d <= 0 {
		return "", &usageError{fmt.Errorf("--timeout %s: want a positive duration", d)}
	}
	if p := c.String("control"); p != "" {
		return p, nil
	}
	pid := c.String("pid-file")
	if pid != "" {
		abs, err := filepath.Abs(pid)
		if err != nil {
			return "", &exitCode{exitUsage, fmt.Sprintf("--pid-file %q: %v", pid, err)}
		}
		pid = abs
	}
	if pid != "" || len(c.StringSlice("listen")) > 0 {
		specs, err := sockets.ParseSpecs(c.StringSlice("listen"))
		if err != nil {
			return "", &exitCode{exitUsage, err.Error()}
		}
		return control.DefaultPath(pid, specStrings(specs)), nil
	}
	p, err := control.Discover()
	if err != nil {
		return "", &exitCode{control.ReloadRefused, err.Error()}
	}
	return p, nil
}

// specStrings is the canonical form of specs, as the default control
// path is derived from.
func specStrings(specs []sockets.Spec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Network + "://" + s.Addr
	}
	return out
}

// call sends cmd to the master and reads its reply into v. The returned
// connection is open for a caller that waits for more (stop); it is nil on
// error. Errors are *exitCode with the status the command exits with.
func call(c *cli.Context, cmd control.Cmd, v any) (*control.Conn, error) {
	path, err := controlPath(c)
	if err != nil {
		return nil, err
	}
	conn, err := control.Send(path, cmd, c.Duration("timeout"))
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
		Usage: "upgrade to a new generation, printing each step, and wait for the outcome (exit 0 took over, 1 rolled back, 2 not started, 3 unknown)",
		Flags: append(controlFlags(10*time.Minute, "how long to wait for the outcome of the upgrade (exit 3 if none by then)"),
			&cli.BoolFlag{Name: "json", Usage: "print each step and the outcome as JSON lines"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print the outcome only"},
			&cli.BoolFlag{Name: "follow-logs", Usage: "also print the hook's and the new workers' output while the upgrade runs (needs tagged --worker-output)"},
			&cli.BoolFlag{Name: "no-wait", Usage: "refuse (exit 2) instead of waiting while the previous generation drains"}),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			if c.Bool("quiet") && c.Bool("follow-logs") {
				return &usageError{errors.New("--quiet and --follow-logs: choose one")}
			}
			path, err := controlPath(c)
			if err != nil {
				return err
			}
			conn, err := control.SendRequest(path, control.Request{Cmd: control.CmdReload, NoWait: c.Bool("no-wait")}, c.Duration("timeout"))
			if err != nil {
				return &exitCode{control.ReloadRefused, err.Error()}
			}
			defer conn.Close()
			var res control.ReloadResult
			var failed string // the failure's progress line, said once below
			err = conn.Reload(func(p control.Progress) {
				if c.Bool("quiet") || (p.IsOutput() && !c.Bool("follow-logs")) {
					return
				}
				if c.Bool("json") {
					b, _ := json.Marshal(p)
					fmt.Println(string(b))
					return
				}
				msg := p.Message
				if short, ok := reasonFollows(p); ok {
					failed, msg = p.Message, short
				}
				fmt.Printf("%8.3fs  %s\n", p.ElapsedMS/1000, msg)
			}, &res)
			if err != nil {
				if failed != "" {
					err = fmt.Errorf("%s; then %w", failed, err)
				}
				return &exitCode{exitUnknown, fmt.Errorf("%w (--timeout %s)", err, c.Duration("timeout")).Error()}
			}
			if c.Bool("json") {
				b, _ := json.Marshal(res)
				fmt.Println(string(b))
			} else {
				printReload(os.Stdout, res)
			}
			if res.Code != control.ReloadOK {
				// The outcome printed above (text or JSON) carries the
				// reason; a second copy on stderr only repeated it.
				return &exitCode{res.Code, ""}
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

// reasonFollows shortens the progress lines of a failing upgrade that
// carry its reason (the rollback step, the failure), since the outcome
// printed at the end says it: ok false for any other line.
func reasonFollows(p control.Progress) (string, bool) {
	switch p.Event {
	case control.EvFailed:
		return "upgrade failed (reason below)", true
	case "rollout_rollback":
		return "rollback (reason below)", true
	}
	return "", false
}

func printReload(w io.Writer, res control.ReloadResult) {
	defer printSteps(w, res)
	switch res.Code {
	case control.ReloadOK:
		parts := fmt.Sprintf("workers starting %.1f ms", res.WorkersStartingMS)
		if res.ChecksMS > 0 || res.BakeMS > 0 {
			parts += fmt.Sprintf(", checks %.1f ms, bake %.1f ms", res.ChecksMS, res.BakeMS)
		}
		fmt.Fprintf(w, "reload ok: generation %d serving, master %d -> %d, handover %.1f ms (%s, baton %.1f ms)\n",
			res.Generation, res.OldMasterPID, res.NewMasterPID, res.TotalMS, parts, res.BatonMS)
	case control.ReloadRollback:
		printFailure(w, res)
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
		detail := s.Detail
		if res.Code != control.ReloadOK && detail != "" && strings.Contains(res.Reason, detail) {
			detail = "(the reason above)"
		}
		fmt.Fprintf(w, "  %8.1f ms  %-12s %s\n", s.AtMS, s.Name, detail)
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
	shadowed := ""
	for _, f := range st.ForeignSockets {
		if f.Shadows != "" {
			shadowed = "; but a socket on a more specific address, outside the group, takes that address's connections (WARNING below)"
		}
	}
	switch st.Steering {
	case "ebpf":
		fmt.Fprintf(w, "steering: ebpf (a map of baton's own sockets; no other socket in the group is chosen%s)\n", shadowed)
	case "classic":
		fmt.Fprintf(w, "steering: classic BPF (an index into the kernel's order; a foreign socket in the group can take connections%s)\n", shadowed)
	}
	switch st.ProcessTrees {
	case "cgroup":
		fmt.Fprintf(w, "process trees: cgroup %s\n", st.TreeCgroup)
	case "subreaper":
		if st.TreeReason != "" {
			fmt.Fprintf(w, "process trees: subreaper (no cgroup: %s)\n", st.TreeReason)
		} else {
			fmt.Fprintln(w, "process trees: subreaper")
		}
	}
	if st.LogDropped > 0 {
		fmt.Fprintf(w, "log entries dropped: %d (baton's log output did not keep up)\n", st.LogDropped)
	}
	if r := st.Release; r != nil {
		fmt.Fprintf(w, "release %s  (%s)\n", r.Dir, r.Command)
	}
	fmt.Fprintf(w, "workers: %d configured, %d ready\n", st.WorkersConfigured, st.WorkersCurrent)
	if st.Rollout != nil {
		printRollout(w, st.Rollout)
	}
	if st.UpgradeQueued {
		fmt.Fprintln(w, "an upgrade is queued: it starts once the previous generation has drained")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPID\tSTATE\tUPTIME\tRESTARTS")
	for _, wk := range st.Workers {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\n", wk.Index, wk.PID, wk.State, msDur(wk.UptimeMS), wk.Restarts)
	}
	tw.Flush()
	if p := st.Previous; p != nil {
		fmt.Fprintf(w, "previous generation %d (master %d) draining: %d processes, at most %s left\n",
			p.Generation, p.MasterPID, max(len(p.WorkerPIDs), len(p.Processes)), msDur(p.DrainLeftMS))
		if len(p.Processes) > 0 {
			fmt.Fprintf(w, "  its processes: %s\n", strings.Trim(fmt.Sprint(p.Processes), "[]"))
		}
	}
	for _, f := range st.ForeignSockets {
		fmt.Fprintf(w, "WARNING: %s (steering: %s)\n", f.Detail, st.Steering)
	}
	if st.SteeringUncertain != "" {
		fmt.Fprintf(w, "WARNING: %s\n", st.SteeringUncertain)
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
			// The master holds this connection until it exits. Its pids
			// are numbers in its own pid namespace: waited on only as this
			// client sees them, never a number that is another process here.
			master, keeper := ack.LocalPIDs()
			if err := conn.WaitClosed(); err != nil || (master != 0 && !control.WaitExited(master, 5*time.Second)) {
				return &exitCode{exitUnknown, fmt.Sprintf("master %d still stopping after %s (--timeout)", ack.MasterPID, c.Duration("timeout"))}
			}
			// The keeper exits once no master is left: then nothing runs.
			if keeper != 0 {
				if exited, stopped := waitKeeper(keeper, c.Duration("timeout")); !exited {
					state := "still running"
					if stopped {
						state = "still stopped (state T), so it cannot exit,"
					}
					return &exitCode{exitUnknown, fmt.Sprintf("keeper %d %s after %s (--timeout)", ack.KeeperPID, state, c.Duration("timeout"))}
				}
			}
			fmt.Printf("master %d stopped\n", ack.MasterPID)
			return nil
		},
	}
}

func scaleCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:         "scale",
		Usage:        "set the worker count (kept by later generations, like TTIN/TTOU)",
		ArgsUsage:    "N",
		Flags:        controlFlags(10*time.Second, "how long to wait for the master's answer"),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				// cli stops reading flags at the first argument, so flags
				// after N arrive here as more arguments.
				return &usageError{fmt.Errorf("scale: want one argument, the worker count N, after the flags (baton scale [--pid-file P] N); got %q", c.Args().Slice())}
			}
			n, err := strconv.Atoi(c.Args().First())
			if err != nil || n < 1 || n > control.MaxWorkers {
				return &usageError{fmt.Errorf("scale %q: want a worker count from 1 to %d", c.Args().First(), control.MaxWorkers)}
			}
			path, err := controlPath(c)
			if err != nil {
				return err
			}
			conn, err := control.SendRequest(path, control.Request{Cmd: control.CmdScale, Workers: n}, c.Duration("timeout"))
			if err != nil {
				return &exitCode{control.ReloadRefused, err.Error()}
			}
			defer conn.Close()
			var res control.ScaleResult
			if err := conn.Reply(&res); err != nil {
				code := control.ReloadRefused
				if errors.Is(err, control.ErrNoAnswer) {
					code = exitUnknown
				}
				return &exitCode{code, err.Error()}
			}
			fmt.Printf("workers: %d -> %d\n", res.Previous, res.Workers)
			return nil
		},
	}
}

// printFailure says which step of an upgrade failed, why, and whose output
// the last lines are.
func printFailure(w io.Writer, res control.ReloadResult) {
	switch res.FailedStep {
	case "before-upgrade":
		// Nothing of the new generation was started: no rollback to speak of.
		fmt.Fprintf(w, "reload failed at --before-upgrade after %.1f ms: generation %d was not started; master %d keeps serving\nreason: %s\n",
			res.HookMS, res.Generation, res.OldMasterPID, res.Reason)
	case "":
		fmt.Fprintf(w, "reload rolled back: generation %d failed after %.1f ms; master %d keeps serving\nreason: %s\n",
			res.Generation, res.TotalMS, res.OldMasterPID, res.Reason)
	default:
		fmt.Fprintf(w, "reload rolled back: generation %d failed at its %s after %.1f ms; master %d keeps serving\nreason: %s\n",
			res.Generation, res.FailedStep, res.TotalMS, res.OldMasterPID, res.Reason)
	}
	if len(res.Stderr) > 0 {
		of := res.OutputOf
		if of == "" {
			of = "the failing process's output"
		}
		fmt.Fprintf(w, "last lines of %s:\n", of)
		for _, l := range res.Stderr {
			fmt.Fprintln(w, "  | "+l)
		}
	}
}

// printRollout shows a blue-green or canary upgrade under way.
func printRollout(w io.Writer, r *control.RolloutStatus) {
	pid := "starting"
	if r.MasterPID != 0 {
		pid = "master " + strconv.Itoa(r.MasterPID)
	}
	fmt.Fprintf(w, "%s rollout: generation %d (%s)  stage %s  for %s\n", r.Strategy, r.Generation, pid, r.Stage, msDur(r.ElapsedMS))
	for _, c := range r.Checks {
		line := fmt.Sprintf("  %-12s %s", c.Name, c.State)
		if c.Probes > 0 {
			noun := "probes"
			if c.Probes == 1 {
				noun = "probe"
			}
			line += fmt.Sprintf(", %d %s (%d failed)", c.Probes, noun, c.Failed)
		}
		if c.LastAnswer != "" {
			line += ", last answer: " + c.LastAnswer
		}
		fmt.Fprintln(w, line)
	}
	if r.Stage == control.StageBaking {
		fmt.Fprintf(w, "  users: %d%% of new connections to generation %d", r.CanaryPercent, r.Generation)
		if r.BakeLeftMS > 0 {
			fmt.Fprintf(w, "; bake ends in %s", msDur(r.BakeLeftMS))
		}
		fmt.Fprintln(w)
	}
	if len(r.Commands) > 0 {
		fmt.Fprintf(w, "  now: %s\n", strings.Join(r.Commands, " | "))
	}
}
