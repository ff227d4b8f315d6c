//go:build linux

package sockets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"golang.org/x/sys/unix"
)

// This file is the socket side of the blue-green and canary strategies.
//
// Every generation binds its own listening socket for each --listen
// address, with SO_REUSEPORT, so the sockets of all live generations form
// one reuseport group per address. A classic BPF program attached to the
// group (SO_ATTACH_REUSEPORT_CBPF, no privilege needed) returns, for each
// new connection, the index of the socket that receives it.
//
// How the kernel numbers the sockets of a group (net/core/sock_reuseport.c):
// a TCP socket joins at listen(), at index num_socks (so in join order);
// when one leaves (its last fd closed, or shutdown), the socket at the last
// index moves into its slot. An index the program returns that is out of
// range falls back to the kernel's hash over all sockets. baton keeps at
// most two generations' sockets in a group (tableflip refuses an upgrade
// until the previous master, and with it its workers, has exited), so: the
// serving generation's socket is index 0 and a candidate's is index 1.
// Before each upgrade the serving master checks that its socket is alone
// in the group and attaches Steer(0, 1, 0) afresh, so that a candidate
// that joins can never take a user's connection. When the older socket
// leaves after a promote, the survivor moves to index 0 only if nothing
// joined after it: handoff.go makes that leave and re-steers.
//
// Closing a socket resets every connection still in its accept queue, and
// without request migration (net.ipv4.tcp_migrate_req=1) the ones still in
// the handshake too. So a generation that receives no more connections is
// closed only once QueueLen says its queue is empty.

// ProbeSource is the loopback address baton's own probes of a candidate
// (health check, smoke-test proxy) connect from. The steering program sends
// every IPv4 connection from it to the candidate's socket; nothing else
// reaches the candidate before the switch.
var ProbeSource = netip.AddrFrom4([4]byte{127, 66, 84, 78})

// ProbeMark is the socket mark (SO_MARK, needs CAP_NET_ADMIN) of probes
// over IPv6, where no reserved loopback source exists; the program matches
// it too.
const ProbeMark = 0x6261746e // "batn"

// Offsets of classic BPF's ancillary and network-header loads
// (linux/filter.h); x/sys/unix does not name them.
const (
	skfAdOff     = -0x1000
	skfAdMark    = 8
	skfAdRandom  = 56
	skfNetOff    = -0x100000
	ipv4SrcOff   = 12
	percentScale = 100
)

// Steer returns the classic BPF program for a reuseport group: connections
// from ProbeSource (IPv4) or carrying ProbeMark go to socket index
// candidate; of the others, canaryPct percent (0..100, drawn per
// connection) go to candidate and the rest to live. Steer(0, 1, 0) keeps
// users on the serving generation; Steer(1, 1, 0) is the switch.
func Steer(live, candidate, canaryPct int) []unix.SockFilter {
	src := ProbeSource.As4()
	probeIP := uint32(src[0])<<24 | uint32(src[1])<<16 | uint32(src[2])<<8 | uint32(src[3])
	ld := func(size uint16, k int) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | size | unix.BPF_ABS, K: uint32(int32(k))}
	}
	ret := func(i int) unix.SockFilter { return unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: uint32(i)} }
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
	}
	var users []unix.SockFilter
	switch {
	case canaryPct <= 0:
		users = []unix.SockFilter{ret(live)}
	case canaryPct >= percentScale:
		users = []unix.SockFilter{ret(candidate)}
	default:
		users = []unix.SockFilter{
			ld(unix.BPF_W, skfAdOff+skfAdRandom),
			{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: percentScale},
			{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: uint32(canaryPct), Jt: 0, Jf: 1},
			ret(live),
			ret(candidate),
		}
	}
	// Layout: 0..6 the probe test, then users, then the candidate's ret.
	n := uint8(len(users))
	prog := []unix.SockFilter{
		ld(unix.BPF_W, skfAdOff+skfAdMark),                     // 0: A = skb->mark
		jeq(ProbeMark, 5+n, 0),                                 // 1: probe mark -> candidate
		ld(unix.BPF_B, skfNetOff),                              // 2: A = version/IHL byte
		{Code: unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K, K: 4}, // 3
		jeq(4, 0, 2),                         // 4: IPv4? else users
		ld(unix.BPF_W, skfNetOff+ipv4SrcOff), // 5: A = source address
		jeq(probeIP, n, 0),                   // 6: the probe source -> candidate
	}
	prog = append(prog, users...)
	return append(prog, ret(candidate))
}

