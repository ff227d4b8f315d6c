//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
)

// startWithStderr runs baton run ARGS with stdout and stderr on w (the
// caller owns the read end) and its own control socket; cleanup SIGKILLs
// the masters named in pids (no log to learn them from).
func startWithStderr(t *testing.T, w *os.File, args ...string) (*baton, *[]int) {
	t.Helper()
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	cmd := exec.Command(bin("baton"), append([]string{"run", "--log-format", "json", "--control", ctl}, args...)...)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b := &baton{t: t, cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), control: ctl}
	go func() { b.err = cmd.Wait(); close(b.done) }()
	pids := &[]int{b.pid}
	t.Cleanup(func() {
		for _, p := range *pids {
			killOurs(p)
		}
		<-b.done
	})
	eventually(t, 20*time.Second, "the master to serve", func() bool {
		code, out := b.ctl(t, "status")
		return code == 0 && strings.Contains(out, "serving")
	})
	return b, pids
}

// baton's stderr is a pipe whose reader went away (a log shipper that
// exited): the next log lines must not kill the master (SIGPIPE), and
// with it every worker; upgrades and stop keep working.
func TestLogReaderGoneDoesNotKillTheMaster(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // the reader is gone before baton writes its first line
	addr := freeAddr(t)
	b, pids := startWithStderr(t, w, "-l", addr, "-w", "2", "--", bin("hello"))
	w.Close()
	b.signal(syscall.SIGTTIN) // more log lines
	code, out := b.ctl(t, "reload", "--json")
	var res control.ReloadResult
	// JSON lines: the steps, then the result.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	json.Unmarshal([]byte(lines[len(lines)-1]), &res)
	*pids = append(*pids, res.NewMasterPID)
	if code != 0 || res.NewMasterPID == 0 {
		t.Fatalf("reload with a broken log pipe: exit %d\n%s", code, out)
	}
	if g := field(mustGet(t, addr, "/"), "generation"); g != "2" {
		t.Fatalf("after reload generation %s serves, want 2", g)
	}
	if code, out := b.ctl(t, "stop"); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, out)
	}
}

// baton's stderr is a pipe nobody reads (a stopped log shipper) while a
// worker floods its tagged output: the master's loop must not block on
// its log: status and stop answer; the lines dropped are counted, and
// the count is logged once the output moves again.
func TestStuckLogReaderDoesNotStallTheMaster(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	flood := `i=0; while [ $i -lt 4000 ]; do echo "flood line $i with some padding to fill the pipe faster"; i=$((i+1)); done >&2; exec sleep 60`
	b, _ := startWithStderr(t, w, "-l", freeAddr(t), "--worker-output", "tagged", "--ready", "delay:200ms", "--", "sh", "-c", flood)
	w.Close()
	// The pipe (64 KiB) is full by now; the loop still answers.
	// (One at a time: signals of one kind sent together coalesce.)
	for n := 2; n <= 3; n++ {
		b.signal(syscall.SIGTTIN)
		eventually(t, 10*time.Second, "a TTIN worker to be up with the log stuck", func() bool {
			code, out := b.ctl(t, "status", "--json")
			var st control.Status
			return code == 0 && json.Unmarshal([]byte(out), &st) == nil && len(st.Workers) == n
		})
	}
	// Relayed output gave up waiting: entries were dropped, and counted.
	eventually(t, 20*time.Second, "status to count dropped log entries", func() bool {
		code, out := b.ctl(t, "status", "--json")
		var st control.Status
		return code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.LogDropped > 0
	})
	// The output moves again: the count of dropped entries is logged.
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "log entries dropped") {
				found <- true
				return
			}
		}
		found <- false
	}()
	b.signal(syscall.SIGTTOU)
	start := time.Now()
	if code, out := b.ctl(t, "stop"); code != 0 {
		t.Fatalf("stop with a stuck log: exit %d\n%s", code, out)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("stop took %s", d)
	}
	select {
	case ok := <-found:
		if !ok {
			t.Error("no \"log entries dropped\" line once the log output moved")
		}
	case <-time.After(10 * time.Second):
		t.Error("no \"log entries dropped\" line within 10s")
	}
}
