//go:build linux

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/harness"
)

// TestQuickRun runs the whole benchmark in its quick mode, in-process, and
// checks what must hold however slow the machine: no failed request, every
// upgrade handed over, a complete JSON file, nothing left running. Speed
// targets are the benchmark's output, not the test's business.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the quick benchmark (about 30 s)")
	}
	path := filepath.Join(t.TempDir(), "out", "zdbench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var stdout, stderr harness.Buffer
	// The peers have their own test, which needs nginx and unicorn.
	code := mainCode(ctx, []string{"-quick", "-upgrades", "3", "-concurrency", "4", "-skip-peers", "-json", path}, &stdout, &stderr)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if lastBinDir == "" {
		t.Fatal("the benchmark did not record its binaries directory")
	}
	if left := processesUnder(lastBinDir); len(left) > 0 {
		t.Errorf("processes still running from %s: %v", lastBinDir, left)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatalf("JSON file is not well-formed: %v", err)
	}
	for _, k := range []string{"machine", "config", "direct", "steady", "upgrades", "naive", "scaling", "idle_memory", "targets"} {
		if generic[k] == nil {
			t.Errorf("JSON file has no %q", k)
		}
	}
	var rep report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("JSON file does not decode into the report: %v", err)
	}
	if rep.Error != "" {
		t.Errorf("report has an error: %s", rep.Error)
	}
	if m := rep.Machine; m.NProc < 1 || m.GoVersion == "" || m.Kernel == "" || m.Date == "" {
		t.Errorf("machine info incomplete: %+v", m)
	}

	if s := rep.Steady; s == nil || s.Direct.RPSMedian <= 0 || s.Baton.RPSMedian <= 0 || len(s.Ratios) != 1 {
		t.Errorf("steady state incomplete: %+v", s)
	}

	u := rep.Upgrades
	if u == nil {
		t.Fatal("no upgrades phase in the report")
	}
	if u.Requested != 3 || u.HandedOver != 3 || len(u.List) != 3 {
		t.Errorf("upgrades: %d requested, %d handed over, %d listed; want 3 each", u.Requested, u.HandedOver, len(u.List))
	}
	if u.Total.Requests == 0 || u.Load.Requests == 0 || u.Probe.Requests == 0 {
		t.Errorf("upgrades: no load ran: %+v", u.Total)
	}
	if u.Total.Failed != 0 {
		t.Errorf("upgrades: %d failed requests %v; first: %q", u.Total.Failed, u.Total.ByKind, u.Total.Examples)
	}
	if u.Slow.Requests == 0 || u.Slow.Failed != 0 {
		t.Errorf("slow requests: %d, failed %d; want some, none failed", u.Slow.Requests, u.Slow.Failed)
	}
	for _, rec := range u.List {
		if !rec.HandedOver || rec.NewMaster == 0 || rec.TotalMS <= 0 || rec.FirstNewMS == nil || rec.LastOldMS == nil || rec.MasterFDs == 0 {
			t.Errorf("upgrade %d incomplete: %+v", rec.N, rec)
		}
		if rec.NewGeneration != rec.OldGeneration+1 {
			t.Errorf("upgrade %d: generation %d -> %d", rec.N, rec.OldGeneration, rec.NewGeneration)
		}
	}

	// Where each handover's time went: every step a new master logs, with
	// its CPU time, and the table with the load average beside it.
	for _, name := range []string{"preflight", "exec_and_init", "tableflip", "keeper_handshake", "sockets", "spawn", "workers_ready", "ready_signal"} {
		found := false
		for _, st := range u.Steps {
			found = found || (st.Name == name && st.MS.N == 3 && (name == "preflight" || st.CPUMS.N == 3))
		}
		if !found {
			t.Errorf("upgrades: step %q missing or incomplete in %+v", name, u.Steps)
		}
	}
	if u.LoadAvg == "" || !strings.Contains(stdout.String(), "Where a handover's time goes") {
		t.Errorf("no step table or load average (%q) in the output", u.LoadAvg)
	}

	// Memory over time: every sample of both strategies, the target line.
	if m := rep.IdleMemory; m == nil || len(m.Rows) != 2 || m.Scrapes != idleScrapes {
		t.Errorf("idle memory incomplete: %+v", m)
	} else {
		for _, row := range m.Rows {
			for _, p := range []memPair{row.AtRest, row.Idle, row.Scraped, row.AfterScrapes} {
				if p.KeeperPSS <= 0 || p.MasterPSS <= 0 {
					t.Errorf("idle memory, %s: a sample is missing: %+v", row.Strategy, row)
				}
			}
		}
	}
	if !strings.Contains(stdout.String(), "Keeper + master PSS over time") {
		t.Error("no idle-memory table in the output")
	}
	found := false
	for _, tg := range rep.Targets {
		found = found || (strings.HasPrefix(tg.Name, "keeper + master PSS steady") && tg.Status != notMeasured)
	}
	if !found {
		t.Errorf("no measured steady-memory target in %+v", rep.Targets)
	}

	if n := rep.Naive; n == nil || len(n.List) != 1 || n.List[0].DowntimeMS <= 0 {
		t.Errorf("naive restarts incomplete: %+v", n)
	}

	if len(rep.Scaling) != 4 {
		t.Errorf("scaling: %d rows, want 4 (1 and 4 workers, 0 and 500 ms start-up)", len(rep.Scaling))
	}
	for _, row := range rep.Scaling {
		if row.HandedOver != row.Upgrades || row.Total.N == 0 {
			t.Errorf("scaling row incomplete: %+v", row)
		}
		if row.AppDelayMS == 500 && row.AppStartup.Median < 500 {
			t.Errorf("scaling, %d workers: app start-up %.1f ms with HELLO_STARTUP_MS=500", row.Workers, row.AppStartup.Median)
		}
	}
	if len(rep.Targets) == 0 {
		t.Error("no targets in the report")
	}
	if rep.Peers != nil {
		t.Error("-skip-peers: the report has a peers phase")
	}
}

