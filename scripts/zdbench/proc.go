//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/internal/harness"
	"github.com/baton-sh/baton/internal/loadgen"
)

// Events of baton's JSON log that the benchmark waits for: the stable
// names of the "event" field (README, Log events), not the messages.
const (
	evReady        = "generation_ready"
	evBootFailed   = "generation_failed"
	evHandover     = "handover_complete"
	evHandedOver   = "handed_over"
	evUpgradeFail  = "upgrade_failed"
	evRefused      = "upgrade_refused"
	evParentExited = "previous_master_exited"
	evSwitched     = "rollout_switched" // blue-green
	evDrained      = "worker_drained"
	evKeeperAtRest = "keeper_at_rest" // master_pid: the master whose start or exit it follows
)

// atRestTimeout bounds the wait for the keeper's keeper_at_rest after the
// first generation serves or a master exits: it follows at once (one
// collection), so only a baton older than the event lets it pass, and
// its keeper is then sampled without waiting (restUnsaid).
const atRestTimeout = 5 * time.Second

// batonProc is one "baton run" and every master that succeeds it.
type batonProc struct {
	dir     string // binaries directory: only processes running from it are ours
	addr    string
	pidFile string
	workers int
	log     *harness.Tail
	reaped  chan struct{} // the keeper (our child) has been waited for
	keeper  int           // the process started: baton's keeper, in the pid file
	master  int           // serving master
	gen     int           // its generation
	stopped bool
	// restUnsaid: this baton's keeper does not say when it is at rest (an
	// older binary, -baseline): it is sampled without waiting for that.
	restUnsaid bool
}

// handover is what one SIGUSR2 produced.
type handover struct {
	oldPID, newPID int
	oldGen, newGen int
	sent           time.Time // SIGUSR2 sent
	logged         time.Time // handover log line read
	parentGone     time.Time // new master logged its predecessor's exit
	ok             bool
	failure        string
	totalMS        float64            // from the log: USR2 received -> new generation serving
	switchMS       float64            // blue-green, from the log: USR2 received -> users switched
	startingMS     float64            // from the log: first worker spawned -> all ready
	batonMS        float64            // from the log: total - starting
	steps          map[string]float64 // from the log: ms each step of the new master's start took (steps.go)
	stepsCPU       map[string]float64 // and the new master's CPU ms in each
	killedWorkers  int                // old workers killed at the drain timeout
	fds            int                // new master's open fds once alone
	fdKinds        map[string]int
	rssMB          float64 // and its RSS
	mem            memInfo // and its smaps_rollup
	keeperMem      memInfo // the keeper's, at the same moment, once it is at rest too
	pidFileOK      bool
}

var pidFileSeq int

// startBaton starts "baton run" with workers workers of hello on a fresh
// loopback port and waits until its first generation serves.
func (b *bench) startBaton(ctx context.Context, workers int, env []string, args ...string) (*batonProc, error) {
	addr, err := harness.FreeAddr()
	if err != nil {
		return nil, err
	}
	pidFileSeq++
	p := &batonProc{
		dir:     b.bin.dir,
		addr:    addr,
		pidFile: filepath.Join(b.bin.dir, fmt.Sprintf("baton-%d.pid", pidFileSeq)),
		workers: workers,
		reaped:  make(chan struct{}),
	}
	cmd := exec.Command(b.bin.baton, "run", "-l", addr, "-w", strconv.Itoa(workers),
		"--pid-file", p.pidFile, "--log-format", "json",
		"--ready-timeout", readyTimeout.String(), "--drain-timeout", drainTimeout.String())
	cmd.Args = append(append(cmd.Args, args...), "--", b.bin.hello)
	cmd.Env = append(childEnv(), env...)
	// In its own session or process group (serverAttr, harness.Start): a
	// Ctrl-C on the terminal reaches only zdbench, which then stops baton
	// gracefully instead of leaving half of it.
	cmd.SysProcAttr = b.serverAttr()
	if p.log, err = harness.Start(cmd); err != nil {
		return nil, err
	}
	p.master, p.keeper = cmd.Process.Pid, cmd.Process.Pid
	go func() { cmd.Wait(); close(p.reaped) }()
	b.track(p)

	ev, _, err := p.log.Wait(ctx, 0, readyTimeout+30*time.Second,
		fmt.Sprintf("baton with %d workers to serve", workers),
		func(e harness.Event) bool { return e.Name() == evReady || e.Name() == evBootFailed })
	if err != nil {
		return p, err
	}
	if ev.Name() == evBootFailed {
		return p, fmt.Errorf("baton with %d workers failed to start: %s", workers, ev.Str("reason"))
	}
	p.master, p.gen = ev.Int("master_pid"), ev.Int("generation")
	// The master gave its start-up's memory back before that line; the
	// keeper does when the master's READY=1 reaches it.
	if _, _, err := p.log.Wait(ctx, 0, atRestTimeout, "the keeper at rest after the first generation", p.atRestAfter(p.master)); err != nil {
		if ctx.Err() != nil {
			return p, err
		}
		p.restUnsaid = true
		b.note("the keeper did not say it was at rest within %s (keeper_at_rest; an older baton?): its memory is sampled without waiting for that", atRestTimeout)
	}
	return p, nil
}

