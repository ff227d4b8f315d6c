//go:build linux

package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// holdEnv makes the test binary a server that holds connections
// (holdServer) instead of running the tests.
const holdEnv = "HARNESS_HOLD_ACCEPT"

func TestMain(m *testing.M) {
	if n, err := strconv.Atoi(os.Getenv(holdEnv)); err == nil {
		holdServer(n)
		return
	}
	os.Exit(m.Run())
}

// holdServer listens on a loopback port, prints its address, accepts n
// connections and reads each without ever answering; the connections after
// the n-th wait in its accept queue. It exits after two minutes at the
// latest.
func holdServer(n int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(ln.Addr())
	for range n {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		go io.Copy(io.Discard, c)
	}
	time.Sleep(2 * time.Minute)
	os.Exit(0)
}

type holder struct {
	pid  int
	addr string
}

// startHold starts holdServer(accept) and ends it (SIGKILL, by pid) when
// the test ends.
func startHold(t *testing.T, accept int) holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+strconv.Itoa(accept))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the holding server: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("holding server %d printed no address: %v", cmd.Process.Pid, err)
	}
	return holder{pid: cmd.Process.Pid, addr: line[:len(line)-1]}
}

// Two servers that never answer: A accepts 2 of its 4 clients' connections
// (the other 2 wait in its accept queue), B accepts all 3 of its clients'.
// A is stopped, its connections read, and both are SIGKILLed: A's 2 held
// requests and 2 queued ones fail as such, B's 3 are "other" (nobody read
// B's), and a failure on A's ports dialed after the snapshot is "other"
// too.
func TestAttributeKilledServer(t *testing.T) {
	a, b := startHold(t, 2), startHold(t, 10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	load := func(addr string, clients int) func() loadgen.MixResult {
		return loadgen.StartMix(ctx, loadgen.Mix{Network: "tcp", Addr: addr, Clients: clients,
			Budget: loadgen.NewBudget(clients), Timeout: 45 * time.Second, Duration: 50 * time.Second})
	}
	waitA, waitB := load(a.addr, 4), load(b.addr, 3)
	var snapA, snapB HeldConns
	ok := Until(20*time.Second, func() bool {
		var errA, errB error
		snapA, errA = SnapshotConns([]int{a.pid})
		snapB, errB = SnapshotConns([]int{b.pid})
		return errA == nil && errB == nil && len(snapA.Held) == 2 && len(snapA.Queued) == 2 && len(snapB.Held) == 3
	})
	if !ok {
		t.Fatalf("A holds %v and queues %v, B holds %v: want 2, 2 and 3", snapA.Held, snapA.Queued, snapB.Held)
	}
	pids, err := StopTree(a.pid, 10*time.Second)
	if err != nil || !slices.Equal(pids, []int{a.pid}) {
		t.Fatalf("StopTree(%d): %v, %v", a.pid, pids, err)
	}
	snap, err := SnapshotConns(pids)
	if err != nil || len(snap.Held) != 2 || len(snap.Queued) != 2 {
		t.Fatalf("stopped A: held %v, queued %v, %v; want 2 and 2", snap.Held, snap.Queued, err)
	}
	for _, p := range []int{a.pid, b.pid} {
		if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	ra, rb := waitA().All(), waitB().All()
	if ra.Failures() != 4 || rb.Failures() != 3 {
		t.Fatalf("A: %v; B: %v; want 4 and 3 failed", ra, rb)
	}
	fails := append(ra.FailedConns, rb.FailedConns...)
	late := ra.FailedConns[0]
	late.Conn.Dialed = snap.At.Add(time.Millisecond) // the same ports, a later connection
	fails = append(fails, late)
	at := Attribute([]HeldConns{snap}, fails, 0)
	if Total(at.Held) != 2 || Total(at.Queued) != 2 || Total(at.Other) != 4 || len(at.OtherExamples) != 4 {
		t.Errorf("attribution %+v: want 2 held, 2 queued, 4 other (3 of B's, the late one)", at)
	}
}

// StopTree stops a process and its child, and resumes what it stopped when
// it fails.
func TestStopTree(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sh: %v", err)
	}
	sh := cmd.Process.Pid
	defer cmd.Wait()
	defer syscall.Kill(sh, syscall.SIGKILL)
	var kid int
	if !Until(10*time.Second, func() bool {
		k := Children(sh)
		if len(k) == 1 {
			kid = k[0]
		}
		return kid != 0
	}) {
		t.Fatalf("sh %d started no sleep", sh)
	}
	defer syscall.Kill(kid, syscall.SIGKILL)
	pids, err := StopTree(sh, 10*time.Second)
	if err != nil || !slices.Equal(pids, []int{sh, kid}) || !allStopped(sh) || !allStopped(kid) {
		t.Fatalf("StopTree(%d): %v, %v; want [%d %d], both stopped", sh, pids, err, sh, kid)
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGCONT)
	}
	if _, err := StopTree(-5, time.Second); err == nil {
		t.Error("StopTree of pid -5: no error")
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000000000000000000001000000:0050": "[::1]:80",
		"0000000000000000FFFF00000100007F:0016": "127.0.0.1:22",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	if _, err := parseProcAddr("zz:1"); err == nil {
		t.Error("parseProcAddr(zz:1): no error")
	}
}
