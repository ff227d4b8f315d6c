//go:build linux

package main

import (
	"fmt"
	"net"
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

// treeMechanisms are the two ways baton finds a generation's process tree:
// a cgroup v2 per generation and worker, and, where none can be made, the
// keeper as child subreaper (BATON_NO_CGROUP=1 forces it here).
var treeMechanisms = []struct {
	name string
	env  []string
}{
	{"cgroup", nil},
	{"subreaper", []string{"BATON_NO_CGROUP=1"}},
}

// startTreeBaton starts baton with env and args under mechanism mech, and
// skips the test visibly when this machine cannot give it a cgroup.
func startTreeBaton(t *testing.T, mech string, env []string, args ...string) *baton {
	t.Helper()
	b := startBaton(t, env, args...)
	ev := b.log.wait(t, "process_trees", nil, 10*time.Second)
	if got := ev.str("mechanism"); got != mech {
		if mech == "cgroup" {
			t.Skipf("SKIP: no cgroup v2 baton can write here (%s): %s", got, ev.str("reason"))
		}
		t.Fatalf("process trees tracked by %q, want %q", got, mech)
	}
	return b
}

// helperServer writes a worker script that starts a helper serving the
// inherited socket (hello again, tagged "helper") the way kind says, then
// execs the real server.
//   - setsid: the helper leaves the worker's session and process group.
//   - background: `sh -c 'helper & exec server'`, with a double fork, so
//     the helper is an orphan at once.
func helperServer(t *testing.T, kind, tag string) string {
	t.Helper()
	helper := `env NOTIFY_SOCKET= HELLO_TAG=` + tag + ` sh -c 'LISTEN_PID=$$ exec ` + bin("hello") + `'`
	var start string
	switch kind {
	case "setsid":
		start = "setsid " + helper + " &"
	case "background":
		start = "( " + helper + " & ) "
	default:
		t.Fatalf("helper kind %q", kind)
	}
	path := filepath.Join(t.TempDir(), "server")
	script := "#!/bin/sh\n" + start + "\nexec " + bin("hello") + "\n"
	if err := writeExecutable(path, []byte(script)); err != nil {
		t.Fatal(err)
	}
	return path
}

// helpersOf lists the live helper processes (hello tagged tag) whose
// environment says generation gen, or any generation for gen 0.
func helpersOf(tag string, gen int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		if exe, _ := os.Readlink("/proc/" + e.Name() + "/exe"); exe != bin("hello") {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		vars := "\x00" + string(env)
		if strings.Contains(vars, "\x00HELLO_TAG="+tag+"\x00") &&
			(gen == 0 || strings.Contains(vars, "\x00BATON_GENERATION="+strconv.Itoa(gen)+"\x00")) {
			out = append(out, pid)
		}
	}
	return out
}

// portFree reports whether addr can be bound again (nothing holds it).
func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// Helpers that leave their worker's session or parent keep the inherited
// socket: they belong to their generation all the same. After a handover
// the old generation's helpers are gone once its master reports it
// drained, and nothing answers for it after that; after baton stop (which
// returns only then) nothing is left and the port is free.
func TestGenerationIsItsWholeProcessTree(t *testing.T) {
	t.Parallel()
	for _, mech := range treeMechanisms {
		for _, kind := range []string{"setsid", "background"} {
			t.Run(mech.name+"/"+kind, func(t *testing.T) {
				t.Parallel()
				addr := freeAddr(t)
				tag := "helper-" + strings.ReplaceAll(addr, ":", "-")
				b := startTreeBaton(t, mech.name, mech.env, "-l", addr, "-w", "2", "--drain-timeout", "5s", "--", helperServer(t, kind, tag))
				b.waitReady()
				eventually(t, 5*time.Second, "generation 1's helpers to start", func() bool { return len(helpersOf(tag, 1)) == 2 })
				old := helpersOf(tag, 1)
				code, out := b.ctl(t, "status")
				if code != 0 || !strings.Contains(out, "process trees: "+mech.name) {
					t.Fatalf("status: exit %d, want the mechanism %s named:\n%s", code, mech.name, out)
				}
				if mech.name == "subreaper" && !strings.Contains(out, "BATON_NO_CGROUP=1") {
					t.Fatalf("status does not say why there is no cgroup (BATON_NO_CGROUP=1):\n%s", out)
				}
				from := b.log.len()
				b.upgrade(t, b.pid, 1)
				b.log.waitFrom(t, from, "old_generation_drained", func(e logEvent) bool { return e.num("generation") == 1 }, 20*time.Second)
				for _, p := range old {
					if alive(p) {
						t.Fatalf("helper %d of generation 1 still runs after its master reported the generation drained (%s)", p, osCommand(p))
					}
				}
				for i := 0; i < 20; i++ {
					if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
						t.Fatalf("request %d after generation 1 drained answered by %q", i, body)
					}
				}
				code, out = b.ctl(t, "stop", "--timeout", "20s")
				if code != 0 {
					t.Fatalf("baton stop: exit %d:\n%s", code, out)
				}
				if left := helpersOf(tag, 0); len(left) > 0 {
					t.Fatalf("helpers %v still run when baton stop returned", left)
				}
				if !portFree(addr) {
					t.Fatalf("port %s still held when baton stop returned", addr)
				}
				if code := b.waitExit(10 * time.Second); code != 0 {
					t.Fatalf("exit %d after stop", code)
				}
			})
		}
	}
}