// atRestAfter matches the keeper's keeper_at_rest that follows master's
// first generation's start or master's exit: from that line on, the
// keeper's memory is its memory at rest.
func (p *batonProc) atRestAfter(master int) func(harness.Event) bool {
	return func(e harness.Event) bool { return e.Name() == evKeeperAtRest && e.Int("master_pid") == master }
}

// upgrade sends SIGUSR2 to the serving master and waits until the new
// generation serves and the old master has exited: the next upgrade would be
// refused before that, and only then is the new master's fd count and RSS
// that of a master alone.
func (p *batonProc) upgrade(ctx context.Context) (handover, error) {
	h := handover{oldPID: p.master, oldGen: p.gen, newGen: p.gen + 1}
	if !harness.Ours(p.dir, p.master) {
		return h, fmt.Errorf("serving master %d is gone%s", p.master, p.log.Problem())
	}
	from := p.log.Len()
	if err := syscall.Kill(p.master, syscall.SIGUSR2); err != nil {
		return h, fmt.Errorf("SIGUSR2 to master %d: %w", p.master, err)
	}
	h.sent = time.Now()
	ev, idx, err := p.log.Wait(ctx, from, readyTimeout+30*time.Second,
		fmt.Sprintf("handover to generation %d", h.newGen), func(e harness.Event) bool {
			n := e.Name()
			if n == evHandover {
				return e.Int("generation") == h.newGen
			}
			return e.Int("master_pid") == h.oldPID && (n == evUpgradeFail || n == evRefused)
		})
	if err != nil {
		return h, err
	}
	if ev.Name() != evHandover {
		h.failure = ev.Str("msg")
		if r := ev.Str("reason"); r != "" {
			h.failure += ": " + r
		}
		return h, nil
	}
	h.ok = true
	h.logged = p.log.ReadAt(idx)
	h.newPID = ev.Int("master_pid")
	h.totalMS, h.startingMS, h.batonMS = ev.Float("total"), ev.Float("workers_starting"), ev.Float("baton")
	h.steps, h.stepsCPU = stepsOf(ev, "steps"), stepsOf(ev, "steps_cpu")
	for _, e := range p.log.Slice(from, idx) {
		if e.Name() == evSwitched && e.Int("master_pid") == h.oldPID {
			h.switchMS = e.Float("since_upgrade")
		}
	}
	p.master, p.gen = h.newPID, h.newGen
	// The pid file names the keeper for the service's whole life.
	h.pidFileOK = waitPIDFile(ctx, p.pidFile, p.keeper, 5*time.Second)

	_, gidx, err := p.log.Wait(ctx, idx, drainTimeout+30*time.Second,
		fmt.Sprintf("master %d (generation %d) to exit after handover", h.oldPID, h.oldGen),
		func(e harness.Event) bool { return e.Name() == evParentExited && e.Int("master_pid") == h.newPID })
	if err != nil {
		return h, err
	}
	h.parentGone = p.log.ReadAt(gidx)
	for _, e := range p.log.Slice(from, gidx) {
		if e.Name() == evDrained && e.Int("master_pid") == h.oldPID && e.Bool("killed") {
			h.killedWorkers++
		}
	}
	// Both give back what the upgrade used once the old master has
	// exited, and say so: the new master in that line, the keeper in its
	// own (either may come first). A sample taken before would count
	// pages about to go, and each one's PSS depends on what the other
	// still maps, so both are sampled once both are at rest.
	if !p.restUnsaid {
		if _, _, err := p.log.Wait(ctx, from, atRestTimeout, fmt.Sprintf("the keeper at rest after master %d exited", h.oldPID), p.atRestAfter(h.oldPID)); err != nil {
			return h, err
		}
	}
	h.fds, _ = procFDs(h.newPID)
	h.fdKinds = procFDKinds(h.newPID)
	if rss, err := procRSS(h.newPID); err == nil {
		h.rssMB = float64(rss) / (1 << 20)
	}
	h.mem, _ = procMem(h.newPID)
	h.keeperMem, _ = procMem(p.keeper)
	return h, nil
}

