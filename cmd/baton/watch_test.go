//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// A deploy you can watch (issue 24): baton status during a rollout, the
// failing health check's lines, timings that keep the bake out of the
// app's start-up, failure labels, metrics across upgrades. Every wait is on
// baton's structured output: status --json, reload --json, /metrics.

// reloadJSON runs baton reload --json and returns its progress lines and
// outcome.
func reloadJSON(t *testing.T, b *baton) ([]control.Progress, control.ReloadResult, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin("baton"), "reload", "--control", b.control, "--json").Output()
	code, ok := exitStatus(err)
	if !ok {
		t.Fatalf("baton reload: %v", err)
	}
	var steps []control.Progress
	var res control.ReloadResult
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Bytes()
		var probe map[string]any
		if json.Unmarshal(line, &probe) != nil {
			t.Fatalf("reload --json printed a line that is not JSON: %s", line)
		}
		if _, ok := probe["event"]; ok {
			var p control.Progress
			json.Unmarshal(line, &p)
			steps = append(steps, p)
			continue
		}
		json.Unmarshal(line, &res)
	}
	return steps, res, code
}

// TestStatusDuringBake: a canary upgrade baking for 60 s shows, in status
// text and JSON and in /metrics, the candidate and its master, the stage,
// the health check passed with its answer, the share, the bake time left
// and the commands that apply; baton promote ends it, and the reload's
// timings put the bake in its own part, not in the app's start-up.
func TestStatusDuringBake(t *testing.T) {
	t.Parallel()
	maddr := freeAddr(t)
	b, _, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "canary", "--canary-weight", "30", "--bake", "60s",
		"--health-check", "http:/", "--health-interval", "200ms", "--metrics", maddr)
	writeEnv(t, envFile, "HELLO_TAG=v2\n")
	type outcome struct {
		steps []control.Progress
		res   control.ReloadResult
		code  int
	}
	done := make(chan outcome, 1)
	go func() {
		s, r, c := reloadJSON(t, b)
		done <- outcome{s, r, c}
	}()
	var st control.Status
	eventually(t, 30*time.Second, "status to show the bake", func() bool {
		st = statusJSON(t, b)
		return st.Rollout != nil && st.Rollout.Stage == control.StageBaking
	})
	r := st.Rollout
	if r.Strategy != "canary" || r.Generation != 2 || r.MasterPID == 0 || r.MasterPID == st.MasterPID {
		t.Errorf("rollout %+v: want canary generation 2 with its own master (old master %d)", r, st.MasterPID)
	}
	if r.CanaryPercent != 30 || r.BakeLeftMS <= 0 || r.BakeLeftMS > 60_000 {
		t.Errorf("rollout share %d%%, bake left %.0f ms: want 30%% and (0, 60 s]", r.CanaryPercent, r.BakeLeftMS)
	}
	if len(r.Checks) == 0 || r.Checks[0].Name != "health-check" || r.Checks[0].State != "passed" || r.Checks[0].LastAnswer != "200" {
		t.Errorf("checks %+v: want the health check passed with answer 200", r.Checks)
	}
	if strings.Join(r.Commands, ",") != "baton promote,baton rollback" {
		t.Errorf("commands %q: want baton promote and baton rollback", r.Commands)
	}
	code, text := b.ctl(t, "status")
	for _, want := range []string{"canary rollout: generation 2", "stage baking", "health-check", "last answer: 200",
		"30% of new connections to generation 2", "bake ends in", "now: baton promote | baton rollback"} {
		if code != 0 || !strings.Contains(text, want) {
			t.Errorf("status (exit %d) lacks %q:\n%s", code, want, text)
		}
	}
	t.Logf("baton status during the bake:\n%s", text)
	body, err := scrape(http.DefaultClient, "http://"+maddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if got := sample(t, body, `baton_rollout_stage{stage="baking"}`); got != 1 {
		t.Errorf(`baton_rollout_stage{stage="baking"} = %v during the bake`, got)
	}
	if got := sample(t, body, "baton_rollout_candidate_generation"); got != 2 {
		t.Errorf("baton_rollout_candidate_generation = %v during the bake, want 2", got)
	}
	// The bake runs a while before the promotion, so that its part is
	// large beside the app's start-up.
	eventually(t, 10*time.Second, "the bake to run 500 ms", func() bool {
		st := statusJSON(t, b)
		return st.Rollout != nil && st.Rollout.BakeLeftMS < 59_500
	})
	if code, out := b.ctl(t, "promote"); code != 0 {
		t.Fatalf("promote: exit %d: %s", code, out)
	}
	o := <-done
	if o.code != 0 || !o.res.OK {
		t.Fatalf("reload exit %d: %+v", o.code, o.res)
	}
	res := o.res
	if res.BakeMS < 500 || res.WorkersStartingMS >= res.BakeMS || res.ChecksMS <= 0 {
		t.Errorf("timings %+v: want the bake (>= 500 ms) apart from the workers' start-up and the checks", res)
	}
	if sum := res.WorkersStartingMS + res.ChecksMS + res.BakeMS + res.BatonMS; sum > res.TotalMS+1 || sum < res.TotalMS-1 {
		t.Errorf("parts add up to %.1f ms, total %.1f ms", sum, res.TotalMS)
	}
	for _, p := range o.steps {
		if p.Event == control.EvGenerationReady && p.DurationMS >= res.BakeMS {
			t.Errorf("generation_ready says %.0f ms: the bake counted as start-up: %s", p.DurationMS, p.Message)
		}
	}
	if st := statusJSON(t, b); st.Rollout != nil {
		t.Errorf("status after the promotion still shows a rollout: %+v", st.Rollout)
	}
	eventually(t, 20*time.Second, "the handover's parts in /metrics", func() bool {
		body, err := scrape(http.DefaultClient, "http://"+maddr+"/metrics")
		return err == nil && strings.Contains(body, `baton_handover_duration_seconds_count{part="bake"} 1`) &&
			strings.Contains(body, "baton_rollout_candidate_generation 0")
	})
}

