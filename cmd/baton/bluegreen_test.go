//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// Blue-green and canary (issue 12), with real masters, workers and load on
// loopback. Each generation reads --env-file anew, which is how a test
// makes the next release slow, broken or different.

// bgSetup starts baton with a blue-green or canary strategy and an env file
// the test rewrites before each reload.
func bgSetup(t *testing.T, env string, args ...string) (*baton, string, string) {
	t.Helper()
	dir := t.TempDir()
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	all := append([]string{"-l", addr, "-w", "2", "--env-file", envFile, "--ready-timeout", "5s", "--drain-timeout", "10s"}, args...)
	b := startBaton(t, nil, append(all, "--", bin("hello"))...)
	b.waitReady()
	return b, addr, envFile
}

// bgSetupAs is bgSetup (no env file) with the given steering: "classic"
// runs baton with CAP_BPF and CAP_SYS_ADMIN dropped from its bounding set.
func bgSetupAs(t *testing.T, steering string, args ...string) (*baton, string) {
	t.Helper()
	if steering == "ebpf" && os.Geteuid() != 0 {
		t.Skip("needs root for the eBPF steering")
	}
	addr := freeAddr(t)
	all := append([]string{"run", "--log-format", "json", "-l", addr, "-w", "2", "--ready-timeout", "5s", "--drain-timeout", "10s"}, args...)
	all = append(all, "--", bin("hello"))
	cmd := exec.Command(bin("baton"), all...)
	if steering == "classic" && os.Geteuid() == 0 {
		sp, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("needs setpriv (Debian package util-linux) to drop CAP_BPF")
		}
		cmd = exec.Command(sp, append([]string{"--bounding-set=-bpf,-sys_admin,-perfmon", "--", bin("baton")}, all...)...)
	}
	b := startBatonCmd(t, cmd, nil)
	if ev := b.log.wait(t, "rollout_sockets_ready", nil, 10*time.Second); ev.str("steering") != steering {
		t.Fatalf("steering %q, want %q", ev.str("steering"), steering)
	}
	b.waitReady()
	return b, addr
}

func writeEnv(t *testing.T, path, env string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
}

// batonCtl runs a control command against b and returns its output and
// exit code.
func batonCtl(b *baton, args ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin("baton"), append(args, "--control", b.control)...).CombinedOutput()
	code, _ := exitStatus(err) // -1 when it did not run
	return string(out), code
}

// reloadAsync runs baton reload in the background.
func reloadAsync(b *baton) <-chan [2]any {
	ch := make(chan [2]any, 1)
	go func() {
		out, code := batonCtl(b, "reload")
		ch <- [2]any{out, code}
	}()
	return ch
}

func unixNS(ev logEvent) time.Time {
	f, _ := ev["at_unix_ns"].(float64)
	if f == 0 {
		f, _ = ev["switched_at_unix_ns"].(float64)
	}
	return time.Unix(0, int64(f))
}

func newLoad(t *testing.T, addr string, clients int) *runningLoad {
	return startLoad(t, loadgen.Config{
		Network: "tcp", Addr: addr, Clients: clients, KeepAlive: 0, ReleaseHeader: "Hello-Generation",
		Duration: 60 * time.Second, MaxRequests: 2_000_000, Timeout: 10 * time.Second,
	})
}

// TestBlueGreenSwitch: a release that takes 1 s to start, checked by a
// health check and a 300 ms smoke test: no user gets an answer from it
// before the switch, every new connection from 50 ms after the switch on
// does, and nothing fails.
func TestBlueGreenSwitch(t *testing.T) {
	t.Parallel()
	b, addr, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--health-check", "http:/",
		"--smoke-test", `sleep 0.3; curl -fsS "http://$BATON_CANDIDATE/" | grep -q "generation=$BATON_GENERATION"`)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (Debian package curl) for the smoke test")
	}
	load := newLoad(t, addr, 16)
	eventually(t, 10*time.Second, "load to start", func() bool { return b.log.len() > 0 })
	writeEnv(t, envFile, "HELLO_TAG=v2\nHELLO_STARTUP_MS=1000\n")
	from := b.log.len()
	res := reloadAsync(b)
	r := <-res
	out, code := r[0].(string), r[1].(int)
	if code != 0 {
		t.Fatalf("baton reload exit %d:\n%s\nlog:\n%s", code, out, b.log.dump())
	}
	sw, _ := b.log.waitFrom(t, from, "rollout_switched", nil, 5*time.Second)
	switchAt := unixNS(sw)
	// The reload answered after the promotion; a short second load makes
	// sure the first one runs on for a while after the switch.
	after := loadgen.Run(context.Background(), loadgen.Config{Network: "tcp", Addr: addr, Clients: 4,
		ReleaseHeader: "Hello-Generation", Duration: 300 * time.Millisecond, MaxRequests: 50_000, Timeout: 10 * time.Second})
	b.log.waitFrom(t, from, "previous_master_exited", nil, 20*time.Second)
	lr := load.finish()
	for _, s := range after.Samples {
		if s.Release != "2" {
			t.Fatalf("after the reload answered, a new connection reached release %q", s.Release)
		}
	}
	early, late, lateOld := 0, 0, 0
	for _, s := range lr.Samples {
		if s.Release == "2" && s.End().Before(switchAt) {
			early++
		}
		if s.Start.After(switchAt.Add(50 * time.Millisecond)) {
			late++
			if s.Release != "2" {
				lateOld++
			}
		}
	}
	if early != 0 {
		t.Errorf("%d responses from the new release before the switch", early)
	}
	if late == 0 || lateOld != 0 {
		t.Errorf("%d of %d new connections started 50 ms after the switch reached the old release", lateOld, late)
	}
	if lr.Failures() != 0 {
		t.Errorf("failed requests: %s", lr)
	}
	for _, want := range []string{"health-check", "smoke-test", "switch", "promote"} {
		if !strings.Contains(out, want) {
			t.Errorf("baton reload output lacks step %q:\n%s", want, out)
		}
	}
	t.Logf("blue-green: switch %.1f ms after the reload began; %d new-release responses before it; %d of %d later connections on the old release; %s",
		sw["since_upgrade"], early, lateOld, late, lr)
}