// pids lists every master and worker pid the log has named.
func (p *batonProc) pids() (masters, workers []int) { return harness.Pids(p.log.Slice(0, -1)) }

// stop stops the run gracefully (SIGTERM to whichever master serves) and
// waits until every process of it has exited, killing what is left after a
// deadline. Masters that already handed over drain and exit by themselves; a
// second SIGTERM would make them kill their workers, so they are left alone.
func (p *batonProc) stop() error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	signaled := map[int]bool{}
	deadline := time.Now().Add(drainTimeout + 10*time.Second)
	closed := false
	for !closed && time.Now().Before(deadline) {
		handedOver := map[int]bool{}
		for _, e := range p.log.Slice(0, -1) {
			if e.Name() == evHandedOver {
				handedOver[e.Int("master_pid")] = true
			}
		}
		masters, _ := p.pids()
		masters = append(masters, p.master)
		for _, pid := range masters {
			if !signaled[pid] && !handedOver[pid] && harness.Alive(pid) && harness.Ours(p.dir, pid) {
				syscall.Kill(pid, syscall.SIGTERM)
				signaled[pid] = true
			}
		}
		// Short waits, so that a master that appears meanwhile (an upgrade
		// under way when the stop began) is stopped too.
		closed = p.log.WaitClosed(250 * time.Millisecond)
	}
	var err error
	if !closed {
		masters, workers := p.pids()
		var killed []int
		for _, pid := range append(masters, workers...) {
			if harness.Alive(pid) && harness.Ours(p.dir, pid) {
				syscall.Kill(pid, syscall.SIGKILL)
				killed = append(killed, pid)
			}
		}
		err = fmt.Errorf("baton on %s did not stop within %s of SIGTERM; killed pids %v", p.addr, drainTimeout+10*time.Second, killed)
		if !p.log.WaitClosed(5 * time.Second) {
			err = fmt.Errorf("baton on %s: processes still hold its log after SIGKILL", p.addr)
		}
	}
	// Workers whose output goes through their master rather than to the
	// shared stderr do not hold the log open: check them by pid too.
	leftover := func() []int {
		masters, workers := p.pids()
		var out []int
		for _, pid := range append(masters, workers...) {
			if harness.Alive(pid) && harness.Ours(p.dir, pid) {
				out = append(out, pid)
			}
		}
		return out
	}
	for wait := time.Now().Add(5 * time.Second); len(leftover()) > 0 && time.Now().Before(wait); {
		time.Sleep(20 * time.Millisecond)
	}
	if left := leftover(); len(left) > 0 {
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if err == nil {
			err = fmt.Errorf("baton on %s: pids %v outlived their masters; killed", p.addr, left)
		}
	}
	select {
	case <-p.reaped:
	case <-time.After(5 * time.Second):
		if err == nil {
			err = fmt.Errorf("baton on %s: first master not reaped", p.addr)
		}
	}
	return err
}

// helloProc is examples/hello run directly on its own socket.
type helloProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	out     *tailWriter
	stopped bool
}

// startHello starts hello bound to addr by itself and waits for its first
// answer, which it returns the time of.
func (b *bench) startHello(ctx context.Context, addr string) (*helloProc, time.Time, error) {
	h := &helloProc{done: make(chan struct{}), out: &tailWriter{max: 2048}}
	h.cmd = exec.Command(b.bin.hello)
	h.cmd.Env = append(childEnv(), "HELLO_LISTEN="+addr)
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	h.cmd.SysProcAttr = b.serverAttr()
	if err := h.cmd.Start(); err != nil {
		return nil, time.Time{}, fmt.Errorf("start hello: %w", err)
	}
	go func() { h.cmd.Wait(); close(h.done) }()
	b.track(h)
	at, err := waitAnswer(ctx, addr, 15*time.Second, h.done)
	if err != nil {
		return h, at, fmt.Errorf("hello on %s: %w%s", addr, err, h.out.last())
	}
	return h, at, nil
}

