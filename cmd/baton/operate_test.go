//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// ctl runs a baton client command against b's control socket and returns
// its exit code and stdout+stderr.
func (b *baton) ctl(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	// --control right after the command: cli stops at the first argument.
	cmd := exec.Command(bin("baton"), append([]string{args[0], "--control", b.control}, args[1:]...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code, ok := exitStatus(err)
	if !ok {
		t.Fatal(err)
	}
	return code, out.String()
}

func TestReloadExitCodes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "HELLO_TAG=v1 exec "+bin("hello"))
	release(t, dir, "crash", "echo 'fatal: cannot open config.yml' >&2; exit 3")
	release(t, dir, "slow", "HELLO_STARTUP_MS=1500 HELLO_TAG=slow exec "+bin("hello"))
	pointCurrent(t, dir, "v1")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--chdir", filepath.Join(dir, "current"), "--", "./server")
	b.waitReady()

	// 1: rolled back, with the reason.
	pointCurrent(t, dir, "crash")
	code, out := b.ctl(t, "reload")
	if code != 1 || !strings.Contains(out, "exit status 3 before it was ready") || !strings.Contains(out, "| fatal: cannot open config.yml") {
		t.Fatalf("reload of a crashing release: exit %d, output:\n%s", code, out)
	}
	if body := mustGet(t, addr, "/"); field(body, "tag") != "v1" {
		t.Fatalf("after rollback served %q", body)
	}

	// 2: pre-flight: the release is gone, so nothing is forked.
	pointCurrent(t, dir, "deleted")
	starts := b.log.count("master_starting")
	code, out = b.ctl(t, "reload")
	if code != 2 || !strings.Contains(out, "pre-flight") || !strings.Contains(out, "current") {
		t.Fatalf("reload of a missing release: exit %d, output:\n%s", code, out)
	}
	if n := b.log.count("master_starting"); n != starts {
		t.Fatalf("a new master was started for a release that does not exist")
	}

	// 2: an upgrade already under way.
	pointCurrent(t, dir, "slow")
	from := b.log.len()
	first := make(chan string, 1)
	go func() {
		code, out := b.ctl(t, "reload", "--json")
		first <- strconv.Itoa(code) + " " + out
	}()
	b.log.waitFrom(t, from, "upgrade_requested", nil, 10*time.Second)
	code, out = b.ctl(t, "reload")
	if code != 2 || !strings.Contains(out, "already under way") {
		t.Fatalf("reload during an upgrade: exit %d, output:\n%s", code, out)
	}

	// 0: the slow release took over.
	got := <-first
	if !strings.HasPrefix(got, "0 ") {
		t.Fatalf("reload of a slow but good release: %s", got)
	}
	var res control.ReloadResult
	// JSON lines: the steps, then the result.
	jl := strings.Split(strings.TrimSpace(strings.TrimPrefix(got, "0 ")), "\n")
	if err := json.Unmarshal([]byte(jl[len(jl)-1]), &res); err != nil {
		t.Fatalf("reload --json: %v in %q", err, got)
	}
	if !res.OK || res.Generation != 2 || res.OldMasterPID != b.firstMaster() || res.NewMasterPID == 0 || res.NewMasterPID == b.firstMaster() ||
		res.WorkersStartingMS < 1500 || res.TotalMS < res.WorkersStartingMS {
		t.Fatalf("reload result %+v", res)
	}
	if body := mustGet(t, addr, "/"); field(body, "tag") != "slow" {
		t.Fatalf("after reload served %q", body)
	}

	// 2: no master at all.
	code, out = (&baton{control: filepath.Join(dir, "nothing.sock")}).ctl(t, "reload")
	if code != 2 || !strings.Contains(out, "no master at") {
		t.Fatalf("reload with no master: exit %d, output:\n%s", code, out)
	}
}