// TestBlueGreenChecksRollBack: a release whose health check answers 500,
// then one whose smoke test exits 1: both rolled back, users never see
// them, nothing fails, baton reload exits 1 with the reason.
func TestBlueGreenChecksRollBack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	failFlag := filepath.Join(dir, "smoke-fails")
	b, addr, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--health-check", "http:/healthz",
		"--ready-timeout", "2s", "--smoke-test", "if [ -e "+failFlag+" ]; then echo 'smoke: checkout page broken' >&2; exit 1; fi")
	load := newLoad(t, addr, 8)
	for _, c := range []struct{ name, env, reason string }{
		{"health check 500", "HELLO_STATUS=500\n", "health check failed"},
		{"smoke test exit 1", "HELLO_TAG=v3\n", "smoke test failed"},
	} {
		writeEnv(t, envFile, c.env)
		if c.name == "smoke test exit 1" {
			writeEnv(t, failFlag, "")
		}
		from := b.log.len()
		out, code := batonCtl(b, "reload")
		if code != 1 || !strings.Contains(out, c.reason) {
			t.Fatalf("%s: baton reload exit %d, want 1 saying %q:\n%s", c.name, code, c.reason, out)
		}
		// Said once: not again on the rollback's and the failure's
		// progress lines nor in the steps table.
		if n := strings.Count(out, c.reason); n != 1 {
			t.Errorf("%s: the reason %q is said %d times, want once:\n%s", c.name, c.reason, n, out)
		}
		if c.name == "smoke test exit 1" && !strings.Contains(out, "checkout page broken") {
			t.Errorf("%s: the smoke test's output is not in the report:\n%s", c.name, out)
		}
		b.log.waitFrom(t, from, "upgrade_failed", nil, 20*time.Second)
		if body := mustGet(t, addr, "/"); field(body, "generation") != "1" {
			t.Fatalf("%s: after the rollback served %q", c.name, body)
		}
	}
	lr := load.finish()
	fromNew := 0
	for _, s := range lr.Samples {
		if s.Release != "1" {
			fromNew++
		}
	}
	if fromNew != 0 || lr.Failures() != 0 {
		t.Fatalf("%d responses from the rolled-back releases; %s", fromNew, lr)
	}
	t.Logf("two failed releases rolled back: %s", lr)
}

