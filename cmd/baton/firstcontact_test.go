//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor"
	"github.com/baton-sh/baton/supervisor/control"
)

// What a newcomer meets first: make install, --version, help, completion,
// the man page, the systemd units, and the errors of the usual mistakes.

// makeInstall runs "make install" from the repository root into a fresh
// directory and returns it. vars are extra make variables (PREFIX=…,
// DESTDIR=…, relative ones are taken inside the directory).
func makeInstall(t *testing.T, vars func(dir string) []string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dir := t.TempDir()
	// BIN keeps the build out of the checkout's bin/.
	args := append([]string{"-C", "../..", "--no-print-directory", "install", "BIN=" + filepath.Join(dir, "build")}, vars(dir)...)
	cmd := exec.Command("make", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return dir
}

// sh runs one README command line with /bin/sh, as a reader would paste it.
func sh(t *testing.T, env []string, line string) (int, string) {
	t.Helper()
	return runIn(t, env, "/bin/sh", "-c", line)
}

// runIn runs a command to completion (bounded) and returns its exit code and
// combined output.
func runIn(t *testing.T, env []string, name string, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("%s %v still running after 60s:\n%s", name, args, out.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

func TestMakeInstallThenTheReadmeExamples(t *testing.T) {
	python := interpreter(t, "python3")
	root := makeInstall(t, func(dir string) []string {
		return []string{"DESTDIR=" + filepath.Join(dir, "root"), "PREFIX=/usr/local"}
	})
	prefix := filepath.Join(root, "root", "usr", "local")
	for _, f := range []string{"bin/baton", "share/man/man1/baton.1", "share/bash-completion/completions/baton",
		"share/zsh/site-functions/_baton", "share/fish/vendor_completions.d/baton.fish",
		"share/baton/systemd/baton-app.service", "share/baton/systemd/baton-app.socket", "share/baton/deploy.sh"} {
		if _, err := os.Stat(filepath.Join(prefix, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(prefix, "share/baton/systemd/baton-app.service")); !bytes.Contains(b, []byte("ExecStart=/usr/local/bin/baton run")) {
		t.Errorf("installed unit does not point at PREFIX/bin/baton:\n%s", b)
	}
	// The README's commands as written, with `baton` found on $PATH; only
	// the addresses and paths are the test's own (loopback, temp dir).
	path := "PATH=" + filepath.Join(prefix, "bin") + ":" + os.Getenv("PATH")
	installed := filepath.Join(prefix, "bin", "baton")

	code, ver := sh(t, []string{path}, "baton --version")
	ver = strings.TrimSpace(ver)
	if code != 0 || !strings.HasPrefix(ver, "baton version ") || ver == "baton version " {
		t.Fatalf("baton --version: exit %d, %q", code, ver)
	}
	// make stamps git describe; a checkout always has a commit to describe.
	if _, err := exec.LookPath("git"); err == nil {
		if d, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output(); err == nil {
			if want := "baton version " + strings.TrimSpace(string(d)); ver != want {
				t.Errorf("baton --version = %q, want %q (make's git describe)", ver, want)
			}
		}
	}
	if code, out := sh(t, []string{path}, "baton help run"); code != 0 || !strings.Contains(out, "--listen") || !strings.Contains(out, "--ready-timeout") {
		t.Errorf("baton help run: exit %d:\n%s", code, out)
	}

	// Capistrano layout: releases/1 and releases/2, current -> releases/1.
	app := filepath.Join(root, "srv", "app")
	for _, r := range []string{"1", "2"} {
		os.MkdirAll(filepath.Join(app, "releases", r), 0o755)
		src, _ := os.ReadFile(exampleFile(t, "python/server.py"))
		os.WriteFile(filepath.Join(app, "releases", r, "server.py"), src, 0o644)
	}
	os.Symlink(filepath.Join(app, "releases", "1"), filepath.Join(app, "current"))
	pidFile := filepath.Join(root, "app.pid")
	addr := freeAddr(t)

	// baton run -l :8080 -w 4 -- python3 examples/python/server.py, with
	// the README's --pid-file and --chdir.
	b := startBatonCmd(t, exec.Command("/bin/sh", "-c", "exec baton run --log-format json -l http="+addr+" -w 2 --pid-file "+pidFile+
		" --chdir "+filepath.Join(app, "current")+" -- python3 server.py"), []string{path, "BATON_CONTROL="})
	t.Cleanup(func() {
		// Not ours to killOurs (not in binDir): the installed baton and python.
		for _, pid := range b.pids() {
			if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && (exe == installed || exe == resolvedPath(t, python)) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	b.waitReady()
	if body := mustGet(t, addr, "/"); !strings.Contains(body, "generation=1") {
		t.Errorf("GET before deploy: %q", body)
	}

	var st control.Status
	code, out := sh(t, []string{path}, "baton status --pid-file "+pidFile+" --json")
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("baton status --json: exit %d, %v:\n%s", code, err, out)
	}
	if want := strings.TrimPrefix(ver, "baton version "); st.Version != want {
		t.Errorf("status version %q, want %q", st.Version, want)
	}

	// The installed deploy.sh, finding baton on $PATH (no BATON=).
	deploy := filepath.Join(prefix, "share/baton/deploy.sh")
	code, out = runIn(t, []string{path, "APP_ROOT=" + app, "BATON_PID_FILE=" + pidFile, "BATON=", "BATON_CONTROL="},
		deploy, filepath.Join(app, "releases", "2"))
	if code != 0 || !strings.Contains(out, "reload ok: generation 2 serving") || !strings.Contains(out, "is live") {
		t.Fatalf("deploy.sh releases/2: exit %d:\n%s", code, out)
	}
	if body := mustGet(t, addr, "/"); !strings.Contains(body, "generation=2") {
		t.Errorf("GET after deploy: %q", body)
	}

	// Without a baton to run, deploy.sh stops before touching current.
	// (A copy with no baton installed beside it: the installed one finds
	// PREFIX/bin/baton.)
	lone := filepath.Join(t.TempDir(), "deploy.sh")
	if b, err := os.ReadFile(deploy); err != nil || writeExecutable(lone, b) != nil {
		t.Fatal(err)
	}
	before, _ := os.Readlink(filepath.Join(app, "current"))
	code, out = runIn(t, []string{"PATH=/usr/bin:/bin", "APP_ROOT=" + app, "BATON=", "BATON_PID_FILE=" + pidFile},
		lone, filepath.Join(app, "releases", "1"))
	after, _ := os.Readlink(filepath.Join(app, "current"))
	if code == 0 || !strings.Contains(out, "baton not found") || !strings.Contains(out, "nothing changed") || after != before {
		t.Errorf("deploy.sh without baton: exit %d, current %s -> %s:\n%s", code, before, after, out)
	}

	if code, out := sh(t, []string{path}, "baton stop --pid-file "+pidFile); code != 0 {
		t.Errorf("baton stop: exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file after stop: %v", err)
	}
}

func TestManPageAndCompletion(t *testing.T) {
	root := makeInstall(t, func(dir string) []string { return []string{"PREFIX=" + filepath.Join(dir, "usr")} })
	prefix := filepath.Join(root, "usr")
	path := "PATH=" + filepath.Join(prefix, "bin") + ":" + os.Getenv("PATH")

	t.Run("man", func(t *testing.T) {
		if _, err := exec.LookPath("man"); err != nil {
			t.Skip("man not installed (Debian: man-db; .ci/run installs it)")
		}
		code, out := runIn(t, []string{"MANWIDTH=100", "MAN_KEEP_FORMATTING="}, "man", "-l", filepath.Join(prefix, "share/man/man1/baton.1"))
		if code != 0 {
			t.Fatalf("man -l: exit %d:\n%s", code, out)
		}
		for _, want := range []string{"NAME", "baton - run N workers", "--listen", "--ready-timeout", "reload", "status", "stop", "completion"} {
			if !strings.Contains(out, want) {
				t.Errorf("man page lacks %q:\n%s", want, out)
			}
		}
		for _, hidden := range []string{"\nman\n", "print the man page"} {
			if strings.Contains(out, hidden) {
				t.Errorf("man page shows the hidden man command (%q)", hidden)
			}
		}
	})

	t.Run("bash", func(t *testing.T) {
		bash := interpreter(t, "bash")
		complete := func(words ...string) []string {
			t.Helper()
			// COMP_WORDS as bash would set them for "baton WORDS<TAB>".
			script := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _baton; printf '%s\n' "${COMPREPLY[@]}"`
			code, out := runIn(t, []string{path}, bash, append([]string{"-c", script, "bash", filepath.Join(prefix, "share/bash-completion/completions/baton"), "baton"}, words...)...)
			if code != 0 {
				t.Fatalf("completion of %q: exit %d:\n%s", words, code, out)
			}
			return strings.Fields(out)
		}
		if got := complete(""); !hasAll(got, "run", "reload", "status", "stop", "completion", "help") {
			t.Errorf("baton <TAB>: %q", got)
		}
		if got := complete("re"); !hasAll(got, "reload") || hasAll(got, "run") {
			t.Errorf("baton re<TAB>: %q", got)
		}
		if got := complete("run", "--"); !hasAll(got, "--listen", "--workers", "--ready", "--drain-timeout", "--pid-file") {
			t.Errorf("baton run --<TAB>: %q", got)
		}
		if got := complete("status", "--"); !hasAll(got, "--json", "--timeout", "--pid-file") || hasAll(got, "--workers") {
			t.Errorf("baton status --<TAB>: %q", got)
		}
	})

	t.Run("zsh and fish", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(prefix, "share/zsh/site-functions/_baton"))
		if err != nil || !bytes.HasPrefix(b, []byte("#compdef baton")) {
			t.Errorf("zsh completion: %v\n%s", err, b)
		}
		b, err = os.ReadFile(filepath.Join(prefix, "share/fish/vendor_completions.d/baton.fish"))
		if err != nil || !bytes.Contains(b, []byte("-a 'reload'")) || !bytes.Contains(b, []byte("-l listen")) {
			t.Errorf("fish completion: %v\n%s", err, b)
		}
		if zsh, err := exec.LookPath("zsh"); err == nil {
			if code, out := runIn(t, nil, zsh, "-n", filepath.Join(prefix, "share/zsh/site-functions/_baton")); code != 0 {
				t.Errorf("zsh -n: %s", out)
			}
		}
	})
}

func hasAll(got []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestSystemdUnitsVerify runs systemd-analyze verify on every example unit,
// installed so that ExecStart= names a baton that exists.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian: systemd; .ci/run installs it)")
	}
	_, vout := runIn(t, nil, analyze, "--version")
	m := regexp.MustCompile(`systemd (\d+)`).FindStringSubmatch(vout)
	if m == nil {
		t.Fatalf("systemd-analyze --version: %q", vout)
	}
	systemdVersion, _ := strconv.Atoi(m[1])
	root := makeInstall(t, func(dir string) []string { return []string{"PREFIX=" + filepath.Join(dir, "usr")} })
	dir := filepath.Join(root, "usr", "share", "baton", "systemd")
	units, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(units) < 4 {
		t.Fatalf("installed units: %v", units)
	}
	for _, u := range units {
		name := filepath.Base(u)
		t.Run(name, func(t *testing.T) {
			code, out := runIn(t, []string{"SYSTEMD_LOG_COLOR=0"}, analyze, "verify", u)
			var ours []string // complaints about our units, not the host's
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "baton-app") || strings.Contains(l, dir) {
					ours = append(ours, l)
				}
			}
			src, _ := os.ReadFile(u)
			if name == "baton-app-reload.service" && systemdVersion < 253 {
				// Expected to be rejected here; the file must say why.
				if !bytes.Contains(src, []byte("NEEDS systemd >= 253")) {
					t.Errorf("%s does not say it needs systemd >= 253", name)
				}
				if !strings.Contains(out, "notify-reload") {
					t.Errorf("systemd %d accepted Type=notify-reload?\n%s", systemdVersion, out)
				}
				t.Logf("systemd %d: rejected as expected: %q", systemdVersion, ours)
				return
			}
			if code != 0 || len(ours) > 0 {
				t.Errorf("systemd-analyze verify %s (systemd %d): exit %d:\n%s", name, systemdVersion, code, out)
			}
		})
	}
	// The socket activates the service written for it, which requires it.
	sock, _ := os.ReadFile(filepath.Join(dir, "baton-app.socket"))
	svc, _ := os.ReadFile(filepath.Join(dir, "baton-app-activated.service"))
	if !bytes.Contains(sock, []byte("\nService=baton-app-activated.service\n")) || !bytes.Contains(svc, []byte("\nRequires=baton-app.socket\n")) ||
		!bytes.Contains(svc, []byte("\n[Install]\n")) {
		t.Errorf("baton-app.socket and baton-app-activated.service are not paired")
	}
	if svc, _ := os.ReadFile(filepath.Join(dir, "baton-app.service")); !bytes.Contains(svc, []byte("\nType=notify\n")) || bytes.Contains(svc, []byte("\nPIDFile=")) {
		t.Errorf("baton-app.service: want Type=notify and no PIDFile=")
	}
}

// The two teaching errors: a server that binds the port itself, and one
// that never says READY=1.
func TestHintServerBindsItsOwnPort(t *testing.T) {
	python := interpreter(t, "python3")
	own := freeAddr(t) // the port the server wrongly binds itself
	_, port, _ := strings.Cut(own, ":")
	script := "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1'," + port + "))\ns.listen()\ntime.sleep(30)\n"
	for _, mode := range []string{"tagged", "inherit"} {
		t.Run(mode, func(t *testing.T) {
			code, lines, out := runBaton(t, nil, "run", "--log-format", "json", "--worker-output", mode, "-l", freeAddr(t),
				"-w", "2", "--", python, "-c", script) // ready by notify, which this server never sends: its exit, however late, fails the start
			last := ""
			if len(lines) > 0 {
				last = lines[len(lines)-1]
			}
			if code != exitFailure || !strings.Contains(last, `"address already in use"`) || !strings.Contains(last, supervisor.HintInheritedSocket) {
				t.Errorf("exit %d, last line %q; want exit 1 and the hint; output:\n%s", code, last, out)
			}
		})
	}
}

func TestHintReadyNotifyNeverSent(t *testing.T) {
	code, lines, out := runBaton(t, nil, "run", "--log-format", "json", "-l", freeAddr(t), "--ready-timeout", "1s", "--", "sleep", "30")
	if code != exitFailure || len(lines) == 0 || !strings.Contains(lines[len(lines)-1], supervisor.HintNoNotify) {
		t.Errorf("exit %d, want 1 and %q; output:\n%s", code, supervisor.HintNoNotify, out)
	}
}

func TestHintAcceptQueueNobodyDrains(t *testing.T) {
	addr := freeAddr(t)
	// A "server" that is ready but never accepts on fd 3.
	b := startBaton(t, nil, "-l", "http="+addr, "--ready", "delay:50ms", "--", "sleep", "60")
	b.waitReady()
	conns := make([]net.Conn, 0, 2)
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ev := b.log.wait(t, "accept_stalled", nil, 15*time.Second)
	if !strings.Contains(ev.str("hint"), supervisor.HintInheritedSocket) || ev.num("queued") != 2 || !strings.Contains(ev.str("listener"), addr) {
		t.Errorf("warning: %v", ev)
	}
	b.signal(syscall.SIGTERM)
	b.waitExit(10 * time.Second)
}
