//go:build linux

package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/spawn"
	"github.com/baton-sh/baton/supervisor/sockets"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// This file holds the checks of a candidate generation (--health-check,
// --smoke-test) and the sockets of blue-green and canary. Every check
// reaches the candidate only: it connects from sockets.ProbeSource (IPv4)
// or with sockets.ProbeMark (IPv6), which the steering program sends to
// the candidate's socket while users go to the serving one.

// openGroup binds this generation's own sockets (bluegreen.go) and steers
// them with the eBPF program where baton may load one (sockets/ebpf.go),
// else with classic BPF. A master with no previous one attaches the
// steering program at once: a kernel that cannot steer is refused at start.
func (m *master) openGroup(reg sockets.Registry, act []sockets.Activated) (*sockets.Set, error) {
	st := m.cfg.Rollout.Strategy
	if len(act) > 0 {
		for _, a := range act {
			a.File.Close()
		}
		return nil, fmt.Errorf("--strategy %s: sockets from systemd socket activation are shared by every generation; blue-green and canary need baton to bind each generation's own (drop the .socket unit)", st)
	}
	lns, err := sockets.OpenGroup(m.cfg.Listen, !m.origin.parentAlive)
	if err != nil {
		return nil, fmt.Errorf("--strategy %s: %w", st, err)
	}
	steering, unavailable := "ebpf", ""
	if err := lns.UseEBPF(reg, m.gen); err != nil {
		steering, unavailable = "classic", err.Error()
		m.log.Info("steering with classic BPF: any socket of the same user that joins the group can receive connections; the membership check reports it",
			zap.String("ebpf_unavailable", err.Error()))
	}
	if !m.origin.parentAlive {
		if err := lns.Steer(0); err != nil {
			lns.Close()
			return nil, fmt.Errorf("--strategy %s needs a kernel that steers SO_REUSEPORT groups with BPF (Linux >= 4.6, plain TCP): %w", st, osutilCause(err))
		}
		mig, err := sockets.MigrateReq()
		m.log.Info("blue-green sockets ready", logevent.RolloutSocketsReady, zap.String("strategy", string(st)), zap.String("steering", steering), zap.Bool("tcp_migrate_req", mig), zap.String("migration", lns.Migration()),
			zap.String("probe_source", sockets.ProbeSource.String()), zap.Bool("migrate_req_known", err == nil), zap.String("ebpf_unavailable", unavailable))
	}
	return lns, nil
}

func osutilCause(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("%w (%s)", err, errnoHint(errno))
	}
	return err
}

func errnoHint(e syscall.Errno) string {
	switch e {
	case syscall.ENOPROTOOPT:
		return "this kernel has no SO_ATTACH_REUSEPORT_CBPF"
	case syscall.EOPNOTSUPP:
		return "the socket is not plain TCP (MPTCP refuses it)"
	}
	return e.Error()
}

// probeTarget is the address baton's probes dial: the first --listen
// address, with a wildcard host made loopback.
func (m *master) probeTarget() string { return probeTargetOf(m.cfg.Listen[0]) }

func probeTargetOf(spec sockets.Spec) string {
	host, port, _ := net.SplitHostPort(spec.Addr)
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		if spec.Network == "tcp6" {
			host = "::1"
		} else {
			host = "127.0.0.1"
		}
	}
	return net.JoinHostPort(host, port)
}

// probesNeedMark reports whether probes of spec's address go over IPv6,
// where they are told from users by SO_MARK alone (there is no reserved
// loopback source address to bind them to, as there is in IPv4).
func probesNeedMark(spec sockets.Spec) bool {
	host, _, err := net.SplitHostPort(probeTargetOf(spec))
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.To4() == nil
}

// canMark reports whether this process may set SO_MARK: it needs
// CAP_NET_ADMIN in its effective set.
func canMark() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) != 0
}

// probeDialer connects from the probe source (IPv4) or with the probe mark
// (IPv6).
func probeDialer(timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	d.SetMultipathTCP(false)
	d.Control = func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if network == "tcp6" {
				// No reserved loopback source in IPv6: mark the probe
				// (SO_MARK needs CAP_NET_ADMIN).
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, sockets.ProbeMark)
				return
			}
			serr = unix.Bind(int(fd), &unix.SockaddrInet4{Addr: sockets.ProbeSource.As4()})
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("probe socket: %w", serr)
		}
		return nil
	}
	return d
}

const probeTimeout = 2 * time.Second

// probe runs one health check against the candidate, through the seam.
func (m *master) probe(ctx context.Context) (string, error) {
	return m.sys.healthProbe(ctx, m.probeTarget(), m.cfg.Rollout.HealthCheck)
}

// healthProbe runs one health check hc against target from the probe
// source (or with the probe mark): a connection for tcp, a GET answered
// 2xx for http. It returns the answer ("200", "connected") or why it
// failed ("GET /health answered 500", a connection error), and blocks for
// at most probeTimeout, or until ctx ends.
func healthProbe(ctx context.Context, target string, hc HealthCheck) (string, error) {
	d := probeDialer(probeTimeout)
	if hc.Kind == "tcp" {
		c, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			return "", err
		}
		return "connected", c.Close()
	}
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: probeTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+hc.Path, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "baton-health-check")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", fmt.Errorf("GET %s answered %d", hc.Path, resp.StatusCode)
	}
	return strconv.Itoa(resp.StatusCode), nil
}

