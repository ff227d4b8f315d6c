//go:build linux

package main

import (
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

func environOf(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// waitExec waits until pid runs a program whose path ends in suffix and
// whose environment is in place: the kernel switches /proc/PID/exe before
// it lays out the new program's environment, so for a moment environ reads
// empty.
func waitExec(t *testing.T, pid int, suffix string) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("worker %d to exec %s", pid, suffix), func() bool {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		return strings.HasSuffix(exe, suffix) && len(env) > 0
	})
}

func TestWorkerEnvironmentAndFdsAreExactlyTheContract(t *testing.T) {
	// Under blue-green and canary each master also holds the steering
	// map (eBPF, as root), which it passes on to the next master and
	// must not to its workers.
	for _, strategy := range []string{"shared", "blue-green"} {
		t.Run(strategy, func(t *testing.T) { workerContract(t, strategy) })
	}
}

func workerContract(t *testing.T, strategy string) {
	t.Parallel()
	rec := newNotifyRecorder(t)
	addr := freeAddr(t)
	b := startBaton(t, []string{
		"NOTIFY_SOCKET=" + rec.path, "WATCHDOG_USEC=60000000", "LISTEN_FDS=9", "LISTEN_PID=1",
		"BATON_SOMETHING=internal", "APP_SETTING=kept",
	}, "-l", "web="+addr, "-w", "2", "--ready", "delay:0s", "--strategy", strategy, "--", "sleep", "60")
	b.waitReady()
	check := func(gen int) {
		t.Helper()
		pids := b.workerPids(gen)
		if len(pids) != 2 {
			t.Fatalf("generation %d: workers %v", gen, pids)
		}
		for _, pid := range pids {
			waitExec(t, pid, "/sleep")
			env := environOf(t, pid)
			for k := range env {
				bad := strings.HasPrefix(k, "TABLEFLIP_") || strings.HasPrefix(k, "WATCHDOG_") ||
					(strings.HasPrefix(k, "LISTEN_") && k != "LISTEN_FDS" && k != "LISTEN_PID" && k != "LISTEN_FDNAMES") ||
					(strings.HasPrefix(k, "BATON_") && k != "BATON_WORKER" && k != "BATON_GENERATION" && k != "BATON_TREE")
				if bad {
					t.Errorf("generation %d worker %d has %s=%s", gen, pid, k, env[k])
				}
			}
			want := map[string]string{
				"LISTEN_FDS": "1", "LISTEN_PID": strconv.Itoa(pid), "LISTEN_FDNAMES": "web",
				"BATON_GENERATION": strconv.Itoa(gen), "APP_SETTING": "kept",
			}
			for k, v := range want {
				if env[k] != v {
					t.Errorf("generation %d worker %d: %s=%q, want %q", gen, pid, k, env[k], v)
				}
			}
			if ns := env["NOTIFY_SOCKET"]; ns == rec.path || !filepath.IsAbs(ns) || !strings.HasPrefix(filepath.Base(filepath.Dir(ns)), "baton-notify.") {
				t.Errorf("worker %d NOTIFY_SOCKET=%q: want baton's own, at a path as systemd hands it", pid, ns)
			}
			expectFds(t, pid, "0,1,2,3")
		}
	}
	check(1)
	// After an upgrade, the new master came through tableflip: its pipes
	// and sentinel variable must not reach workers either.
	b.upgrade(t, b.pid, 1)
	check(2)
	b.upgrade(t, b.pid, 2)
	check(3)
}

func TestEnvFileIsReadByEveryGeneration(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	envFile := filepath.Join(dir, "app.env")
	os.WriteFile(envFile, []byte("# release settings\nexport HELLO_TAG=\"first\"\n"), 0o644)
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "--env-file", envFile, "--", bin("hello"))
	b.waitReady()
	if body := mustGet(t, addr, "/"); field(body, "tag") != "first" {
		t.Fatalf("served %q, want tag=first", body)
	}
	os.WriteFile(envFile, []byte("HELLO_TAG=second\n"), 0o644)
	b.upgrade(t, b.pid, 1)
	if body := mustGet(t, addr, "/"); field(body, "tag") != "second" {
		t.Fatalf("after upgrade served %q, want tag=second", body)
	}
	// A broken env file stops the upgrade before anything is forked.
	os.WriteFile(envFile, []byte("NOT A VALID LINE\n"), 0o644)
	code, out := b.ctl(t, "reload")
	if code != 2 || !strings.Contains(out, "line 1") {
		t.Fatalf("reload with a broken env file: exit %d:\n%s", code, out)
	}
}

func TestUSR1ReachesWorkersAndReopensLogFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "baton.log")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "3", "--log-file", logFile, "--worker-output", "tagged", "--", bin("hello"))
	// The log goes to the file, so follow it there.
	eventually(t, 20*time.Second, "generation ready in the log file", func() bool {
		data, _ := os.ReadFile(logFile)
		return strings.Contains(string(data), `"generation_ready"`)
	})
	os.Rename(logFile, logFile+".1")
	b.signal(syscall.SIGUSR1)
	eventually(t, 10*time.Second, "three workers to log USR1 in the reopened file", func() bool {
		data, _ := os.ReadFile(logFile)
		return strings.Count(string(data), "USR1: reopening logs") == 3
	})
	if _, err := get("tcp", addr, "/"); err != nil {
		t.Fatalf("workers stopped serving after USR1: %v", err)
	}
}

func TestWatchdogPingsThroughAnUpgrade(t *testing.T) {
	t.Parallel()
	rec := newNotifyRecorder(t)
	addr := freeAddr(t)
	// 200 ms watchdog: a ping every 100 ms. Workers take 1 s to start, so
	// the upgrade is long enough to miss pings if any part stopped them.
	b := startBaton(t, []string{"NOTIFY_SOCKET=" + rec.path, "WATCHDOG_USEC=200000", "HELLO_STARTUP_MS=1000"},
		"-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	b.signal(syscall.SIGUSR2)
	start := rec.waitFor(t, 0, b.pid, "RELOADING=1")
	b.log.wait(t, "handover_complete", nil, 30*time.Second)
	// The keeper relays every master's messages as its own.
	end := rec.waitFor(t, start, b.pid, "READY=1")
	rec.waitFor(t, start, b.pid, "EXTEND_TIMEOUT_USEC=")
	// Pings from either master while the new generation started.
	rec.mu.Lock()
	pings := 0
	for _, m := range rec.msgs[start:end] {
		if m.msg == "WATCHDOG=1" {
			pings++
		}
	}
	rec.mu.Unlock()
	if pings < 5 {
		t.Fatalf("%d watchdog pings during a >1 s upgrade, want one per 100 ms", pings)
	}
	// And the new master keeps them coming after the old one is gone.
	b.log.wait(t, "previous_master_exited", nil, 20*time.Second)
	i := rec.waitFor(t, end, b.pid, "WATCHDOG=1")
	rec.waitFor(t, i+1, b.pid, "WATCHDOG=1")
}

func TestSocketActivationOfBaton(t *testing.T) {
	t.Parallel()
	web, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wf, _ := web.(*net.TCPListener).File()
	af, _ := admin.(*net.TCPListener).File()
	// The test keeps its own listeners open: had baton bound instead of
	// adopting, it would fail with "address already in use".
	defer web.Close()
	defer admin.Close()
	// systemd sets LISTEN_PID to the service's pid before exec; a shell
	// does the same with $$ and exec.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=web:admin exec "$0" "$@"`,
		bin("baton"), "run", "--log-format", "json", "-w", "2",
		"-l", "admin="+admin.Addr().String(), "-l", "web="+web.Addr().String(), "--", bin("hello"))
	cmd.ExtraFiles = []*os.File{wf, af}
	b := startBatonCmd(t, cmd, nil)
	wf.Close()
	af.Close()
	b.waitReady()
	b.log.wait(t, "sockets_activated", func(e logEvent) bool { return e.num("count") == 2 }, time.Second)
	// Matched by name, not by order: LISTEN_FDNAMES says web:admin while
	// --listen says admin then web. Had baton matched by position, the
	// socket workers call "admin" would be the web port.
	for name, a := range map[string]string{"web": web.Addr().String(), "admin": admin.Addr().String()} {
		if body := mustGet(t, a, "/"); field(body, "listener") != name {
			t.Fatalf("GET on the %s socket %s: %q", name, a, body)
		}
	}
	// Later masters inherit the adopted sockets.
	b.upgrade(t, b.pid, 1)
	if body := mustGet(t, web.Addr().String(), "/"); field(body, "generation") != "2" {
		t.Fatalf("after upgrade: %q", body)
	}
}

