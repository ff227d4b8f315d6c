package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// ShimArg is argv[1] of the worker trampoline: the master starts each worker
// as "/proc/self/exe ShimArg COMMAND ARGS...". The trampoline sets LISTEN_PID
// to its own pid and execs COMMAND, which keeps the pid, so servers that check
// LISTEN_PID == getpid() (sd_listen_fds(3), go-systemd) accept the sockets.
// os/exec cannot set it: the pid is unknown until after fork.
const ShimArg = "__baton_exec"

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
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	markCloexecFrom(3 + n)
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

// markCloexecFrom makes every fd >= first close-on-exec, so the server
// inherits exactly 0, 1, 2 and its sockets whatever the master held open
// without O_CLOEXEC (tableflip's pipes on fds 3 and 4 in a re-executed
// master, for one).
func markCloexecFrom(first int) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= first {
			syscall.CloseOnExec(fd)
		}
	}
}
