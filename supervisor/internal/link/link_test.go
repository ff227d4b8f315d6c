//go:build linux

package link

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/notify"
)

// keeperSocket stands in for the keeper's notify socket: this process is
// the keeper, answering with answer (nil: never).
func keeperSocket(t *testing.T, answer func(to string) string) string {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fd := OpenAnswerSocket()
	if fd < 0 {
		t.Fatal("no answer socket")
	}
	t.Cleanup(func() { syscall.Close(fd) })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ok, to := Announcement(notify.Parse(buf[:n]))
			if !ok || to == "" || answer == nil {
				continue
			}
			Answer(fd, to, answer(to))
		}
	}()
	return addr
}

// announce runs l.Announce with a deadline of its own, so that a wait
// that never ends fails the test instead of hanging it.
func announce(t *testing.T, l Link) (time.Duration, error) {
	t.Helper()
	t0 := time.Now()
	done := make(chan error, 1)
	go func() { done <- l.Announce() }()
	select {
	case err := <-done:
		return time.Since(t0), err
	case <-time.After(l.wait + 5*time.Second):
		t.Fatalf("Announce still waiting %s after its wait of %s", time.Since(t0), l.wait)
		return 0, nil
	}
}

func TestAnnounceAccepted(t *testing.T) {
	addr := keeperSocket(t, func(string) string { return "" })
	l := Link{KeeperPID: os.Getpid(), acks: true, notify: addr, wait: 5 * time.Second}
	if _, err := announce(t, l); err != nil {
		t.Fatalf("Announce: %v", err)
	}
}

func TestAnnounceRefusedSaysWhy(t *testing.T) {
	addr := keeperSocket(t, func(string) string { return "not running\nbaton" })
	l := Link{KeeperPID: os.Getpid(), acks: true, notify: addr, wait: 5 * time.Second}
	_, err := announce(t, l)
	if err == nil || !strings.Contains(err.Error(), "not running baton") {
		t.Fatalf("Announce: %v, want a refusal giving the keeper's reason on one line", err)
	}
}

func TestAnnounceTimesOutWithoutAnAnswer(t *testing.T) {
	addr := keeperSocket(t, nil)
	const wait = 200 * time.Millisecond
	l := Link{KeeperPID: os.Getpid(), acks: true, notify: addr, wait: wait}
	took, err := announce(t, l)
	if err == nil {
		t.Fatal("Announce returned nil with no answer")
	}
	if took < wait {
		t.Fatalf("Announce gave up after %s, before its wait of %s", took, wait)
	}
}

func TestAnnounceIgnoresAnswersFromAnotherProcess(t *testing.T) {
	// The "keeper" answering is this process, but the link names another
	// pid: its answer is not the keeper's, so the wait runs out.
	addr := keeperSocket(t, func(string) string { return "" })
	const wait = 200 * time.Millisecond
	l := Link{KeeperPID: os.Getpid() + 1, acks: true, notify: addr, wait: wait}
	if took, err := announce(t, l); err == nil || took < wait {
		t.Fatalf("Announce: %v after %s, want no answer taken from another process", err, took)
	}
}

func TestAnnounceWithoutAcksDoesNotWait(t *testing.T) {
	addr := keeperSocket(t, nil)
	l := Link{KeeperPID: os.Getpid(), notify: addr, wait: time.Hour}
	if _, err := announce(t, l); err != nil {
		t.Fatalf("Announce to a keeper that predates the handshake: %v", err)
	}
}