func TestUnixSocketSurvivesUpgradesAndGoesAtStop(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "app.sock")
	b := startBaton(t, nil, "-l", "unix://"+sock, "-w", "2", "--", bin("hello"))
	b.waitReady()
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	ino := st.Sys().(*syscall.Stat_t).Ino
	master := b.pid
	for gen := 1; gen <= 10; gen++ {
		master = b.upgrade(t, master, gen)
		st, err := os.Stat(sock)
		if err != nil || st.Sys().(*syscall.Stat_t).Ino != ino {
			t.Fatalf("after upgrade %d the socket file changed or went: %v", gen, err)
		}
		body, err := get("unix", sock, "/")
		if err != nil || field(body, "generation") != strconv.Itoa(gen+1) {
			t.Fatalf("after upgrade %d: %q, %v", gen, body, err)
		}
	}
	syscall.Kill(master, syscall.SIGTERM)
	b.log.wait(t, "master_stopped", nil, 20*time.Second)
	eventually(t, 5*time.Second, "the socket file to be removed", func() bool {
		_, err := os.Lstat(sock)
		return os.IsNotExist(err)
	})
}

func TestSIGKILLOfNewMasterBeforeReady(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "exec "+bin("hello"))
	release(t, dir, "slow", "HELLO_STARTUP_MS=5000 exec "+bin("hello"))
	pointCurrent(t, dir, "v1")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--chdir", filepath.Join(dir, "current"), "--", "./server")
	b.waitReady()
	load := startLoad(t, loadgen.Config{Network: "tcp", Addr: addr, Clients: 8, KeepAlive: 0.5,
		Duration: 60 * time.Second, MaxRequests: 1_000_000})
	pointCurrent(t, dir, "slow")
	b.signal(syscall.SIGUSR2)
	ms := b.log.wait(t, "master_starting", func(e logEvent) bool { return e["upgrade"] == true }, 10*time.Second)
	newMaster := ms.num("master_pid")
	var newWorkers []int
	for len(newWorkers) < 2 {
		ev, _ := b.log.waitFrom(t, 0, "worker_started", func(e logEvent) bool {
			return e.num("master_pid") == newMaster && !slices.Contains(newWorkers, e.num("pid"))
		}, 10*time.Second)
		newWorkers = append(newWorkers, ev.num("pid"))
	}
	syscall.Kill(newMaster, syscall.SIGKILL)
	ev := b.log.wait(t, "upgrade_failed", nil, 10*time.Second)
	if !strings.Contains(ev.str("reason"), "killed") {
		t.Errorf("reason %q does not say the new master was killed", ev.str("reason"))
	}
	eventually(t, 2*time.Second, "the new generation's workers to die with their master", func() bool {
		return !alive(newWorkers[0]) && !alive(newWorkers[1])
	})
	if body := mustGet(t, addr, "/"); field(body, "generation") != "1" {
		t.Fatalf("served %q", body)
	}
	if res := load.finish(); res.Failures() != 0 {
		t.Fatalf("failed requests: %s", res)
	}
}

func TestSIGKILLOfOldMasterWhileDraining(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	slow := inFlight(addr, 5000)
	b.waitAccepted(t, 1)
	b.signal(syscall.SIGUSR2)
	ho := b.log.wait(t, "handover_complete", nil, 20*time.Second)
	newMaster := ho.num("master_pid")
	old := b.firstMaster()
	b.log.wait(t, "worker_draining", func(e logEvent) bool { return e.num("master_pid") == old }, 10*time.Second)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.log.wait(t, "previous_master_exited", func(e logEvent) bool { return e.num("master_pid") == newMaster }, 10*time.Second)
	<-slow // lost with the old generation: SIGKILL is not a drain
	for i := 0; i < 20; i++ {
		if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
			t.Fatalf("served %q", body)
		}
	}
	code, out := b.ctl(t, "status", "--json")
	if code != 0 || !strings.Contains(out, `"generation": 2`) {
		t.Fatalf("status after the old master was killed: exit %d:\n%s", code, out)
	}
}

