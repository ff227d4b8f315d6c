//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// Servers in other languages under baton: examples/python, examples/node
// (run by their interpreters, no build) and examples/activation (go-systemd,
// no baton code). Each is upgraded under load and must not fail a request.

// nodeReadyProbe is the --ready rule examples/node/server.js documents: the
// server names an abstract unix socket after NOTIFY_SOCKET and its pid once
// it serves.
const nodeReadyProbe = `exec:grep -qF " @${NOTIFY_SOCKET#@}/$BATON_WORKER_PID/ready" /proc/net/unix`

func TestPythonExampleUpgradesUnderLoad(t *testing.T) {
	t.Parallel()
	python := interpreter(t, "python3")
	// Past version managers' shims (pyenv): the real binary starts faster
	// and is what /proc/PID/exe shows.
	out, err := exec.Command(python, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatalf("%s: %v", python, err)
	}
	python = resolvedPath(t, strings.TrimSpace(string(out)))
	upgradesUnderLoad(t, langCase{
		prefix:   "python ",
		cmd:      []string{python, exampleFile(t, "python/server.py")},
		exe:      python,
		upgrades: 3,
		slow:     true,
	})
}

func TestNodeExampleUpgradesUnderLoad(t *testing.T) {
	t.Parallel()
	node := resolvedPath(t, interpreter(t, "node"))
	upgradesUnderLoad(t, langCase{
		prefix:   "node ",
		flags:    []string{"--ready", nodeReadyProbe},
		cmd:      []string{node, exampleFile(t, "node/server.js")},
		exe:      node,
		upgrades: 3,
		slow:     true,
	})
}

func TestActivationExampleUpgradesUnderLoad(t *testing.T) {
	t.Parallel()
	// A bare http.Server.Shutdown drops a request read after it began
	// (golang/go#65802); the example drains the careful way, and this test
	// keeps it honest.
	upgradesUnderLoad(t, langCase{
		prefix:   "activation ",
		cmd:      []string{bin("activation")},
		upgrades: 3,
	})
}

type langCase struct {
	prefix   string   // every answer starts with it
	flags    []string // extra baton run flags
	cmd      []string
	exe      string // the workers' /proc/PID/exe when not built by TestMain
	upgrades int
	slow     bool // the server answers /?sleep=MS after MS ms
}

