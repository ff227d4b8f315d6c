//go:build linux

// Package cgroup is the small part of cgroup v2 baton uses to know and end
// a generation's whole process tree: make a cgroup, start a process in it
// (CLONE_INTO_CGROUP: no instant outside it), list and signal its
// processes, kill them all (cgroup.kill), learn when it is empty, remove
// it. It reads the cgroup2 mount from /proc/self/mountinfo (a hybrid host
// has it at /sys/fs/cgroup/unified, a unified one at /sys/fs/cgroup) and
// keeps no state beyond a path.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mount returns where the cgroup2 hierarchy is mounted in this mount
// namespace, or an error when it is not.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("find cgroup2 mount: no cgroup2 file system mounted (cgroup v1 only)")
}

// Own returns the cgroup v2 directory of this process: the mount joined
// with the "0::PATH" line of /proc/self/cgroup.
func Own() (string, error) { return of("self") }

// Of returns the cgroup v2 directory of process pid, as Own does; an error
// wrapping fs.ErrNotExist when pid is gone.
func Of(pid int) (string, error) { return of(strconv.Itoa(pid)) }

func of(proc string) (string, error) {
	mnt, err := Mount()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/" + proc + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("cgroup of %s: %w", proc, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mnt, rest), nil
		}
	}
	return "", fmt.Errorf("cgroup of %s: no cgroup v2 line in /proc/%s/cgroup", proc, proc)
}

// Group is one cgroup v2 directory.
type Group string

// Make creates the cgroup dir (its parent must exist); one that exists is
// reused.
func Make(dir string) (Group, error) {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return Group(dir), nil
}

// MakeNew creates the cgroup dir (its parent must exist) and fails, with
// an error wrapping fs.ErrExist, when it exists: a cgroup that must be
// this caller's alone.
func MakeNew(dir string) (Group, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return Group(dir), nil
}

// Path is the cgroup's directory.
func (g Group) Path() string { return string(g) }

// Open opens the cgroup's directory for SysProcAttr.CgroupFD; the caller
// closes it.
func (g Group) Open() (*os.File, error) {
	f, err := os.OpenFile(string(g), os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", g, err)
	}
	return f, nil
}

// Move puts process pid (all its threads) into the cgroup.
func (g Group) Move(pid int) error {
	if err := os.WriteFile(filepath.Join(string(g), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, g, err)
	}
	return nil
}

// Procs lists the processes in the cgroup and every cgroup below it.
func (g Group) Procs() []int {
	var out []int
	filepath.WalkDir(string(g), func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return nil
	})
	return out
}

// Populated reports whether a live process is in the cgroup or below it
// (cgroup.events: zombies count as gone). A cgroup that no longer exists
// is not populated.
func (g Group) Populated() bool {
	b, err := os.ReadFile(filepath.Join(string(g), "cgroup.events"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0"
		}
	}
	return false
}

// Signal sends sig to every process in the cgroup and below it. A process
// listed and gone before the signal is skipped; a pid cannot be handed to
// another process while its zombie is still in the cgroup.
func (g Group) Signal(sig syscall.Signal) {
	for _, pid := range g.Procs() {
		syscall.Kill(pid, sig)
	}
}

// Kill SIGKILLs every process in the cgroup and below it at once
// (cgroup.kill, Linux 5.14), or one by one where the kernel has no
// cgroup.kill, in which case a process forking meanwhile is caught by
// the next call.
func (g Group) Kill() error {
	err := os.WriteFile(filepath.Join(string(g), "cgroup.kill"), []byte("1"), 0)
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(string(g)); serr == nil {
			g.Signal(syscall.SIGKILL)
			return nil
		}
	}
	return fmt.Errorf("kill cgroup %s: %w", g, err)
}

// Remove removes the cgroup and every empty cgroup below it, waiting up
// to wait for the kernel to let go of the last exited processes (rmdir
// fails with EBUSY a moment after they are reaped).
func (g Group) Remove(wait time.Duration) error {
	var dirs []string
	filepath.WalkDir(string(g), func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	deadline := time.Now().Add(wait)
	for i := len(dirs) - 1; i >= 0; i-- {
		for {
			err := syscall.Rmdir(dirs[i])
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}
