//go:build linux

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// Unmodified servers from Debian 12's packages (gunicorn, puma with the
// ruby-sd-notify gem, uvicorn) and examples/node, each run under baton the
// way the README's "Wrap your server" says, deployed Capistrano-style
// (releases/rN and a `current` symlink, --chdir current) and upgraded 5
// times under load: no request may fail, and after each upgrade the new
// release answers. .ci/run installs the packages; without one, its test
// skips and says which package is missing.

// debianUpgrades is how many releases each server goes through.
const debianUpgrades = 5

// acceptingProbe is the --ready rule for servers that neither speak sd_notify
// nor can be told to leave a mark (uvicorn): the worker counts as ready once
// one of its epoll instances watches the listening socket at fd 3, i.e. its
// event loop accepts connections on it. An epoll's fdinfo lists each watched
// fd as "tfd: N"; the probe compares what that fd and fd 3 point to. Unlike
// a request to the shared port (any worker, old or new, may answer) it is
// about this very worker, and unlike delay: it does not guess.
const acceptingProbe = `exec:p=/proc/$BATON_WORKER_PID; s=$(readlink $p/fd/3) && for t in $(awk '$1=="tfd:"{print $2}' $p/fdinfo/*); do [ "$(readlink $p/fd/$t)" = "$s" ] && exit 0; done; exit 1`

// serverCase is one real server under baton.
type serverCase struct {
	name  string   // every answer starts with name+" "
	flags []string // baton run flags besides -l, -w and --chdir
	// cmd is the worker command for listen address addr, run in the
	// release directory.
	cmd func(addr string) []string
	// files are the release's files; RELEASE in them is replaced by the
	// release's name, so the answer tells which release serves.
	files map[string]string
	exe   string // the workers' /proc/PID/exe, for cleanup
	// drainLine is what a worker (or its children) writes once its
	// graceful stop has begun.
	drainLine string
	// mayDropUnread: the server is known to close, when its drain begins,
	// connections it has accepted but not read a request from yet, so
	// their clients get no answer (a flaw of the server's drain that no
	// supervisor can undo: the connection is already in its hands). Such
	// a server is checked for it; if it does, the load may see as many
	// closed connections as workers were drained, and the test says so.
	mayDropUnread bool
	// mayOutstayDrain: the server's graceful stop is known to wait, now
	// and then, on a connection it will not close; baton's --drain-timeout
	// SIGKILL then ends it, as designed. Logged, not failed.
	mayOutstayDrain bool
}

// wsgiApp answers "gunicorn release=… generation=… pid=…".
const wsgiApp = `import os

RELEASE = "RELEASE"


def app(environ, start_response):
    body = ("gunicorn release=%s generation=%s pid=%d\n" % (RELEASE, os.environ.get("BATON_GENERATION"), os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// asgiApp answers "uvicorn release=… generation=… pid=…".
const asgiApp = `import os

RELEASE = "RELEASE"


async def app(scope, receive, send):
    body = ("uvicorn release=%s generation=%s pid=%d\n" % (RELEASE, os.environ.get("BATON_GENERATION"), os.getpid())).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
