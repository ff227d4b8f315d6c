//go:build linux

package sockets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeRegistry passes files from one Set to the next as tableflip does:
// File hands out what the previous owner added.
type fakeRegistry struct {
	files map[string]*os.File
}

func (r *fakeRegistry) Listener(string, string) (net.Listener, error) { return nil, nil }
func (r *fakeRegistry) ListenWithCallback(network, addr string, bind func(string, string) (net.Listener, error)) (net.Listener, error) {
	return bind(network, addr)
}
func (r *fakeRegistry) File(name string) (*os.File, error) {
	f := r.files[name]
	if f == nil {
		return nil, nil
	}
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}
func (r *fakeRegistry) AddFile(name string, f *os.File) error {
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return err
	}
	if r.files == nil {
		r.files = map[string]*os.File{}
	}
	if old := r.files[name]; old != nil {
		old.Close()
	}
	r.files[name] = os.NewFile(uintptr(fd), name)
	return nil
}
func (r *fakeRegistry) close() {
	for _, f := range r.files {
		f.Close()
	}
}

// strayListener joins addr's reuseport group the way another process of
// the same user would (gunicorn --reuse-port, a second copy by hand).
func strayListener(t *testing.T, addr string) *os.File {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func freeSpec(t *testing.T) Spec {
	t.Helper()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	return Spec{Name: "web", Network: "tcp", Addr: addr}
}

// ebpfGroup opens a generation's socket steered by the eBPF program, or
// skips where this process may not load one.
func ebpfGroup(t *testing.T, spec Spec, reg *fakeRegistry, gen int, first bool) *Set {
	t.Helper()
	s, err := OpenGroup([]Spec{spec}, first)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UseEBPF(reg, gen); err != nil {
		s.Close()
		if errors.Is(err, unix.EPERM) {
			t.Skipf("needs CAP_BPF (root) for eBPF steering: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func queueOf(t *testing.T, f *os.File) int {
	t.Helper()
	n, err := QueueLen([]*os.File{f})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// acceptAll accepts whatever waits on f, without blocking.
func acceptAll(t *testing.T, f *os.File) {
	t.Helper()
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for queueOf(t, f) > 0 {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// dialN connects n times (from the probe source if probe) and returns how
// many connections completed; a dropped SYN shows as a timeout.
func dialN(t *testing.T, addr string, probe bool, n int, timeout time.Duration) int {
	t.Helper()
	ok := 0
	for i := 0; i < n; i++ {
		d := net.Dialer{Timeout: timeout}
		if probe {
			d.LocalAddr = &net.TCPAddr{IP: net.IP(ProbeSource.AsSlice())}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Logf("dial: %v", err)
			continue
		}
		ok++
		c.Close()
	}
	return ok
}

// TestEBPFSteer: the program's decisions on real sockets (the kernel has
// no BPF_PROG_TEST_RUN for SK_REUSEPORT): a stray socket in the group and
// an old generation's socket kept open by a leftover never get a
// connection; probes reach only the candidate; the canary share splits;
// with one generation's socket gone, users fall over to the other.
func TestEBPFSteer(t *testing.T) {
	spec := freeSpec(t)
	reg := &fakeRegistry{}
	defer reg.close()
	old := ebpfGroup(t, spec, reg, 1, true)
	if err := old.Steer(0); err != nil {
		t.Fatal(err)
	}
	// The program is loaded as SELECT_OR_MIGRATE where the kernel has it
	// (Linux >= 5.14), and Migration says so; else it says what is left.
	var uts unix.Utsname
	unix.Uname(&uts)
	if got := old.Migration(); got != "ebpf" {
		t.Logf("kernel %s: migration %q, not ebpf", unix.ByteSliceToString(uts.Release[:]), got)
		if maj, min := kernelVersion(unix.ByteSliceToString(uts.Release[:])); maj > 5 || (maj == 5 && min >= 14) {
			t.Errorf("kernel %d.%d has SELECT_OR_MIGRATE, but Migration is %q", maj, min, got)
		}
	}
	stray := strayListener(t, spec.Addr)
	count := func(probe bool, n int, sets ...*os.File) []int {
		t.Helper()
		if got := dialN(t, spec.Addr, probe, n, 2*time.Second); got != n {
			t.Fatalf("%d of %d connections completed", got, n)
		}
		out := make([]int, len(sets))
		for i, f := range sets {
			out[i] = queueOf(t, f)
			acceptAll(t, f)
		}
		return out
	}
	if got := count(false, 20, old.files[0], stray); got[0] != 20 || got[1] != 0 {
		t.Fatalf("users: old %d, stray %d; want 20, 0", got[0], got[1])
	}
	// No candidate yet: a probe finds no socket and is dropped, never
	// answered by the serving generation or the stray.
	if got := dialN(t, spec.Addr, true, 1, 300*time.Millisecond); got != 0 {
		t.Fatal("a probe completed with no candidate in the map")
	}
	if q := queueOf(t, stray); q != 0 {
		t.Fatalf("the stray got %d probes", q)
	}
	cand := ebpfGroup(t, spec, reg, 2, false)
	if got := count(true, 5, old.files[0], cand.files[0], stray); got[0] != 0 || got[1] != 5 || got[2] != 0 {
		t.Fatalf("probes: old %d, candidate %d, stray %d; want 0, 5, 0", got[0], got[1], got[2])
	}
	if got := count(false, 20, old.files[0], cand.files[0], stray); got[0] != 20 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("users before the switch: old %d, candidate %d, stray %d; want 20, 0, 0", got[0], got[1], got[2])
	}
	if err := old.Steer(100); err != nil {
		t.Fatal(err)
	}
	if got := count(false, 20, old.files[0], cand.files[0], stray); got[0] != 0 || got[1] != 20 || got[2] != 0 {
		t.Fatalf("users after the switch: old %d, candidate %d, stray %d; want 0, 20, 0", got[0], got[1], got[2])
	}
	if err := old.Steer(50); err != nil {
		t.Fatal(err)
	}
	got := count(false, 100, old.files[0], cand.files[0], stray)
	if got[1] < 25 || got[1] > 75 || got[2] != 0 {
		t.Fatalf("canary 50%%: old %d, candidate %d, stray %d", got[0], got[1], got[2])
	}
	// The old generation's socket outlives its master in a leftover
	// process (here: a dup). The new generation claims the map.
	fd, err := unix.Dup(int(old.files[0].Fd()))
	if err != nil {
		t.Fatal(err)
	}
	leftover := os.NewFile(uintptr(fd), "leftover")
	defer leftover.Close()
	old.Close()
	if err := cand.Claim(false); err != nil {
		t.Fatal(err)
	}
	if err := cand.Steer(0); err != nil {
		t.Fatal(err)
	}
	if got := count(false, 20, cand.files[0], leftover, stray); got[0] != 20 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("after the claim: serving %d, leftover %d, stray %d; want 20, 0, 0", got[0], got[1], got[2])
	}
	if got := dialN(t, spec.Addr, true, 1, 300*time.Millisecond); got != 0 {
		t.Fatal("a probe completed although the map holds no candidate")
	}
	// The serving socket closes: nothing of baton's is left, and the
	// stray and the leftover still get nothing.
	cand.Close()
	if got := dialN(t, spec.Addr, false, 2, 300*time.Millisecond); got != 0 {
		t.Fatalf("%d connections completed with no socket of baton's in the map", got)
	}
	if q, l := queueOf(t, stray), queueOf(t, leftover); q != 0 || l != 0 {
		t.Fatalf("stray %d, leftover %d", q, l)
	}
}

// TestEBPFMigrate: connections queued on a closing socket move to the
// other generation's socket (SELECT_OR_MIGRATE) instead of being reset.
func TestEBPFMigrate(t *testing.T) {
	spec := freeSpec(t)
	reg := &fakeRegistry{}
	defer reg.close()
	old := ebpfGroup(t, spec, reg, 1, true)
	cand := ebpfGroup(t, spec, reg, 2, false)
	if err := old.Steer(100); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for i := 0; i < 5; i++ {
		c, err := net.DialTimeout("tcp", spec.Addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	if q := queueOf(t, cand.files[0]); q != 5 {
		t.Fatalf("candidate queue %d, want 5", q)
	}
	cand.Close()
	if q := queueOf(t, old.files[0]); q != 5 {
		t.Skipf("kernel did not migrate the queue (old queue %d): no SELECT_OR_MIGRATE (Linux < 5.14)", q)
	}
	ln, err := net.FileListener(old.files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := range conns {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conns[i].Write([]byte("x")); err != nil {
			t.Fatalf("migrated connection %d: %v", i, err)
		}
		s.Close()
	}
}

// kernelVersion parses "6.18.44-..." into 6, 18.
func kernelVersion(release string) (major, minor int) {
	fmt.Sscanf(release, "%d.%d", &major, &minor)
	return
}

// A group's steering programs are loaded once each (PrepareSteer ahead of
// an upgrade, or the first Steer) and attached again from then on: the
// switch and the way back only attach, and still steer right.
func TestEBPFSteerAttachesLoadedPrograms(t *testing.T) {
	spec := freeSpec(t)
	reg := &fakeRegistry{}
	defer reg.close()
	old := ebpfGroup(t, spec, reg, 1, true)
	if err := old.PrepareSteer(0, 100); err != nil {
		t.Fatal(err)
	}
	loaded := map[int]any{}
	for pct, l := range old.progs[0].loaded {
		loaded[pct] = l.prog
	}
	if len(loaded) != 2 {
		t.Fatalf("%d programs loaded ahead, want 2 (0 and 100)", len(loaded))
	}
	cand := ebpfGroup(t, spec, reg, 2, false)
	users := func(want0, want1 int) {
		t.Helper()
		if got := dialN(t, spec.Addr, false, 10, 2*time.Second); got != 10 {
			t.Fatalf("%d of 10 connections completed", got)
		}
		o, c := queueOf(t, old.files[0]), queueOf(t, cand.files[0])
		acceptAll(t, old.files[0])
		acceptAll(t, cand.files[0])
		if o != want0 || c != want1 {
			t.Fatalf("users: old %d, candidate %d; want %d, %d", o, c, want0, want1)
		}
	}
	for _, step := range []struct{ pct, old, cand int }{{0, 10, 0}, {100, 0, 10}, {0, 10, 0}} {
		if err := old.Steer(step.pct); err != nil {
			t.Fatal(err)
		}
		users(step.old, step.cand)
	}
	if n := len(old.progs[0].loaded); n != 2 {
		t.Fatalf("%d programs after three steers, want the 2 loaded ahead", n)
	}
	for pct, l := range old.progs[0].loaded {
		if loaded[pct] != any(l.prog) {
			t.Fatalf("the program for %d%% was loaded again", pct)
		}
	}
}
