//go:build linux

package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// baton started by a Node launcher with an IPC channel (NODE_CHANNEL_FD,
// the channel at fd 3): a Node worker must not take its own fd 3, the
// listening socket, for that channel.
func TestNodeLauncherChannelDoesNotReachWorkers(t *testing.T) {
	t.Parallel()
	node := interpreter(t, "node")
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	launcherEnd := os.NewFile(uintptr(fds[0]), "launcher")
	batonEnd := os.NewFile(uintptr(fds[1]), "channel")
	defer launcherEnd.Close()
	addr := freeAddr(t)
	// What child_process.spawn(..., {stdio: [..., 'ipc']}) does: the
	// channel at fd 3, named by NODE_CHANNEL_FD.
	cmd := exec.Command(bin("baton"), "run", "--log-format", "json", "-l", addr, "--ready", "delay:300ms", "--",
		node, "-e", `require("http").createServer((q, r) => r.end(process.channel ? "channel\n" : "plain\n")).listen({fd: 3})`)
	cmd.ExtraFiles = []*os.File{batonEnd}
	b := startBatonCmd(t, cmd, []string{"NODE_CHANNEL_FD=3", "NODE_CHANNEL_SERIALIZATION_MODE=json"})
	batonEnd.Close()
	b.waitReady()
	for range 3 {
		if body := mustGet(t, addr, "/"); body != "plain\n" {
			t.Fatalf("node worker answered %q, want plain (no IPC channel)", body)
		}
	}
	pid := b.workerPids(1)[0]
	env := environOf(t, pid)
	for _, k := range []string{"NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE"} {
		if v, ok := env[k]; ok {
			t.Errorf("node worker %d has %s=%s", pid, k, v)
		}
	}
}

// The same kind from other launchers: a journald stream that is a pipe for
// tagged workers, and another supervisor's fds, which --compat describes
// anew for baton's own sockets.
func TestLauncherFdVariablesAreDroppedOrReplaced(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, []string{"JOURNAL_STREAM=9:12345", "EINHORN_FDS=7 8", "EINHORN_FD_COUNT=2", "EINHORN_FD_1=8",
		"UNICORN_FD=7,8", "PUMA_INHERIT_0=7:tcp://0.0.0.0:80", "SYSTEMD_EXEC_PID=1", "APP=kept"},
		"-l", addr, "--worker-output", "tagged", "--compat", "einhorn", "--ready", "delay:1ms", "--", "sleep", "60")
	b.waitReady()
	pid := b.workerPids(1)[0]
	waitExec(t, pid, "/sleep")
	env := environOf(t, pid)
	want := map[string]string{"EINHORN_FDS": "3", "EINHORN_FD_COUNT": "1", "EINHORN_FD_0": "3", "APP": "kept"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("worker %s=%q, want %q", k, env[k], v)
		}
	}
	for k, v := range env {
		if k == "JOURNAL_STREAM" || k == "EINHORN_FD_1" || k == "UNICORN_FD" || k == "SYSTEMD_EXEC_PID" || strings.HasPrefix(k, "PUMA_INHERIT_") {
			t.Errorf("worker has %s=%s, which describes baton's launcher", k, v)
		}
	}
}
