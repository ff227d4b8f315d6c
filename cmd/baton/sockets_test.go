//go:build linux

package main

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// workerSocketOpt reads an integer socket option of fd in process pid,
// through a copy of the fd taken with pidfd_getfd(2) (root).
func workerSocketOpt(t *testing.T, pid, fd, level, opt int) int {
	t.Helper()
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pfd)
	dup, err := unix.PidfdGetfd(pfd, fd, 0)
	if err != nil {
		t.Fatalf("pidfd_getfd %d fd %d: %v", pid, fd, err)
	}
	defer unix.Close(dup)
	v, err := unix.GetsockoptInt(dup, level, opt)
	if err != nil {
		t.Fatalf("getsockopt of worker %d fd %d: %v", pid, fd, err)
	}
	return v
}

// The sockets workers get are what the spec says: a tcp spec is plain TCP
// (Go would make it MPTCP), tcp6 is IPv6 only, mptcp:// is MPTCP.
func TestListenSpecGivesTheSocketAsked(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: reads the workers' sockets through pidfd_getfd")
	}
	mptcp := false
	if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err == nil && strings.TrimSpace(string(b)) == "1" {
		mptcp = true
	}
	args := []string{"-l", freeAddr(t), "-l", "tcp6://[::1]:0", "-l", "tcp4://127.0.0.1:0"}
	if mptcp {
		args = append(args, "-l", "mptcp://"+freeAddr(t))
	}
	// A worker that leaves its fds as baton passed them.
	b := startBaton(t, nil, append(args, "--ready", "delay:1ms", "--", "sleep", "60")...)
	b.waitReady()
	pid := b.workerPids(1)[0]
	if p := workerSocketOpt(t, pid, 3, unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
		t.Errorf("tcp spec: worker's fd 3 has SO_PROTOCOL %d, want %d (TCP)", p, unix.IPPROTO_TCP)
	}
	if d := workerSocketOpt(t, pid, 4, unix.SOL_SOCKET, unix.SO_DOMAIN); d != unix.AF_INET6 {
		t.Errorf("tcp6 spec: fd 4 has SO_DOMAIN %d, want AF_INET6", d)
	}
	if v := workerSocketOpt(t, pid, 4, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
		t.Errorf("tcp6 spec: fd 4 has IPV6_V6ONLY %d, want 1", v)
	}
	if p := workerSocketOpt(t, pid, 4, unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
		t.Errorf("tcp6 spec: fd 4 has SO_PROTOCOL %d, want TCP", p)
	}
	if d := workerSocketOpt(t, pid, 5, unix.SOL_SOCKET, unix.SO_DOMAIN); d != unix.AF_INET {
		t.Errorf("tcp4 spec: fd 5 has SO_DOMAIN %d, want AF_INET", d)
	}
	if !mptcp {
		t.Skip("kernel without MPTCP (net.mptcp.enabled is not 1): mptcp:// not tried")
	}
	if p := workerSocketOpt(t, pid, 6, unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_MPTCP {
		t.Errorf("mptcp spec: fd 6 has SO_PROTOCOL %d, want %d (MPTCP)", p, unix.IPPROTO_MPTCP)
	}
}

// As root with umask 022 and --user nobody, a unix listener belongs to the
// worker user with mode 0666, so a proxy of another user connects; an
// explicit mode and group are applied as given.
func TestUnixListenerModeAndOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs workers as nobody and sockets owned by others")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	dflt := filepath.Join(dir, "app.sock")
	explicit := filepath.Join(dir, "admin.sock")
	cmd := exec.Command("/bin/sh", "-c", `umask 022; exec "$0" "$@"`, bin("baton"), "run", "--log-format", "json",
		"--user", "nobody", "-l", "unix://"+dflt, "-l", "unix://"+explicit+"?mode=0640&group=0", "--", bin("hello"))
	b := startBatonCmd(t, cmd, nil)
	b.waitReady()
	check := func(path string, mode os.FileMode, uid, gid int) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", path, fi.Mode().Perm(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	check(dflt, 0o666, uid, gid)
	check(explicit, 0o640, uid, 0)

	// A client of yet another user (www-data's stand-in: a uid of no
	// account) connects to the default one, and not to the 0640 one.
	dial := func(path string) string {
		var out strings.Builder
		c := exec.Command(bin("baton"), "status", "--control", path, "--timeout", "2s")
		c.Stdout, c.Stderr = &out, &out
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 64123, Gid: 64123}}
		c.Run()
		return out.String()
	}
	if out := dial(dflt); strings.Contains(out, "permission denied") {
		t.Errorf("another user cannot connect to %s: %s", dflt, out)
	}
	if out := dial(explicit); !strings.Contains(out, "permission denied") {
		t.Errorf("another user reached the 0640 socket %s: %s", explicit, out)
	}
}
