//go:build linux

package harness

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// Which client connections a process held when it was killed, and which
// failed requests they explain. A soak that SIGKILLs a worker expects the
// requests in that worker's hands to fail and nothing else: Attribute
// tells the two apart by the connections' ends, read from /proc just
// before the kill while the worker is stopped.

// ConnEnds is a TCP connection by its two ends, named as its client sees
// them: Client is the client's address and (ephemeral) port.
type ConnEnds struct{ Client, Server netip.AddrPort }

// HeldConns is what a set of stopped processes held at one instant.
type HeldConns struct {
	At   time.Time // after the processes stopped, before /proc was read
	Pids []int
	// Held: ESTABLISHED connections whose socket is in one of Pids' fd
	// tables. A socket the server side has seen closed (CLOSE_WAIT) is
	// left out: its client closed it, no request can fail on it.
	Held map[ConnEnds]bool
	// Queued: ESTABLISHED connections to a port one of Pids listens on that
	// no process has accepted yet (no inode). They wait in an accept queue
	// of that port, which /proc does not name; they die with the kill only
	// if the killed processes held that listening socket's last descriptor.
	Queued map[ConnEnds]bool
}

// StopTree SIGSTOPs pid, then its descendants (each after its parent has
// stopped, so none forks meanwhile), and waits until every thread of each
// is stopped, for timeout at most in all. It returns the pids stopped, pid
// first. On an error (pid gone, the timeout) it resumes what it stopped
// (SIGCONT) and returns none. Signal only a pid you started, or checked.
func StopTree(pid int, timeout time.Duration) ([]int, error) {
	if pid <= 0 { // kill(2) would signal a process group
		return nil, fmt.Errorf("stop process %d: not a pid", pid)
	}
	deadline := time.Now().Add(timeout)
	var stopped []int
	fail := func(err error) ([]int, error) {
		for _, p := range stopped {
			syscall.Kill(p, syscall.SIGCONT)
		}
		return nil, err
	}
	for todo := []int{pid}; len(todo) > 0; {
		p := todo[0]
		todo = todo[1:]
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			if p != pid {
				continue // a descendant that exited meanwhile
			}
			return fail(fmt.Errorf("SIGSTOP %d: %w", p, err))
		}
		stopped = append(stopped, p)
		for !allStopped(p) {
			if !Alive(p) && p != pid {
				break
			}
			if time.Now().After(deadline) {
				return fail(fmt.Errorf("process %d not stopped after %s", p, timeout))
			}
			time.Sleep(time.Millisecond)
		}
		todo = append(todo, Children(p)...)
	}
	return stopped, nil
}

// allStopped reports whether every thread of pid is stopped (state T, or t
// under a tracer).
func allStopped(pid int) bool {
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/stat")
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || (s[i+2] != 'T' && s[i+2] != 't') {
			return false
		}
	}
	return true
}

// TCP states of /proc/net/tcp (include/net/tcp_states.h).
const (
	tcpEstablished = "01"
	tcpListen      = "0A"
)

