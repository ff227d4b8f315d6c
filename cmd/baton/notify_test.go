//go:build linux

package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifyDirs lists the notify socket directories in base.
func notifyDirs(t *testing.T, base string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(base, "baton-notify.*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// The notify socket is a path in a private directory, and nothing of it is
// left once baton stops, also after an upgrade (two masters, two sockets).
func TestNotifySocketIsAPrivatePathRemovedAtStop(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	addr := freeAddr(t)
	b := startBaton(t, []string{"XDG_RUNTIME_DIR=" + base}, "-l", addr, "-w", "2", "--", bin("hello"))
	b.waitReady()
	// The keeper's (masters speak to it) and the master's (workers speak
	// to it).
	dirs := notifyDirs(t, base)
	if len(dirs) != 2 {
		t.Fatalf("notify directories %v, want 2", dirs)
	}
	for _, dir := range dirs {
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil || st.Mode&0o777 != 0o700 || int(st.Uid) != os.Geteuid() {
			t.Fatalf("notify directory %s: mode %o uid %d (%v); want 0700, ours", dir, st.Mode&0o777, st.Uid, err)
		}
		if err := syscall.Stat(filepath.Join(dir, "notify"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Mode&0o777 != 0o600 {
			t.Fatalf("notify socket: mode %o (%v); want a socket, 0600", st.Mode, err)
		}
	}
	b.upgrade(t, b.pid, 1) // returns once the old master has exited
	if after := notifyDirs(t, base); len(after) != 2 || !slices.Contains(dirs, after[0]) && !slices.Contains(dirs, after[1]) {
		t.Fatalf("after an upgrade: notify directories %v, want the keeper's and the new master's", after)
	}
	b.log.wait(t, "previous_master_exited", nil, 30*time.Second)
	if code, out := b.ctl(t, "stop"); code != 0 {
		t.Fatalf("baton stop: exit %d: %s", code, out)
	}
	if dirs := notifyDirs(t, base); len(dirs) != 0 {
		t.Fatalf("left behind after stop: %v", dirs)
	}
}

// A master killed by SIGKILL (OOM) leaves its notify directory; the next
// start is not blocked by it and removes it.
func TestStartAfterSIGKILLedMasterSweepsItsNotifySocket(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	addr := freeAddr(t)
	env := []string{"XDG_RUNTIME_DIR=" + base}
	b := startBaton(t, env, "-l", addr, "-w", "1", "--", bin("hello"))
	b.waitReady()
	before := notifyDirs(t, base)
	if err := syscall.Kill(b.firstMaster(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Its worker dies with it (PDEATHSIG), and the keeper, with no master
	// left, exits with the master's status.
	if code := b.waitExit(10 * time.Second); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("keeper exit %d after its master was SIGKILLed, want %d", code, 128+int(syscall.SIGKILL))
	}
	stale := notifyDirs(t, base)
	if len(stale) != 1 || !slices.Contains(before, stale[0]) {
		t.Fatalf("after SIGKILL: %v, want the dead master's directory still there", stale)
	}
	for _, pid := range b.workerPids(1) {
		eventually(t, 5*time.Second, "worker of the killed master to exit", func() bool { return !alive(pid) })
	}
	b2 := startBaton(t, env, "-l", addr, "-w", "1", "--", bin("hello"))
	b2.waitReady()
	if dirs := notifyDirs(t, base); len(dirs) != 2 || slices.Contains(dirs, stale[0]) {
		t.Fatalf("notify directories %v; want the new keeper's and master's, not %s", dirs, stale[0])
	}
}

// Root with a private runtime directory (ssh root@, su -: /run/user/0 is
// 0700) and workers as another user: the workers must still reach the
// notify socket, so it is made where they can get through.
func TestNotifySocketReachableByUserWorkersUnderPrivateRuntimeDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root for --user nobody")
	}
	t.Parallel()
	// Short, as runtime directories are (a long one is passed over anyway).
	private, err := os.MkdirTemp("/tmp", "rt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(private) })
	if err := os.Chmod(private, 0o700); err != nil { // root's, private
		t.Fatal(err)
	}
	// hello must be reachable by nobody: the test binaries' directory is.
	addr := freeAddr(t)
	b := startBaton(t, []string{"XDG_RUNTIME_DIR=" + private}, "-l", addr, "--user", "nobody", "-w", "2", "--", bin("hello"))
	b.waitReady()
	if body := mustGet(t, addr, "/"); !strings.HasPrefix(body, "hello ") {
		t.Fatalf("served %q", body)
	}
}

// staleNotifyDir makes in base what a SIGKILLed master leaves: a notify
// directory of this user whose socket is bound but read by nobody (a dial
// to it is refused).
func staleNotifyDir(t *testing.T, base string) string {
	t.Helper()
	dir, err := os.MkdirTemp(base, "baton-notify.")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = syscall.Bind(fd, &syscall.SockaddrUnix{Name: filepath.Join(dir, "notify")})
	syscall.Close(fd) // the path stays, nobody reads it
	if err != nil {
		t.Fatalf("bind %s/notify: %v", dir, err)
	}
	return dir
}

// The sweep of stale notify directories no longer happens in notify.Open
// (on the way to a new master's first spawn) but once the new generation
// serves: a directory left by a master SIGKILLed while baton ran (after
// the keeper's and the first master's sweeps) is gone after an upgrade.
func TestUpgradeSweepsNotifyDirectoryLeftSinceStart(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	addr := freeAddr(t)
	b := startBaton(t, []string{"XDG_RUNTIME_DIR=" + base}, "-l", addr, "-w", "1", "--", bin("hello"))
	b.waitReady()
	stale := staleNotifyDir(t, base)
	if dirs := notifyDirs(t, base); len(dirs) != 3 || !slices.Contains(dirs, stale) {
		t.Fatalf("notify directories %v; want the keeper's, the master's and %s", dirs, stale)
	}
	b.upgrade(t, b.pid, 1) // returns once the new generation serves and the old master has exited
	// The new master sweeps in the background after handover_complete,
	// with no event of its own: the directory is looked at until it goes.
	eventually(t, 10*time.Second, "the stale notify directory "+stale+" to be swept", func() bool {
		_, err := os.Lstat(stale)
		return os.IsNotExist(err)
	})
	if dirs := notifyDirs(t, base); len(dirs) != 2 {
		t.Fatalf("after the sweep: notify directories %v, want the keeper's and the new master's", dirs)
	}
}