// probeOnce runs one probe and calls done with its answer or failure,
// unless stopped.
func (m *master) probeOnce(done func(string, error)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		answer, err := m.probe(ctx)
		if ctx.Err() == nil {
			done(answer, err)
		}
		cancel()
	}()
	return cancel
}

// smokeRun is one run of --smoke-test, as the seam gets it.
type smokeRun struct {
	command string
	dir     string
	env     []string // the new generation's environment, with BATON_GENERATION
	cred    *syscall.Credential
	target  string // the candidate's address: the proxy relays to it
	timeout time.Duration
	log     *zap.Logger // for its output lines
}

// runSmokeTest runs --smoke-test once through the seam, as the new
// generation's workers will run (its user and group, its --env-file), and
// calls done with its outcome and last output lines (from another
// goroutine). stop abandons it; done is then not called.
func (m *master) runSmokeTest(gen int, done func(error, []string)) (stop func()) {
	r := m.cfg.Rollout
	env := m.nextEnv()
	run := smokeRun{
		command: r.SmokeTest, dir: m.cfg.Chdir, cred: m.cfg.Credential,
		env:    append(env[:len(env):len(env)], "BATON_GENERATION="+strconv.Itoa(gen)),
		target: m.probeTarget(), timeout: r.SmokeTimeout, log: m.log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		tail, err := m.sys.smokeTest(ctx, run)
		if ctx.Err() != nil {
			return // stopped
		}
		cancel()
		if err != nil {
			done(fmt.Errorf("%q: %w", r.SmokeTest, err), tail)
			return
		}
		done(nil, nil)
	}()
	return cancel
}

// smokeTest runs s by /bin/sh -c in its directory, with
// BATON_CANDIDATE=127.0.0.1:PORT, a proxy that reaches only the candidate,
// and returns its last output lines and why it failed (nil: exit 0).
// Running past s.timeout, or ctx ending, kills its process group. It
// blocks until then.
func smokeTest(ctx context.Context, s smokeRun) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	px, err := startCandidateProxy(s.target)
	if err != nil {
		return nil, err
	}
	defer px.close()
	cmd := exec.Command("/bin/sh", "-c", s.command)
	cmd.Dir = s.dir
	cmd.Env = append(s.env[:len(s.env):len(s.env)],
		"BATON_CANDIDATE="+px.addr,
		"BATON_CANDIDATE_TARGET="+s.target,
		"BATON_CANDIDATE_SOURCE="+sockets.ProbeSource.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: s.cred}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := spawn.StartUnblocked(cmd); err != nil {
		pw.Close()
		pr.Close()
		return nil, fmt.Errorf("start: %w", err)
	}
	pw.Close()
	var tail stderrTail
	read := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			tail.add(sc.Text())
			s.log.Info("smoke test output", logevent.SmokeTestOutput, zap.String("line", sc.Text()))
		}
		pr.Close()
		close(read)
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		werr = <-waited
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			<-read
			return nil, ctx.Err() // stopped
		}
		werr = fmt.Errorf("still running after %s (--smoke-timeout)", s.timeout)
	}
	// Its own children may hold the pipe: their output is not waited for.
	select {
	case <-read:
	case <-time.After(100 * time.Millisecond):
	}
	if werr != nil {
		return tail.snapshot(), werr
	}
	return nil, nil
}

// candidateProxy accepts on 127.0.0.1:PORT and relays every connection to
// the candidate generation, connecting from the probe source: an address a
// smoke test can use with any client.
type candidateProxy struct {
	ln    net.Listener
	addr  string
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startCandidateProxy(target string) (*candidateProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("candidate proxy: %w", err)
	}
	p := &candidateProxy{ln: ln, addr: ln.Addr().String(), conns: make(map[net.Conn]bool)}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.relay(c, target) }()
		}
	}()
	return p, nil
}

func (p *candidateProxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *candidateProxy) relay(c net.Conn, target string) {
	defer c.Close()
	up, err := probeDialer(probeTimeout).Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	p.track(c, true)
	p.track(up, true)
	defer p.track(c, false)
	defer p.track(up, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

func (p *candidateProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// waitQueueEmpty polls the accept queues of files every 2 ms until they
// have been empty three times in a row (a connection in the handshake on
// loopback completes well within that), or bound has passed. It returns
// how many connections were still queued at the end. Blocks.
func waitQueueEmpty(files []*os.File, bound time.Duration) int {
	deadline := time.Now().Add(bound)
	zeros, n := 0, 0
	for zeros < 3 {
		var err error
		if n, err = sockets.QueueLen(files); err != nil {
			return 0
		}
		if n == 0 {
			zeros++
		} else {
			zeros = 0
		}
		if time.Now().After(deadline) {
			return n
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0
}
