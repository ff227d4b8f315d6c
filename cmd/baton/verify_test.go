//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"github.com/baton-sh/baton/internal/verify"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// verifyRun runs `baton verify ARGS...` to completion (20 s at most) and
// returns its exit code, stdout and stderr.
func verifyRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin("baton"), append([]string{"verify"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := runBounded(t, cmd, func() string { return stdout.String() + "\n" + stderr.String() })
	return code, stdout.String(), stderr.String()
}

// verifyJSON runs verify with --json and decodes its report.
func verifyJSON(t *testing.T, args ...string) (int, verify.Report, string) {
	t.Helper()
	code, out, errOut := verifyRun(t, append(args, "--json")...)
	var rep verify.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify exit %d, report not JSON (%v):\n%s\nstderr: %s", code, err, out, errOut)
	}
	return code, rep, errOut
}

// Light load: these tests run beside the rest of the suite on 2 cores.
var verifyLight = []string{"--concurrency", "4", "--interval", "300ms", "--request-timeout", "10s", "--duration", "15s"}

func TestVerifyGoodRelease(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()

	code, rep, errOut := verifyJSON(t, append([]string{"--url", "http://" + addr + "/", "--control", b.control,
		"--reloads", "2", "--slow", "/?sleep=200", "--version-header", "Hello-Generation"}, verifyLight...)...)
	t.Logf("verify: requests %d, failed %d, retried %d, upgrades %+v, releases %+v", rep.Requests, rep.Failed, rep.Retried, rep.Upgrades, rep.Releases)
	if code != 0 || !rep.Verified || errOut != "" {
		t.Fatalf("exit %d, verified %v, problems %q, stderr %q", code, rep.Verified, rep.Problems, errOut)
	}
	if rep.Failed != 0 || rep.Requests < 100 || rep.SlowRequests == 0 {
		t.Errorf("requests %d (slow %d), failed %d: want many, some slow, none failed", rep.Requests, rep.SlowRequests, rep.Failed)
	}
	if len(rep.Upgrades) != 2 {
		t.Fatalf("%d upgrades reported, want 2", len(rep.Upgrades))
	}
	for i, u := range rep.Upgrades {
		if u.Outcome != "handed-over" || u.Generation != i+2 || u.HandoverMS <= 0 || u.OldGoneMS == nil {
			t.Errorf("upgrade %d: %+v; want handed over to generation %d, with handover time and the old generation gone", i+1, u, i+2)
		}
		if u.ReleaseBefore != string(rune('1'+i)) || u.ReleaseAfter != string(rune('2'+i)) || u.FirstNewMS == nil {
			t.Errorf("upgrade %d: release %q -> %q (first new after %v): want %d -> %d", i+1, u.ReleaseBefore, u.ReleaseAfter, u.FirstNewMS, i+1, i+2)
		}
	}
	var rels []string
	for _, r := range rep.Releases {
		rels = append(rels, r.Release)
	}
	if strings.Join(rels, ",") != "1,2,3" {
		t.Errorf("releases seen %v, want 1,2,3", rels)
	}
	if rep.LatencySteady.N == 0 || rep.LatencyUpgrades.N == 0 {
		t.Errorf("latency steady %+v, around upgrades %+v: want both measured", rep.LatencySteady, rep.LatencyUpgrades)
	}
}

func TestVerifyReleaseAnswering500Fails(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	envFile := filepath.Join(t.TempDir(), "env")
	os.WriteFile(envFile, nil, 0o644)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--env-file", envFile, "--", bin("hello"))
	b.waitReady()
	// The next generation reads the env file anew: the release is broken.
	os.WriteFile(envFile, []byte("HELLO_STATUS=500\n"), 0o644)

	code, out, errOut := verifyRun(t, append([]string{"--url", "http://" + addr + "/", "--control", b.control,
		"--version-header", "Hello-Generation"}, verifyLight...)...)
	t.Logf("verify output:\n%s", out)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", code, errOut)
	}
	if !strings.HasPrefix(errOut, "baton: not verified: ") || strings.Count(errOut, "\n") != 1 ||
		!strings.Contains(errOut, "(non-2xx ") || !strings.Contains(errOut, "from upgrade 1 on") {
		t.Errorf("stderr %q: want one line naming the non-2xx failures and upgrade 1", errOut)
	}
	for _, want := range []string{"upgrade 1 at ", "generation 2 serving", "first failures", "non-2xx", "GET /: status 500 (after upgrade 1, release 2)", "NOT verified"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(out, "before any upgrade") || strings.Contains(out, "before the first upgrade") {
		t.Errorf("failures blamed on the time before the upgrade")
	}
}

func TestVerifyReleaseThatCannotStartFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "exec "+bin("hello"))
	release(t, dir, "broken", "echo 'fatal: /etc/app.toml: no such file' >&2; exit 3")
	pointCurrent(t, dir, "v1")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--worker-output", "tagged",
		"--chdir", filepath.Join(dir, "current"), "--", "./server")
	b.waitReady()
	pointCurrent(t, dir, "broken")

	code, rep, errOut := verifyJSON(t, append([]string{"--url", "http://" + addr + "/", "--control", b.control, "--reloads", "3"}, verifyLight...)...)
	if code != 1 || rep.Verified {
		t.Fatalf("exit %d, verified %v; want 1, false", code, rep.Verified)
	}
	if len(rep.Upgrades) != 1 || rep.NotAttempted != 2 {
		t.Fatalf("upgrades %+v, %d not attempted: want the first only, then stop", rep.Upgrades, rep.NotAttempted)
	}
	u := rep.Upgrades[0]
	if u.Outcome != "rolled-back" || !strings.Contains(u.Reason, "exit") || !strings.Contains(strings.Join(u.Stderr, "\n"), "fatal: /etc/app.toml") {
		t.Errorf("upgrade 1: outcome %q, reason %q, stderr %q: want rolled back with the worker's exit and stderr", u.Outcome, u.Reason, u.Stderr)
	}
	if !strings.Contains(errOut, "upgrade 1 rolled back: "+u.Reason) {
		t.Errorf("stderr %q does not give the reason %q", errOut, u.Reason)
	}
	// The old generation kept serving: no request failed.
	if rep.Failed != 0 || rep.Requests == 0 {
		t.Errorf("requests %d, failed %d %v: the rolled-back upgrade must not fail requests", rep.Requests, rep.Failed, rep.FirstFailures)
	}
}

// A drain that kills the old workers (as a server that exits on the drain
// signal would) drops what they have in flight: verify must find those.
func TestVerifyFindsRequestsDroppedByDrain(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--drain-signal", "KILL", "--", bin("hello"))
	b.waitReady()

	code, rep, _ := verifyJSON(t, append([]string{"--url", "http://" + addr + "/", "--control", b.control,
		"--slow", "/?sleep=3000"}, verifyLight...)...)
	t.Logf("verify: requests %d, failed %d %v, first %+v", rep.Requests, rep.Failed, rep.FailedByKind, rep.FirstFailures)
	if code != 1 || rep.Verified {
		t.Fatalf("exit %d, verified %v; want 1, false", code, rep.Verified)
	}
	if len(rep.Upgrades) != 1 || rep.Upgrades[0].Outcome != "handed-over" {
		t.Fatalf("upgrades %+v: want one, handed over", rep.Upgrades)
	}
	dropped := rep.FailedByKind["eof"] + rep.FailedByKind["reset"]
	// A 3 s slow request started with the load is in flight on an old
	// worker when the upgrade (0.3 s in) kills it.
	if dropped == 0 || dropped != rep.Failed || rep.Upgrades[0].Failed != rep.Failed || rep.SlowFailed == 0 {
		t.Errorf("failed %d %v (slow %d), after upgrade 1: %d: want every failure an EOF or reset after upgrade 1, the slow one among them",
			rep.Failed, rep.FailedByKind, rep.SlowFailed, rep.Upgrades[0].Failed)
	}
}

// The caps end the check, and ending by a cap is no proof.
func TestVerifyBoundsFailTheCheck(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "--", bin("hello"))
	b.waitReady()
	url := "http://" + addr + "/"

	code, rep, errOut := verifyJSON(t, "--url", url, "--control", b.control, "--max-requests", "50", "--concurrency", "2")
	if code != 1 || rep.Requests != 50 || len(rep.Upgrades) != 0 || !strings.Contains(errOut, "--max-requests 50 reached") {
		t.Errorf("--max-requests 50: exit %d, %d requests, upgrades %+v, stderr %q", code, rep.Requests, rep.Upgrades, errOut)
	}
	t0 := time.Now()
	code, rep, errOut = verifyJSON(t, "--url", url, "--control", b.control, "--duration", "500ms", "--interval", "5s", "--concurrency", "2")
	if code != 1 || len(rep.Upgrades) != 0 || rep.NotAttempted != 1 || !strings.Contains(errOut, "--duration 500ms reached") {
		t.Errorf("--duration 500ms: exit %d, upgrades %+v, stderr %q", code, rep.Upgrades, errOut)
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Errorf("--duration 500ms took %s", d)
	}
	// Nothing answers there: nothing may be upgraded.
	code, out, errOut := verifyRun(t, "--url", "http://"+freeAddr(t)+"/", "--control", b.control)
	if code != exitUnreachable || out != "" || !strings.Contains(errOut, "connection refused; nothing was upgraded") || b.log.count("upgrade_requested") != 0 {
		t.Errorf("no service: exit %d, stdout %q, stderr %q, %d upgrades requested", code, out, errOut, b.log.count("upgrade_requested"))
	}
}

func TestVerifyBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctl := filepath.Join(dir, "ctl.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		// 192.0.2.1 is TEST-NET-1: refused before any packet is sent.
		{[]string{"--url", "http://192.0.2.1:8080/", "--control", ctl}, "192.0.2.1 is not a loopback address"},
		{[]string{"--url", "http://[2001:db8::1]:8080/", "--control", ctl}, "--allow-remote"},
		{[]string{"--control", ctl}, "--url is required"},
		{[]string{"--url", "https://127.0.0.1:8443/", "--control", ctl}, "https is not supported"},
		{[]string{"--url", "ftp://127.0.0.1/", "--control", ctl}, `--url "ftp://127.0.0.1/"`},
		{[]string{"--url", "http://127.0.0.1:1/", "--control", ctl, "--reloads", "0"}, "--reloads 0"},
		{[]string{"--url", "http://127.0.0.1:1/", "--control", ctl, "--slow", "sleep"}, `--slow "sleep"`},
		{[]string{"--url", "http://127.0.0.1:1/", "--control", ctl, "--version-header", "a b"}, `--version-header "a b"`},
		{[]string{"--url", "http://127.0.0.1:1/", "--control", ctl}, "no master at " + ctl},
		{[]string{"--url", "http://127.0.0.1:1/", "--control", ctl, "--report", filepath.Join(dir, "deploy.png")}, "want a file name ending in .html or .svg"},
		{[]string{"--url", "http://127.0.0.1:1/", "--control", ctl, "--report", filepath.Join(dir, "no", "deploy.html")}, "does not exist"},
	} {
		code, out, errOut := verifyRun(t, c.args...)
		if code != 2 || out != "" || !strings.HasPrefix(errOut, "baton: ") || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("verify %q: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", c.args, code, out, errOut, c.want)
		}
	}
}

// TestVerifyUnreachable: a service that does not answer is not a deploy
// that dropped requests (exit 1): verify exits 4, in one line, upgrading
// nothing.
func TestVerifyUnreachable(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "1", "--", bin("hello"))
	b.waitReady()
	code, out, errOut := verifyRun(t, "--url", "http://"+freeAddr(t)+"/", "--control", b.control)
	if code != exitUnreachable || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "nothing was upgraded") {
		t.Errorf("verify of an unreachable URL: exit %d, stdout %q, stderr %q; want exit %d in one line", code, out, errOut, exitUnreachable)
	}
	if b.log.count("upgrade_requested") != 0 {
		t.Errorf("an upgrade was requested")
	}
}

func TestDeployScriptVerify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "HELLO_TAG=v1 exec "+bin("hello"))
	release(t, dir, "v2", "HELLO_TAG=v2 exec "+bin("hello"))
	release(t, dir, "v3", "HELLO_TAG=v3 HELLO_STATUS=500 exec "+bin("hello"))
	pointCurrent(t, dir, "v1")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--chdir", filepath.Join(dir, "current"), "--", "./server")
	b.waitReady()
	deploy := func(rel string) (int, string) {
		return runDeploy(t, []string{"BATON=" + bin("baton"), "BATON_CONTROL=" + b.control, "APP_ROOT=" + dir,
			"VERIFY_FLAGS=" + strings.Join(verifyLight, " ")},
			"--verify", "http://"+addr+"/", filepath.Join(dir, "releases", rel))
	}
	current := func() string { return releaseOf(t, dir) }

	code, out := deploy("v2")
	if code != 0 || current() != "v2" || !strings.Contains(out, "verified: 1 upgrade(s) handed over") {
		t.Fatalf("deploy --verify v2: exit %d, current -> %s:\n%s", code, current(), out)
	}
	if body := mustGet(t, addr, "/"); field(body, "tag") != "v2" {
		t.Fatalf("after deploying v2 served %q", body)
	}

	code, out = deploy("v3")
	if code != 1 || current() != "v2" || !strings.Contains(out, "NOT verified") ||
		!strings.Contains(out, "v3 failed verification (see above); "+filepath.Join(dir, "releases", "v2")+" serves again") {
		t.Fatalf("deploy --verify of v3 answering 500: exit %d, current -> %s:\n%s", code, current(), out)
	}
	// baton reload returns at the handover; the old generation's workers
	// may take a new connection until their drain signal lands.
	eventually(t, 10*time.Second, "v2 to answer again", func() bool {
		body, err := get("tcp", addr, "/")
		return err == nil && field(body, "tag") == "v2"
	})
}
