//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// The process the user started stays, with its pid in the pid file, for
// any number of upgrades, and exits with the documented status.
func TestKeeperPidIsTheServicesPidAcrossUpgrades(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--pid-file", pidFile, "--", bin("hello"))
	b.waitReady()
	want := strconv.Itoa(b.pid) + "\n" // one line, newline-terminated
	master := b.firstMaster()
	if master == b.pid || parentPid(master) != b.pid {
		t.Fatalf("first master %d is not a child of the keeper %d", master, b.pid)
	}
	for gen := 1; gen <= 10; gen++ {
		if got, _ := os.ReadFile(pidFile); string(got) != want {
			t.Fatalf("before upgrade %d: pid file %q, want the keeper %s", gen, got, want)
		}
		newMaster := b.upgrade(t, b.pid, gen) // USR2 to the keeper, forwarded
		// The old master exited: the new one is re-parented to the keeper
		// (the kernel does it a moment after the old one's fds close).
		eventually(t, 2*time.Second, "the new master to be the keeper's child", func() bool {
			return parentPid(newMaster) == b.pid
		})
		if body := mustGet(t, addr, "/"); field(body, "generation") != strconv.Itoa(gen+1) {
			t.Fatalf("after upgrade %d served %q", gen, body)
		}
	}
	if got, _ := os.ReadFile(pidFile); string(got) != want {
		t.Fatalf("after 10 upgrades: pid file %q, want %s", got, want)
	}
	b.signal(syscall.SIGTERM)
	if code := b.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("exit %d after a graceful stop, want 0", code)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("pid file left after stop: %v", err)
	}
}

// Nothing outlives a SIGKILLed keeper.
func TestSIGKILLOfKeeperLeavesNothing(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "3", "--", bin("hello"))
	b.waitReady()
	b.upgrade(t, b.pid, 1) // a master that is not the keeper's first child
	procs := b.pids()
	b.signal(syscall.SIGKILL)
	b.waitExit(5 * time.Second)
	eventually(t, 2*time.Second, "every master and worker to be gone", func() bool {
		for _, pid := range procs {
			if pid != b.pid && alive(pid) {
				return false
			}
		}
		return true
	})
}

// A worker's orphan is re-parented to the keeper (a child subreaper) and
// reaped as soon as it exits.
func TestOrphansAreReaped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	mark := filepath.Join(dir, "orphan.pid")
	// The subshell exits at once, orphaning its child, which writes its pid
	// and lives for 1 s.
	script := `( sh -c 'echo $$ > ` + mark + `.tmp && mv ` + mark + `.tmp ` + mark + ` && exec sleep 1' & ) ; exec ` + bin("hello")
	b := startBaton(t, nil, "-l", addr, "--", "sh", "-c", script)
	b.waitReady()
	var orphan int
	eventually(t, 5*time.Second, "the orphan to write its pid", func() bool {
		data, err := os.ReadFile(mark)
		orphan, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil && orphan > 0
	})
	if p := parentPid(orphan); p != b.pid {
		t.Fatalf("orphan %d has parent %d, want the keeper %d", orphan, p, b.pid)
	}
	// It exits after 1 s; within 1 s more it must be gone, not a zombie.
	eventually(t, 2500*time.Millisecond, "the orphan to be reaped", func() bool {
		state, ppid, err := procStat(orphan)
		return err != nil || (state != 'Z' && ppid != b.pid)
	})
}

// baton run as PID 1 of a pid namespace (a container's entrypoint): it
// stays PID 1 through 20 upgrades under load with no failed request and no
// zombie, and a TERM drains an in-flight request and exits 0.
func TestKeeperAsPID1OfAPidNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root for unshare --pid --mount-proc")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("SKIP: unshare (util-linux) not installed")
	}
	t.Parallel()
	addr := freeAddr(t)
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount-proc", bin("baton"), "run", "--log-format", "json",
		"-l", addr, "-w", "2", "--", bin("hello"))
	b := launch(t, cmd, nil)
	// Pids in the log are the namespace's; the keeper's pid here is the
	// unshare process's child.
	keeper := endNamespaceOnCleanup(t, b)
	eventually(t, 10*time.Second, "unshare to start baton", func() bool {
		kids := childPids(b.pid)
		if len(kids) == 1 {
			*keeper = kids[0]
		}
		return *keeper > 0
	})
	b.waitReady()
	checkPID1(t, b, *keeper, "tcp", addr)
}

