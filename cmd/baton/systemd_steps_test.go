//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/baton-sh/baton/internal/harness"
	"github.com/baton-sh/baton/internal/loadgen"
)

// This file runs inside the container TestSystemdUnits boots, as a oneshot
// service of systemd (PID 1 there): the checks against systemd itself.

const (
	appUnit       = "baton-app.service"
	socketUnit    = "baton-app.socket"
	activatedUnit = "baton-app-activated.service"
	reloadUnit    = "baton-app-reload.service"
	appAddr       = "127.0.0.1:8080"
)

// runSystemdSteps runs every step, writing the report to dir; its exit
// code is 0 when the steps ran to the end (failed checks are in the report).
func runSystemdSteps(dir string) int {
	f, err := os.Create(filepath.Join(dir, "steps.jsonl"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	l := &stepLog{f: f, start: time.Now()}
	l.note("boot", "systemd (PID 1) started %s before the steps (systemd %s)", sincePID1(), systemdVersionInside())
	stepsAppService(l)
	stepsSocket(l)
	stepsNotifyReload(l)
	l.add(stepResult{Step: "done", OK: true})
	return 0
}

// sincePID1 is how long ago this container's PID 1 started: /proc/uptime
// (the host's) less PID 1's start time in clock ticks (100 a second on
// Linux).
func sincePID1() time.Duration {
	up, err1 := os.ReadFile("/proc/uptime")
	st, err2 := os.ReadFile("/proc/1/stat")
	if err1 != nil || err2 != nil {
		return 0
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	ticks, _ := strconv.ParseFloat(f[19], 64) // field 22, starttime
	secs, _ := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	return time.Duration((secs - ticks/100) * float64(time.Second)).Round(10 * time.Millisecond)
}

func systemdVersionInside() string {
	out, _ := ctrRun(5*time.Second, "systemctl", "--version")
	return strings.TrimPrefix(strings.SplitN(out, "\n", 2)[0], "systemd ")
}

// prop is one property of a unit, as systemctl show -P prints it.
func prop(unit, name string) string {
	out, _ := ctrRun(10*time.Second, "systemctl", "show", "-P", name, unit)
	return out
}

// switchRelease points /srv/app/current at releases/name, atomically.
func switchRelease(name string) error {
	tmp := filepath.Join(ctrApp, "current.tmp")
	os.Remove(tmp)
	if err := os.Symlink("releases/"+name, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(ctrApp, "current"))
}

// get asks the app once, on a new connection.
func appGet(path string, timeout time.Duration) (string, error) {
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + appAddr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return strings.TrimSpace(string(b)), err
}

// servedBy asks n times and returns the releases (tag=…) that answered.
func servedBy(n int) (map[string]int, error) {
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		body, err := appGet("/", 5*time.Second)
		if err != nil {
			return seen, err
		}
		tag := "?"
		if i := strings.Index(body, "tag="); i >= 0 {
			tag = strings.Fields(body[i+4:])[0]
		}
		seen[tag]++
	}
	return seen, nil
}

// load is a bounded request loop against the app while the steps run.
type appLoad struct {
	cancel context.CancelFunc
	done   chan *loadgen.Result
}

func startAppLoad(max time.Duration) *appLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &appLoad{cancel: cancel, done: make(chan *loadgen.Result, 1)}
	go func() {
		l.done <- loadgen.Run(ctx, loadgen.Config{Network: "tcp", Addr: appAddr, Clients: 4, KeepAlive: 0.5,
			Duration: max, MaxRequests: 200000, Timeout: 10 * time.Second, Pause: 20 * time.Millisecond})
	}()
	return l
}

func (l *appLoad) stop() *loadgen.Result {
	l.cancel()
	return <-l.done
}

// cgroupProcs lists the processes in a unit's cgroup (ControlGroup=) or
// below it, by each process's own /proc/PID/cgroup (cgroup v2).
func cgroupProcs(cg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok && (p == cg || strings.HasPrefix(p, cg+"/")) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// stepsAppService: baton-app.service from start to stop.
func stepsAppService(l *stepLog) {
	const s = "baton-app.service"
	t0 := time.Now()
	out, code := ctrRun(90*time.Second, "systemctl", "start", appUnit)
	if !l.check(s+": start", code == 0 && prop(appUnit, "ActiveState") == "active",
		"systemctl start: exit %d %s; ActiveState=%s (took %s)", code, out, prop(appUnit, "ActiveState"), time.Since(t0).Round(time.Millisecond)) {
		j, _ := ctrRun(10*time.Second, "journalctl", "-u", appUnit, "--no-pager", "-n", "40")
		l.note(s+": journal", "%s", j)
		return
	}
	mainPID := prop(appUnit, "MainPID")
	pidFile, _ := os.ReadFile("/run/app/app.pid")
	exe, _ := os.Readlink("/proc/" + mainPID + "/exe")
	l.check(s+": MainPID is the keeper", strings.TrimSpace(string(pidFile)) == mainPID && exe == "/usr/local/bin/baton",
		"MainPID=%s, --pid-file holds %q, its executable %q", mainPID, strings.TrimSpace(string(pidFile)), exe)
	l.check(s+": watchdog on", prop(appUnit, "WatchdogUSec") == "3s", "WatchdogUSec=%s", prop(appUnit, "WatchdogUSec"))
	wd0 := prop(appUnit, "WatchdogTimestampMonotonic")
	ld := startAppLoad(60 * time.Second)

	// A good release: reload exits 0, the new release serves.
	switchRelease("r2")
	t1 := time.Now()
	out, code = ctrRun(120*time.Second, "systemctl", "reload", appUnit)
	took := time.Since(t1)
	seen, err := servedBy(10)
	l.check(s+": reload of a good release", code == 0 && err == nil && seen["r2"] == 10,
		"systemctl reload: exit %d %q in %s; then served by %v (%v)", code, out, took.Round(time.Millisecond), seen, err)

	// A release that cannot start: reload fails, the unit stays active
	// on the old release, StatusText says why.
	switchRelease("broken")
	t2 := time.Now()
	out, code = ctrRun(120*time.Second, "systemctl", "reload", appUnit)
	took = time.Since(t2)
	switchRelease("r2")
	seen, err = servedBy(10)
	status := prop(appUnit, "StatusText")
	l.check(s+": reload of a release that cannot start", code != 0 && prop(appUnit, "ActiveState") == "active" && err == nil && seen["r2"] == 10,
		"systemctl reload: exit %d %q in %s; ActiveState=%s; then served by %v (%v)", code, out, took.Round(time.Millisecond), prop(appUnit, "ActiveState"), seen, err)
	l.check(s+": StatusText names the reason", strings.Contains(status, "upgrade failed") && strings.Contains(status, "generation 2 serving") && strings.Contains(status, "exit"),
		"StatusText=%q", status)

	// The journal: baton's fields are journal fields.
	j, _ := ctrRun(10*time.Second, "journalctl", "-u", appUnit, "--no-pager", "-o", "json", "GENERATION=2")
	var gen2, withWorker, relayed, jsonBlobs int
	for _, line := range strings.Split(j, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		gen2++
		if e["WORKER"] != nil && e["WORKER_PID"] != nil && e["MASTER_PID"] != nil {
			withWorker++
		}
		if e["STREAM"] != nil {
			relayed++
		}
		if m, _ := e["MESSAGE"].(string); strings.HasPrefix(m, "{") {
			jsonBlobs++
		}
	}
	l.check(s+": journalctl -u "+appUnit+" GENERATION=2", gen2 > 0 && withWorker > 0 && relayed > 0 && jsonBlobs == 0,
		"%d entries, %d with WORKER, WORKER_PID and MASTER_PID, %d relayed worker lines (STREAM=), %d JSON blobs as MESSAGE", gen2, withWorker, relayed, jsonBlobs)
	// baton's log is asynchronous: the line may reach journald just after
	// the reload's answer. Matched by its fields alone (the container runs
	// one baton): once under heavy load -u did not find it, and journald
	// ties a native entry to a unit by the sender's cgroup, which it looks
	// up when the entry arrives, after the failed master may have exited.
	const brokenLine = "broken release: /srv/app/releases/broken/config.yml missing"
	var j3 string
	l.check(s+": the failed release's stderr in the journal", harness.Until(5*time.Second, func() bool {
		j3, _ = ctrRun(10*time.Second, "journalctl", "--no-pager", "-o", "cat", "GENERATION=3", "STREAM=stderr")
		return strings.Contains(j3, brokenLine)
	}), "journalctl GENERATION=3 STREAM=stderr -o cat:\n%s", tail(j3, 8))
	if j3u, _ := ctrRun(10*time.Second, "journalctl", "-u", appUnit, "--no-pager", "-o", "cat", "GENERATION=3", "STREAM=stderr"); !strings.Contains(j3u, brokenLine) {
		l.note(s+": the failed release's stderr without the unit", "journalctl -u %s did not find it; entries:%s", appUnit, unitsOf("GENERATION=3"))
	}
	ev, _ := ctrRun(10*time.Second, "journalctl", "-u", appUnit, "--no-pager", "-o", "json", "EVENT=upgrade_failed")
	var e map[string]any
	json.Unmarshal([]byte(strings.SplitN(ev, "\n", 2)[0]), &e)
	l.check(s+": journalctl -u "+appUnit+" EVENT=upgrade_failed", e["REASON"] != nil && e["GENERATION"] == "2" && e["PRIORITY"] != "6",
		"first entry: MESSAGE=%q REASON=%q GENERATION=%v PRIORITY=%v", e["MESSAGE"], e["REASON"], e["GENERATION"], e["PRIORITY"])
	failed, _ := ctrRun(10*time.Second, "journalctl", "-u", appUnit, "--no-pager", "-o", "cat", "PRIORITY=3")
	l.note(s+": journal, PRIORITY=3 (err)", "%s", tail(failed, 6))

	// The watchdog: at least 15 s under a 3 s watchdog, pings arriving.
	for time.Since(t0) < 16*time.Second {
		time.Sleep(200 * time.Millisecond)
	}
	wd1 := prop(appUnit, "WatchdogTimestampMonotonic")
	l.check(s+": watchdog never fired", prop(appUnit, "MainPID") == mainPID && prop(appUnit, "NRestarts") == "0" &&
		prop(appUnit, "ActiveState") == "active" && wd1 != wd0,
		"after %s: MainPID %s (was %s), NRestarts=%s, ActiveState=%s, last ping at %s (was %s)", time.Since(t0).Round(time.Second),
		prop(appUnit, "MainPID"), mainPID, prop(appUnit, "NRestarts"), prop(appUnit, "ActiveState"), wd1, wd0)
	res := ld.stop()
	l.check(s+": 0 failed requests", res.Failures() == 0 && res.Requests > 100, "%s", res)

	// Stop: Result=success and nothing left in the cgroup, the daemonized
	// helper of release r2 included.
	cg := prop(appUnit, "ControlGroup")
	var helpers []int
	for _, p := range cgroupProcs(cg) {
		if comm(p) == "sleep" {
			helpers = append(helpers, p)
		}
	}
	l.check(s+": r2 left its daemonized helper", len(helpers) > 0, "sleep processes in %s: %v", cg, helpers)
	t3 := time.Now()
	out, code = ctrRun(90*time.Second, "systemctl", "stop", appUnit)
	left := cgroupProcs(cg)
	var helperAlive []int
	for _, p := range helpers {
		if alive(p) {
			helperAlive = append(helperAlive, p)
		}
	}
	l.check(s+": stop", code == 0 && prop(appUnit, "Result") == "success" && prop(appUnit, "ActiveState") == "inactive" && len(left) == 0 && len(helperAlive) == 0,
		"systemctl stop: exit %d %q in %s; Result=%s ActiveState=%s; left in the cgroup: %v; helpers alive: %v",
		code, out, time.Since(t3).Round(time.Millisecond), prop(appUnit, "Result"), prop(appUnit, "ActiveState"), left, helperAlive)
	stopLog, _ := ctrRun(10*time.Second, "journalctl", "-u", appUnit, "--no-pager", "-o", "cat", "--since", "-"+strconv.Itoa(int(time.Since(t3).Seconds())+2)+"s")
	l.note(s+": journal at stop", "%s", tail(filterLines(stopLog, "systemd", "Killing", "left", "Stopp", "Deactivated", "stop"), 10))
	switchRelease("r1")
}

// filterLines keeps the lines that contain any of words.
func filterLines(s string, words ...string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// stepsSocket: baton-app.socket and the service it activates.
func stepsSocket(l *stepLog) {
	const s = "baton-app.socket"
	out, code := ctrRun(30*time.Second, "systemctl", "start", socketUnit)
	if !l.check(s+": start the socket", code == 0 && prop(socketUnit, "SubState") == "listening" && prop(activatedUnit, "ActiveState") == "inactive",
		"exit %d %q; socket %s, service %s", code, out, prop(socketUnit, "SubState"), prop(activatedUnit, "ActiveState")) {
		return
	}
	t0 := time.Now()
	body, err := appGet("/", 30*time.Second)
	// A worker may answer a moment before systemd has taken READY=1.
	active := harness.Until(5*time.Second, func() bool { return prop(activatedUnit, "ActiveState") == "active" })
	l.check(s+": the first connection starts the service", err == nil && strings.Contains(body, "tag=r1") && active,
		"answer %q (%v) after %s; service %s", body, err, time.Since(t0).Round(time.Millisecond), prop(activatedUnit, "ActiveState"))
	main1 := prop(activatedUnit, "MainPID")
	adopted, _ := ctrRun(10*time.Second, "journalctl", "-u", activatedUnit, "--no-pager", "-o", "cat", "--grep", "adopt")
	l.note(s+": adoption in the journal", "%s", tail(adopted, 3))

	ld := startAppLoad(60 * time.Second)
	switchRelease("r2")
	out, code = ctrRun(120*time.Second, "systemctl", "reload", activatedUnit)
	seen, err := servedBy(10)
	l.check(s+": reload keeps the socket", code == 0 && err == nil && seen["r2"] == 10 && prop(socketUnit, "ActiveState") == "active",
		"systemctl reload: exit %d %q; served by %v (%v); socket %s", code, out, seen, err, prop(socketUnit, "SubState"))

	// Stop the service alone, under load: the socket stays with systemd;
	// connections meanwhile queue in it and start the service again.
	out, code = ctrRun(90*time.Second, "systemctl", "stop", activatedUnit)
	l.check(s+": stop under load leaves the socket to systemd", code == 0 && prop(activatedUnit, "Result") == "success" && prop(socketUnit, "ActiveState") == "active",
		"systemctl stop: exit %d %q; Result=%s; socket %s", code, out, prop(activatedUnit, "Result"), prop(socketUnit, "SubState"))
	harness.Until(10*time.Second, func() bool { return prop(activatedUnit, "ActiveState") == "active" })
	time.Sleep(time.Second) // load on the restarted service
	res := ld.stop()
	l.check(s+": 0 failed requests through reload, stop and the start the load caused", res.Failures() == 0 && res.Requests > 20, "%s", res)

	// Stopped with no traffic: the service stays down, the socket
	// listens; the next connection waits for the start it causes.
	out, code = ctrRun(90*time.Second, "systemctl", "stop", activatedUnit)
	l.check(s+": stop", code == 0 && prop(activatedUnit, "ActiveState") == "inactive" && prop(socketUnit, "SubState") == "listening",
		"systemctl stop: exit %d; service %s, socket %s", code, prop(activatedUnit, "ActiveState"), prop(socketUnit, "SubState"))
	t1 := time.Now()
	body, err = appGet("/", 30*time.Second)
	main2 := prop(activatedUnit, "MainPID")
	l.check(s+": a connection while stopped is served by the next start", err == nil && strings.Contains(body, "tag=r2") && main2 != main1 && main2 != "0",
		"answer %q (%v) after %s; MainPID %s, was %s", body, err, time.Since(t1).Round(time.Millisecond), main2, main1)
	ctrRun(60*time.Second, "systemctl", "stop", socketUnit, activatedUnit)
	switchRelease("r1")
}

// stepsNotifyReload: what this systemd does with baton-app-reload.service
// (Type=notify-reload needs systemd >= 253).
func stepsNotifyReload(l *stepLog) {
	const s = "baton-app-reload.service"
	ver := atoi(strings.Fields(systemdVersionInside() + " 0")[0])
	out, code := ctrRun(60*time.Second, "systemctl", "start", reloadUnit)
	typ, state := prop(reloadUnit, "Type"), prop(reloadUnit, "ActiveState")
	var answered bool
	harness.Until(10*time.Second, func() bool { _, err := appGet("/", 2*time.Second); answered = err == nil; return answered })
	rout, rcode := ctrRun(60*time.Second, "systemctl", "reload", reloadUnit)
	warn, _ := ctrRun(10*time.Second, "journalctl", "--no-pager", "-o", "cat", "--grep", "notify-reload|Failed to parse service type")
	l.note(s+": on systemd "+strconv.Itoa(ver), "start: exit %d %q; Type=%s ActiveState=%s; serving %v; reload: exit %d %q; journal: %s",
		code, out, typ, state, answered, rcode, rout, tail(warn, 2))
	if ver < 253 {
		l.check(s+": systemd < 253 runs it as a plain service that cannot be reloaded", typ == "simple" && rcode != 0,
			"Type=%s, reload exit %d", typ, rcode)
	} else {
		l.check(s+": systemd >= 253 reloads it", typ == "notify-reload" && rcode == 0, "Type=%s, reload exit %d", typ, rcode)
	}
	ctrRun(60*time.Second, "systemctl", "stop", reloadUnit)
}

// unitsOf says which unit journald gave each entry matching match (for a
// failure's message): _SYSTEMD_UNIT, or none when journald could not tell
// the sender's unit.
func unitsOf(match string) string {
	out, _ := ctrRun(10*time.Second, "journalctl", "--no-pager", "-o", "json", match)
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil {
			fmt.Fprintf(&b, "\n  _SYSTEMD_UNIT=%v _PID=%v MESSAGE=%q", e["_SYSTEMD_UNIT"], e["_PID"], e["MESSAGE"])
		}
	}
	return b.String()
}
