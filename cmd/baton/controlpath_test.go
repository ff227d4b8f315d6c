//go:build linux

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// client runs a baton client command with env (no BATON_CONTROL of the
// harness) and returns its exit code and output.
func client(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin("baton"), args...)
	cmd.Env = append(os.Environ(), append([]string{"BATON_CONTROL="}, env...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code, ok := exitStatus(err)
	if !ok {
		t.Fatal(err)
	}
	return code, out.String()
}

// A pid file so deep that the control socket beside it would be over the
// 108-byte sun_path: the default falls back to a short path that the
// client derives from the same --pid-file, and a path that long given
// explicitly is refused in one line, by baton run and by the client.
func TestControlSocketPathTooLong(t *testing.T) {
	t.Parallel()
	runtime := t.TempDir()
	env := []string{"BATON_CONTROL=", "XDG_RUNTIME_DIR=" + runtime}
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 100-len(t.TempDir())))
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := filepath.Join(deep, "app.pid")
	if n := len(strings.TrimSuffix(pid, ".pid") + ".sock"); n <= 107 {
		t.Fatalf("test set-up: the path beside the pid file is %d bytes, want over 107", n)
	}
	b := startBaton(t, env, "-l", freeAddr(t), "--pid-file", pid, "--", bin("hello"))
	b.waitReady()
	if code, out := client(t, env, "status", "--pid-file", pid); code != 0 || !strings.Contains(out, "serving") {
		t.Fatalf("status --pid-file (deep): exit %d:\n%s", code, out)
	}

	long := filepath.Join(deep, "control-socket-of-app.sock")
	code, lines, out := runBatonEnv(t, nil, []string{"BATON_CONTROL="}, "run", "-l", freeAddr(t), "--control", long, "--", bin("hello"))
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "--control") || !strings.Contains(lines[0], "path too long") {
		t.Fatalf("run --control of %d bytes: exit %d, want 2 and one line naming --control and path too long:\n%s", len(long), code, out)
	}
	if code, out := client(t, nil, "status", "--control", long); code != 2 || !strings.Contains(out, "path too long") || strings.Contains(out, "no master") {
		t.Fatalf("status --control of %d bytes: exit %d, want 2 and path too long:\n%s", len(long), code, out)
	}
}

// Two services without pid files: each has its own control socket, a
// client that does not say which is refused, and one that names a service
// by its --listen reaches that one only.
func TestTwoServicesTwoControlSockets(t *testing.T) {
	t.Parallel()
	env := []string{"BATON_CONTROL=", "XDG_RUNTIME_DIR=" + t.TempDir()}
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startBaton(t, env, "-l", addrA, "--", bin("hello"))
	a.waitReady()
	b := startBaton(t, env, "-l", addrB, "--", bin("hello"))
	b.waitReady()

	if code, out := client(t, env, "reload"); code != 2 || !strings.Contains(out, "2 services") {
		t.Fatalf("reload with two services and no flags: exit %d, want 2 naming both:\n%s", code, out)
	}
	if code, out := client(t, env, "reload", "-l", addrB); code != 0 {
		t.Fatalf("reload -l %s: exit %d:\n%s", addrB, code, out)
	}
	if g := field(mustGet(t, addrB, "/"), "generation"); g != "2" {
		t.Errorf("service B serves generation %s after its reload, want 2", g)
	}
	if g := field(mustGet(t, addrA, "/"), "generation"); g != "1" {
		t.Errorf("service A serves generation %s after B's reload, want 1", g)
	}
}

// A control socket that cannot be this master's refuses the start: one
// live master already answers there, or a --listen socket has its path.
func TestControlSocketThatIsNotOursRefusesTheStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctl := filepath.Join(dir, "ctl.sock")
	first := startBaton(t, []string{"BATON_CONTROL=" + ctl}, "-l", freeAddr(t), "--", bin("hello"))
	first.waitReady()
	first.control = ctl

	code, lines, out := runBatonEnv(t, nil, []string{"BATON_CONTROL=" + ctl}, "run", "-l", freeAddr(t), "--", bin("hello"))
	if code == 0 || len(lines) != 1 || !strings.Contains(lines[0], "--control") || !strings.Contains(lines[0], "in use") {
		t.Fatalf("second master on a live control socket: exit %d, want one line naming --control:\n%s", code, out)
	}
	if code, out := first.ctl(t, "status"); code != 0 || !strings.Contains(out, "serving") {
		t.Fatalf("the first master no longer answers: exit %d:\n%s", code, out)
	}

	other := filepath.Join(dir, "other.sock")
	code, lines, out = runBatonEnv(t, nil, []string{"BATON_CONTROL=" + other}, "run", "-l", "unix://"+other, "--", bin("hello"))
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "also a --listen socket") {
		t.Fatalf("control socket at a listener's path: exit %d, want 2 and one line:\n%s", code, out)
	}
	if _, err := os.Stat(other); err == nil {
		t.Errorf("%s left behind", other)
	}
}