// TestFaultSoak runs 100 upgrades under load, where chosen generations exit
// at once, hang without becoming ready, start slowly, or lose a worker right
// after becoming ready.
func TestFaultSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak")
	}
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "good", "exec "+bin("hello"))
	release(t, dir, "crash", "echo 'crash: bad config' >&2; exit 3")
	release(t, dir, "hang", "exec sleep 60")
	release(t, dir, "slow", "HELLO_STARTUP_MS=300 exec "+bin("hello"))
	release(t, dir, "crashready", "HELLO_CRASH_WORKER=0 exec "+bin("hello"))
	pointCurrent(t, dir, "good")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "3", "--chdir", filepath.Join(dir, "current"),
		"--ready-timeout", "4s", "--drain-timeout", "5s", "--", "./server")
	b.waitReady()

	load := startLoad(t, loadgen.Config{Network: "tcp", Addr: addr, Clients: 8, KeepAlive: 0.5,
		Duration: 240 * time.Second, MaxRequests: 5_000_000, Timeout: 10 * time.Second})

	plan := make([]string, 100)
	rng := rand.New(rand.NewSource(1))
	for i := range plan {
		switch r := rng.Intn(100); {
		case r < 12:
			plan[i] = "crash"
		case r < 20:
			plan[i] = "hang"
		case r < 30:
			plan[i] = "slow"
		case r < 36:
			plan[i] = "crashready"
		default:
			plan[i] = "good"
		}
	}
	master, gen := b.pid, 1
	var fds, rss []int
	counts := map[string]int{}
	for i, rel := range plan {
		counts[rel]++
		pointCurrent(t, dir, rel)
		from := b.log.len()
		syscall.Kill(master, syscall.SIGUSR2)
		if rel == "crashready" {
			// Worker 0 dies 300 ms after READY=1. Usually its siblings are
			// ready by then and the generation takes over (the crash is
			// then replaced like any); on a starved machine it dies while
			// they start, which rolls the generation back. Either is right.
			ev, _ := b.log.waitFrom(t, from, "", func(e logEvent) bool {
				return e.str("event") == "upgrade_failed" ||
					(e.str("event") == "handover_complete" && e.num("generation") == gen+1)
			}, 30*time.Second)
			if ev.str("event") != "handover_complete" {
				if !strings.Contains(ev.str("reason"), "exit status 1 while the generation was starting") {
					t.Fatalf("upgrade %d (crashready): rolled back for %q", i, ev.str("reason"))
				}
				counts["crashready rolled back"]++
				continue
			}
			rel = "slow" // handed over: wait for the old master like a good one
		}
		switch rel {
		case "crash", "hang":
			ev, _ := b.log.waitFrom(t, from, "upgrade_failed", nil, 30*time.Second)
			want := map[string]string{"crash": "exit status 3", "hang": "not ready after 4s"}[rel]
			if !strings.Contains(ev.str("reason"), want) || ev.num("master_pid") != master {
				t.Fatalf("upgrade %d (%s): failure %v, want reason with %q from master %d", i, rel, ev, want, master)
			}
		default:
			ev, _ := b.log.waitFrom(t, from, "handover_complete",
				func(e logEvent) bool { return e.num("generation") == gen+1 }, 30*time.Second)
			master, gen = ev.num("master_pid"), gen+1
			b.log.waitFrom(t, from, "previous_master_exited", func(e logEvent) bool { return e.num("master_pid") == master }, 30*time.Second)
			if rel == "good" {
				fds = append(fds, fdCount(t, master))
				rss = append(rss, rssKB(t, master))
			}
		}
	}
	res := load.finish()
	if res.Failures() != 0 {
		// Name the moments, so the log shows what baton was doing.
		var at []string
		for _, s := range res.Samples {
			if s.Failed {
				at = append(at, s.Start.UTC().Format("15:04:05.000000")+"+"+s.Latency.String())
			}
		}
		t.Fatalf("failed requests in the soak: %s; started at %v; log:\n%s", res, at, b.log.dump())
	}
	// A count taken just as the old master went may include tableflip's
	// pipe from it for a moment; a leak never goes away.
	base := slices.Min(fds[:min(5, len(fds))])
	eventually(t, 2*time.Second, fmt.Sprintf("the last master's fds to be at most %d (counts: %v)", base, fds), func() bool {
		return fdCount(t, master) <= base
	})
	sorted := append([]int(nil), rss...)
	sort.Ints(sorted)
	if last, med := rss[len(rss)-1], sorted[len(sorted)/2]; last > med+4096 {
		t.Fatalf("master RSS grows across the soak: %v KB", rss)
	}
	t.Logf("soak: %v; %s; master fds %d..%d, RSS %d..%d KB", counts, res, fds[0], fds[len(fds)-1], sorted[0], sorted[len(sorted)-1])
}

