//go:build linux

package sockets

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// This file is the end of a generation's part in a classic-BPF group,
// where the index the steering program returns must follow the kernel's
// reordering.
//
// During a blue-green or canary upgrade the group is [ours, successor's]
// at indices 0 and 1, plus any socket that joined since the switch (a
// stray: the check before the switch refused the upgrade if one was there
// earlier), at 2 and up. Users go to index 1. When our socket leaves, the
// kernel moves the group's last socket into our slot 0:
//
//	no stray:   [successor]          the successor is index 0
//	strays:     [last stray, successor, ...]   the successor stays index 1
//
// The program still returns 1. In the first case that index is now free,
// and the next socket to join (a stray started after the upgrade) takes
// it and with it every user's connection. So the master whose socket
// leaves makes the leave itself (it is the last holder: its workers have
// exited), with the group's membership read just before, and re-attaches
// the program, through a copy of the successor's socket, with the index
// the successor has now. Between the leave and the new program a few
// microseconds pass; a socket that joins or leaves within them is seen by
// comparing the membership after, and reported as Unsure.

// Resteer is what Leave did to one classic-BPF group.
type Resteer struct {
	Spec Spec
	// Index is the successor's socket's index in the group after ours
	// left, as the re-attached program returns it; -1 when none was
	// attached (see StillListening and Err).
	Index int
	// Strays is how many sockets other than ours and the successor's
	// were in the group just before ours left.
	Strays int
	// StillListening: another process (a leftover helper) still holds
	// our socket, so it did not leave and nothing moved.
	StillListening bool
	// Unsure: the group's other members changed between the reads before
	// and after the leave, so the index may be the other one (0 or 1).
	Unsure bool
	Err    error
}

// Leave closes s, as Close does, and for every group steered by classic
// BPF re-steers users to the socket of the master with pid successor,
// which must have been index 1 while ours was index 0 (a promoted
// upgrade). Blocks for two sock_diag dumps per group; groups steered by
// the eBPF map need nothing (the map names sockets, not positions).
// With successor <= 0 it is Close.
func (s *Set) Leave(successor int) []Resteer {
	if successor <= 0 {
		s.Close()
		return nil
	}
	return s.leave(func(group map[uint64]bool, own uint64) (*os.File, uint64, error) {
		return peerSocket(successor, group, own)
	})
}

// successorFn returns a copy of the successor's socket in group, and its
// inode.
type successorFn func(group map[uint64]bool, own uint64) (*os.File, uint64, error)

func (s *Set) leave(successor successorFn) []Resteer {
	var out []Resteer
	for i := range s.files {
		if (i < len(s.progs) && s.progs[i] != nil) || s.specs[i].Network == "unix" {
			continue
		}
		out = append(out, s.leaveOne(i, successor))
	}
	s.Close()
	return out
}

func (s *Set) leaveOne(i int, successor successorFn) Resteer {
	r := Resteer{Spec: s.specs[i], Index: -1}
	f := s.files[i]
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		r.Err = fmt.Errorf("stat %s: %w", s.specs[i], err)
		return r
	}
	own := st.Ino
	pre, me, err := groupOf(s.specs[i], own, nil)
	if err != nil {
		r.Err = err
		return r
	}
	if me == nil {
		r.Err = fmt.Errorf("our socket on %s is not listening", s.specs[i])
		return r
	}
	succ, succIno, err := successor(pre, own)
	if err != nil {
		r.Err = fmt.Errorf("a copy of the successor's socket on %s: %w", s.specs[i], err)
		return r
	}
	defer succ.Close()
	strays := others(pre, own, succIno)
	r.Strays = len(strays)
	// The leave: this is the last copy (the registry holds none, and the
	// workers have exited) unless a leftover holds the socket.
	f.Close() // Close closes it again, harmlessly
	post, _, err := groupOf(s.specs[i], own, me)
	if err != nil {
		r.Err = err
		return r
	}
	if post[own] {
		r.StillListening = true
		return r
	}
	idx := 0
	if len(strays) > 0 {
		idx = 1
	}
	after := others(post, own, succIno)
	r.Unsure = len(after) != len(strays)
	for ino := range after {
		if !strays[ino] {
			r.Unsure = true
		}
	}
	if err := attachClassic(succ, Steer(idx, 1, 0)); err != nil {
		r.Err = fmt.Errorf("attach the steering program (SO_ATTACH_REUSEPORT_CBPF) to %s through the successor's socket: %w", s.specs[i], err)
		return r
	}
	r.Index = idx
	return r
}

// groupOf returns the inodes of the sockets in the reuseport group of our
// socket own on spec's address: the same address and uid (the kernel
// groups only those), so that a socket on an overlapping address, which
// is in a group of its own, does not count. Our own is included while it
// listens; me is its entry, as found (when the argument is nil) or as
// given (after it left).
func groupOf(spec Spec, own uint64, me *Listener) (map[uint64]bool, *Listener, error) {
	ms, err := Members([]Spec{spec})
	if err != nil {
		return nil, nil, err
	}
	for i := range ms {
		if me == nil && ms[i].Inode == own {
			me = &ms[i]
		}
	}
	out := map[uint64]bool{}
	for _, l := range ms {
		if me != nil && l.Addr == me.Addr && l.UID == me.UID {
			out[l.Inode] = true
		}
	}
	return out, me, nil
}

func others(group map[uint64]bool, own, succ uint64) map[uint64]bool {
	out := map[uint64]bool{}
	for ino := range group {
		if ino != own && ino != succ {
			out[ino] = true
		}
	}
	return out
}

// peerSocket returns a copy of a socket of process pid that is in group
// (not own), taken with pidfd_getfd (Linux >= 5.6; the caller must be
// allowed to ptrace pid: its parent, or root), and its inode.
func peerSocket(pid int, group map[uint64]bool, own uint64) (*os.File, uint64, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, err
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(link, "socket:[%d]", &ino); err != nil || ino == own || !group[ino] {
			continue
		}
		target, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return nil, 0, fmt.Errorf("pidfd_open %d: %w", pid, err)
		}
		fd, err := unix.PidfdGetfd(pfd, target, 0)
		unix.Close(pfd)
		if err != nil {
			return nil, 0, fmt.Errorf("pidfd_getfd %d fd %d: %w", pid, target, err)
		}
		return os.NewFile(uintptr(fd), "successor socket"), ino, nil
	}
	return nil, 0, fmt.Errorf("pid %d holds no socket of the group", pid)
}