// stop sends SIGTERM (hello drains its requests) and waits for the exit,
// killing it after a deadline.
func (h *helloProc) stop() error {
	if h.stopped {
		return nil
	}
	h.stopped = true
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
		return nil
	case <-time.After(drainTimeout + 5*time.Second):
	}
	h.cmd.Process.Kill()
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
	}
	return fmt.Errorf("hello %d did not exit within %s of SIGTERM; killed", h.cmd.Process.Pid, drainTimeout+5*time.Second)
}

// waitAnswer polls addr with requests on fresh connections until one gets a
// 200, and returns when that answer arrived.
func waitAnswer(ctx context.Context, addr string, timeout time.Duration, exited <-chan struct{}) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		c := &loadgen.Client{Network: "tcp", Addr: addr, Timeout: time.Second}
		_, _, err := c.Get("/")
		c.Close()
		if err == nil {
			return time.Now(), nil
		}
		lastErr = err
		select {
		case <-exited:
			return time.Time{}, errors.New("exited before answering")
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return time.Time{}, fmt.Errorf("no answer within %s: %v", timeout, lastErr)
}

// waitPIDFile reports whether the pid file names pid within timeout.
func waitPIDFile(ctx context.Context, path string, pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailWriter) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(t.buf)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return " (last output: " + strconv.Quote(l) + ")"
	}
	return ""
}

// childEnv is zdbench's environment without what would change how baton or
// hello behave behind the benchmark's back (BATON_WORKERS, HELLO_STARTUP_MS,
// a NOTIFY_SOCKET from systemd, …).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "BATON_") || strings.HasPrefix(k, "HELLO_") ||
			strings.HasPrefix(k, "LISTEN_") || k == "NOTIFY_SOCKET" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// procCPU is the CPU time pid has used (utime+stime). /proc reports it in
// USER_HZ ticks, which Linux fixes at 100 per second for user space.
func procCPU(pid int) (time.Duration, error) {
	f, err := harness.Stat(pid)
	if err != nil {
		return 0, err
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// procRSS is pid's resident set size in bytes (VmRSS).
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// memInfo is a process's memory from /proc/PID/smaps_rollup, in bytes. PSS
// charges each shared page to its sharers in equal parts, so the PSS of
// processes adds up to what they take from the machine together; RSS counts
// a page of the baton binary once in every baton process that maps it.
type memInfo struct {
	RSS     int64 `json:"rss"`
	PSS     int64 `json:"pss"`
	PSSAnon int64 `json:"pss_anon"` // heap, stacks: the process's own
	PSSFile int64 `json:"pss_file"` // pages of the binary and libraries
}

func (m memInfo) pssMB() float64 { return float64(m.PSS) / (1 << 20) }
func (m memInfo) rssMB() float64 { return float64(m.RSS) / (1 << 20) }

// procMem reads pid's smaps_rollup.
func procMem(pid int) (memInfo, error) {
	var m memInfo
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return m, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		f := strings.Fields(v)
		if !ok || len(f) < 1 {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "Rss":
			m.RSS = kb << 10
		case "Pss":
			m.PSS = kb << 10
		case "Pss_Anon":
			m.PSSAnon = kb << 10
		case "Pss_File":
			m.PSSFile = kb << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%d/smaps_rollup: no Rss", pid)
	}
	return m, nil
}

// procFDs counts pid's open file descriptors (harness.FDs).
func procFDs(pid int) (int, error) {
	fds, err := harness.FDs(pid)
	return len(fds), err
}

// procFDKinds summarizes what pid's fds point to ("socket", "pipe",
// "anon_inode:[eventpoll]", or a path), for the report when counts grow.
func procFDKinds(pid int) map[string]int {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[string]int{}
	for _, e := range ents {
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if i := strings.Index(t, ":["); i > 0 && !strings.HasPrefix(t, "anon_inode") {
			t = t[:i] // socket:[123] -> socket
		}
		out[t]++
	}
	return out
}
