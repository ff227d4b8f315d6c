//go:build linux

package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/harness"
)

func TestRequestsReachAllWorkers(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "4", "--", bin("hello"))
	b.waitReady()
	want := map[string]bool{}
	for _, p := range b.workerPids(1) {
		want[strconv.Itoa(p)] = true
	}
	if len(want) != 4 {
		t.Fatalf("want 4 ready workers, log has %v", want)
	}
	seen := map[string]bool{}
	for i := 0; i < 4000 && len(seen) < 4; i++ {
		pid := field(mustGet(t, addr, "/"), "pid")
		if !want[pid] {
			t.Fatalf("answer from pid %s, not one of the workers %v", pid, want)
		}
		seen[pid] = true
	}
	if len(seen) != 4 {
		t.Fatalf("4000 requests reached only workers %v of %v", seen, want)
	}
}

func TestKilledWorkerIsReplaced(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	victim := b.workerPids(1)[0]
	syscall.Kill(victim, syscall.SIGKILL)
	ev := b.log.wait(t, "worker_crashed", func(e logEvent) bool { return e.num("pid") == victim }, 10*time.Second)
	if ev.str("signal") != "SIGKILL" {
		t.Errorf("exit logged with signal %q, want SIGKILL", ev.str("signal"))
	}
	idx := ev.num("worker")
	repl := b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == idx && e.num("pid") != victim }, 10*time.Second)
	newPid := strconv.Itoa(repl.num("pid"))
	for i := 0; i < 4000; i++ {
		body := mustGet(t, addr, "/")
		if field(body, "pid") == strconv.Itoa(victim) {
			t.Fatalf("killed worker %d still answers", victim)
		}
		if field(body, "pid") == newPid {
			if field(body, "worker") != strconv.Itoa(idx) {
				t.Fatalf("replacement answers as worker %s, want %d", field(body, "worker"), idx)
			}
			return
		}
	}
	t.Fatalf("replacement %s never answered", newPid)
}

func TestTTINAndTTOUChangeWorkerCount(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "1", "--", bin("hello"))
	b.waitReady()
	b.signal(syscall.SIGTTIN)
	ev := b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == 1 }, 10*time.Second)
	added := ev.num("pid")
	b.signal(syscall.SIGTTOU)
	b.log.wait(t, "worker_drained", func(e logEvent) bool { return e.num("pid") == added }, 10*time.Second)
	if alive(added) {
		t.Fatalf("worker %d removed by TTOU still runs", added)
	}
	// The last worker is never removed.
	b.signal(syscall.SIGTTOU)
	b.log.wait(t, "worker_count_unchanged", nil, 10*time.Second)
	if !alive(b.workerPids(1)[0]) {
		t.Fatal("worker 0 was stopped")
	}
}

func TestSystemdActivationServerRunsUnchanged(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("activation"))
	b.waitReady()
	for i := 0; i < 10; i++ {
		body := mustGet(t, addr, "/")
		if field(body, "pid") == "" || field(body, "pid") != field(body, "listen_pid") {
			t.Fatalf("LISTEN_PID does not match the worker's pid: %q", body)
		}
	}
}

func TestUnixSocketListener(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	// A stale socket file: bound once, nothing accepts on it any more.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	b := startBaton(t, nil, "-l", "app=unix://"+sock, "-w", "2", "--", bin("hello"))
	b.waitReady()
	body, err := get("unix", sock, "/")
	if err != nil || !strings.HasPrefix(body, "hello ") {
		t.Fatalf("GET over %s: %q, %v", sock, body, err)
	}
	b.signal(syscall.SIGTERM)
	if code := b.waitExit(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file left behind after stop: %v", err)
	}
}

func TestLiveUnixSocketIsNotStolen(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b := startBaton(t, nil, "-l", "unix://"+sock, "--", bin("hello"))
	if code := b.waitExit(15 * time.Second); code == 0 {
		t.Fatal("baton started on a socket another process serves")
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("the other process's socket was removed: %v", err)
	}
}

func TestNotifyFromForeignProcessIsIgnored(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	// sleep never notifies, so only the foreign message could make it ready.
	b := startBaton(t, nil, "-l", addr, "--ready-timeout", "30s", "--", "sleep", "60")
	ev := b.log.wait(t, "worker_started", nil, 10*time.Second)
	// Until the exec, /proc shows the master's environment.
	waitExec(t, ev.num("pid"), "/sleep")
	env, err := os.ReadFile("/proc/" + strconv.Itoa(ev.num("pid")) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	var sock string
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok {
			sock = v
		}
	}
	if sock == "" {
		t.Fatal("worker has no NOTIFY_SOCKET")
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("READY=1")); err != nil {
		t.Fatal(err)
	}
	_, at := b.log.waitFrom(t, 0, "notify_unknown_sender",
		func(e logEvent) bool { return e.num("sender_pid") == os.Getpid() }, 10*time.Second)
	// Prove the message did not count: a later event in the same loop must
	// come first. TTIN makes one.
	b.signal(syscall.SIGTTIN)
	b.log.waitFrom(t, at, "worker_count_increased", nil, 10*time.Second)
	if n := b.log.count("worker_ready"); n != 0 {
		t.Fatalf("a foreign READY=1 made %d workers ready", n)
	}
}