func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

func TestCompatEnvironment(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	b := startBaton(t, nil, "-l", addr, "-l", "unix://"+sock, "--compat", "einhorn", "--compat", "server-starter",
		"--ready", "delay:0s", "--", "sleep", "60")
	b.waitReady()
	pid := b.workerPids(1)[0]
	waitExec(t, pid, "/sleep")
	env := environOf(t, pid)
	want := map[string]string{
		"EINHORN_FD_COUNT": "2", "EINHORN_FD_0": "3", "EINHORN_FD_1": "4", "EINHORN_FDS": "3 4",
		"SERVER_STARTER_PORT":       addr + "=3;" + sock + "=4",
		"SERVER_STARTER_GENERATION": "1",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
}

func TestWorkerOutputFloodAndLongLines(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	// A 300 KB line on stdout and 20 000 lines on stderr before serving.
	script := `head -c 300000 /dev/zero | tr '\0' x; echo; yes flood | head -n 20000 >&2; echo 'last words' >&2; exec "$0"`
	b := startBaton(t, nil, "-l", addr, "--worker-output", "tagged", "--", "sh", "-c", script, bin("hello"))
	b.log.wait(t, "generation_ready", nil, 60*time.Second)
	// The pump logs at its own pace, behind the worker: wait for the end.
	b.log.wait(t, "worker_output", func(e logEvent) bool { return e.str("line") == "last words" && e.str("stream") == "stderr" }, 30*time.Second)
	var partial, flood, longest, unnamed int
	for _, ev := range b.log.all() {
		if ev.str("event") != "worker_output" {
			continue
		}
		if ev.num("pid") <= 0 || ev["worker"] == nil || ev.num("generation") != 1 {
			unnamed++ // each line says whose it is
		}
		l := ev.str("line")
		longest = max(longest, len(l))
		if ev["partial"] == true {
			partial++
		}
		if l == "flood" {
			flood++
		}
	}
	if longest > 16<<10 || partial < 300000/(16<<10) {
		t.Errorf("a 300 KB line came out as %d partial pieces, the longest %d bytes", partial, longest)
	}
	if flood != 20000 {
		t.Errorf("%d of 20000 stderr lines logged", flood)
	}
	if unnamed > 0 {
		t.Errorf("%d output lines without their worker's pid, index and generation", unnamed)
	}
	if rss := rssKB(t, b.firstMaster()); rss > 40<<10 {
		t.Errorf("master RSS %d KB after the flood", rss)
	}
	if body := mustGet(t, addr, "/"); !strings.HasPrefix(body, "hello ") {
		t.Fatalf("served %q", body)
	}
}

// environSet is pid's environment as it was exec'd.
func environSet(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	sort.Strings(env)
	return env
}

func TestMasterEnvironmentDoesNotAccumulate(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, []string{"APP_MODE=prod"}, "-l", addr, "--", bin("hello"))
	b.waitReady()
	master := b.upgrade(t, b.pid, 1)
	second := environSet(t, master)
	for gen := 2; gen < 8; gen++ {
		master = b.upgrade(t, master, gen)
	}
	last := environSet(t, master)
	// Every re-executed master gets the same environment but for the
	// handover's own variables, set anew for each.
	strip := func(env []string) []string {
		var out []string
		for _, kv := range env {
			switch k, _, _ := strings.Cut(kv, "="); k {
			case "BATON_MASTER_GENERATION", "BATON_UPGRADE_START", "BATON_PARENT_NOTIFY", "BATON_UPGRADE_TOKEN", "BATON_MASTER_METRICS",
				"BATON_UPGRADE_LAUNCH", "BATON_PREFLIGHT_CPU":
			default:
				out = append(out, kv)
			}
		}
		return out
	}
	if a, z := strip(second), strip(last); strings.Join(a, "\n") != strings.Join(z, "\n") {
		t.Fatalf("master environment changed across upgrades:\nsecond: %q\neighth: %q", a, z)
	}
	if !slices.Contains(last, "APP_MODE=prod") {
		t.Fatalf("the startup environment was lost: %q", last)
	}
}