// OpenGroup binds a fresh socket of this process's own for every spec, with
// SO_REUSEPORT, joining the reuseport group of any socket already bound to
// the same address by the same user (a previous generation). Sockets are
// plain TCP, never MPTCP: Go >= 1.24 makes listening sockets MPTCP where
// the kernel has it, and MPTCP sockets refuse SO_ATTACH_REUSEPORT_CBPF with
// EOPNOTSUPP. Unix sockets and port 0 cannot form a group: errors wrap ErrBadSpec.
// Nothing passes through tableflip's registry: a new master must not
// inherit the old generation's socket, or the group would keep it.
//
// first says this is the service's first generation: then the address must
// be free. SO_REUSEPORT would otherwise let it join another service's
// group (or a socket a stray process still holds), and the steering
// program's socket indices would name processes that are not ours.
func OpenGroup(specs []Spec, first bool) (*Set, error) {
	s := &Set{specs: specs}
	for _, spec := range specs {
		if err := GroupSpecOK(spec); err != nil {
			s.Close()
			return nil, err
		}
		if first {
			var plain net.ListenConfig
			plain.SetMultipathTCP(false)
			ln, err := plain.Listen(context.Background(), spec.Network, spec.Addr)
			if err != nil {
				s.Close()
				return nil, fmt.Errorf("listen %s %s: %w (blue-green and canary need the address to themselves)", spec.Network, spec.Addr, osutil.Cause(err))
			}
			ln.Close()
		}
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		lc.SetMultipathTCP(false)
		ln, err := lc.Listen(context.Background(), spec.Network, spec.Addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen %s %s with SO_REUSEPORT: %w", spec.Network, spec.Addr, osutil.Cause(err))
		}
		f, err := dupFile(ln.(syscall.Conn), spec.String())
		ln.Close() // the dup keeps the socket
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dup %s: %w", spec, err)
		}
		s.files = append(s.files, f)
	}
	return s, nil
}

// GroupSpecOK reports why spec cannot join a reuseport group, or nil.
func GroupSpecOK(spec Spec) error {
	if spec.Network == "unix" {
		return fmt.Errorf("%w %q: a unix socket cannot join a SO_REUSEPORT group, so blue-green and canary need TCP listeners", ErrBadSpec, spec.String())
	}
	if _, port, err := net.SplitHostPort(spec.Addr); err == nil && port == "0" {
		return fmt.Errorf("%w %q: port 0 would give each generation another port; blue-green and canary need a fixed port", ErrBadSpec, spec.String())
	}
	return nil
}

// Attach installs prog on the reuseport group of every socket in s. The
// kernel swaps the group's program atomically: a connection is steered by
// the old program or the new one, never by neither.
func (s *Set) Attach(prog []unix.SockFilter) error {
	for i, f := range s.files {
		if err := attachClassic(f, prog); err != nil {
			return fmt.Errorf("attach the steering program (SO_ATTACH_REUSEPORT_CBPF) to %s: %w", s.specs[i], err)
		}
	}
	return nil
}

// QueueLen returns the number of connections waiting in the accept queues
// of s (TCP_INFO's tcpi_unacked on a listener is its accept backlog).
// Connections still in the handshake are not counted: the kernel does not
// report them.
func (s *Set) QueueLen() (int, error) { return QueueLen(s.files) }

// QueueLen is Set.QueueLen over listening sockets that may be closed
// meanwhile by another goroutine (an error then).
func QueueLen(files []*os.File) (int, error) {
	total := 0
	for _, f := range files {
		err := control(f, func(fd int) error {
			ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				return err
			}
			total += int(ti.Unacked)
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("TCP_INFO of %s: %w", f.Name(), err)
		}
	}
	return total, nil
}

func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// MigrateReq reports net.ipv4.tcp_migrate_req of this network namespace:
// whether the kernel moves connections queued on, or in the handshake with,
// a closing socket of a reuseport group to another socket of the group.
// An error means the kernel has no such setting (Linux < 5.14).
func MigrateReq() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return false, err
	}
	v, err := strconv.Atoi(string(trimNL(b)))
	if err != nil {
		return false, errors.New("unreadable net.ipv4.tcp_migrate_req")
	}
	return v != 0, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
