//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
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
	"github.com/baton-sh/baton/supervisor/control"
)

// End-to-end tests of the deploy pipeline: --before-upgrade, reload's
// progress lines, reloads waiting their turn, the worker count across
// generations, and --metrics.

// lightLoad is bounded load for the tests below.
func lightLoad(addr string) loadgen.Config {
	return loadgen.Config{Network: "tcp", Addr: addr, Clients: 4, KeepAlive: 0.5,
		Duration: 60 * time.Second, MaxRequests: 500_000, Timeout: 10 * time.Second}
}

// startedIn counts the "worker_started" events of generation gen.
func (b *baton) startedIn(gen int) int {
	n := 0
	for _, ev := range b.log.all() {
		if ev.str("event") == "worker_started" && ev.num("generation") == gen {
			n++
		}
	}
	return n
}

func TestBeforeUpgradeFailureStartsNothing(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2",
		"--before-upgrade", `echo "applying 0042_add_column"; sleep 0.5; echo "migration 0042 failed: column email already exists" >&2; exit 1`,
		"--", bin("hello"))
	b.waitReady()
	load := startLoad(t, lightLoad(addr))
	code, out := b.ctl(t, "reload")
	res := load.finish()
	if code != 1 || !strings.Contains(out, "migration 0042 failed: column email already exists") ||
		!strings.Contains(out, "exit status 1") {
		t.Fatalf("reload with a failing hook: exit %d, want 1 with the hook's status and message:\n%s", code, out)
	}
	if n := b.startedIn(2); n != 0 {
		t.Fatalf("%d workers of generation 2 started although the hook failed", n)
	}
	if b.log.count("master_starting") != 1 {
		t.Fatal("a new master was executed although the hook failed")
	}
	if res.Failures() != 0 || res.Requests == 0 {
		t.Fatalf("load across the failed upgrade: %s", res)
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "1" {
		t.Fatalf("served %q, want generation 1", body)
	}
	t.Logf("failed hook under load: %s", res)
}

func TestBeforeUpgradeTimeoutKillsItsProcessGroup(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	childPid := filepath.Join(t.TempDir(), "child.pid")
	b := startBaton(t, nil, "-l", addr, "-w", "1", "--before-upgrade-timeout", "500ms",
		"--before-upgrade", "sleep 300 & echo $! > "+childPid+"; wait",
		"--", bin("hello"))
	b.waitReady()
	start := time.Now()
	code, out := b.ctl(t, "reload")
	if code != 1 || !strings.Contains(out, "--before-upgrade-timeout 500ms") {
		t.Fatalf("reload with a hook past its timeout: exit %d:\n%s", code, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the reload took %s: the timeout did not end the hook", took)
	}
	raw, err := os.ReadFile(childPid)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if pid <= 0 {
		t.Fatalf("child pid %q", raw)
	}
	eventually(t, 5*time.Second, "the hook's child to be killed", func() bool { return !alive(pid) })
	if n := b.startedIn(2); n != 0 {
		t.Fatalf("%d workers of generation 2 started", n)
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "1" {
		t.Fatalf("served %q, want generation 1", body)
	}
}

// The hook's side effect is in place before the first worker of the
// generation starts: the worker refuses to start without it. The hook gets
// the --env-file (read anew) and BATON_GENERATION, runs in --chdir, and
// with --before-start runs before the first generation as well.
func TestBeforeUpgradeRunsBeforeTheFirstWorker(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	dir := t.TempDir()
	envFile := filepath.Join(dir, "app.env")
	os.WriteFile(envFile, []byte("SCHEMA=v1\n"), 0o644)
	release(t, dir, "r1", `test "$(cat migrated.$BATON_GENERATION)" = "$SCHEMA" || { echo "schema not migrated" >&2; exit 3; }
exec `+bin("hello"))
	pointCurrent(t, dir, "r1")
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--chdir", filepath.Join(dir, "current"), "--env-file", envFile,
		"--before-upgrade", `echo "$SCHEMA" > migrated.$BATON_GENERATION`, "--before-start",
		"--", "./server")
	b.waitReady()
	os.WriteFile(envFile, []byte("SCHEMA=v2\n"), 0o644)
	if code, out := b.ctl(t, "reload"); code != 0 {
		t.Fatalf("reload: exit %d:\n%s", code, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "releases", "r1", "migrated.2"))
	if err != nil || strings.TrimSpace(string(got)) != "v2" {
		t.Fatalf("the hook did not run for generation 2 in --chdir with the new env file: %q %v", got, err)
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
		t.Fatalf("served %q, want generation 2", body)
	}
}

// A reload prints its steps as they happen, into a pipe: the first at once,
// then one per worker at least, before the final line.
func TestReloadStreamsProgress(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, []string{"HELLO_STARTUP_MS=1000"}, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	cmd := exec.Command(bin("baton"), "reload", "--control", b.control)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type line struct {
		at   time.Duration
		text string
	}
	var lines []line
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, line{time.Since(start), sc.Text()})
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("reload: %v; output %v", err, lines)
	}
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1].text, "reload ok") {
		t.Fatalf("want progress lines then \"reload ok\": %v", lines)
	}
	if lines[0].at > 300*time.Millisecond {
		t.Errorf("first progress line after %s, want within 300ms: %q", lines[0].at, lines[0].text)
	}
	final := lines[len(lines)-1].at
	for w := range 2 {
		prefix := "worker " + strconv.Itoa(w) + " "
		found := false
		for _, l := range lines[:len(lines)-1] {
			if strings.Contains(l.text, prefix) && l.at < final {
				found = true
			}
		}
		if !found {
			t.Errorf("no line about %sbefore the final one: %v", prefix, lines)
		}
	}
	if final < time.Second {
		t.Errorf("the final line came after %s, before the 1 s start-up was over", final)
	}
	for _, l := range lines {
		t.Logf("%6.3fs %s", l.at.Seconds(), l.text)
	}
	// --json: every line is JSON; progress lines carry "event", the last is
	// the result.
	b.log.wait(t, "previous_master_exited", nil, 30*time.Second)
	code, out := b.ctl(t, "reload", "--json")
	jl := strings.Split(strings.TrimSpace(out), "\n")
	var res control.ReloadResult
	if code != 0 || len(jl) < 3 || json.Unmarshal([]byte(jl[len(jl)-1]), &res) != nil || !res.OK {
		t.Fatalf("reload --json: exit %d:\n%s", code, out)
	}
	for _, l := range jl[:len(jl)-1] {
		var p control.Progress
		if err := json.Unmarshal([]byte(l), &p); err != nil || p.Event == "" {
			t.Fatalf("reload --json: line %q is no progress line (%v)", l, err)
		}
	}
	// --quiet: the outcome only.
	b.log.wait(t, "previous_master_exited", func(e logEvent) bool { return e.num("generation") == 3 }, 30*time.Second)
	code, out = b.ctl(t, "reload", "--quiet")
	if code != 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.HasPrefix(out, "reload ok") {
		t.Fatalf("reload --quiet: exit %d:\n%s", code, out)
	}
}