func TestGracefulStopFinishesInFlightRequest(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	pidFile := filepath.Join(t.TempDir(), "baton.pid")
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--pid-file", pidFile, "--", bin("hello"))
	b.waitReady()
	if got, _ := os.ReadFile(pidFile); string(got) != strconv.Itoa(b.pid)+"\n" {
		t.Fatalf("pid file holds %q, want %d", got, b.pid)
	}
	type result struct {
		body string
		err  error
		took time.Duration
	}
	res := make(chan result, 1)
	start := time.Now()
	go func() {
		body, err := get("tcp", addr, "/?sleep=2000")
		res <- result{body, err, time.Since(start)}
	}()
	// The stop must come while the request is in flight: wait until a
	// worker holds the connection (it shows as an extra socket in /proc).
	b.waitAccepted(t, 1)
	b.signal(syscall.SIGTERM)
	r := <-res
	if r.err != nil || !strings.HasPrefix(r.body, "hello ") {
		t.Fatalf("in-flight request during stop: %q, %v", r.body, r.err)
	}
	if r.took < 2*time.Second {
		t.Fatalf("slow request took %s, want at least 2s", r.took)
	}
	if code := b.waitExit(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d after graceful stop", code)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("pid file left behind: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("port still accepts after stop")
	}
}

func countSockets(pid int) int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func TestMasterSIGKILLLeavesNoWorker(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "3", "--", bin("hello"))
	b.waitReady()
	workers := b.workerPids(1)
	b.signal(syscall.SIGKILL)
	b.waitExit(5 * time.Second)
	eventually(t, 2*time.Second, "workers to die with their master", func() bool {
		for _, p := range workers {
			if alive(p) {
				return false
			}
		}
		return true
	})
}

func TestSecondStopSignalKillsAtOnce(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	// sleep ignores nothing but never drains on QUIT fast: use QUIT as the
	// drain signal for a process that ignores it.
	b := startBaton(t, nil, "-l", addr, "--ready", "delay:0s", "--drain-signal", "WINCH", "--drain-timeout", "60s", "--", "sleep", "60")
	b.log.wait(t, "generation_ready", nil, 10*time.Second)
	b.signal(syscall.SIGTERM)
	b.log.wait(t, "worker_draining", nil, 10*time.Second)
	start := time.Now()
	b.signal(syscall.SIGINT)
	b.waitExit(10 * time.Second)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("second stop signal took %s to end the master", took)
	}
	b.log.wait(t, "worker_drained", func(e logEvent) bool { return e["killed"] == true }, time.Second)
}

func TestListenerStaysNonBlockingAndWorkerFdsAreExact(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	// sleep never touches fd 3, so its flags are what baton left on it.
	b := startBaton(t, nil, "-l", addr, "-l", "unix://"+filepath.Join(t.TempDir(), "s"), "-w", "2", "--ready", "delay:0s", "--", "sleep", "60")
	b.waitReady()
	for _, pid := range b.workerPids(1) {
		// delay:0s is ready at fork; wait for the trampoline's exec.
		eventually(t, 5*time.Second, "the worker to exec sleep", func() bool {
			exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
			return strings.HasSuffix(exe, "/sleep")
		})
		expectFds(t, pid, "0,1,2,3,4")
		for _, fd := range []string{"3", "4"} {
			if flags := fdFlags(t, pid, fd); flags&syscall.O_NONBLOCK == 0 {
				t.Errorf("worker %d fd %s flags %o: listening socket switched to blocking mode", pid, fd, flags)
			}
		}
	}
}

// openFds lists pid's open descriptors by number (harness.FDs); it fails
// the test if /proc cannot say.
func openFds(t *testing.T, pid int) []string {
	t.Helper()
	fds, err := harness.FDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	return fds
}

func fdFlags(t *testing.T, pid int, fd string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + fd)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return int(n)
		}
	}
	t.Fatalf("no flags in fdinfo of %d/%s", pid, fd)
	return 0
}