// TestBlueGreenRollbackDuringBake: baton rollback during a 10 s bake sends
// new connections back to the old release within 50 ms; nothing fails; the
// rolled-back generation drains.
func TestBlueGreenRollbackDuringBake(t *testing.T) {
	t.Parallel()
	b, addr, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--bake", "10s")
	load := newLoad(t, addr, 16)
	writeEnv(t, envFile, "HELLO_TAG=v2\n")
	from := b.log.len()
	res := reloadAsync(b)
	sw, _ := b.log.waitFrom(t, from, "rollout_switched", nil, 20*time.Second)
	eventually(t, 5*time.Second, "the new release to answer", func() bool { return field(mustGet(t, addr, "/"), "generation") == "2" })
	if out, code := batonCtl(b, "rollback"); code != 0 {
		t.Fatalf("baton rollback exit %d: %s", code, out)
	}
	rb, _ := b.log.waitFrom(t, from, "rollout_rollback", nil, 5*time.Second)
	r := <-res
	if code := r[1].(int); code != 1 || !strings.Contains(r[0].(string), "baton rollback") {
		t.Errorf("baton reload exit %d, want 1 naming baton rollback:\n%s", code, r[0])
	}
	newMaster := 0
	for _, e := range b.log.all()[from:] {
		if e.str("event") == "rollout_candidate" {
			newMaster = e.num("master_pid")
		}
	}
	eventually(t, 15*time.Second, "the rolled-back generation to drain", func() bool {
		for _, p := range append(b.workerPids(2), newMaster) {
			if alive(p) {
				return false
			}
		}
		return true
	})
	rollbackAt := unixNS(rb)
	// The load runs on for a window past the rollback, so that the check
	// below has new connections to look at (the drain can be over in
	// 30 ms).
	for until := rollbackAt.Add(400 * time.Millisecond); time.Now().Before(until) && !load.ended(); {
		time.Sleep(20 * time.Millisecond)
	}
	lr := load.finish()
	onNew, late, lateNew := 0, 0, 0
	for _, s := range lr.Samples {
		if s.Release == "2" {
			onNew++
		}
		if s.Start.After(rollbackAt.Add(50 * time.Millisecond)) {
			late++
			if s.Release != "1" {
				lateNew++
			}
		}
	}
	if onNew == 0 {
		t.Errorf("no user reached the new release during the bake: the test did not switch")
	}
	if late == 0 || lateNew != 0 {
		t.Errorf("%d of %d new connections started 50 ms after the rollback reached the new release", lateNew, late)
	}
	if lr.Failures() != 0 {
		t.Errorf("failed requests: %s", lr)
	}
	t.Logf("rollback %s after the switch (at %.1f ms): %d responses from the new release during the bake; %s",
		rollbackAt.Sub(unixNS(sw)).Round(time.Millisecond), sw["since_upgrade"], onNew, lr)
}

// TestCanaryShare: canary 20 % over a 5 s bake: the new release serves
// 20 ± 5 % of the new connections made during the bake.
func TestCanaryShare(t *testing.T) {
	t.Parallel()
	b, addr, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "canary", "--canary-weight", "20", "--bake", "5s")
	load := newLoad(t, addr, 8)
	writeEnv(t, envFile, "HELLO_TAG=v2\n")
	from := b.log.len()
	out, code := batonCtl(b, "reload")
	if code != 0 {
		t.Fatalf("baton reload exit %d:\n%s", code, out)
	}
	sw, _ := b.log.waitFrom(t, from, "rollout_switched", nil, 5*time.Second)
	pr, _ := b.log.waitFrom(t, from, "rollout_promoted", nil, 5*time.Second)
	lr := load.finish()
	start, end := unixNS(sw).Add(50*time.Millisecond), unixNS(pr).Add(-50*time.Millisecond)
	total, onNew := 0, 0
	for _, s := range lr.Samples {
		if s.Start.After(start) && s.End().Before(end) {
			total++
			if s.Release == "2" {
				onNew++
			}
		}
	}
	if total < 200 {
		t.Fatalf("only %d requests during the bake", total)
	}
	share := 100 * float64(onNew) / float64(total)
	if share < 15 || share > 25 {
		t.Errorf("canary share %.1f%% (%d of %d), want 20 ± 5", share, onNew, total)
	}
	if lr.Failures() != 0 {
		t.Errorf("failed requests: %s", lr)
	}
	t.Logf("canary 20%%: %.1f%% of %d new connections during the bake reached the new release; %s", share, total, lr)
}

// TestRolloutBadInput: what blue-green and canary cannot do is refused at
// start with one line naming the value, exit 2.
func TestRolloutBadInput(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "app.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-l", "unix://" + sock, "--strategy", "blue-green"}, "unix socket cannot join a SO_REUSEPORT group"},
		{[]string{"-l", "127.0.0.1:0", "--strategy", "canary"}, "port 0"},
		{[]string{"-l", "127.0.0.1:1", "--strategy", "purple"}, `--strategy "purple": want shared, blue-green or canary`},
		{[]string{"-l", "127.0.0.1:1", "--strategy", "canary", "--canary-weight", "0"}, "--canary-weight 0"},
		{[]string{"-l", "127.0.0.1:1", "--health-check", "http:/"}, `--health-check "http:/": needs --strategy blue-green or canary`},
		{[]string{"-l", "127.0.0.1:1", "--smoke-timeout", "5s"}, "--smoke-timeout 5s: needs --strategy blue-green or canary (--strategy is shared)"},
		{[]string{"-l", "127.0.0.1:1", "--health-interval", "2s"}, "--health-interval 2s: needs --strategy blue-green or canary"},
		{[]string{"-l", "127.0.0.1:1", "--strategy", "blue-green", "--canary-weight", "20"}, "--canary-weight 20: needs --strategy canary (--strategy is blue-green)"},
		{[]string{"-l", "127.0.0.1:1", "--strategy", "blue-green", "--health-check", "http:healthz"}, `--health-check "http:healthz"`},
	} {
		code, lines, out := runBaton(t, nil, append(append([]string{"run"}, c.args...), "--", bin("hello"))...)
		if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], c.want) {
			t.Errorf("%v: exit %d, lines %q; want exit 2 and one line saying %q\n%s", c.args, code, lines, c.want, out)
		}
	}
	// Given in the environment, a rollout flag is refused the same way.
	code, lines, out := runBatonEnv(t, nil, []string{"BATON_BAKE=5s"}, "run", "-l", "127.0.0.1:1", "--", bin("hello"))
	if want := "--bake 5s: needs --strategy blue-green or canary"; code != 2 || len(lines) != 1 || !strings.Contains(lines[0], want) {
		t.Errorf("BATON_BAKE=5s: exit %d, lines %q; want exit 2 and one line saying %q\n%s", code, lines, want, out)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("refused start left %s behind", sock)
	}
}