func osCommand(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// A worker's leftover that ignores the drain signal is SIGKILLed at the
// drain deadline and logged as a survivor (pid, command, generation); a
// worker that crashes has its leftovers ended at once, before its
// replacement starts.
func TestWorkerLeftoversAreEnded(t *testing.T) {
	t.Parallel()
	for _, mech := range treeMechanisms {
		t.Run(mech.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// The helper ignores TERM and leaves the worker's session.
			script := "#!/bin/sh\nsetsid sh -c 'trap \"\" TERM; exec sleep 600' &\necho $! > " + dir + "/helper.$BATON_WORKER.$$\nexec " + bin("hello") + "\n"
			server := filepath.Join(dir, "server")
			if err := writeExecutable(server, []byte(script)); err != nil {
				t.Fatal(err)
			}
			addr := freeAddr(t)
			b := startTreeBaton(t, mech.name, mech.env, "-l", addr, "-w", "2", "--drain-timeout", "2s", "--", server)
			b.waitReady()
			helperOf := func(worker, pid int) int {
				var h int
				eventually(t, 5*time.Second, "the helper's pid file", func() bool {
					data, err := os.ReadFile(filepath.Join(dir, "helper."+strconv.Itoa(worker)+"."+strconv.Itoa(pid)))
					h, _ = strconv.Atoi(strings.TrimSpace(string(data)))
					return err == nil && h > 0
				})
				return h
			}
			// A crash: worker 0 is SIGKILLed; its helper goes at once.
			w0 := b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == 0 }, 5*time.Second).num("pid")
			h0 := helperOf(0, w0)
			from := b.log.len()
			if err := syscall.Kill(w0, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			ev, _ := b.log.waitFrom(t, from, "survivor_killed", func(e logEvent) bool { return e.num("pid") == h0 }, 5*time.Second)
			if !strings.Contains(ev.str("command"), "sleep") || ev.num("generation") != 1 || ev.num("worker") != 0 {
				t.Fatalf("survivor event %v: want the helper's command, generation 1, worker 0", ev)
			}
			if _, i := b.log.waitFrom(t, from, "worker_started", func(e logEvent) bool { return e.num("worker") == 0 }, 5*time.Second); i < 0 {
				t.Fatal("no replacement")
			}
			eventually(t, time.Second, "the crashed worker's helper to be gone", func() bool { return !alive(h0) })

			// A stop: worker 1's helper ignores TERM, is killed at the
			// drain deadline and logged; the stop ends only then.
			w1 := b.log.wait(t, "worker_ready", func(e logEvent) bool { return e.num("worker") == 1 }, 5*time.Second).num("pid")
			h1 := helperOf(1, w1)
			from = b.log.len()
			b.signal(syscall.SIGTERM)
			ev, _ = b.log.waitFrom(t, from, "survivor_killed", func(e logEvent) bool { return e.num("pid") == h1 }, 10*time.Second)
			if ev.str("reason") != "drain timeout" || ev.num("generation") != 1 {
				t.Fatalf("survivor event %v: want reason drain timeout, generation 1", ev)
			}
			if code := b.waitExit(10 * time.Second); code != 0 {
				t.Fatalf("exit %d after stop", code)
			}
			if alive(h1) {
				t.Fatalf("helper %d still runs after baton exited", h1)
			}
			if !portFree(addr) {
				t.Fatalf("port %s still held after baton exited", addr)
			}
		})
	}
}