// upgradesUnderLoad runs 2 workers of c.cmd, drives load with 16 clients
// (half of them keeping connections alive) and upgrades c.upgrades times
// one after the other. With c.slow, 1 s requests are in flight across each
// upgrade (see slowStream): all must be answered, and at least one by a
// worker already told to drain.
func upgradesUnderLoad(t *testing.T, c langCase) {
	addr := freeAddr(t)
	args := append([]string{"-l", addr, "-w", "2"}, c.flags...)
	b := startBaton(t, nil, append(append(args, "--"), c.cmd...)...)
	if c.exe != "" {
		// startBaton's cleanup kills only binaries the tests built.
		t.Cleanup(func() { killExe(b.pids(), c.exe) })
	}
	ready := b.waitReady()
	master, gen := ready.num("master_pid"), ready.num("generation")
	if body := mustGet(t, addr, "/"); !strings.HasPrefix(body, c.prefix) {
		t.Fatalf("first answer %q, want %q...", body, c.prefix)
	}

	var answered, foreign atomic.Int64
	load := startLoad(t, loadgen.Config{
		Network: "tcp", Addr: addr, Clients: 16, KeepAlive: 0.5,
		// Stopped below once the upgrades are done; these only bound it.
		Duration: 90 * time.Second, MaxRequests: 1_000_000, Timeout: 10 * time.Second,
		OnResponse: func(body []byte) {
			answered.Add(1)
			if !bytes.HasPrefix(body, []byte(c.prefix)) {
				foreign.Add(1)
			}
		},
	})
	eventually(t, 10*time.Second, "the load to get answers", func() bool { return answered.Load() >= 50 })

	for i := 1; i <= c.upgrades; i++ {
		from := b.log.len()
		var slow *slowStream
		if c.slow {
			slow = startSlowStream(t, addr, b.workerPids(gen))
			defer slow.stop()
		}
		if err := syscall.Kill(master, syscall.SIGUSR2); err != nil {
			t.Fatalf("USR2 to %d: %v", master, err)
		}
		ev, _ := b.log.waitFrom(t, from, "handover_complete",
			func(e logEvent) bool { return e.num("generation") == gen+1 }, 60*time.Second)
		newMaster := ev.num("master_pid")
		var slowRes []<-chan slowResult
		if c.slow {
			slowRes = slow.stop()
		}
		b.log.waitFrom(t, from, "previous_master_exited",
			func(e logEvent) bool { return e.num("master_pid") == newMaster }, 60*time.Second)
		if load.ended() {
			t.Fatalf("load ended before upgrade %d was done: %s", i, load.finish())
		}
		if c.slow {
			// When each worker of the old generation was told to drain.
			drainAt := map[string]time.Time{}
			for _, ev := range b.log.all()[from:] {
				if ev.str("event") == "worker_draining" && ev.num("generation") == gen {
					if at, err := time.Parse(time.RFC3339Nano, ev.str("ts")); err == nil {
						drainAt[strconv.Itoa(ev.num("pid"))] = at
					}
				}
			}
			drained := 0
			for j, ch := range slowRes {
				var r slowResult
				select {
				case r = <-ch:
				case <-time.After(30 * time.Second):
					t.Fatalf("upgrade %d: slow request %d not answered", i, j)
				}
				if r.err != nil || r.status != http.StatusOK || !strings.HasPrefix(r.body, c.prefix) {
					t.Fatalf("upgrade %d: slow request %d: status %d, body %q, err %v", i, j, r.status, r.body, r.err)
				}
				if at, ok := drainAt[field(r.body, "pid")]; ok && r.end.After(at) {
					drained++
				}
			}
			if drained == 0 {
				t.Fatalf("upgrade %d: none of %d slow requests was still running when its worker was told to drain", i, len(slowRes))
			}
			t.Logf("upgrade %d: %d slow requests, %d of them answered by a draining worker", i, len(slowRes), drained)
		}
		// The old master has exited with its workers: a new connection
		// reaches the new generation.
		gen++
		body := mustGet(t, addr, "/")
		if !strings.HasPrefix(body, c.prefix) {
			t.Fatalf("upgrade %d: fresh request answered %q", i, body)
		}
		if g := field(body, "generation"); g != "" && g != strconv.Itoa(gen) {
			t.Fatalf("upgrade %d: fresh request answered by generation %s, want %d", i, g, gen)
		}
		if pid := field(body, "pid"); !containsPid(b.workerPids(gen), pid) {
			t.Fatalf("upgrade %d: fresh request answered by pid %s, not a generation %d worker %v", i, pid, gen, b.workerPids(gen))
		}
		master = newMaster
	}
	res := load.finish()
	if res.Failures() != 0 {
		t.Fatalf("failed requests across %d upgrades: %s\nlog:\n%s", c.upgrades, res, b.log.dump())
	}
	if n := foreign.Load(); n != 0 {
		t.Fatalf("%d answers did not start with %q", n, c.prefix)
	}
	t.Logf("%d upgrades under load: %s", c.upgrades, res)

	// Stop the last master cleanly: its workers drain and exit 0.
	from := b.log.len()
	if err := syscall.Kill(master, syscall.SIGTERM); err != nil {
		t.Fatalf("TERM to %d: %v", master, err)
	}
	b.log.waitFrom(t, from, "master_stopped", func(e logEvent) bool { return e.num("master_pid") == master }, 30*time.Second)
	for _, ev := range b.log.all() {
		if ev.str("event") == "worker_drained" && (ev.num("exit_code") != 0 || ev["killed"] == true || ev.str("signal") != "") {
			t.Errorf("a worker did not drain cleanly: %v", ev)
		}
	}
}