`

// rackApp answers "puma release=… generation=… pid=…".
const rackApp = `release = "RELEASE"
run lambda { |env|
  [200, { "content-type" => "text/plain" }, ["puma release=#{release} generation=#{ENV["BATON_GENERATION"]} pid=#{Process.pid}\n"]]
}
`

// pumaConfig makes puma read each request in a thread of its pool instead
// of its reactor. With the reactor, a graceful stop closes every connection
// whose request has not arrived yet, including ones puma has just accepted
// from the shared socket: their clients get a closed connection and no
// answer. In a pool thread the request is read and answered before the
// thread pool lets puma exit.
const pumaConfig = "queue_requests false\n"

func TestGunicornUpgradesUnderLoad(t *testing.T) {
	t.Parallel()
	gunicorn := debianTool(t, "gunicorn", "gunicorn")
	releaseUpgradesUnderLoad(t, serverCase{
		name: "gunicorn",
		// gunicorn takes LISTEN_FDS sockets as they are (no --bind) and
		// sends READY=1 itself; TERM is its graceful stop.
		cmd: func(string) []string {
			return []string{gunicorn, "--workers", "2", "--worker-class", "sync", "app:app"}
		},
		files:     map[string]string{"app.py": wsgiApp},
		exe:       python3Exe(t),
		drainLine: "Handling signal: term",
	})
}

func TestPumaUpgradesUnderLoad(t *testing.T) {
	t.Parallel()
	puma := debianTool(t, "puma", "puma")
	ruby := rubyWithSdNotify(t)
	b := releaseUpgradesUnderLoad(t, serverCase{
		name: "puma",
		// The bind must name the inherited socket exactly as it is bound,
		// or puma closes it and binds its own.
		cmd: func(addr string) []string {
			return []string{puma, "--config", "puma.rb", "--bind", "tcp://" + addr, "config.ru"}
		},
		files:     map[string]string{"config.ru": rackApp, "puma.rb": pumaConfig},
		exe:       ruby,
		drainLine: "Gracefully stopping",
	})
	// Issue 16: puma, ready through the sd_notify gem, which cannot reach
	// an abstract NOTIFY_SOCKET. The generations above became ready on
	// puma's own READY=1 (--ready notify), so the gem reached baton's
	// socket; puma must also have served the socket baton handed it.
	var activated, closed, notifyErr int
	for _, ev := range b.log.all() {
		line := ev.str("line")
		switch {
		case ev.str("event") != "worker_output":
		case strings.Contains(line, "* Activated tcp://"):
			activated++
		case strings.Contains(line, "Closing unused activated socket"):
			closed++
		case strings.Contains(line, "NotifyError"):
			notifyErr++
		}
	}
	if want := 2 * (debianUpgrades + 1); activated != want || closed != 0 || notifyErr != 0 {
		t.Fatalf("puma workers: %d adopted baton's socket (want %d), %d closed it, %d sd_notify errors", activated, want, closed, notifyErr)
	}
}

// The sd_notify gem puma uses cannot send to an abstract address (it takes
// "@…" for a file name): the reason baton's NOTIFY_SOCKET is a path.
// TestPumaUpgradesUnderLoad shows puma gets ready with baton's; this shows
// the gem still fails on the form baton used to hand out, so that test keeps
// guarding issue 16's case.
func TestSdNotifyGemRefusesAbstractAddress(t *testing.T) {
	t.Parallel()
	ruby := rubyWithSdNotify(t)
	name := fmt.Sprintf("@baton-test/%d", os.Getpid())
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	send := func(addr string) (string, error) {
		cmd := exec.Command(ruby, "-rsd_notify", "-e", "SdNotify.ready")
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+addr)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := send(name)
	if err == nil || !strings.Contains(out, "NotifyError") {
		t.Fatalf("sd_notify gem on abstract %s: err %v, output %q; want a NotifyError (if the gem now reaches abstract sockets, TestPumaUpgradesUnderLoad no longer guards issue 16)", name, err, out)
	}
	// The same gem reaches a socket at a path.
	path := filepath.Join(t.TempDir(), "notify")
	pl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	if out, err := send(path); err != nil {
		t.Fatalf("sd_notify gem on %s: %v: %s", path, err, out)
	}
	buf := make([]byte, 64)
	pl.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := pl.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("read %q, %v; want READY=1", buf[:n], err)
	}
}

func TestUvicornUpgradesUnderLoad(t *testing.T) {
	t.Parallel()
	uvicorn := debianTool(t, "uvicorn", "uvicorn")
	releaseUpgradesUnderLoad(t, serverCase{
		name: "uvicorn",
		// A short drain timeout bounds the test when uvicorn's drain
		// hangs (see mayOutstayDrain).
		flags: []string{"--ready", acceptingProbe, "--drain-timeout", "10s"},
		cmd: func(string) []string {
			return []string{uvicorn, "--fd", "3", "--lifespan", "off", "--no-access-log", "app:app"}
		},
		files:     map[string]string{"app.py": asgiApp},
		exe:       python3Exe(t),
		drainLine: "Shutting down",
		// Kludex/uvicorn#2757: its shutdown closes every connection
		// without a request in progress, also one it has just accepted.
		mayDropUnread: true,
		// Under load its shutdown sometimes waits past 30 s on a
		// connection (seen in 2 of about 10 full runs, never alone).
		mayOutstayDrain: true,
	})
}

func TestNodeExampleReleasesUnderLoad(t *testing.T) {
	t.Parallel()
	node := resolvedPath(t, interpreter(t, "node"))
	src, err := os.ReadFile(exampleFile(t, "node/server.js"))
	if err != nil {
		t.Fatal(err)
	}
	releaseUpgradesUnderLoad(t, serverCase{
		name:  "node",
		flags: []string{"--ready", nodeReadyProbe},
		cmd:   func(string) []string { return []string{node, "server.js"} },
		// The example does not name its release; the answering process's
		// working directory does.
		files:     map[string]string{"server.js": string(src)},
		exe:       node,
		drainLine: "SIGTERM: draining",
	})
}

// releaseUpgradesUnderLoad deploys c into releases/r0 … r5 under a `current`
// symlink, runs 2 workers of it with --chdir current, drives bounded load
// and upgrades debianUpgrades times, switching `current` to the next release
// before each. It fails on any failed request, on a fresh request after an
// upgrade that the new release does not answer, and on a worker killed at
// stop instead of draining. It returns the baton for further checks.
func releaseUpgradesUnderLoad(t *testing.T, c serverCase) *baton {
	root := t.TempDir()
	releases := make([]string, debianUpgrades+1)
	for i := range releases {
		dir := filepath.Join(root, "releases", "r"+strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, text := range c.files {
			text = strings.ReplaceAll(text, "RELEASE", "r"+strconv.Itoa(i))
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		releases[i] = resolvedPath(t, dir)
	}
	current := filepath.Join(root, "current")
	deploy := func(i int) {
		t.Helper()
		// As a deploy does it: a new symlink renamed over the old one.
		tmp := current + ".tmp"
		if err := os.Symlink(releases[i], tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, current); err != nil {
			t.Fatal(err)
		}
	}
	deploy(0)

	addr := freeAddr(t)
	args := append([]string{"-l", addr, "-w", "2", "--chdir", current}, c.flags...)
	b := startBaton(t, nil, append(append(args, "--"), c.cmd(addr)...)...)
	t.Cleanup(func() { killExe(b.pids(), c.exe) })
	ready := b.waitReady()
	master, gen := ready.num("master_pid"), ready.num("generation")
	served := func(i int) {
		t.Helper()
		// A few fresh connections: each may reach another worker.
		for n := 0; n < 3; n++ {
			body := mustGet(t, addr, "/")
			if !strings.HasPrefix(body, c.name+" ") {
				t.Fatalf("release r%d: answer %q, want %q…", i, body, c.name)
			}
			if r := field(body, "release"); r != "" && r != "r"+strconv.Itoa(i) {
				t.Fatalf("release r%d deployed, %s answered: %q", i, r, body)
			}
			if g := field(body, "generation"); g != strconv.Itoa(gen) {
				t.Fatalf("release r%d: answered by generation %s, want %d: %q", i, g, gen, body)
			}
			cwd, err := os.Readlink("/proc/" + field(body, "pid") + "/cwd")
			if err != nil || cwd != releases[i] {
				t.Fatalf("release r%d: the answering process runs in %q (%v), want %s", i, cwd, err, releases[i])
			}
		}
	}
	served(0)

	// Answers by generation; the answer text is the only source, as a
	// client would see it.
	var mu sync.Mutex
	byGen := map[string]int{}
	var foreign atomic.Int64
	load := startLoad(t, loadgen.Config{
		Network: "tcp", Addr: addr, Clients: 4, KeepAlive: 0.5,
		// Stopped below once the upgrades are done; these only bound it.
		Duration: 90 * time.Second, MaxRequests: 1_000_000, Timeout: 10 * time.Second,
		OnResponse: func(body []byte) {
			if !bytes.HasPrefix(body, []byte(c.name+" ")) {
				foreign.Add(1)
				return
			}
			g := field(string(body), "generation")
			mu.Lock()
			byGen[g]++
			mu.Unlock()
		},
	})
	answers := func(g int) int { mu.Lock(); defer mu.Unlock(); return byGen[strconv.Itoa(g)] }
	eventually(t, 10*time.Second, "the load to get answers", func() bool { return answers(gen) >= 20 })

	dropsUnread := false
	for i := 1; i <= debianUpgrades; i++ {
		deploy(i)
		var unread *unreadConn
		if i == 1 {
			unread = startUnreadConn(t, addr, b.workerPids(gen))
		}
		from := b.log.len()
		if err := syscall.Kill(master, syscall.SIGUSR2); err != nil {
			t.Fatalf("USR2 to %d: %v", master, err)
		}
		if unread != nil {
			// Once the worker holding it has begun its drain, the request
			// is sent: a drain that finishes what it accepted answers it.
			b.log.waitFrom(t, from, "worker_output", func(e logEvent) bool {
				return e.num("pid") == unread.worker && strings.Contains(e.str("line"), c.drainLine)
			}, 60*time.Second)
			body, err := unread.request()
			switch {
			case err == nil && strings.HasPrefix(body, c.name+" "):
			case c.mayDropUnread:
				dropsUnread = true
				t.Logf("%s closed a connection it had accepted, unread, when its drain began (%v): the load may see that too", c.name, err)
			default:
				t.Fatalf("a connection accepted before the drain began, request sent after: answer %q, %v", body, err)
			}
		}
		ev, _ := b.log.waitFrom(t, from, "handover_complete",
			func(e logEvent) bool { return e.num("generation") == gen+1 }, 60*time.Second)
		newMaster := ev.num("master_pid")
		exited, _ := b.log.waitFrom(t, from, "previous_master_exited",
			func(e logEvent) bool { return e.num("master_pid") == newMaster }, 60*time.Second)
		if load.ended() {
			t.Fatalf("load ended before upgrade %d was done: %s", i, load.finish())
		}
		t.Logf("upgrade %d: new generation ready %.0f ms after USR2, old one gone %s later", i, ev["total"], eventGap(ev, exited))
		// The old master has exited with its workers: whatever answers
		// now is the new release.
		gen++
		served(i)
		// And the load reaches it too, not just the probe requests.
		eventually(t, 10*time.Second, fmt.Sprintf("load answered by generation %d", gen), func() bool { return answers(gen) > 0 })
		master = newMaster
	}
	res := load.finish()
	// A dropped connection reads as EOF, or as a reset when the request
	// was already in the kernel's buffer as the server closed it.
	if dropped := res.Failed[loadgen.EOF] + res.Failed[loadgen.Reset]; dropsUnread && res.Failures() == dropped && dropped <= 2*debianUpgrades {
		if n := res.Failures(); n > 0 {
			t.Logf("%s: %d requests on connections it dropped unread at drain (its own flaw, shown above)", c.name, n)
		}
	} else if res.Failures() != 0 {
		t.Fatalf("failed requests across %d upgrades: %s\nlog:\n%s", debianUpgrades, res, b.log.dump())
	}
	if n := foreign.Load(); n != 0 {
		t.Fatalf("%d answers did not start with %q", n, c.name)
	}
	mu.Lock()
	t.Logf("%s: %d upgrades under load: %s; answers by generation %v", c.name, debianUpgrades, res, byGen)
	mu.Unlock()

	// Stop the last master: its workers drain, none is killed.
	from := b.log.len()
	if err := syscall.Kill(master, syscall.SIGTERM); err != nil {
		t.Fatalf("TERM to %d: %v", master, err)
	}
	b.log.waitFrom(t, from, "master_stopped", func(e logEvent) bool { return e.num("master_pid") == master }, 40*time.Second)
	for _, ev := range b.log.all() {
		if ev.str("event") == "worker_drained" && ev["killed"] == true {
			if c.mayOutstayDrain {
				t.Logf("%s: a worker outstayed --drain-timeout and was killed (a known flaw of its drain): %v", c.name, ev)
				continue
			}
			t.Errorf("a worker did not drain in time: %v", ev)
		}
	}
	return b
}

// debianTool finds exe on $PATH or skips the test, naming the Debian package
// that has it.
func debianTool(t *testing.T, exe, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(exe)
	if err != nil {
		t.Skipf("%s not installed: needs Debian package %s (.ci/run installs it)", exe, pkg)
	}
	return p
}

// python3Exe is the real python3 binary, as /proc/PID/exe shows it.
func python3Exe(t *testing.T) string {
	t.Helper()
	return resolvedPath(t, debianTool(t, "python3", "python3"))
}

// rubyWithSdNotify returns the real ruby binary once it can load the
// sd_notify gem, or skips.
func rubyWithSdNotify(t *testing.T) string {
	t.Helper()
	ruby := resolvedPath(t, debianTool(t, "ruby", "ruby"))
	if out, err := exec.Command(ruby, "-rsd_notify", "-e", "").CombinedOutput(); err != nil {
		t.Skipf("ruby cannot load the sd_notify gem (%v: %s): needs Debian package ruby-sd-notify (.ci/run installs it)", err, bytes.TrimSpace(out))
	}
	return ruby
}

// eventGap is the time from event a to event b by their timestamps.
func eventGap(a, b logEvent) time.Duration {
	ta, errA := time.Parse(time.RFC3339Nano, a.str("ts"))
	tb, errB := time.Parse(time.RFC3339Nano, b.str("ts"))
	if errA != nil || errB != nil {
		return -1
	}
	return tb.Sub(ta).Round(time.Millisecond)
}

// unreadConn is a connection a worker has accepted and holds, with no
// request sent on it yet.
type unreadConn struct {
	conn   net.Conn
	worker int // the baton worker whose process (or child) holds it
}

// startUnreadConn connects to addr and waits until one of workers, or a
// child of one (gunicorn's arbiter hands connections to its own workers),
// has accepted the connection.
func startUnreadConn(t *testing.T, addr string, workers []int) *unreadConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	u := &unreadConn{conn: conn}
	port := conn.LocalAddr().(*net.TCPAddr).Port
	eventually(t, 10*time.Second, "a worker to accept the connection", func() bool {
		for _, w := range workers {
			if heldBy(addr, port, append([]int{w}, childPids(w)...)) != 0 {
				u.worker = w
				return true
			}
		}
		return false
	})
	return u
}

// request sends GET / on the connection and returns the answer's body.
func (u *unreadConn) request() (string, error) {
	defer u.conn.Close()
	u.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(u.conn, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(u.conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(body), err
}

// childPids lists the children of pid (all its threads').
func childPids(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(s); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}