// Under load (fresh and keep-alive clients, slow requests), upgrades with
// helpers serving in every generation: no request fails, no generation
// answers after its master reported it drained, and after baton stop
// nothing is left and the port is free.
func TestUpgradesWithHelpersUnderLoad(t *testing.T) {
	t.Parallel()
	for _, mech := range treeMechanisms {
		t.Run(mech.name, func(t *testing.T) {
			t.Parallel()
			addr := freeAddr(t)
			tag := "helper-" + strings.ReplaceAll(addr, ":", "-")
			b := startTreeBaton(t, mech.name, mech.env, "-l", addr, "-w", "2", "--drain-timeout", "5s", "--", helperServer(t, "setsid", tag))
			b.waitReady()
			load := startLoad(t, loadgen.Config{
				Network: "tcp", Addr: addr, Clients: 16, KeepAlive: 0.5, Path: "/?sleep=50",
				Duration: 90 * time.Second, MaxRequests: 500_000, Timeout: 10 * time.Second,
				ReleaseHeader: "Hello-Generation",
			})
			slow := startLoad(t, loadgen.Config{
				Network: "tcp", Addr: addr, Clients: 2, Path: "/?sleep=1000",
				Duration: 90 * time.Second, MaxRequests: 10_000, Timeout: 10 * time.Second,
				ReleaseHeader: "Hello-Generation",
			})
			drained := map[string]time.Time{}
			const upgrades = 3
			for gen := 1; gen <= upgrades; gen++ {
				from := b.log.len()
				b.upgrade(t, b.pid, gen)
				ev, _ := b.log.waitFrom(t, from, "old_generation_drained", func(e logEvent) bool { return e.num("generation") == gen }, 30*time.Second)
				at, err := time.Parse(time.RFC3339Nano, ev.str("ts"))
				if err != nil {
					t.Fatalf("event time %q: %v", ev.str("ts"), err)
				}
				drained[strconv.Itoa(gen)] = at
			}
			// Serve a moment longer on the last generation.
			time.Sleep(500 * time.Millisecond)
			res := load.finish()
			sres := slow.finish()
			for _, r := range []*loadgen.Result{res, sres} {
				if r.Failures() != 0 || r.Requests == 0 {
					// What was SIGKILLed says why: a helper that missed
					// the drain signal (survivor_killed), a worker past
					// --drain-timeout (worker_drain_timeout).
					var killed []string
					for _, e := range b.log.all() {
						switch e.str("event") {
						case "survivor_killed":
							killed = append(killed, fmt.Sprintf("helper %d of generation %d (%s)", e.num("pid"), e.num("generation"), e.str("reason")))
						case "worker_drain_timeout":
							killed = append(killed, fmt.Sprintf("worker %d of generation %d (drain timeout)", e.num("pid"), e.num("generation")))
						}
					}
					t.Fatalf("%d upgrades with helpers under load: %s; killed: %v", upgrades, r, killed)
				}
				for _, s := range r.Samples {
					if at, ok := drained[s.Release]; ok && s.Start.After(at) {
						t.Fatalf("generation %s answered a request sent %s after its master reported it drained", s.Release, s.Start.Sub(at))
					}
				}
			}
			t.Logf("%s: %d requests (%d slow), 0 failed, across %d upgrades with a helper per worker", mech.name, res.Requests, sres.Requests, upgrades)
			code, out := b.ctl(t, "stop", "--timeout", "20s")
			if code != 0 {
				t.Fatalf("baton stop: exit %d:\n%s", code, out)
			}
			if left := helpersOf(tag, 0); len(left) > 0 {
				t.Fatalf("helpers %v still run when baton stop returned", left)
			}
			if !portFree(addr) {
				t.Fatalf("port %s still held when baton stop returned", addr)
			}
			b.waitExit(10 * time.Second)
		})
	}
}