// TestBlueGreenTwentyUpgrades: 20 blue-green upgrades one after another
// under load at concurrency 64, with a slow request in flight on the old
// generation at each switch: nothing fails, every slow request completes.
func TestBlueGreenTwentyUpgrades(t *testing.T) {
	t.Parallel()
	for _, steering := range steerings { // one after the other: each runs 64 clients
		t.Run(steering, func(t *testing.T) { testBlueGreenTwentyUpgrades(t, steering) })
	}
}

func testBlueGreenTwentyUpgrades(t *testing.T, steering string) {
	b, addr := bgSetupAs(t, steering, "--strategy", "blue-green", "--health-check", "tcp")
	migration := b.log.wait(t, "rollout_sockets_ready", nil, time.Second).str("migration")
	load := startLoad(t, loadgen.Config{
		Network: "tcp", Addr: addr, Clients: 64, KeepAlive: 0.5, ReleaseHeader: "Hello-Generation",
		Duration: 120 * time.Second, MaxRequests: 3_000_000, Timeout: 10 * time.Second,
	})
	var slow []<-chan string
	var switches []float64
	for gen := 1; gen <= 20; gen++ {
		slow = append(slow, inFlight(addr, 300))
		b.waitAccepted(t, gen)
		from := b.log.len()
		out, code := batonCtl(b, "reload")
		if code != 0 {
			t.Fatalf("upgrade %d: baton reload exit %d:\n%s", gen, code, out)
		}
		sw, _ := b.log.waitFrom(t, from, "rollout_switched", nil, 5*time.Second)
		switches = append(switches, sw["since_upgrade"].(float64))
		b.log.waitFrom(t, from, "previous_master_exited", nil, 20*time.Second)
	}
	lr := load.finish()
	for i, c := range slow {
		if body := <-c; !strings.HasPrefix(body, "hello ") {
			t.Errorf("slow request %d: %s", i, body)
		}
	}
	// Connections queued on an old socket when it closed (handshakes that
	// completed after its queue read empty): migrated, or reset where the
	// kernel does not migrate, which would be failed requests.
	queued, reset := 0, 0
	for _, e := range b.log.Slice(0, b.log.len()) {
		if logEvent(e).str("event") == "queue_at_close" {
			queued += logEvent(e).num("left")
			if e["reset"] == true {
				reset += logEvent(e).num("left")
			}
		}
	}
	if lr.Failures() != 0 || reset != 0 {
		t.Fatalf("failed requests across 20 blue-green upgrades: %s; %d queued at an old socket's close, %d of them reset", lr, queued, reset)
	}
	t.Logf("%s (migration %s): 20 blue-green upgrades at concurrency 64: %s; %d connections queued at an old socket's close; switch after %v ms",
		steering, migration, lr, queued, switches)
}

// TestSmokeTestRunsAsTheNewGeneration: the smoke test runs as the workers'
// --user, with the --env-file the new generation reads (changed by the
// deploy), not as the old master with the old environment.
func TestSmokeTestRunsAsTheNewGeneration(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root for --user")
	}
	// Where the smoke test, running as nobody, may write.
	out, err := os.MkdirTemp("", "baton-smoke-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(out) })
	os.Chmod(out, 0o777)
	report := filepath.Join(out, "smoke.txt")
	b, _, envFile := bgSetup(t, "SMOKE_MARK=old\n", "--strategy", "blue-green", "--user", "nobody",
		"--smoke-test", `echo "uid=$(id -u) mark=$SMOKE_MARK" > `+report)
	writeEnv(t, envFile, "SMOKE_MARK=new\n")
	if out, code := batonCtl(b, "reload"); code != 0 {
		t.Fatalf("baton reload exit %d:\n%s", code, out)
	}
	got, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if want := "uid=65534 mark=new\n"; string(got) != want {
		t.Fatalf("smoke test ran with %q, want %q", got, want)
	}
}