// checkPID1 takes baton run as PID 1 of a pid namespace (keeper is its pid
// here; b its launcher: unshare, systemd-nspawn) through 20 upgrades under
// load with no failed request and no zombie, then a TERM that drains an
// in-flight request and exits 0 (b's exit code).
func checkPID1(t *testing.T, b *baton, keeper int, network, addr string) {
	t.Helper()
	// NSpid: its pid here, then in its own namespace.
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(keeper) + "/status")
	if !strings.Contains(string(st), "\nNSpid:\t"+strconv.Itoa(keeper)+"\t1\n") {
		t.Fatalf("keeper %d is not PID 1 of its namespace:\n%s", keeper, st)
	}
	ns, err := os.Readlink("/proc/" + strconv.Itoa(keeper) + "/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	noZombies := func(when string) {
		t.Helper()
		eventually(t, time.Second, "no zombie in the namespace "+when, func() bool {
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				if l, _ := os.Readlink("/proc/" + e.Name() + "/ns/pid"); l != ns {
					continue
				}
				if state, _, err := procStat(pid); err == nil && state == 'Z' {
					return false
				}
			}
			return true
		})
	}
	load := startLoad(t, loadgen.Config{
		Network: network, Addr: addr, Clients: 8, KeepAlive: 0.5,
		Duration: 120 * time.Second, MaxRequests: 2_000_000, Timeout: 10 * time.Second,
	})
	for gen := 1; gen <= 20; gen++ {
		from := b.log.len()
		if err := syscall.Kill(keeper, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		b.log.waitFrom(t, from, "previous_master_exited", func(e logEvent) bool { return e.num("generation") == gen+1 }, 30*time.Second)
		noZombies("after upgrade " + strconv.Itoa(gen))
	}
	if res := load.finish(); res.Failures() != 0 || res.Requests == 0 {
		t.Fatalf("20 upgrades as PID 1 under load: %s", res)
	}
	if exe, _ := os.Readlink("/proc/" + strconv.Itoa(keeper) + "/exe"); exe != bin("baton") {
		t.Fatalf("the namespace's PID 1 runs %q, want baton", exe)
	}
	// A TERM from the runtime: the in-flight 2 s request completes. The
	// worker sends its headers before it sleeps, so the TERM goes only
	// once the request is in a worker's hands: sent any earlier, the
	// request may still be unread, and a draining worker closes such a
	// connection as idle (the client's retry then finds the port refused,
	// as a stop does).
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://baton/?sleep=2000&head=1")
	if err != nil {
		t.Fatalf("in-flight request: %v", err)
	}
	if err := syscall.Kill(keeper, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "hello ") {
		t.Fatalf("in-flight request during the stop: status %d, body %q, %v", resp.StatusCode, body, err)
	}
	if code := b.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("%s (baton as PID 1) exited %d, want 0", filepath.Base(b.cmd.Path), code)
	}
}

func parentPid(pid int) int {
	_, ppid, _ := procStat(pid)
	return ppid
}

// The old master killed (OOM) while the new generation starts: the new one
// takes over instead of giving up, and the service stays manageable.
func TestOldMasterKilledDuringTheHandover(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, []string{"HELLO_STARTUP_MS=1500"}, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	old := b.firstMaster()
	from := b.log.len()
	b.signal(syscall.SIGUSR2)
	b.log.waitFrom(t, from, "worker_started", func(e logEvent) bool { return e.num("generation") == 2 }, 20*time.Second)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev, _ := b.log.waitFrom(t, from, "handover_complete", func(e logEvent) bool { return e.num("generation") == 2 }, 20*time.Second)
	eventually(t, 5*time.Second, "generation 2 to answer", func() bool {
		body, err := get("tcp", addr, "/")
		return err == nil && field(body, "generation") == "2"
	})
	if code, out := b.ctl(t, "status"); code != 0 || !strings.Contains(out, "generation 2") {
		t.Fatalf("status after the old master died: exit %d:\n%s", code, out)
	}
	// And it upgrades again, through the keeper.
	if got := b.upgrade(t, b.pid, 2); got == ev.num("master_pid") {
		t.Fatal("no new master after the next upgrade")
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "3" {
		t.Fatalf("after the next upgrade served %q", body)
	}
}

// endNamespaceOnCleanup is for a baton started below a wrapper that makes
// a pid namespace (unshare, systemd-nspawn): at cleanup it kills the
// process the test stores in *keeper (baton's pid as seen from here; its
// death ends the namespace) if set, then the wrapper b, and waits up to
// 5 s for the wrapper.
func endNamespaceOnCleanup(t *testing.T, b *baton) *int {
	keeper := new(int)
	t.Cleanup(func() {
		if *keeper > 0 {
			killOurs(*keeper)
		}
		endWrapper(b)
	})
	return keeper
}

// endUnshareOnCleanup is endNamespaceOnCleanup for a wrapper whose child is
// not known in advance (unshare's child, PID 1 of the namespace, whatever
// it runs): at the end, killing that child ends the namespace.
func endUnshareOnCleanup(t *testing.T, b *baton) {
	t.Cleanup(func() {
		for _, p := range childPids(b.pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
		endWrapper(b)
	})
}

// endWrapper SIGKILLs the wrapper b runs (unshare, systemd-nspawn) and waits
// at most 5 s for it to be reaped.
func endWrapper(b *baton) {
	syscall.Kill(b.pid, syscall.SIGKILL)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
	}
}