// A keeper SIGKILLed with its master leaves its subtree behind with a
// helper that left its group still holding the port. The next start with the same pid file
// (stale, naming that keeper) ends that subtree and serves; before, it
// refused on "address already in use" and the helper served on.
func TestStartAfterKilledKeeperEndsItsTree(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	tag := "helper-" + strings.ReplaceAll(addr, ":", "-")
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	args := []string{"-l", addr, "-w", "1", "--pid-file", pidFile, "--", helperServer(t, "setsid", tag)}
	b := startTreeBaton(t, "cgroup", nil, args...)
	b.waitReady()
	eventually(t, 5*time.Second, "the helper to start", func() bool { return len(helpersOf(tag, 1)) == 1 })
	left := helpersOf(tag, 1)
	t.Cleanup(func() {
		for _, p := range left {
			killOurs(p)
		}
	})
	// The keeper and its master die together (an OOM kill of the
	// service): the keeper, stopped first, does not see its master go, and
	// the master, killed before the keeper, never sees the keeper gone. (A
	// master stopped instead would be continued by the kernel once the
	// keeper's death orphans its process group.)
	master := b.firstMaster()
	if err := syscall.Kill(b.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	killOurs(master)
	eventually(t, 5*time.Second, "the master to be gone", func() bool { return !alive(master) })
	if err := syscall.Kill(b.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.waitExit(10 * time.Second)
	b2 := startTreeBaton(t, "cgroup", nil, args...)
	b2.log.wait(t, "survivor_killed", func(e logEvent) bool { return e.num("pid") == left[0] }, 10*time.Second)
	b2.waitReady()
	eventually(t, 5*time.Second, "the old helper to be gone", func() bool { return !alive(left[0]) })
	if code, out := b2.ctl(t, "stop", "--timeout", "20s"); code != 0 {
		t.Fatalf("baton stop: exit %d:\n%s", code, out)
	}
}

// A keeper removes the empty subtrees that keepers SIGKILLed beside it
// left, but never that of a keeper still running beside it, whatever its
// binary (another build of baton, another service): such a subtree is
// empty for a moment (before its first generation's cgroup), and removing
// it then made that keeper's masters fall back to the subreaper. A live
// process of another binary in the keepers' cgroup (sleep, started here)
// stands for such a keeper; a gone pid's subtree is still removed.
func TestLiveKeepersSubtreeIsLeftAlone(t *testing.T) {
	t.Parallel()
	first := startTreeBaton(t, "cgroup", nil, "-l", freeAddr(t), "-w", "1", "--", bin("hello"))
	base := first.log.wait(t, "process_trees", nil, 10*time.Second).str("cgroup")
	own := filepath.Dir(base)
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	ns := pidNamespace(t)
	live := filepath.Join(own, "baton-"+ns+"-"+strconv.Itoa(sleep.Process.Pid))
	gone := filepath.Join(own, "baton-"+ns+"-"+strconv.Itoa(goneChildPID(t)))
	for _, d := range []string{live, gone} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Skipf("SKIP: cannot make a cgroup beside the keeper's (%v)", err)
		}
		t.Cleanup(func() { syscall.Rmdir(d) })
	}
	second := startTreeBaton(t, "cgroup", nil, "-l", freeAddr(t), "-w", "1", "--", bin("hello"))
	second.waitReady()
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("the subtree of live pid %d (another binary, in the keepers' cgroup) was removed by a starting keeper: %v", sleep.Process.Pid, err)
	}
	if _, err := os.Stat(gone); err == nil {
		t.Fatalf("the empty subtree %s of a gone keeper is still there", gone)
	}
}