// interpreter finds name on $PATH or skips the test (CI installs both).
func interpreter(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

func resolvedPath(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func exampleFile(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "examples", rel))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// killExe SIGKILLs those of pids that still run exe, so a recycled pid is
// never hit.
func killExe(pids []int, exe string) {
	for _, pid := range pids {
		if p, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && p == exe {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func containsPid(pids []int, pid string) bool {
	for _, p := range pids {
		if strconv.Itoa(p) == pid {
			return true
		}
	}
	return false
}

type slowResult struct {
	status int
	body   string
	err    error
	end    time.Time // when the answer was complete
}

// slowStream keeps 1 s requests in flight across an upgrade: the first is
// held by a worker of the old generation before USR2 is sent, and another
// starts every 100 ms until stop, which the test calls once the handover is
// logged. However long the new generation takes to start, some of them are
// then still running when the old workers are told to drain.
type slowStream struct {
	quit chan struct{}
	done chan []<-chan slowResult
	res  []<-chan slowResult
}

func startSlowStream(t *testing.T, addr string, oldPids []int) *slowStream {
	t.Helper()
	port, first := startSlow(addr)
	if port == 0 {
		t.Fatalf("slow request: %v", (<-first).err)
	}
	// Held by a worker, not waiting in the shared accept queue, where a
	// new worker could take it.
	eventually(t, 10*time.Second, "an old worker to accept the slow request", func() bool {
		return heldBy(addr, port, oldPids) != 0
	})
	s := &slowStream{quit: make(chan struct{}), done: make(chan []<-chan slowResult, 1)}
	go func() {
		all := []<-chan slowResult{first}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.quit:
				s.done <- all
				return
			case <-tick.C:
				_, r := startSlow(addr)
				all = append(all, r)
			}
		}
	}()
	return s
}

// stop ends the stream and returns the outcomes of all its requests; it may
// be called again.
func (s *slowStream) stop() []<-chan slowResult {
	select {
	case <-s.quit:
	default:
		close(s.quit)
		s.res = <-s.done
	}
	return s.res
}

// startSlow sends GET /?sleep=1000 on a new connection and returns the
// connection's local port (0 if it could not connect) and a channel with the
// outcome.
func startSlow(addr string) (int, <-chan slowResult) {
	out := make(chan slowResult, 1)
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		out <- slowResult{err: err, end: time.Now()}
		return 0, out
	}
	go func() {
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		var r slowResult
		if _, r.err = io.WriteString(conn, "GET /?sleep=1000 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"); r.err == nil {
			var resp *http.Response
			if resp, r.err = http.ReadResponse(bufio.NewReader(conn), nil); r.err == nil {
				var body []byte
				body, r.err = io.ReadAll(resp.Body)
				resp.Body.Close()
				r.status, r.body = resp.StatusCode, string(body)
			}
		}
		r.end = time.Now()
		out <- r
	}()
	return conn.LocalAddr().(*net.TCPAddr).Port, out
}

// heldBy returns which of pids holds the server side of the loopback TCP
// connection from clientPort to addr (it has accepted it), or 0.
func heldBy(addr string, clientPort int, pids []int) int {
	_, sport, _ := net.SplitHostPort(addr)
	serverPort, _ := strconv.Atoi(sport)
	inode := serverSideInode(serverPort, clientPort)
	if inode == 0 {
		return 0
	}
	want := "socket:[" + strconv.FormatUint(uint64(inode), 10) + "]"
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if l, _ := os.Readlink(dir + e.Name()); l == want {
				return pid
			}
		}
	}
	return 0
}

// serverSideInode asks the kernel (sock_diag(7), one exact lookup) for the
// inode of the established socket 127.0.0.1:serverPort <-
// 127.0.0.1:clientPort; 0 if there is none (yet). /proc/net/tcp is no
// substitute on a busy machine: read in chunks while tens of thousands of
// TIME_WAIT entries come and go, it skips live sockets.
func serverSideInode(serverPort, clientPort int) uint32 {
	const (
		netlinkSockDiag  = 4  // NETLINK_SOCK_DIAG
		sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
		tcpEstablished   = 1
	)
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, netlinkSockDiag)
	if err != nil {
		return 0
	}
	defer syscall.Close(fd)
	ne := binary.NativeEndian
	// struct nlmsghdr, then struct inet_diag_req_v2 with its inet_diag_sockid.
	req := make([]byte, 16+56)
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], syscall.NLM_F_REQUEST)
	r := req[16:]
	r[0], r[1] = syscall.AF_INET, syscall.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpEstablished)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], uint16(serverPort)) // the socket's local side
	binary.BigEndian.PutUint16(id[2:], uint16(clientPort))
	copy(id[4:], net.IPv4(127, 0, 0, 1).To4())
	copy(id[20:], net.IPv4(127, 0, 0, 1).To4())
	ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], ^uint32(0))
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return 0
	}
	buf := make([]byte, 4096)
	n, _, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil || n < 16+72 || ne.Uint16(buf[4:]) != sockDiagByFamily {
		return 0 // NLMSG_ERROR: ENOENT while the connection is not accepted
	}
	// struct inet_diag_msg. The lookup falls back to the listening socket,
	// which every worker holds: only the established one will do.
	m := buf[16:]
	if m[1] != tcpEstablished || int(binary.BigEndian.Uint16(m[6:])) != clientPort {
		return 0
	}
	return ne.Uint32(m[68:])
}