// Send has sent the announcement when it returns: a keeper reads it while
// the master goes on with its set-up, and Await then takes the answer
// that waited meanwhile. A keeper that never answers still fails Await
// within the wait, counted from Send.
func TestSendReturnsWithTheAnnouncementSent(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fd := OpenAnswerSocket()
	if fd < 0 {
		t.Fatal("no answer socket")
	}
	defer syscall.Close(fd)
	const wait = 300 * time.Millisecond
	l := Link{KeeperPID: os.Getpid(), acks: true, notify: addr, wait: wait}
	for _, answer := range []bool{true, false} {
		sent := l.Send()
		buf := make([]byte, 4096)
		n, _, err := syscall.Recvfrom(connFd(t, c), buf, syscall.MSG_DONTWAIT)
		if err != nil {
			t.Fatalf("keeper's socket right after Send: %v, want the announcement there", err)
		}
		ok, to := Announcement(notify.Parse(buf[:n]))
		if !ok || to == "" {
			t.Fatalf("keeper read %q, want an announcement with an address for the answer", buf[:n])
		}
		t0 := time.Now()
		if answer {
			Answer(fd, to, "")
			if err := sent.Await(); err != nil {
				t.Fatalf("Await of an answer sent before it: %v", err)
			}
			continue
		}
		if err := sent.Await(); err == nil || time.Since(t0) > wait+5*time.Second {
			t.Fatalf("Await with no answer: %v after %s, want a failure within %s", err, time.Since(t0), wait)
		}
	}
}

// connFd is c's descriptor, for a read that must not wait.
func connFd(t *testing.T, c *net.UnixConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

func TestOfferEnv(t *testing.T) {
	environ := []string{"PATH=/bin", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_PID=1", "WATCHDOG_USEC=10",
		EnvKeeperPID + "=9", EnvCgroup + "=/old", "LISTEN_FDS=2", "LISTEN_PID=5"}
	o := Offer{KeeperPID: 5, Notify: "/run/k/notify", Cgroup: "/sys/fs/cgroup/svc", OOMScoreAdj: "200"}
	got := o.Env(environ, false)
	want := []string{"PATH=/bin", "WATCHDOG_USEC=10", "NOTIFY_SOCKET=/run/k/notify", EnvKeeperPID + "=5", EnvAcks + "=1",
		EnvOOMScoreAdj + "=200", EnvCgroup + "=/sys/fs/cgroup/svc"}
	if !slices.Equal(got, want) {
		t.Fatalf("Env:\n have %q\n want %q", got, want)
	}
	o = Offer{KeeperPID: 5, Notify: "/run/k/notify", TreesWhy: "BATON_NO_CGROUP=1"}
	got = o.Env(environ, true) // socket activation: LISTEN_ passed on
	want = []string{"PATH=/bin", "WATCHDOG_USEC=10", "LISTEN_FDS=2", "LISTEN_PID=5", "NOTIFY_SOCKET=/run/k/notify",
		EnvKeeperPID + "=5", EnvAcks + "=1", EnvTreesWhy + "=BATON_NO_CGROUP=1"}
	if !slices.Equal(got, want) {
		t.Fatalf("Env, activated:\n have %q\n want %q", got, want)
	}
}

func TestAnnouncementAnswersOnlyBatonAddresses(t *testing.T) {
	if ok, to := Announcement(map[string]string{KeyRegister: "1", KeyAckTo: "/tmp/elsewhere"}); !ok || to != "" {
		t.Fatalf("Announcement: %v %q, want an announcement answered nowhere", ok, to)
	}
	if ok, _ := Announcement(map[string]string{"READY": "1"}); ok {
		t.Fatal("READY=1 taken for an announcement")
	}
}

// TestFromEnvReadsTheOffer: what the keeper's Offer.Env sets, FromEnv
// reads back, and Present follows the keeper's pid alone.
func TestFromEnvReadsTheOffer(t *testing.T) {
	for _, kv := range (Offer{KeeperPID: 7, Notify: "/run/k/notify", Cgroup: "/sys/fs/cgroup/app", OOMScoreAdj: "-100"}).Env(nil, false) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	l := FromEnv()
	if !l.Present() || l.KeeperPID != 7 || l.Cgroup != "/sys/fs/cgroup/app" || !l.acks || l.notify != "/run/k/notify" || l.oomScore != "-100" {
		t.Fatalf("FromEnv %+v", l)
	}
	t.Setenv(EnvKeeperPID, "")
	if FromEnv().Present() {
		t.Fatal("Present with no keeper pid")
	}
}