// --follow-logs shows the hook's and the new workers' output.
func TestReloadFollowLogs(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "1", "--worker-output", "tagged",
		"--before-upgrade", "echo migrating to $BATON_GENERATION",
		"--", "/bin/sh", "-c", `echo "booting generation $BATON_GENERATION"; exec `+bin("hello"))
	b.waitReady()
	code, out := b.ctl(t, "reload", "--follow-logs")
	if code != 0 || !strings.Contains(out, "hook stdout | migrating to 2") ||
		!strings.Contains(out, "worker 0 stdout | booting generation 2") {
		t.Fatalf("reload --follow-logs: exit %d:\n%s", code, out)
	}
	b.log.wait(t, "previous_master_exited", nil, 30*time.Second)
	code, out = b.ctl(t, "reload")
	if code != 0 || strings.Contains(out, "stdout |") {
		t.Fatalf("reload without --follow-logs shows output: exit %d:\n%s", code, out)
	}
}

// Two reloads back to back while a slow request keeps the first one's old
// generation draining: the second waits its turn, both succeed, and the
// load sees no failure.
func TestBackToBackReloadsWaitTheirTurn(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--drain-timeout", "20s", "--", bin("hello"))
	b.waitReady()
	load := startLoad(t, lightLoad(addr))
	slow := inFlight(addr, 1500)
	b.waitAccepted(t, 1)
	code1, out1 := b.ctl(t, "reload")
	code2, out2 := b.ctl(t, "reload")
	res := load.finish()
	if code1 != 0 || code2 != 0 {
		t.Fatalf("reloads: exit %d:\n%s\nexit %d:\n%s", code1, out1, code2, out2)
	}
	if !strings.Contains(out2, "waiting for the previous generation to drain") || !strings.Contains(out2, "generation 3 serving") {
		t.Fatalf("the second reload did not wait for the drain:\n%s", out2)
	}
	if body := <-slow; field(body, "generation") != "1" {
		t.Fatalf("slow request: %q, want generation 1's answer", body)
	}
	if res.Failures() != 0 || res.Requests == 0 {
		t.Fatalf("load across two back-to-back reloads: %s", res)
	}
	t.Logf("second reload:\n%s\nload: %s", out2, res)
}

