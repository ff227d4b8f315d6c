//go:build linux

package supervisor

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/baton-sh/baton/supervisor/sockets"
	"go.uber.org/zap"
)

// TestForeignAction: what the foreign_socket warning says a foreign socket
// receives. One on a more specific address of baton's port (127.0.0.1:P
// beside baton's 0.0.0.0:P) is outside baton's reuseport group and takes
// every connection to its address whatever the steering, so neither the
// eBPF map nor the classic program at index 0 keeps users off it; one on
// baton's own address is in the group and gets none under eBPF.
func TestForeignAction(t *testing.T) {
	wild := []sockets.Spec{{Name: "web", Network: "tcp", Addr: "0.0.0.0:8080"}}
	exact := []sockets.Spec{{Name: "web", Network: "tcp", Addr: "127.0.0.1:8080"}}
	lo := sockets.Listener{Addr: netip.MustParseAddrPort("127.0.0.1:8080"), Inode: 7, PID: 42}
	any4 := sockets.Listener{Addr: netip.MustParseAddrPort("0.0.0.0:8080"), Inode: 8, PID: 43}
	for _, tt := range []struct {
		name       string
		f          sockets.Listener
		specs      []sockets.Spec
		ebpf, sole bool
		want       string
	}{
		{"more specific, ebpf", lo, wild, true, false, "takes every connection to 127.0.0.1:8080 whatever the steering"},
		{"more specific, classic at 0", lo, wild, false, true, "takes every connection to 127.0.0.1:8080 whatever the steering"},
		{"same address, ebpf", lo, exact, true, false, "receives no connections: the eBPF map"},
		{"same wildcard, ebpf", any4, wild, true, false, "receives no connections: the eBPF map"},
		{"same address, classic at 0", lo, exact, false, true, "receives no connections: baton's socket is index 0"},
		{"same address, classic", lo, exact, false, false, "cannot re-steer"},
		{"wildcard beside baton's exact", any4, exact, true, false, "receives no connections"},
	} {
		got := foreignAction(tt.f, tt.specs, tt.ebpf, tt.sole)
		if !strings.Contains(got, tt.want) {
			t.Errorf("%s: action %q, want it to say %q", tt.name, got, tt.want)
		}
	}
}

// A candidate's check that no worker bound its own socket leaves out the
// previous generation's sockets, as the old master named them: their
// holders are not walked (the walk of every worker's tasks and fds cost 1-1.5
// ms of CPU before the candidate could report). Here the "worker" is this
// test process, which holds the previous generation's socket: walked, it
// would be named as a worker that opened its own.
func TestWorkerSocketCheckLeavesThePreviousGenerationOut(t *testing.T) {
	prev, cur := twoGenerations(t)
	m := &master{cfg: Config{Rollout: Rollout{Strategy: StrategyBlueGreen}}, lns: cur, log: zap.NewNop(),
		slots: []*slot{{index: 0, cur: &worker{index: 0, pid: os.Getpid()}}}}
	if why := m.checkWorkerSockets(); !strings.Contains(why, "worker 0 (pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("with the previous generation unnamed, the check said %q; want it to name this process as worker 0", why)
	}
	m.origin.prevSockets = prev.Inodes()
	if why := m.checkWorkerSockets(); why != "" {
		t.Fatalf("with the previous generation named, the check said %q", why)
	}
}

// The old master's check before the switch takes the candidate's sockets
// from its report, not from its master's fds in /proc: here the
// candidate's "master" is a sleep(1) that holds no socket, so a check
// that read its fds would call the candidate's socket foreign.
func TestSwitchCheckTakesTheCandidatesReportedSockets(t *testing.T) {
	old, cand := twoGenerations(t)
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Skip("no sleep(1): " + err.Error())
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }() // by pid: ours
	m := &master{cfg: Config{Rollout: Rollout{Strategy: StrategyBlueGreen}}, lns: old, log: zap.NewNop()}
	m.rollout.cand = &candidate{pid: sleep.Process.Pid}
	if fs, err := m.foreignNow(); err != nil || len(fs) != 1 {
		t.Fatalf("with no sockets reported, the candidate's socket should look foreign: %v, %v", fs, err)
	}
	m.rollout.cand.sockets = cand.Inodes()
	if fs, err := m.foreignNow(); err != nil || len(fs) != 0 {
		t.Fatalf("with the candidate's sockets reported: foreign %v, %v", fs, err)
	}
}

// twoGenerations opens two sockets in one reuseport group on a free
// loopback port, as two generations' masters hold them; closed at the
// test's end.
func twoGenerations(t *testing.T) (first, second *sockets.Set) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	spec := []sockets.Spec{{Name: "web", Network: "tcp", Addr: l.Addr().String()}}
	l.Close()
	first, err = sockets.OpenGroup(spec, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(first.Close)
	second, err = sockets.OpenGroup(spec, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Close)
	return first, second
}