// goneChildPID returns the pid of a process that ran and was reaped.
func goneChildPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

// A keeper SIGKILLed before any upgrade leaves nothing of the service
// either: its first master, not killed with it, sees it gone as every
// later master does and ends its workers' whole trees, helpers that left
// their group included, and the port is free. Before, that master was
// started with PDEATHSIG SIGKILL, died with the keeper without a word,
// and setsid helpers ran on holding the port (the next baton run: address
// already in use); only after one upgrade did it work.
func TestSIGKILLOfKeeperBeforeAnyUpgradeLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, mech := range treeMechanisms {
		t.Run(mech.name, func(t *testing.T) {
			t.Parallel()
			addr := freeAddr(t)
			tag := "helper-" + strings.ReplaceAll(addr, ":", "-")
			b := startTreeBaton(t, mech.name, mech.env, "-l", addr, "-w", "2", "--", helperServer(t, "setsid", tag))
			b.waitReady()
			eventually(t, 5*time.Second, "the helpers to start", func() bool { return len(helpersOf(tag, 1)) == 2 })
			procs := append(b.pids(), helpersOf(tag, 1)...)
			t.Cleanup(func() {
				for _, p := range procs {
					killOurs(p)
				}
			})
			b.signal(syscall.SIGKILL)
			b.waitExit(5 * time.Second)
			b.log.wait(t, "keeper_gone", nil, 10*time.Second)
			eventually(t, 5*time.Second, "every master, worker and helper to be gone", func() bool {
				for _, p := range procs {
					if p != b.pid && alive(p) {
						return false
					}
				}
				return len(helpersOf(tag, 0)) == 0
			})
			if !portFree(addr) {
				t.Fatalf("port %s still held after the keeper was SIGKILLed and its service is gone", addr)
			}
		})
	}
}

