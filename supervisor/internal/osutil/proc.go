// Package osutil holds the master's small Linux helpers: reading /proc,
// walking its own fds, sending sd_notify datagrams, and giving memory back
// at rest (memory.go). Each is written once here; none keeps state.
package osutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Stat is what baton reads of /proc/PID/stat.
type Stat struct {
	State byte // R, S, D, Z, T, …
	PPID  int
	PGRP  int // process group
}

// ReadStat reads /proc/PID/stat. The error wraps fs.ErrNotExist when the
// process is gone.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// The command name may hold spaces and parentheses; fields follow the
	// last ')': state, ppid, …
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("read stat of pid %d: no ')' in %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("read stat of pid %d: short line %q", pid, s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Stat{}, fmt.Errorf("read stat of pid %d: ppid %q: %w", pid, f[1], err)
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return Stat{}, fmt.Errorf("read stat of pid %d: pgrp %q: %w", pid, f[2], err)
	}
	return Stat{State: f[0][0], PPID: ppid, PGRP: pgrp}, nil
}

// ParentOf returns pid's parent pid, or 0 when unknown (for attribution
// only; Parent says why it is unknown).
func ParentOf(pid int) int {
	ppid, _ := Parent(pid)
	return ppid
}

// Parent returns pid's parent pid. Its error wraps fs.ErrNotExist when the
// process is gone (NoProcess); any other error (EMFILE, ENFILE, ENOMEM,
// EACCES) is this process's failure to look, no news about pid.
func Parent(pid int) (int, error) {
	st, err := ReadStat(pid)
	if err != nil {
		return 0, err
	}
	return st.PPID, nil
}

// Gone reports whether pid has exited: no such process, or a zombie. A
// failure to read /proc for another reason (out of descriptors, memory)
// says nothing about pid, so it is not gone: a caller that took it for
// dead would act on a live process as on a dead one.
func Gone(pid int) bool {
	st, err := ReadStat(pid)
	if err != nil {
		return NoProcess(err)
	}
	return st.State == 'Z'
}

// NoProcess reports whether err says the process does not exist (ENOENT
// under /proc/PID, ESRCH from a signal or pidfd), as opposed to a failure
// of the caller's own (EMFILE, …).
func NoProcess(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// ChildrenOf lists pid's child processes other than skip, from
// /proc/PID/task/*/children; empty (not nil) when there are none.
//
// It lists the task directory and opens each task's children file by name:
// a glob of the same pattern would also read every task's directory (about
// fifty entries, each a procfs inode made on the spot) to match
// "children", which made this cost milliseconds per worker.
func ChildrenOf(pid, skip int) []int {
	out := []int{}
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, _ := readDirNames(dir)
	for _, t := range tasks {
		b, err := os.ReadFile(dir + t + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil && c != skip {
				out = append(out, c)
			}
		}
	}
	return out
}

// readDirNames lists a directory's names unsorted (os.ReadDir sorts, and
// stats nothing more either; this only skips the sort).
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// GroupHasMembers reports whether a live process (not a zombie) is in
// process group pgid. It reads every /proc/PID/stat: for rare paths only.
func GroupHasMembers(pgid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil && st.PGRP == pgid && st.State != 'Z' {
			return true
		}
	}
	return false
}

// HoldsSocket reports whether pid has one of the sockets with these inodes
// open (a /proc/PID/fd entry "socket:[inode]"). A process that is gone
// holds nothing.
func HoldsSocket(pid int, inodes []uint64) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	want := make(map[string]bool, len(inodes))
	for _, ino := range inodes {
		want["socket:["+strconv.FormatUint(ino, 10)+"]"] = true
	}
	for _, e := range ents {
		if l, err := os.Readlink(dir + e.Name()); err == nil && want[l] {
			return true
		}
	}
	return false
}

// SameProgram reports whether pid runs the same executable as this
// process (a deploy that replaced the binary leaves the old path
// " (deleted)"): the keeper's test that a process announcing itself as a
// master is one, since a worker, also a child of a master, is not.
func SameProgram(pid int) bool {
	self, err1 := os.Readlink("/proc/self/exe")
	other, err2 := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err1 == nil && err2 == nil &&
		strings.TrimSuffix(self, " (deleted)") == strings.TrimSuffix(other, " (deleted)")
}