// ctxSwitches sums the context switches of every thread of pid: each time
// the master is woken, one of them counts it.
func ctxSwitches(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no tasks for %d: %v", pid, err)
	}
	n := 0
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that just exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				c, _ := strconv.Atoi(strings.TrimSpace(v))
				n += c
			}
		}
	}
	return n
}

func TestMasterStaysOutOfTheDataPath(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	master := b.firstMaster()
	check := func(what string) {
		t.Helper()
		before := ctxSwitches(t, master)
		for i := 0; i < 2000; i++ {
			mustGet(t, addr, "/") // a fresh connection each
		}
		// Woken once per connection, the master would count ~2000 here.
		if d := ctxSwitches(t, master) - before; d > 200 {
			t.Fatalf("%s: master woke %d times for 2000 connections", what, d)
		}
	}
	check("first master")
	master = b.upgrade(t, master, 1)
	check("master after an upgrade")
}

// Without /bin/sh baton re-executes itself as the trampoline; BATON_SHIM=self
// forces that path here.
func TestSelfExecTrampoline(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, []string{"BATON_SHIM=self"}, "-l", addr, "-w", "2", "--", bin("activation"))
	b.waitReady()
	for i := 0; i < 10; i++ {
		body := mustGet(t, addr, "/")
		if field(body, "pid") == "" || field(body, "pid") != field(body, "listen_pid") {
			t.Fatalf("LISTEN_PID does not match the worker's pid: %q", body)
		}
	}
	for _, pid := range b.workerPids(1) {
		waitExec(t, pid, "/activation")
		if env := environOf(t, pid); env["BATON_SHIM"] != "" || env["BATON_SHIM_PPID"] != "" {
			t.Fatalf("worker %d sees baton's variables: %v", pid, env)
		}
	}
}

// expectFds checks that pid's open fds settle to want. A program may hold a
// file briefly while it starts (sleep reads its locale), so the check waits
// up to 2 s for that to pass; an inherited fd never goes away and fails.
func expectFds(t *testing.T, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		fds := openFds(t, pid)
		if strings.Join(fds, ",") == want {
			return
		}
		if time.Now().After(deadline) {
			var links []string
			for _, fd := range fds {
				l, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + fd)
				links = append(links, fd+"->"+l)
			}
			t.Errorf("worker %d has fds %v, want %s", pid, links, want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A replacement that never becomes ready is drained at the ready timeout
// and replaced again, until one comes up.
func TestReplacementThatNeverGetsReadyIsRetried(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hang := filepath.Join(dir, "hang")
	script := `if [ -e "$1" ]; then exec sleep 60; fi; exec "$0"`
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "--ready-timeout", "1s", "--", "sh", "-c", script, bin("hello"), hang)
	b.waitReady()
	first := b.workerPids(1)[0]
	os.WriteFile(hang, nil, 0o644) // replacements now hang
	syscall.Kill(first, syscall.SIGKILL)
	_, at := b.log.waitFrom(t, 0, "worker_ready_timeout", nil, 10*time.Second)
	b.log.waitFrom(t, at, "worker_drained", nil, 10*time.Second)
	_, at = b.log.waitFrom(t, at, "worker_restart_scheduled", nil, 10*time.Second)
	os.Remove(hang) // the next one comes up
	ev, _ := b.log.waitFrom(t, at, "worker_ready", nil, 30*time.Second)
	if body := mustGet(t, addr, "/"); field(body, "pid") != strconv.Itoa(ev.num("pid")) {
		t.Fatalf("served %q, want the latest replacement %d", body, ev.num("pid"))
	}
}

// taskCount is how many threads pid has.
func taskCount(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(tasks)
}

// A master waits for its workers' exits through pidfds in Go's poller: a
// blocking wait per worker held an OS thread each, a task counted against
// pids.max and about 50 KiB of stacks, made while a generation started.
func TestMasterThreadsDoNotGrowWithWorkers(t *testing.T) {
	t.Parallel()
	const workers = 24
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", strconv.Itoa(workers), "--ready", "delay:0s", "--", "sleep", "60")
	b.waitReady()
	master := b.firstMaster()
	if n := len(b.workerPids(1)); n != workers {
		t.Fatalf("%d workers ready, want %d", n, workers)
	}
	// The runtime's own threads (a few per CPU, the signal and spawning
	// threads) do not depend on the workers; one blocked thread per worker
	// would put the count above their number.
	if n := taskCount(t, master); n >= workers {
		t.Fatalf("master %d runs %d threads for %d workers: a thread per worker", master, n, workers)
	}
	// An exit is still seen through the poller.
	w := b.workerPids(1)[0]
	if err := syscall.Kill(w, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.log.wait(t, "worker_crashed", func(e logEvent) bool { return e["pid"] == float64(w) }, 10*time.Second)
}
