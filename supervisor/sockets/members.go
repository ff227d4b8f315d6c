//go:build linux

package sockets

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// This file is the membership check of a reuseport group: which listening
// sockets share a --listen address with baton's, and which of them baton
// did not open. It works without privilege (sock_diag is open to every
// user in the network namespace), so it runs under either steering: with
// classic BPF a foreign socket can be handed users' connections; with the
// eBPF map it cannot, but it is still a process on the service's address
// that nobody asked for.
//
// Who can join: the kernel lets a socket join a TCP reuseport group when it
// sets SO_REUSEPORT, binds the same address and port, and belongs to the
// same effective uid as the group's first socket (root joins root's). A
// socket on a more specific address (127.0.0.1:P beside 0.0.0.0:P) forms
// a group of its own and wins the lookup for that address, which no
// steering program can prevent, so it counts as foreign too.

// Listener is a listening TCP socket on one of the addresses checked.
type Listener struct {
	Addr  netip.AddrPort
	Inode uint64
	UID   uint32
	// PID and Command of a process holding it, where /proc shows one (0
	// and "" otherwise, e.g. another user's process without privilege).
	PID     int
	Command string
}

func (l Listener) String() string {
	s := fmt.Sprintf("socket inode %d listening on %s (uid %d", l.Inode, l.Addr, l.UID)
	if l.PID > 0 {
		s += fmt.Sprintf(", pid %d %s", l.PID, l.Command)
	} else {
		s += ", no process of it visible in /proc"
	}
	return s + ")"
}

// Inodes returns the socket inodes of s, in --listen order.
func (s *Set) Inodes() []uint64 {
	out := make([]uint64, 0, len(s.files))
	for _, f := range s.files {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err == nil {
			out = append(out, st.Ino)
		}
	}
	return out
}

// Specs returns the addresses of s.
func (s *Set) Specs() []Spec { return s.specs }

// Members returns every listening TCP socket that shares one of specs'
// addresses: the same port, and the same address or either one a
// wildcard. One sock_diag dump of listening sockets per address family;
// no /proc lookup (see Owners).
func Members(specs []Spec) ([]Listener, error) {
	want := addrPorts(specs)
	var out []Listener
	buf := make([]byte, diagBufLen)
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ls, err := listening(fam, buf)
		if err != nil {
			return nil, err
		}
		for _, l := range ls {
			for _, w := range want {
				if overlaps(l.Addr, w) {
					out = append(out, l)
					break
				}
			}
		}
	}
	return out, nil
}

// Shadows returns baton's address that l, bound to a more specific address
// of the same port, takes connections from (0.0.0.0:P for a socket on
// 127.0.0.1:P), and ok false when l is bound to one of specs' addresses
// or a wildcard. Such a socket is not in baton's reuseport group: the
// kernel's lookup prefers a listener bound to the exact destination
// address over a wildcard one, so it receives every connection to its
// address whatever program steers baton's group.
func Shadows(l Listener, specs []Spec) (ours netip.AddrPort, ok bool) {
	a := l.Addr.Addr().Unmap()
	if a.IsUnspecified() {
		return netip.AddrPort{}, false
	}
	for _, w := range addrPorts(specs) {
		if w.Port() == l.Addr.Port() && w.Addr().Unmap() == a {
			return netip.AddrPort{}, false
		}
	}
	for _, w := range addrPorts(specs) {
		if w.Port() == l.Addr.Port() && w.Addr().IsUnspecified() {
			return w, true
		}
	}
	return netip.AddrPort{}, false
}

// addrPorts returns specs' TCP addresses, the host resolved (an empty one
// is the IPv6 wildcard, which also takes IPv4).
func addrPorts(specs []Spec) []netip.AddrPort {
	want := make([]netip.AddrPort, 0, len(specs))
	for _, spec := range specs {
		if spec.Network == "unix" {
			continue
		}
		host, port, err := net.SplitHostPort(spec.Addr)
		if err != nil {
			continue
		}
		p, _ := strconv.Atoi(port)
		a := netip.IPv6Unspecified()
		if host != "" {
			if ip, err := netip.ParseAddr(host); err == nil {
				a = ip.Unmap()
			} else if ips, err := net.LookupIP(host); err == nil && len(ips) > 0 {
				a, _ = netip.AddrFromSlice(ips[0])
				a = a.Unmap()
			}
		}
		want = append(want, netip.AddrPortFrom(a, uint16(p)))
	}
	return want
}

func overlaps(a, b netip.AddrPort) bool {
	if a.Port() != b.Port() {
		return false
	}
	x, y := a.Addr().Unmap(), b.Addr().Unmap()
	return x == y || x.IsUnspecified() || y.IsUnspecified()
}