func TestStatusDuringDrainAndStop(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	slow := inFlight(addr, 3000)
	b.waitAccepted(t, 1)
	code, out := b.ctl(t, "reload")
	if code != 0 || !strings.Contains(out, "reload ok: generation 2") {
		t.Fatalf("reload: exit %d:\n%s", code, out)
	}
	code, out = b.ctl(t, "status", "--json")
	if code != 0 {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v:\n%s", err, out)
	}
	if st.Generation != 2 || st.State != "serving" || len(st.Workers) != 2 || st.Listeners[0] != "listen0=tcp://"+addr {
		t.Fatalf("status %+v", st)
	}
	for _, w := range st.Workers {
		if w.State != "ready" || w.PID == 0 {
			t.Fatalf("worker %+v", w)
		}
	}
	p := st.Previous
	if p == nil || p.Generation != 1 || p.MasterPID != b.firstMaster() || p.State != "draining" || len(p.WorkerPIDs) == 0 || p.DrainLeftMS <= 0 {
		t.Fatalf("previous generation in status: %+v (status %+v)", p, st)
	}
	if st.LastUpgrade != nil {
		t.Fatalf("new master reports a last upgrade of its own: %+v", st.LastUpgrade)
	}
	// The human form names the same things.
	code, out = b.ctl(t, "status")
	if code != 0 || !strings.Contains(out, "generation 2") || !strings.Contains(out, "previous generation 1") {
		t.Fatalf("status table: exit %d:\n%s", code, out)
	}
	if body := <-slow; field(body, "generation") != "1" {
		t.Fatalf("slow request: %q", body)
	}
	// stop returns once the master is gone.
	newMaster := st.MasterPID
	code, out = b.ctl(t, "stop")
	if code != 0 || !strings.Contains(out, "master "+strconv.Itoa(newMaster)+" stopped") {
		t.Fatalf("stop: exit %d:\n%s", code, out)
	}
	if alive(newMaster) {
		t.Fatalf("master %d alive after baton stop returned", newMaster)
	}
	if _, err := os.Lstat(b.control); !os.IsNotExist(err) {
		t.Fatalf("control socket left after stop: %v", err)
	}
}

func TestControlSocketRefusesForeignUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another user")
	}
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "--", bin("hello"))
	b.waitReady()
	fi, err := os.Stat(b.control)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %o, want 600", fi.Mode().Perm())
	}
	// Open the file mode up so that only the credential check stands.
	os.Chmod(b.control, 0o666)
	os.Chmod(filepath.Dir(b.control), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(b.control)), 0o755) // t.TempDir's parent
	var out bytes.Buffer
	cmd := exec.Command(bin("baton"), "status", "--control", b.control)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	err = cmd.Run()
	if err == nil || !strings.Contains(out.String(), "permission denied") {
		t.Fatalf("status as nobody: %v:\n%s", err, out.String())
	}
	b.log.wait(t, "control_refused", func(e logEvent) bool { return e.num("peer_uid") == 65534 }, 5*time.Second)
}

// notifyRecorder is a stand-in for systemd's NOTIFY_SOCKET.
type notifyRecorder struct {
	mu   sync.Mutex
	msgs []recorded
	c    *net.UnixConn
	path string
	got  chan struct{}
}

type recorded struct {
	pid int
	msg string
}

func newNotifyRecorder(t *testing.T) *notifyRecorder {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := c.SyscallConn()
	rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	r := &notifyRecorder{c: c, path: path, got: make(chan struct{}, 1)}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		oob := make([]byte, 1024)
		for {
			n, noob, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			pid := 0
			if msgs, err := syscall.ParseSocketControlMessage(oob[:noob]); err == nil {
				for _, m := range msgs {
					if cred, err := syscall.ParseUnixCredentials(&m); err == nil {
						pid = int(cred.Pid)
					}
				}
			}
			r.mu.Lock()
			r.msgs = append(r.msgs, recorded{pid, string(buf[:n])})
			r.mu.Unlock()
			select {
			case r.got <- struct{}{}:
			default:
			}
		}
	}()
	return r
}

// waitFor waits for a message from pid containing every part, after index
// from, and returns its index.
func (r *notifyRecorder) waitFor(t *testing.T, from, pid int, parts ...string) int {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		for i := from; i < len(r.msgs); i++ {
			m := r.msgs[i]
			ok := pid == 0 || m.pid == pid
			for _, p := range parts {
				ok = ok && strings.Contains(m.msg, p)
			}
			if ok {
				r.mu.Unlock()
				return i
			}
		}
		all := append([]recorded(nil), r.msgs...)
		r.mu.Unlock()
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("no notify message from pid %d with %q after #%d; got %+v", pid, parts, from, all)
		}
	}
}