// A helper that ignores the drain signal is SIGKILLed at the drain
// deadline, and the old master's old_generation_drained counts it
// (survivors_killed), once; before, it said "killed": 0 (workers only)
// with survivors SIGKILLed.
//
// The upgrade waits until the helper ignores the drain signal: the worker
// can be ready before its helper has run its trap (seen in CI at load 20:
// the whole test took 0.36 s, the helper died of SIGTERM, the drain took
// 20 ms and counted no survivor). Under load the worker itself can also
// take longer than --drain-timeout to exit; it is then SIGKILLed too, and
// "killed" must say so, no more.
func TestDrainedGenerationCountsItsKilledSurvivors(t *testing.T) {
	t.Parallel()
	for _, mech := range treeMechanisms {
		t.Run(mech.name, func(t *testing.T) {
			t.Parallel()
			tag := "drain-helper-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 10)
			// Bounded: the helper exits by itself after 30 s.
			script := "#!/bin/sh\nsetsid env BATON_TEST_HELPER=" + tag +
				" sh -c 'trap \"\" TERM QUIT INT HUP USR1 USR2 WINCH; exec sleep 30' &\nexec " + bin("hello") + "\n"
			path := filepath.Join(t.TempDir(), "server")
			if err := writeExecutable(path, []byte(script)); err != nil {
				t.Fatal(err)
			}
			b := startTreeBaton(t, mech.name, mech.env, "-l", freeAddr(t), "-w", "1", "--drain-timeout", "1s", "--", path)
			b.waitReady()
			helper := 0
			eventually(t, 10*time.Second, "the helper to ignore SIGTERM", func() bool {
				helper = taggedIgnoring(tag, syscall.SIGTERM)
				return helper != 0
			})
			t.Cleanup(func() { killIfTagged(helper, tag) })
			from := b.log.len()
			b.upgrade(t, b.pid, 1)
			ev, at := b.log.waitFrom(t, from, "old_generation_drained", func(e logEvent) bool { return e.num("generation") == 1 }, 20*time.Second)
			slow := 0 // workers SIGKILLed at the drain deadline
			for _, e := range b.log.all()[from:at] {
				if e.str("event") == "worker_drain_timeout" && e.num("generation") == 1 {
					slow++
				}
			}
			if ev.num("survivors_killed") != 1 || ev.num("killed") != slow {
				t.Fatalf("old_generation_drained %v: want survivors_killed 1 (the helper), killed %d (worker_drain_timeout events)", ev, slow)
			}
			if code, out := b.ctl(t, "stop", "--timeout", "20s"); code != 0 {
				t.Fatalf("baton stop: exit %d:\n%s", code, out)
			}
		})
	}
}

// taggedIgnoring returns the pid of a live process whose environment has
// BATON_TEST_HELPER=tag and that ignores sig, else 0.
func taggedIgnoring(tag string, sig syscall.Signal) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) || !hasTag(pid, tag) {
			continue
		}
		status, _ := os.ReadFile("/proc/" + e.Name() + "/status")
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
				if mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && mask&(1<<(sig-1)) != 0 {
					return pid
				}
			}
		}
	}
	return 0
}

func hasTag(pid int, tag string) bool {
	env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	return strings.Contains("\x00"+string(env), "\x00BATON_TEST_HELPER="+tag+"\x00")
}

// killIfTagged SIGKILLs pid if it is still the tagged process this test
// started (never a process that took its pid since).
func killIfTagged(pid int, tag string) {
	if pid != 0 && hasTag(pid, tag) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// A new master whose set-up fails after it made its generation's cgroups
// (here: the keeper, stopped, never answers its announcement, so it gives
// up after link.AnnounceWait) removes them: nothing was started in them.
func TestFailedSetUpOfNewMasterLeavesNoCgroups(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	ev := b.log.wait(t, "process_trees", nil, 10*time.Second)
	if got := ev.str("mechanism"); got != "cgroup" {
		t.Skipf("SKIP: no cgroup v2 baton can write here (%s): %s", got, ev.str("reason"))
	}
	base := ev.str("cgroup")
	b.waitReady()
	if gens, _ := filepath.Glob(filepath.Join(base, "gen-1.*")); len(gens) != 1 {
		t.Fatalf("generation 1's cgroups in %s: %v, want one", base, gens)
	}
	if err := syscall.Kill(b.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	continued := false
	cont := func() {
		if !continued {
			continued = true
			syscall.Kill(b.pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(cont)
	from := b.log.len()
	if err := syscall.Kill(b.firstMaster(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	b.log.waitFrom(t, from, "upgrade_failed", nil, 30*time.Second)
	cont()
	if gens, _ := filepath.Glob(filepath.Join(base, "gen-2.*")); len(gens) != 0 {
		t.Fatalf("a new master that failed its set-up left its cgroups: %v", gens)
	}
	if body := mustGet(t, addr, "/"); !strings.HasPrefix(body, "hello ") {
		t.Fatalf("served %q after the failed upgrade", body)
	}
	b.signal(syscall.SIGTERM) // the keeper ends the service and its cgroups
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("keeper exit %d after SIGTERM", code)
	}
}
