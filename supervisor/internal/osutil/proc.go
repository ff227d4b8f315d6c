// Package osutil holds the master's small Linux helpers: reading /proc,
// walking its own fds, sending sd_notify datagrams, and giving memory back
// at rest (memory.go). Each is written once here; none keeps state.
package osutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// ParentOf returns pid's parent pid, or 0 when unknown.
func ParentOf(pid int) int {
	st, err := ReadStat(pid)
	if err != nil {
		return 0
	}
	return st.PPID
}

// Gone reports whether pid has exited: no such process, or a zombie.
func Gone(pid int) bool {
	st, err := ReadStat(pid)
	return err != nil || st.State == 'Z'
}

// ChildrenOf lists pid's child processes other than skip, from
// /proc/PID/task/*/children; empty (not nil) when there are none.
func ChildrenOf(pid, skip int) []int {
	out := []int{}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
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