func TestPreflightRefusesAMissingBatonBinary(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b, self := startCopiedBaton(t, "-l", addr, "--", bin("hello"))
	b.waitReady()
	os.Remove(self) // a deploy that removed baton instead of replacing it
	starts := b.log.count("master_starting")
	code, out := b.ctl(t, "reload")
	if code != 2 || !strings.Contains(out, "pre-flight") || !strings.Contains(out, self) {
		t.Fatalf("reload without a baton binary: exit %d:\n%s", code, out)
	}
	if b.log.count("master_starting") != starts {
		t.Fatal("a new master was forked anyway")
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "1" {
		t.Fatalf("served %q", body)
	}
}

// Replacing the baton binary on disk and sending USR2 upgrades baton itself:
// the new master is exec'd from the path, not from the running image.
func TestUpgradeReplacesBatonItself(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b, self := startCopiedBaton(t, "-l", addr, "-w", "2", "--", bin("hello"))
	install := func(from string) {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		tmp := self + ".new"
		if err := writeExecutable(tmp, data); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, self); err != nil { // as package managers do
			t.Fatal(err)
		}
	}
	first := b.log.wait(t, "master_starting", nil, 10*time.Second)
	if first.str("version") != "dev" {
		t.Fatalf("first master runs version %q", first.str("version"))
	}
	b.waitReady()
	install(bin("baton-v2"))
	upgradeRunsV2(t, b, addr, "the replaced binary")
}

// upgradeRunsV2 upgrades b, whose baton path names baton-v2 now (from, for
// the message: how it came to), checks that the new master runs it and that
// generation 2 serves on addr, and stops baton.
func upgradeRunsV2(t *testing.T, b *baton, addr, from string) {
	t.Helper()
	master := b.upgrade(t, b.pid, 1)
	ev := b.log.wait(t, "master_starting", func(e logEvent) bool { return e.num("master_pid") == master }, time.Second)
	if ev.str("version") != "test-v2" {
		t.Fatalf("new master runs version %q, want %s's test-v2", ev.str("version"), from)
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
		t.Fatalf("served %q", body)
	}
	if code, out := b.ctl(t, "stop"); code != 0 {
		t.Fatalf("stop: %d %s", code, out)
	}
}

// baton upgraded by moving a symlink on its path to a new binary (a
// release directory per version): the new master runs another file than
// the keeper and is known by the keeper's token.
func TestUpgradeBatonBySymlink(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	dir := t.TempDir()
	for v, from := range map[string]string{"v1": bin("baton"), "v2": bin("baton-v2")} {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := writeExecutable(filepath.Join(dir, v, "baton"), data); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(dir, "baton")
	if err := os.Symlink("v1/baton", link); err != nil {
		t.Fatal(err)
	}
	b := startBatonFrom(t, dir, link, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	if err := os.Symlink("v2/baton", link+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link+".new", link); err != nil { // ln -sfn, atomically
		t.Fatal(err)
	}
	upgradeRunsV2(t, b, addr, "the symlink's new target")
}
