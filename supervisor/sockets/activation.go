//go:build linux

package sockets

import (
	"fmt"
	"os"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
)

// Activated is one socket systemd passed to this process.
type Activated struct {
	Name string
	File *os.File
}

// TakeActivated returns the sockets a systemd .socket unit passed to this
// process (LISTEN_PID equal to our pid), in order, and removes the LISTEN_*
// variables so they reach neither workers nor a re-executed master. It
// returns nothing when the variables are absent or meant for another pid,
// and an error naming the fd when one is not a listening socket.
func TakeActivated() ([]Activated, error) {
	files := activation.Files(true)
	out := make([]Activated, 0, len(files))
	for _, f := range files {
		fd := int(f.Fd())
		if v, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err != nil || v != 1 {
			return nil, fmt.Errorf("socket activation: fd %d (%q) is not a listening socket", fd, f.Name())
		}
		// Workers get non-blocking sockets whoever bound them; systemd
		// leaves them blocking unless NonBlocking=true.
		if err := syscall.SetNonblock(fd, true); err != nil {
			return nil, fmt.Errorf("socket activation: fd %d: set non-blocking: %w", fd, err)
		}
		out = append(out, Activated{Name: f.Name(), File: f})
	}
	return out, nil
}

// match pairs specs with activated sockets: by LISTEN_FDNAMES name where one
// matches a spec's name, else by position.
func match(specs []Spec, act []Activated) map[int]*os.File {
	out := make(map[int]*os.File)
	used := make(map[int]bool)
	for i, s := range specs {
		for j, a := range act {
			if !used[j] && a.Name == s.Name {
				out[i], used[j] = a.File, true
				break
			}
		}
	}
	for i := range specs {
		if out[i] != nil {
			continue
		}
		for j, a := range act {
			if !used[j] {
				out[i], used[j] = a.File, true
				break
			}
		}
	}
	for j, a := range act {
		if !used[j] {
			a.File.Close() // more sockets than --listen entries
		}
	}
	return out
}
