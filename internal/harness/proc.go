//go:build linux

package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Start starts cmd (baton, or a peer server) in a process group of its own,
// with stdout and stderr on one pipe that the returned Tail reads: every
// process that inherits them (each master, each worker in inherit mode)
// writes there, so the tail ends only when all of them are gone. The caller
// waits for cmd.
func Start(cmd *exec.Cmd) (*Tail, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("log pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Its own group (or session, which makes it a group leader too): a
	// terminal's ^C reaches only the caller, which then stops the
	// processes in its own order.
	if !cmd.SysProcAttr.Setsid {
		cmd.SysProcAttr.Setpgid = true
	}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	w.Close()
	return New(r), nil
}

// Pids lists the pids the entries name: masters (master_pid) and the rest
// (pid: workers, hooks), each once, in order of first mention.
func Pids(evs []Event) (masters, others []int) {
	seenM, seenO := map[int]bool{}, map[int]bool{}
	for _, e := range evs {
		if pid := e.Int("master_pid"); pid > 0 && !seenM[pid] {
			seenM[pid] = true
			masters = append(masters, pid)
		}
		if pid := e.Int("pid"); pid > 0 && !seenO[pid] {
			seenO[pid] = true
			others = append(others, pid)
		}
	}
	return masters, others
}

// Ours reports whether pid runs a binary from dir (where the caller built
// baton and its servers), so that a recycled pid is never signalled.
func Ours(dir string, pid int) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && strings.HasPrefix(exe, dir+"/")
}

// Stat returns the fields of /proc/PID/stat after the command name,
// starting with the state (field 3 of proc(5)): f[0] is the state, f[1]
// the parent pid, f[11] and f[12] utime and stime.
func Stat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name may hold spaces and parentheses; fields follow the
	// last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected format %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 || len(f[0]) != 1 {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected format %q", pid, s)
	}
	return f, nil
}

// Alive is false for a process that is gone or a zombie: it serves
// nothing and holds no fd.
func Alive(pid int) bool {
	f, err := Stat(pid)
	return err == nil && f[0] != "Z"
}

// FreeAddr returns a loopback TCP address nobody listens on right now.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
