//go:build linux

package sockets

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// queued is the length of s's accept queue.
func queued(t *testing.T, s *Set) int {
	t.Helper()
	n, err := s.QueueLen()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// drainQueue accepts whatever waits on s, without blocking.
func drainQueue(t *testing.T, s *Set) {
	t.Helper()
	ln, err := net.FileListener(s.files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for queued(t, s) > 0 {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// TestSteer: two generations' sockets in one group on loopback; the program
// sends users to the live one, probes to the candidate, and a canary share.
func TestSteer(t *testing.T) {
	spec := freeSpec(t)
	addr := spec.Addr
	old, cand := classicPair(t, spec)

	dial := func(probe bool) {
		t.Helper()
		d := net.Dialer{Timeout: 2 * time.Second}
		if probe {
			d.LocalAddr = &net.TCPAddr{IP: net.IP(ProbeSource.AsSlice())}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	count := func(probe bool, n int) (onOld, onCand int) {
		t.Helper()
		for i := 0; i < n; i++ {
			dial(probe)
		}
		// The handshake completes in the kernel before Dial returns.
		onOld, onCand = queued(t, old), queued(t, cand)
		drainQueue(t, old)
		drainQueue(t, cand)
		return
	}
	if o, c := count(false, 20); o != 20 || c != 0 {
		t.Fatalf("before the switch: users on old %d, candidate %d; want 20, 0", o, c)
	}
	if o, c := count(true, 5); o != 0 || c != 5 {
		t.Fatalf("probes: old %d, candidate %d; want 0, 5", o, c)
	}
	if err := old.Attach(Steer(1, 1, 0)); err != nil {
		t.Fatal(err)
	}
	if o, c := count(false, 20); o != 0 || c != 20 {
		t.Fatalf("after the switch: users on old %d, candidate %d; want 0, 20", o, c)
	}
	if err := cand.Attach(Steer(0, 1, 50)); err != nil {
		t.Fatal(err)
	}
	o, c := count(false, 100)
	if c < 25 || c > 75 {
		t.Fatalf("canary 50%%: %d of %d on the candidate", c, o+c)
	}
	// The candidate leaves: the old socket is alone at index 0 again.
	cand.Close()
	if err := old.Attach(Steer(0, 1, 0)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		dial(true)
	}
	if o := queued(t, old); o != 3 {
		t.Fatalf("alone in the group: %d of 3 probes on the old socket", o)
	}
}

func TestGroupRefusesUnixAndPortZero(t *testing.T) {
	for _, s := range []Spec{{Name: "u", Network: "unix", Addr: "/tmp/x.sock"}, {Name: "z", Network: "tcp", Addr: "127.0.0.1:0"}} {
		if _, err := OpenGroup([]Spec{s}, true); err == nil {
			t.Errorf("%s: no error", s)
		}
	}
}

// A first generation does not join a group someone else already holds.
func TestOpenGroupFirstNeedsAFreeAddress(t *testing.T) {
	other, err := OpenGroup([]Spec{{Name: "a", Network: "tcp", Addr: "127.0.0.1:0"}}, true)
	if err == nil {
		other.Close()
		t.Fatal("port 0 accepted")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	spec := Spec{Name: "a", Network: "tcp", Addr: ln.Addr().String()}
	if s, err := OpenGroup([]Spec{spec}, true); err == nil {
		s.Close()
		t.Fatalf("joined %s, which another socket holds", spec.Addr)
	} else if !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("error %v, want address already in use", err)
	}
}

// TestLeaveResteers: the old generation's socket leaves after a switch,
// with a stray joining before the leave (it moves into slot 0, the
// successor stays at 1) or after it (the successor moves to 0, the stray
// takes 1). Leave re-attaches the program with the successor's new index,
// and no user reaches the stray. Without the re-steer, the stray that
// joins after the leave gets every connection (the program still says 1).
func TestLeaveResteers(t *testing.T) {
	for _, strayFirst := range []bool{false, true} {
		name := map[bool]string{false: "stray-after-leave", true: "stray-before-leave"}[strayFirst]
		t.Run(name, func(t *testing.T) {
			spec := freeSpec(t)
			addr := spec.Addr
			old, cand := classicPair(t, spec)
			if err := old.Attach(Steer(1, 1, 0)); err != nil { // the switch
				t.Fatal(err)
			}
			var stray *Set
			join := func() {
				var err error
				if stray, err = OpenGroup([]Spec{spec}, false); err != nil {
					t.Fatal(err)
				}
			}
			var rs []Resteer
			if strayFirst {
				join()
				// This process holds the stray's socket too: name the
				// successor's directly.
				rs = old.leave(func(map[uint64]bool, uint64) (*os.File, uint64, error) {
					f, err := dupFile(cand.files[0], "successor")
					return f, cand.Inodes()[0], err
				})
			} else {
				// The successor's socket, found in this process's fds and
				// copied with pidfd_getfd.
				rs = old.Leave(os.Getpid())
				join()
			}
			defer stray.Close()
			want := map[bool]int{false: 0, true: 1}[strayFirst]
			if len(rs) != 1 || rs[0].Err != nil || rs[0].Index != want || rs[0].Unsure || rs[0].StillListening {
				if len(rs) == 1 && rs[0].Err != nil && strings.Contains(rs[0].Err.Error(), "pidfd") {
					t.Skipf("no pidfd_getfd here: %v", rs[0].Err)
				}
				t.Fatalf("Leave: %+v, want index %d", rs, want)
			}
			for i := 0; i < 20; i++ {
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			if c, s := queued(t, cand), queued(t, stray); c != 20 || s != 0 {
				t.Fatalf("users on the successor %d, on the stray %d; want 20, 0", c, s)
			}
		})
	}
}

// classicPair opens an old generation's socket steered by the classic
// program (users to index 0) and a candidate's in the same group on spec's
// address; both close with the test. It skips where the kernel refuses the
// program.
func classicPair(t *testing.T, spec Spec) (old, cand *Set) {
	t.Helper()
	old, err := OpenGroup([]Spec{spec}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	if err := old.Attach(Steer(0, 1, 0)); err != nil {
		t.Skipf("kernel refuses SO_ATTACH_REUSEPORT_CBPF here: %v", err)
	}
	if cand, err = OpenGroup([]Spec{spec}, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cand.Close() })
	return old, cand
}
