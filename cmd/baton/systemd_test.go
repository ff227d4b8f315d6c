//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The tests here run baton under the machine's real systemd: systemd booted
// as PID 1 of a systemd-nspawn container (--volatile=yes: a tmpfs root with
// the host's /usr; a copy of /etc with the units under test; its own
// network namespace, so 127.0.0.1:8080 is the container's alone). The steps
// inside run in this same test binary (TestMain sees systemdStepsEnv) as a
// oneshot service of the target the container boots into; the service's
// SuccessAction=/FailureAction= power the container off. They report one
// JSON line per check into a directory bound from here.

// systemdStepsEnv names the results directory when this binary runs the
// steps inside the booted container.
const systemdStepsEnv = "BATON_SYSTEMD_STEPS"

// In the container: the test binary, the binaries TestMain built, the
// releases of the app (read-write: current is switched), the results.
const (
	ctrTest    = "/opt/batontest/baton.test"
	ctrBin     = "/opt/batontest/bin"
	ctrApp     = "/srv/app"
	ctrResults = "/results"
)

// stepResult is one line of the steps' report.
type stepResult struct {
	Step string `json:"step"`
	OK   bool   `json:"ok"`
	Msg  string `json:"msg,omitempty"`
	Note bool   `json:"note,omitempty"` // a measurement or an observation, not a check
}

// nspawnOrSkip returns systemd-nspawn's path, or skips the test saying what
// is missing.
func nspawnOrSkip(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: systemd-nspawn boots a container")
	}
	nspawn, err := exec.LookPath("systemd-nspawn")
	if err != nil {
		t.Skip("systemd-nspawn not installed (Debian: systemd-container; .ci/run installs it)")
	}
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		t.Skip("no systemd binary to boot (/lib/systemd/systemd; Debian: systemd)")
	}
	return nspawn
}

// stageInstall runs make install into a staging directory, as a packager
// would (with the baton this test run built), and returns its root: the units under share/baton/systemd are
// exactly what make install ships (ExecStart= rewritten to PREFIX's baton).
func stageInstall(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed: the units are staged with make install")
	}
	stage := t.TempDir()
	// The baton TestMain built, not a second build (-o build: make takes
	// that target as done); docs makes the man page and completions from it.
	built := t.TempDir()
	b, err := os.ReadFile(bin("baton"))
	if err == nil {
		err = writeExecutable(filepath.Join(built, "baton"), b)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "-C", "../..", "--no-print-directory", "-o", "build", "docs", "install",
		"BIN="+built, "DESTDIR="+stage, "PREFIX=/usr/local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install DESTDIR=%s: %v\n%s", stage, err, out)
	}
	return stage
}