// TTIN twice, then a reload: the new generation runs the raised count;
// baton scale sets it, and status shows configured and ready counts.
func TestWorkerCountCarriedIntoNextGeneration(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "1", "--", bin("hello"))
	b.waitReady()
	// One at a time: the kernel merges a signal into one still pending.
	for n := 2; n <= 3; n++ {
		b.signal(syscall.SIGTTIN)
		eventually(t, 10*time.Second, strconv.Itoa(n)+" ready workers", func() bool { return len(b.workerPids(1)) == n })
	}
	if code, out := b.ctl(t, "reload"); code != 0 {
		t.Fatalf("reload: exit %d:\n%s", code, out)
	}
	// baton's log is written asynchronously: the reload's answer can come
	// before the new workers' lines reach the test.
	eventually(t, 5*time.Second, "generation 2 to log 3 ready workers, the 3 TTIN left", func() bool {
		return len(b.workerPids(2)) == 3
	})
	if code, out := b.ctl(t, "scale", "2"); code != 0 || !strings.Contains(out, "workers: 3 -> 2") {
		t.Fatalf("scale 2: exit %d:\n%s", code, out)
	}
	code, out := b.ctl(t, "status", "--json")
	var st control.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.WorkersConfigured != 2 || st.Generation != 2 {
		t.Fatalf("status after scale 2: exit %d:\n%s", code, out)
	}
	if code, out := b.ctl(t, "scale", "0"); code != 2 || !strings.Contains(out, `scale "0"`) {
		t.Fatalf("scale 0: exit %d:\n%s", code, out)
	}
	b.log.wait(t, "previous_master_exited", nil, 30*time.Second)
	if code, out := b.ctl(t, "reload"); code != 0 {
		t.Fatalf("second reload: exit %d:\n%s", code, out)
	}
	eventually(t, 5*time.Second, "generation 3 to log 2 ready workers, the 2 scale set", func() bool {
		return len(b.workerPids(3)) == 2
	})
	code, out = b.ctl(t, "status")
	if code != 0 || !strings.Contains(out, "workers: 2 configured, 2 ready") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
}

// scrape fetches /metrics once.
func scrape(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status)
	}
	return string(body), nil
}

// sample returns the value of the sample named exactly name (with labels).
func sample(t *testing.T, exposition, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no sample %s in:\n%s", name, exposition)
	return 0
}

// A scraper that never stops during 10 upgrades under load never sees a
// failure; the counters say what happened; promtool accepts the output.
func TestMetricsAcrossUpgrades(t *testing.T) {
	t.Parallel()
	addr, maddr := freeAddr(t), freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--metrics", maddr, "--", bin("hello"))
	b.waitReady()
	url := "http://" + maddr + "/metrics"
	load := startLoad(t, lightLoad(addr))
	stop := make(chan struct{})
	type scrapes struct {
		n    int
		errs []string
		gens map[float64]bool // baton_generation values seen
	}
	done := make(chan scrapes, 1)
	go func() {
		s := scrapes{gens: map[float64]bool{}}
		client := &http.Client{Timeout: 5 * time.Second}
		deadline := time.Now().Add(2 * time.Minute)
		for s.n < 20_000 && time.Now().Before(deadline) {
			select {
			case <-stop:
				done <- s
				return
			default:
			}
			body, err := scrape(client, url)
			if err != nil {
				s.errs = append(s.errs, err.Error())
			} else if _, v, ok := strings.Cut(body, "\nbaton_generation "); ok {
				g, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
				s.gens[g] = true
			}
			s.n++
			time.Sleep(5 * time.Millisecond)
		}
		done <- s
	}()
	for i := range 10 {
		if code, out := b.ctl(t, "reload"); code != 0 {
			t.Fatalf("reload %d: exit %d:\n%s", i+1, code, out)
		}
	}
	close(stop)
	s := <-done
	res := load.finish()
	if len(s.errs) != 0 {
		t.Fatalf("%d of %d scrapes failed during 10 upgrades, first: %s", len(s.errs), s.n, s.errs[0])
	}
	if len(s.gens) < 3 {
		t.Fatalf("%d scrapes saw generations %v: they did not overlap the upgrades", s.n, s.gens)
	}
	if res.Failures() != 0 {
		t.Fatalf("load: %s", res)
	}
	body, err := scrape(http.DefaultClient, url)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		`baton_upgrades_total{outcome="ok"}`:                10,
		`baton_upgrades_total{outcome="failed"}`:            0,
		`baton_generation`:                                  11,
		`baton_workers_configured`:                          2,
		`baton_workers{state="ready"}`:                      2,
		`baton_handover_duration_seconds_count{part="app"}`: 10,
		`baton_worker_starts_total`:                         22,
	} {
		if got := sample(t, body, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// client_golang's Go runtime and process series, beside baton's own.
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes", "process_open_fds"} {
		if got := sample(t, body, name); !(got > 0) {
			t.Errorf("%s = %v, want > 0", name, got)
		}
	}
	// Each old generation's 2 workers drained after its handover, counted
	// by the master that serves next: 20 once the last old master exited.
	eventually(t, 30*time.Second, "20 drained exits in the serving master's series", func() bool {
		b, err := scrape(http.DefaultClient, url)
		return err == nil && strings.Contains(b, "\n"+`baton_worker_exits_total{reason="drained"} 20`+"\n")
	})
	if os.Getenv("GOGC") == "" {
		// At rest (its old master gone) the master collects at the low
		// target, so that the garbage of scrapes like these is collected
		// before it grows the heap to the runtime's 4 MiB minimum.
		eventually(t, 30*time.Second, "the serving master at GOGC 25 once at rest", func() bool {
			b, err := scrape(http.DefaultClient, url)
			return err == nil && strings.Contains(b, "\ngo_gc_gogc_percent 25\n")
		})
	}
	if body, err = scrape(http.DefaultClient, url); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d scrapes during 10 upgrades (%d generations seen), none failed; load %s", s.n, len(s.gens), res)
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; .ci/run installs it): exposition not linted")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
