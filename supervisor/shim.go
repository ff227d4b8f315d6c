//go:build linux

package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Workers start through a trampoline that sets LISTEN_PID to its own pid and
// then execs the server, which keeps the pid, so servers that check
// LISTEN_PID == getpid() (sd_listen_fds(3), go-systemd) accept the sockets.
// os/exec cannot set it: the pid is unknown until after fork.
//
// The trampoline is /bin/sh running shellShim: a shell starts in about a
// millisecond, where baton itself (a Go program with its package inits)
// takes 10-15 ms on a small VM, time every generation waits for. Without
// /bin/sh, baton re-executes itself as "/proc/self/exe ShimArg COMMAND
// ARGS..." (ExecShim).
const ShimArg = "__baton_exec"

// shellShim is the /bin/sh trampoline, run as sh -c shellShim NAME COMMAND
// ARGS...: it refuses to start the server when the master died before
// PR_SET_PDEATHSIG was armed (the parent changed), then sets LISTEN_PID.
const shellShim = `[ "$PPID" = "$BATON_SHIM_PPID" ] || { echo "baton: master $BATON_SHIM_PPID is gone; not starting $1" >&2; exit 1; }
unset BATON_SHIM_PPID
LISTEN_PID=$$
export LISTEN_PID
exec "$@"`

// shimCommand returns the path and argv that start command through the
// trampoline.
func shimCommand(shell string, command []string) (string, []string) {
	if shell != "" {
		return shell, append([]string{shell, "-c", shellShim, "baton-worker"}, command...)
	}
	// The running binary even if a deploy replaced the file.
	return "/proc/self/exe", append([]string{"baton", ShimArg}, command...)
}

// findShell returns /bin/sh unless it is missing or BATON_SHIM=self asks
// for the self-exec trampoline (tests use it to cover both).
func findShell() string {
	if os.Getenv("BATON_SHIM") == "self" {
		return ""
	}
	if err := syscall.Access("/bin/sh", 1 /* X_OK */); err != nil {
		return ""
	}
	return "/bin/sh"
}

// envShimPPID carries the master's pid to the trampoline, which refuses to
// run the server when its parent already changed: the master died between
// fork and PR_SET_PDEATHSIG, and nobody would ever stop the server.
const envShimPPID = "BATON_SHIM_PPID"

// ExecShim is the trampoline's body. It returns only on failure, with the
// exit status to use.
func ExecShim(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "baton: internal: "+ShimArg+" without a command")
		return 127
	}
	want := os.Getenv(envShimPPID)
	os.Unsetenv(envShimPPID)
	if want != "" && strconv.Itoa(os.Getppid()) != want {
		fmt.Fprintf(os.Stderr, "baton: master %s is gone; not starting %s\n", want, args[0])
		return 1
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))

	path := args[0]
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "baton: command %q: not found in $PATH\n", path)
			return 127
		}
		path = p
	}
	err := syscall.Exec(path, args, os.Environ())
	fmt.Fprintf(os.Stderr, "baton: exec %q: %v\n", args[0], err)
	return 127
}
