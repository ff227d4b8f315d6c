package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-sh/baton/supervisor"
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
	return supervisor.DefaultControlPath(c.String("pid-file"))
}

// ask sends one request and returns the connection, positioned after the
// request, for the caller to read replies from.
func ask(c *cli.Context, cmd string) (net.Conn, *bufio.Reader, error) {
	path := controlPath(c)
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, nil, &exitCode{supervisor.ReloadRefused, fmt.Sprintf("no master at %s: %v", path, unwrapSyscall(err))}
	}
	conn.SetDeadline(time.Now().Add(c.Duration("timeout")))
	b, _ := json.Marshal(supervisor.ControlRequest{Cmd: cmd})
	if _, err := conn.Write(append(b, '\n')); err != nil {
		conn.Close()
		return nil, nil, &exitCode{supervisor.ReloadRefused, fmt.Sprintf("control %s: %v", path, err)}
	}
	return conn, bufio.NewReader(conn), nil
}

func unwrapSyscall(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

func readReply(c *cli.Context, r *bufio.Reader, v any) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return &exitCode{exitUnknown, fmt.Sprintf("no answer within %s (--timeout); the outcome is unknown", c.Duration("timeout"))}
		}
		return &exitCode{exitUnknown, fmt.Sprintf("control connection closed without an answer: %v", err)}
	}
	if _, isReload := v.(*supervisor.ReloadResult); !isReload {
		// Any other answer may be a refusal instead of what was asked.
		var refusal struct {
			OK     *bool  `json:"ok"`
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		}
		if json.Unmarshal(line, &refusal) == nil && refusal.OK != nil && !*refusal.OK {
			return &exitCode{supervisor.ReloadRefused, "refused: " + refusal.Reason}
		}
	}
	if err := json.Unmarshal(line, v); err != nil {
		return &exitCode{exitUnknown, fmt.Sprintf("bad answer from master: %v", err)}
	}
	return nil
}

// waitGone waits until pid has exited (gone or a zombie). The master's fds
// close a moment before it becomes a zombie, so EOF alone is early.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && strings.HasPrefix(string(b[i+1:]), " Z") {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

func reloadCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "upgrade to a new generation and wait for the outcome (exit 0 took over, 1 rolled back, 2 not started, 3 unknown)",
		Flags: append(controlFlags(10*time.Minute, "how long to wait for the outcome of the upgrade (exit 3 if none by then)"),
			&cli.BoolFlag{Name: "json", Usage: "print the outcome as JSON"}),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			conn, r, err := ask(c, "reload")
			if err != nil {
				return err
			}
			defer conn.Close()
			var res supervisor.ReloadResult
			if err := readReply(c, r, &res); err != nil {
				return err
			}
			if c.Bool("json") {
				b, _ := json.Marshal(res)
				fmt.Println(string(b))
			} else {
				printReload(os.Stdout, res)
			}
			if res.Code != supervisor.ReloadOK {
				return &exitCode{res.Code, "reload failed: " + res.Reason}
			}
			return nil
		},
	}
}

func printReload(w io.Writer, res supervisor.ReloadResult) {
	switch res.Code {
	case supervisor.ReloadOK:
		fmt.Fprintf(w, "reload ok: generation %d serving, master %d -> %d, handover %.1f ms (workers starting %.1f ms, baton %.1f ms)\n",
			res.Generation, res.OldMasterPID, res.NewMasterPID, res.TotalMS, res.WorkersStartingMS, res.BatonMS)
	case supervisor.ReloadRollback:
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

func statusCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:         "status",
		Usage:        "show the master, its workers and the last upgrade",
		Flags:        append(controlFlags(10*time.Second, "how long to wait for the master's answer"), &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			conn, r, err := ask(c, "status")
			if err != nil {
				return err
			}
			defer conn.Close()
			var st supervisor.Status
			if err := readReply(c, r, &st); err != nil {
				return err
			}
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

func printStatus(w io.Writer, st supervisor.Status) {
	fmt.Fprintf(w, "master %d  generation %d  %s  up %s  baton %s\n", st.MasterPID, st.Generation, st.State, msDur(st.UptimeMS), st.Version)
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
			conn, r, err := ask(c, "stop")
			if err != nil {
				return err
			}
			defer conn.Close()
			var ack struct {
				OK        bool `json:"ok"`
				MasterPID int  `json:"master_pid"`
			}
			if err := readReply(c, r, &ack); err != nil {
				return err
			}
			// The master holds this connection until it exits.
			if _, err := io.Copy(io.Discard, r); err != nil || !waitGone(ack.MasterPID, 5*time.Second) {
				return &exitCode{exitUnknown, fmt.Sprintf("master %d still stopping after %s (--timeout)", ack.MasterPID, c.Duration("timeout"))}
			}
			fmt.Printf("master %d stopped\n", ack.MasterPID)
			return nil
		},
	}
}