// TestHealthCheckFailsVisibly: a candidate answering 500 gives one progress
// line per failed probe with its answer, and is rolled back at
// --health-timeout, well before --ready-timeout; the report names the step.
func TestHealthCheckFailsVisibly(t *testing.T) {
	t.Parallel()
	b, _, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--health-check", "http:/", "--health-timeout", "1s")
	writeEnv(t, envFile, "HELLO_TAG=v2\nHELLO_STATUS=500\n")
	steps, res, code := reloadJSON(t, b)
	if code != 1 || res.FailedStep != "health-check" || !strings.Contains(res.Reason, "--health-timeout") {
		t.Fatalf("reload exit %d, %+v: want exit 1 failing at the health check after --health-timeout", code, res)
	}
	probes := 0
	for _, p := range steps {
		if p.Event == control.EvHealthProbe {
			probes++
			if !strings.Contains(p.Message, "answered 500") || p.Count != probes {
				t.Errorf("probe line %d: %+v: want its answer and number", probes, p)
			}
		}
	}
	if probes < 3 {
		t.Errorf("%d probe lines in 1 s of probing every 100 ms: %+v", probes, steps)
	}
	// --ready-timeout is 5 s in bgSetup: the check stopped at its own bound.
	if res.TotalMS > 4000 {
		t.Errorf("rolled back after %.0f ms: the health check did not stop at --health-timeout 1s", res.TotalMS)
	}
	if out, code := batonCtl(b, "status"); code != 0 || strings.Contains(out, "rollout:") {
		t.Errorf("status after the rollback (exit %d) still shows a rollout:\n%s", code, out)
	}
}

// TestFailureLabels: each failed step names itself and whose output the
// last lines are: the hook's, the smoke test's, a worker's stderr.
func TestFailureLabels(t *testing.T) {
	t.Parallel()
	t.Run("hook", func(t *testing.T) {
		t.Parallel()
		addr := freeAddr(t)
		b := startBaton(t, nil, "-l", addr, "-w", "1", "--before-upgrade", "echo migrating; echo 'table locked' >&2; exit 3", "--", bin("hello"))
		b.waitReady()
		_, res, code := reloadJSON(t, b)
		if code != 1 || res.FailedStep != "before-upgrade" || res.OutputOf != "the hook's output" || !strings.Contains(strings.Join(res.Stderr, "\n"), "table locked") {
			t.Fatalf("reload exit %d, %+v: want the hook named with its output", code, res)
		}
		out, _ := batonCtl(b, "status")
		if !strings.Contains(out, "failed at --before-upgrade") || !strings.Contains(out, "last lines of the hook's output:") || strings.Contains(out, "rolled back") {
			t.Errorf("status after a failed hook:\n%s", out)
		}
	})
	t.Run("smoke-test", func(t *testing.T) {
		t.Parallel()
		b, _, _ := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--smoke-test", "echo checking; echo 'no such page' >&2; exit 1")
		out, code := batonCtl(b, "reload")
		if code != 1 || !strings.Contains(out, "failed at its smoke-test") || !strings.Contains(out, "last lines of the smoke test's output:") || !strings.Contains(out, "no such page") {
			t.Errorf("reload exit %d:\n%s", code, out)
		}
	})
	t.Run("worker", func(t *testing.T) {
		t.Parallel()
		// Worker 1 crashes 300 ms after it said it was ready: during the bake.
		b, _, envFile := bgSetup(t, "HELLO_TAG=v1\n", "--strategy", "blue-green", "--bake", "10s")
		writeEnv(t, envFile, "HELLO_CRASH_WORKER=1\n")
		out, code := batonCtl(b, "reload")
		if code != 1 || !strings.Contains(out, "failed at its bake") || !strings.Contains(out, "last lines of worker 1's stderr:") ||
			!strings.Contains(out, "crashing after ready") {
			t.Errorf("reload exit %d:\n%s", code, out)
		}
	})
}