// Foreign returns the members of specs' groups whose inode is not in own,
// with the process holding each where /proc shows it.
func Foreign(specs []Spec, own map[uint64]bool) ([]Listener, error) {
	ms, err := Members(specs)
	if err != nil {
		return nil, err
	}
	var out []Listener
	for _, l := range ms {
		if !own[l.Inode] {
			out = append(out, l)
		}
	}
	if len(out) > 0 {
		Owners(out, nil)
	}
	return out, nil
}

// Owners fills in PID and Command of ls from /proc/PID/fd: of the pids
// given, or of every process when pids is nil. The first holder found is
// named (a socket inherited by several processes has several); every
// process is scanned in pid order, so that the one that opened the socket
// (usually the oldest) is named rather than a child that holds it for a
// moment between fork and exec, which /proc's name order could list
// first (pid 10234 before 8703).
func Owners(ls []Listener, pids []int) {
	byIno := make(map[uint64]int, len(ls))
	for i, l := range ls {
		byIno[l.Inode] = i
	}
	if pids == nil {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, pid)
			}
		}
		slices.Sort(pids)
	}
	left := len(ls)
	for _, pid := range pids {
		if left == 0 {
			return
		}
		for _, ino := range SocketInodes(pid) {
			i, ok := byIno[ino]
			if !ok || ls[i].PID != 0 {
				continue
			}
			ls[i].PID, ls[i].Command = pid, command(pid)
			left--
		}
	}
}

// SocketInodes returns the inodes of the sockets pid holds open, as far as
// /proc shows them (none for another user's process without privilege).
func SocketInodes(pid int) []uint64 {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		if ino, err := strconv.ParseUint(strings.TrimSuffix(link[len("socket:["):], "]"), 10, 64); err == nil {
			out = append(out, ino)
		}
	}
	return out
}

func command(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		c, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
		return strings.TrimSpace(string(c))
	}
	s := strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// diagReqLen is the size of struct inet_diag_req_v2: family, protocol,
// ext, pad (1 byte each), states (32 bits), id (48 bytes).
const diagReqLen = 56

// diagBufLen is the receive buffer. The kernel makes each part of a dump
// as large as the largest read it has seen from the socket, and never
// smaller than NLMSG_GOODSIZE (a page, at most 8 KiB): reads of 8 KiB
// always take a whole part.
const diagBufLen = 8 << 10

// listening dumps the listening TCP sockets of one family in this network
// namespace, reading into buf (diagBufLen bytes): one NETLINK_INET_DIAG
// request for the TCP_LISTEN state only (the kernel filters; under load
// the connections, TIME_WAIT above all, outnumber the listeners by
// thousands). Layout of struct inet_diag_msg: family, state, timer,
// retrans (1 byte each); id {sport, dport (big-endian 16), src, dst (16
// bytes each), if, cookie[2]}; expires, rqueue, wqueue, uid, inode (32
// bits each).
//
// Plain system calls rather than a netlink package: this runs every
// second in a serving blue-green or canary master, and every page of code
// it touches stays mapped in that master: vishvananda/netlink's request
// (its socket wrapped in an *os.File with a finalizer, its reads parsed
// into messages) kept 0.9 MiB more of it mapped (keeper + master PSS 10 s
// after rest, blue-green, 4 workers: 10.8-10.9 -> 9.9-10.0 MiB).
func listening(family uint8, buf []byte) ([]Listener, error) {
	fail := func(err error) ([]Listener, error) {
		return nil, fmt.Errorf("sock_diag dump of listening TCP sockets: %w", err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return fail(err)
	}
	defer unix.Close(fd)
	const seq = 1
	req := buf[:unix.NLMSG_HDRLEN+diagReqLen]
	clear(req)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	body := req[unix.NLMSG_HDRLEN:]
	body[0], body[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], 1<<unix.BPF_TCP_LISTEN)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail(err)
	}
	var out []Listener
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail(err)
		}
		// Messages of struct nlmsghdr {len, type, flags, seq, pid} and
		// their data, each aligned to 4 bytes.
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fail(fmt.Errorf("malformed message of %d bytes", l))
			}
			typ, mseq, m := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:]), b[unix.NLMSG_HDRLEN:l]
			b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
			switch {
			case mseq != seq:
				continue
			case typ == unix.NLMSG_DONE:
				return out, nil
			case typ == unix.NLMSG_ERROR:
				// struct nlmsgerr: a negative errno, 0 for an ack.
				if len(m) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m)); errno != 0 {
						return fail(syscall.Errno(-errno))
					}
				}
				return out, nil
			case len(m) < 72:
				continue
			}
			port := binary.BigEndian.Uint16(m[4:6])
			var a netip.Addr
			if m[0] == unix.AF_INET {
				a = netip.AddrFrom4([4]byte(m[8:12]))
			} else {
				a = netip.AddrFrom16([16]byte(m[8:24])).Unmap()
			}
			out = append(out, Listener{Addr: netip.AddrPortFrom(a, port),
				UID: binary.NativeEndian.Uint32(m[64:68]), Inode: uint64(binary.NativeEndian.Uint32(m[68:72]))})
		}
	}
}