// TestPeers runs only the peers phase, quick: baton, nginx and Unicorn each
// upgraded twice under load, each without a failed request, and nothing of
// theirs left running afterwards.
func TestPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs baton, nginx and Unicorn under load (about 20 s)")
	}
	for _, p := range []struct{ name, dir, pkg string }{{"nginx", "/usr/sbin", "nginx-light"}, {"unicorn", "/usr/bin", "unicorn"}} {
		if _, ok := findPeer(p.name, p.dir); !ok {
			t.Skipf("needs %s (Debian package %s; make bench-deps installs it)", p.name, p.pkg)
		}
	}
	path := filepath.Join(t.TempDir(), "zdbench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var stdout, stderr harness.Buffer
	code := mainCode(ctx, []string{"-quick", "-concurrency", "4", "-skip-steady", "-upgrades", "0", "-skip-naive",
		"-skip-scaling", "-json", path}, &stdout, &stderr)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("JSON file does not decode into the report: %v", err)
	}
	// Every stop that had to kill or found a process unreaped leaves a note.
	if len(rep.Notes) > 0 || rep.Error != "" {
		t.Errorf("notes %q, error %q; want none", rep.Notes, rep.Error)
	}
	p := rep.Peers
	if p == nil {
		t.Fatal("no peers phase in the report")
	}
	if len(p.Missing) > 0 {
		t.Errorf("missing %v although installed", p.Missing)
	}
	var masters []int
	for _, name := range []string{"baton", "nginx", "unicorn"} {
		s := p.side(name)
		if s == nil {
			t.Errorf("%s: not in the report", name)
			continue
		}
		if s.Error != "" || s.Requested != 2 || s.HandedOver != 2 || len(s.List) != 2 {
			t.Errorf("%s: %d/%d upgrades handed over, %d listed, error %q; want 2/2", name, s.HandedOver, s.Requested, len(s.List), s.Error)
		}
		if s.Requests.Requests == 0 || s.Requests.Failed != 0 {
			t.Errorf("%s: %d requests, %d failed %v; want some, none failed", name, s.Requests.Requests, s.Requests.Failed, s.Requests.ByKind)
		}
		if s.FirstNew.N != s.HandedOver || s.OldGone.N != s.HandedOver || s.MasterRSS.Min <= 0 {
			t.Errorf("%s: handover or RSS not measured: first new %+v, old gone %+v, RSS %+v", name, s.FirstNew, s.OldGone, s.MasterRSS)
		}
		for _, rec := range s.List {
			// nginx's and Unicorn's old masters are told to go only once a
			// client saw the new generation answer; baton retires its old
			// master itself once the new generation serves, and on a busy
			// machine a client's first fresh connection can come after
			// that (0 failed requests, checked above, is the guarantee).
			if rec.NewMaster == 0 || rec.NewMaster == rec.OldMaster || rec.FirstNewMS == nil || (name != "baton" && *rec.FirstNewMS > rec.OldGoneMS) {
				t.Errorf("%s upgrade %d: %+v; want a new master serving before the old one went", name, rec.N, rec)
			}
			masters = append(masters, rec.OldMaster, rec.NewMaster)
		}
	}
	for _, want := range []string{"baton/nginx", "baton/unicorn", "| nginx, USR2, WINCH, QUIT", "| unicorn, USR2, QUIT"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Masters of nginx and Unicorn are not zdbench's children: check that
	// none of them runs from the benchmark's directory any more.
	for _, pid := range masters {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && harness.Alive(pid) &&
			strings.Contains(string(b), lastBinDir) {
			t.Errorf("master %d still running: %q", pid, b)
		}
	}
	if left := processesUnder(lastBinDir); len(left) > 0 {
		t.Errorf("processes still running from %s: %v", lastBinDir, left)
	}
}