// Under systemd the keeper is the main pid: every message the service
// manager gets comes from it, MAINPID never changes, and the sequence is
// what Type=notify-reload wants.
func TestSystemdNotifyAcrossUpgrade(t *testing.T) {
	t.Parallel()
	rec := newNotifyRecorder(t)
	addr := freeAddr(t)
	b := startBaton(t, []string{"NOTIFY_SOCKET=" + rec.path}, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	i := rec.waitFor(t, 0, b.pid, "READY=1", "STATUS=generation 1, 2 workers")
	for gen := 1; gen <= 3; gen++ {
		// Type=notify-reload sends SIGHUP and waits for RELOADING=1 … READY=1.
		b.signal(syscall.SIGHUP)
		i = rec.waitFor(t, i+1, b.pid, "RELOADING=1", "MONOTONIC_USEC=")
		i = rec.waitFor(t, i+1, b.pid, "READY=1", fmt.Sprintf("STATUS=generation %d", gen+1))
		b.log.wait(t, "previous_master_exited", func(e logEvent) bool { return e.num("generation") == gen+1 }, 20*time.Second)
	}
	b.signal(syscall.SIGTERM)
	rec.waitFor(t, i+1, b.pid, "STOPPING=1")
	if code := b.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("exit %d after a graceful stop", code)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var seq []string
	for _, m := range rec.msgs {
		if m.pid != b.pid {
			t.Errorf("message from pid %d, not the keeper %d, reached the service manager: %q", m.pid, b.pid, m.msg)
		}
		if strings.Contains(m.msg, "MAINPID=") {
			t.Errorf("MAINPID sent: %q (the keeper is the main pid for good)", m.msg)
		}
		for _, line := range strings.Split(m.msg, "\n") {
			if line == "READY=1" || line == "RELOADING=1" || line == "STOPPING=1" {
				seq = append(seq, line)
			}
		}
	}
	want := []string{"READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"}
	if !slices.Equal(seq, want) {
		t.Errorf("sequence %q, want %q", seq, want)
	}
}

func TestWorkersRunAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", "127.0.0.1:"+strings.Split(addr, ":")[1], "--user", "nobody", "-w", "2", "--", bin("hello"))
	b.waitReady()
	for _, pid := range b.workerPids(1) {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(st), "\nUid:\t65534\t65534\t65534\t65534\n") {
			t.Fatalf("worker %d is not nobody:\n%s", pid, st)
		}
	}
	if body := mustGet(t, addr, "/"); !strings.HasPrefix(body, "hello ") {
		t.Fatalf("served %q", body)
	}
	code, lines, _ := runBaton(t, nil, "run", "-l", freeAddr(t), "--user", "no-such-user-xyz", "--", bin("hello"))
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], `"no-such-user-xyz"`) {
		t.Fatalf("unknown user: exit %d, %q", code, lines)
	}
}

func TestDeployScriptRollsBack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release(t, dir, "v1", "HELLO_TAG=v1 exec "+bin("hello"))
	release(t, dir, "v2", "HELLO_TAG=v2 exec "+bin("hello"))
	release(t, dir, "v3", "echo 'v3: missing DATABASE_URL' >&2; exit 3")
	pointCurrent(t, dir, "v1")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--chdir", filepath.Join(dir, "current"), "--", "./server")
	b.waitReady()
	deploy := func(rel string) (int, string) {
		return runDeploy(t, []string{"BATON=" + bin("baton"), "BATON_CONTROL=" + b.control, "APP_ROOT=" + dir},
			filepath.Join(dir, "releases", rel))
	}
	current := func() string { return releaseOf(t, dir) }

	code, out := deploy("v2")
	if code != 0 || current() != "v2" {
		t.Fatalf("deploy v2: exit %d, current -> %s:\n%s", code, current(), out)
	}
	if body := mustGet(t, addr, "/"); field(body, "tag") != "v2" {
		t.Fatalf("after deploying v2 served %q", body)
	}
	b.log.wait(t, "previous_master_exited", nil, 30*time.Second)

	code, out = deploy("v3")
	if code == 0 || !strings.Contains(out, "exit status 3") || !strings.Contains(out, "rolled back") {
		t.Fatalf("deploy of a crashing v3: exit %d:\n%s", code, out)
	}
	if current() != "v2" {
		t.Fatalf("after a failed deploy current -> %s, want v2", current())
	}
	if body := mustGet(t, addr, "/"); field(body, "tag") != "v2" {
		t.Fatalf("after the failed deploy served %q", body)
	}
}
