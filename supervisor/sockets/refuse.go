//go:build linux

package sockets

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Refuse makes the Set's listening sockets refuse new connections: once a
// stop has told the workers to drain, a connection the kernel completes
// would wait in a backlog nobody accepts from, and be reset only when the
// last copy of the socket closes. shutdown(SHUT_RD) on a listening socket
// stops it listening for every holder at once (the master's copies,
// tableflip's, the workers' and anything they started): TCP connections
// still in its backlog are reset, new ones are refused (RST), and a socket
// in a reuseport group leaves the group. A unix socket refuses connect
// with ECONNREFUSED. Connections already accepted are separate sockets
// and go on.
//
// Sockets systemd passed in are left listening: systemd holds them for
// the service's next start, and connections arriving meanwhile wait in
// them for it (that is what socket activation is for).
//
// It returns the names (Spec.String) of the sockets refused and of those
// left to systemd. Non-stream and non-listening sockets are skipped.
func (s *Set) Refuse() (refused, kept []string) {
	for i, f := range s.files {
		name := s.specs[i].String()
		if s.systemd[i] {
			kept = append(kept, name)
			continue
		}
		err := control(f, func(fd int) error {
			if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
				return syscall.ENOTCONN
			}
			return unix.Shutdown(fd, unix.SHUT_RD)
		})
		if err == nil {
			refused = append(refused, name)
		}
	}
	return refused, kept
}