// processesUnder lists the processes running a binary from dir (deleted by
// now, which /proc shows as a suffix).
func processesUnder(dir string) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && strings.HasPrefix(exe, dir+"/") && harness.Alive(pid) {
			out = append(out, e.Name()+" "+exe)
		}
	}
	return out
}

// make soak exits non-zero unless every upgrade handed over and every failed
// request was on a connection a SIGKILLed worker held or was queued to.
func TestSoakVerdict(t *testing.T) {
	pass := soakResult{Requested: 10, Done: 10, HandedOver: 10, Requests: requestCounts{Requests: 1000}}
	withKills := pass
	withKills.Requests.Failed = 3
	withKills.FailedOn = harness.Attribution{Held: map[string]int{"reset": 2}, Queued: map[string]int{"reset": 1}}
	other := withKills
	other.Requests.Failed = 4
	other.FailedOn.Other = map[string]int{"eof": 1}
	unlisted := withKills
	unlisted.Requests.Failed = 5 // two the load generator only counted
	short := pass
	short.HandedOver = 9
	for _, c := range []struct {
		name string
		s    soakResult
		want string // "" passes
	}{
		{"clean", pass, ""},
		{"failures on killed workers' connections", withKills, ""},
		{"a failure elsewhere", other, "1 of 1000 requests failed outside"},
		{"failures nobody attributed", unlisted, "2 of 1000 requests failed outside"},
		{"an upgrade that did not hand over", short, "9 of 10 upgrades handed over"},
	} {
		err := soakVerdict(&c.s)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: soakVerdict = %v, want %q", c.name, err, c.want)
		}
	}
}

// Every server starts in a session of its own, as systemd starts a
// service, unless -same-session puts it in the benchmark's: with the
// kernel's autogroup on, that decides whether the load generator's threads
// compete with the server's one by one.
func TestServerSession(t *testing.T) {
	hello := filepath.Join(t.TempDir(), "hello")
	if out, err := exec.Command("go", "build", "-o", hello, "github.com/baton-sh/baton/examples/hello").CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	for _, same := range []bool{false, true} {
		b := &bench{opts: options{sameSession: same}, bin: binaries{hello: hello}}
		addr, err := harness.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		h, _, err := b.startHello(ctx, addr)
		cancel()
		if h != nil {
			defer h.stop()
		}
		if err != nil {
			t.Fatal(err)
		}
		pid := h.cmd.Process.Pid
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		// Fields after the command's closing parenthesis: state ppid pgrp session.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		pgrp, sid := f[2], f[3]
		own := strconv.Itoa(pid)
		if pgrp != own {
			t.Errorf("same session %v: hello %d in process group %s, want its own", same, pid, pgrp)
		}
		if (sid == own) == same {
			t.Errorf("same session %v: hello %d in session %s (its own: %v)", same, pid, sid, sid == own)
		}
	}
}