// SnapshotConns reads the TCP connections pids hold, in the network
// namespace of pids[0]. Stop them first (StopTree): a running process
// accepts and closes between the reads. Errors are /proc's.
func SnapshotConns(pids []int) (HeldConns, error) {
	h := HeldConns{At: time.Now(), Pids: pids, Held: map[ConnEnds]bool{}, Queued: map[ConnEnds]bool{}}
	if len(pids) == 0 {
		return h, nil
	}
	inodes := map[string]bool{}
	for _, p := range pids {
		dir := "/proc/" + strconv.Itoa(p) + "/fd"
		ents, err := os.ReadDir(dir)
		if err != nil {
			return h, fmt.Errorf("read %s: %w", dir, err)
		}
		for _, e := range ents {
			l, err := os.Readlink(filepath.Join(dir, e.Name()))
			if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	var socks []tcpSock
	for _, f := range []string{"tcp", "tcp6"} {
		s, err := readTCP("/proc/" + strconv.Itoa(pids[0]) + "/net/" + f)
		if err != nil {
			return h, err
		}
		socks = append(socks, s...)
	}
	listening := map[netip.AddrPort]bool{}
	for _, s := range socks {
		if s.state == tcpListen && inodes[s.inode] {
			listening[s.local] = true
		}
	}
	for _, s := range socks {
		if s.state != tcpEstablished {
			continue
		}
		ends := ConnEnds{Client: s.remote, Server: s.local}
		switch {
		case inodes[s.inode]:
			h.Held[ends] = true
		case s.inode == "0" && (listening[s.local] ||
			listening[netip.AddrPortFrom(netip.IPv4Unspecified(), s.local.Port())] ||
			listening[netip.AddrPortFrom(netip.IPv6Unspecified(), s.local.Port())]):
			h.Queued[ends] = true
		}
	}
	return h, nil
}

// tcpSock is one line of /proc/net/tcp or tcp6.
type tcpSock struct {
	local, remote netip.AddrPort
	state, inode  string
}

// readTCP parses /proc/net/tcp or tcp6 (proc_net_tcp(5)): addresses are
// hex 32-bit words in host byte order (little-endian here), ports hex.
func readTCP(path string) ([]tcpSock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	var out []tcpSock
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 10 {
			continue
		}
		local, err1 := parseProcAddr(fl[1])
		remote, err2 := parseProcAddr(fl[2])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s: line %q: %w", path, sc.Text(), err1)
		}
		out = append(out, tcpSock{local: local, remote: remote, state: fl[3], inode: fl[9]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// parseProcAddr parses "0100007F:1F90" (127.0.0.1:8080) or its 32-hex-digit
// IPv6 form; IPv4-mapped IPv6 addresses come back as IPv4.
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	b, err := hex.DecodeString(a)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(b); i += 4 { // each 32-bit word is little-endian
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	ip, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// Attribution splits failed requests by the connections that killed
// processes held (HeldConns taken just before each kill). Maps are by
// failure kind (loadgen.Kinds).
type Attribution struct {
	// Held: failed on a connection a killed process held at its kill.
	Held map[string]int `json:"held_by_killed"`
	// Queued: failed on a connection that was waiting, accepted by no one,
	// at a port a killed process listened on; a subset of no kill's Held.
	Queued map[string]int `json:"queued_at_kill"`
	// Other: neither (a refused connect has no connection and lands here).
	Other map[string]int `json:"other"`
	// Unlisted failures were only counted by the load generator (past its
	// list's cap): nothing can be said of them.
	Unlisted int `json:"unlisted"`
	// OtherExamples describes the first few Other failures.
	OtherExamples []string `json:"other_examples,omitempty"`
}

// Total adds up a by-kind map.
func Total(byKind map[string]int) int {
	n := 0
	for _, v := range byKind {
		n += v
	}
	return n
}

// Attribute matches each failure to a kill: the failure's connection ends
// are among a snapshot's, its dial began before the snapshot and it failed
// after it (so it is that connection, not a later one on the same ports).
// fails and kills must come from this process (monotonic times).
func Attribute(kills []HeldConns, fails []loadgen.Failure, unlisted int) Attribution {
	type span struct {
		at     time.Time
		queued bool
	}
	index := map[ConnEnds][]span{}
	for _, k := range kills {
		for e := range k.Held {
			index[e] = append(index[e], span{at: k.At})
		}
		for e := range k.Queued {
			index[e] = append(index[e], span{at: k.At, queued: true})
		}
	}
	a := Attribution{Held: map[string]int{}, Queued: map[string]int{}, Other: map[string]int{}, Unlisted: unlisted}
	for _, f := range fails {
		held, queued := false, false
		if f.Conn.Local.IsValid() {
			for _, s := range index[ConnEnds{Client: f.Conn.Local, Server: f.Conn.Remote}] {
				if f.Conn.Dialed.Before(s.at) && !f.At.Before(s.at) {
					held, queued = !s.queued, s.queued
					break
				}
			}
		}
		switch {
		case held:
			a.Held[f.Kind]++
		case queued:
			a.Queued[f.Kind]++
		default:
			a.Other[f.Kind]++
			if len(a.OtherExamples) < 5 {
				a.OtherExamples = append(a.OtherExamples, fmt.Sprintf("%s at %s on %s -> %s (dialed %s)",
					f.Kind, f.At.Format("15:04:05.000"), f.Conn.Local, f.Conn.Remote, f.Conn.Dialed.Format("15:04:05.000")))
			}
		}
	}
	return a
}