// writeFiles writes each path (under root) with its content and mode.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.Contains(p, "/bin/") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSystemdUnits boots systemd once and runs every unit scenario inside
// it (systemd_steps_test.go): baton-app.service through good and failed
// reloads under load with the watchdog on, stop with a daemonized helper
// left behind; the socket unit with the activated service; the
// notify-reload unit on this systemd.
func TestSystemdUnits(t *testing.T) {
	nspawn := nspawnOrSkip(t)
	t.Parallel() // its own network, /etc and /srv/app: nothing shared
	began := time.Now()
	stage := stageInstall(t)

	// A copy of the host's /etc with the staged units and the test target.
	etc := filepath.Join(t.TempDir(), "etc")
	if out, err := exec.Command("cp", "-a", "/etc", etc).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc: %v\n%s", err, out)
	}
	units, err := filepath.Glob(filepath.Join(stage, "usr/local/share/baton/systemd/*"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no staged units under %s", stage)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(etc, "systemd/system", filepath.Base(u)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	results := t.TempDir()
	writeFiles(t, etc, map[string]string{
		"systemd/system/baton-test.target": "[Unit]\nDescription=baton systemd test\nRequires=baton-test.service\nAfter=baton-test.service\nAllowIsolate=yes\n",
		"systemd/system/baton-test.service": fmt.Sprintf(`[Unit]
Description=baton systemd test steps
After=basic.target systemd-journald.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
Environment=%s=%s
ExecStart=%s -test.run=^$
TimeoutStartSec=150s
StandardOutput=file:%s/steps.out
StandardError=inherit
`, systemdStepsEnv, ctrResults, ctrTest, ctrResults),
		// The one thing the test changes in the shipped service: a watchdog
		// of a few seconds, as a drop-in (the unit itself is as staged).
		"systemd/system/baton-app.service.d/watchdog.conf": "[Service]\nWatchdogSec=3s\n",
	})
	app := t.TempDir()
	os.Chmod(app, 0o755)
	writeFiles(t, app, releaseScripts())
	if err := os.Symlink("releases/r1", filepath.Join(app, "current")); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	console, err := os.Create(filepath.Join(results, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	cmd := exec.CommandContext(ctx, nspawn, "--quiet", "--volatile=yes", "--directory=/",
		"--bind="+etc+":/etc", "--bind-ro="+self+":"+ctrTest, "--bind-ro="+binDir+":"+ctrBin,
		"--bind-ro="+filepath.Join(stage, "usr/local")+":/usr/local",
		"--bind="+app+":"+ctrApp, "--bind="+results+":"+ctrResults,
		"--register=no", "--keep-unit", "--private-network",
		"-b", "systemd.unit=baton-test.target")
	cmd.Stdout, cmd.Stderr = console, console
	bootStart := time.Now()
	runErr := cmd.Run()
	t.Logf("systemd test: %s in all (make install and /etc copy %s, container up to power-off %s)",
		time.Since(began).Round(100*time.Millisecond), bootStart.Sub(began).Round(100*time.Millisecond),
		time.Since(bootStart).Round(100*time.Millisecond))
	steps := readSteps(t, results)
	if runErr != nil || len(steps) == 0 || steps[len(steps)-1].Step != "done" {
		out, _ := os.ReadFile(filepath.Join(results, "console.log"))
		so, _ := os.ReadFile(filepath.Join(results, "steps.out"))
		t.Fatalf("container: %v (ctx %v); steps did not finish. steps output:\n%s\nconsole (tail):\n%s", runErr, ctx.Err(), so, tail(string(out), 60))
	}
}

// readSteps reads the steps' report, logging notes and failing the test
// for every failed check.
func readSteps(t *testing.T, results string) []stepResult {
	t.Helper()
	f, err := os.Open(filepath.Join(results, "steps.jsonl"))
	if err != nil {
		t.Errorf("no report from the steps: %v", err)
		return nil
	}
	defer f.Close()
	var steps []stepResult
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var s stepResult
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Errorf("report line %q: %v", sc.Text(), err)
			continue
		}
		steps = append(steps, s)
		switch {
		case s.Note:
			t.Logf("%s: %s", s.Step, s.Msg)
		case !s.OK:
			t.Errorf("FAIL %s: %s", s.Step, s.Msg)
		case testing.Verbose():
			t.Logf("ok %s: %s", s.Step, s.Msg)
		}
	}
	return steps
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// releaseScripts are the app's releases under /srv/app/releases: r1 and r2
// are examples/hello tagged with their name (r2 also leaves a daemonized
// helper behind, outside its process group and session, as some servers
// do), broken exits at once saying why on stderr.
func releaseScripts() map[string]string {
	hello := ctrBin + "/hello"
	return map[string]string{
		"releases/r1/bin/server":     "#!/bin/sh\necho release r1 starting\nHELLO_TAG=r1 exec " + hello + "\n",
		"releases/r2/bin/server":     "#!/bin/sh\necho release r2 starting\nsetsid sleep 600 </dev/null >/dev/null 2>&1 &\nHELLO_TAG=r2 exec " + hello + "\n",
		"releases/broken/bin/server": "#!/bin/sh\necho 'broken release: /srv/app/releases/broken/config.yml missing' >&2\nexit 3\n",
	}
}

// A report line's writer, for the steps inside the container.
type stepLog struct {
	f     *os.File
	start time.Time
}

func (l *stepLog) add(r stepResult) {
	b, _ := json.Marshal(r)
	l.f.Write(append(b, '\n'))
	fmt.Printf("%6.1fs %s ok=%v %s\n", time.Since(l.start).Seconds(), r.Step, r.OK, r.Msg)
}

func (l *stepLog) check(step string, ok bool, format string, a ...any) bool {
	l.add(stepResult{Step: step, OK: ok, Msg: fmt.Sprintf(format, a...)})
	return ok
}

func (l *stepLog) note(step, format string, a ...any) {
	l.add(stepResult{Step: step, OK: true, Note: true, Msg: fmt.Sprintf(format, a...)})
}

// ctrRun runs a command inside the container, bounded, and returns its
// combined output and exit code (-1 if it could not run).
func ctrRun(timeout time.Duration, name string, args ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return strings.TrimSpace(buf.String()), code
}

// baton run as PID 1 of a systemd-nspawn container (no -b: a container
// runtime's entrypoint, not unshare): 20 upgrades under load with 0 failed
// and no zombie, and a TERM sent from the host to the container's init
// drains an in-flight request and exits 0 (nspawn's exit code is PID 1's).
// The app listens on a unix socket in a directory bound into the
// container: the container's network is its own.
func TestNspawnPID1(t *testing.T) {
	nspawn := nspawnOrSkip(t)
	t.Parallel()
	sock := t.TempDir()
	addr := filepath.Join(sock, "http.sock")
	// The binaries and the socket at the same paths inside as here.
	cmd := exec.Command(nspawn, "--quiet", "--volatile=yes", "--directory=/", "--console=pipe",
		"--bind-ro="+binDir, "--bind="+sock, "--register=no", "--keep-unit", "--private-network",
		"--", bin("baton"), "run", "--log-format", "json", "-l", "unix://"+addr, "-w", "2",
		"--pid-file", filepath.Join(sock, "app.pid"), "--", bin("hello"))
	b := launch(t, cmd, nil)
	// Pids in the log are the container's; its init's pid here is set
	// below.
	keeper := endNamespaceOnCleanup(t, b)
	t0 := time.Now()
	eventually(t, 20*time.Second, "systemd-nspawn to start baton as the container's PID 1", func() bool {
		for _, k := range childPids(b.pid) {
			if st, _ := os.ReadFile("/proc/" + strconv.Itoa(k) + "/status"); strings.Contains(string(st), "\nNSpid:\t"+strconv.Itoa(k)+"\t1\n") {
				*keeper = k
			}
		}
		return *keeper > 0
	})
	b.waitReady()
	t.Logf("container started and serving in %s", time.Since(t0).Round(time.Millisecond))
	checkPID1(t, b, *keeper, "unix", addr)
}
