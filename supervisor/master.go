package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/listener"
	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"
)

// Variables one master sets for the next one it re-executes. They never
// reach workers (stripEnv drops every BATON_ variable).
const (
	envNextGeneration = "BATON_MASTER_GENERATION"
	envUpgradeStart   = "BATON_UPGRADE_START"  // unix nanoseconds of the USR2
	envParentNotify   = "BATON_PARENT_NOTIFY"  // the old master's notify socket
	envUpgradeToken   = "BATON_UPGRADE_TOKEN"  // proves a report comes from that new master
	notifyUpgradeFail = "BATON_UPGRADE_FAILED" // new → old master: why it gave up
	notifyToken       = "BATON_TOKEN"
)

// ErrBootFailed is wrapped by Run's error when the first generation of a
// master did not come up.
var ErrBootFailed = errors.New("workers did not become ready")

type phase int

const (
	phaseBooting    phase = iota // this master's first workers are starting
	phaseServing                 // all started once; crashes are replaced
	phaseStopping                // draining on a stop signal or a failed boot
	phaseHandedOver              // a new master took over; draining, then exit
)

// master is one baton master process. run's loop owns every field below
// events; other goroutines only post events.
type master struct {
	cfg     Config
	log     *zap.Logger
	upg     *tableflip.Upgrader
	lns     *listener.Set
	notify  *notifySocket
	spawn   *spawner
	self    int
	shell   string // the trampoline's shell, or "" to re-execute baton
	baseEnv []string
	events  chan any
	done    chan struct{}

	gen     int
	phase   phase
	slots   []*slot
	procs   map[int]*worker // every live worker by pid, current or draining
	bootErr error
	bootAt  time.Time

	// upgrades
	parentAlive    bool // started by an old master that has not exited yet
	parentNotify   string
	parentToken    string    // include in reports to the old master
	upgradeToken   string    // expect in reports from the new master
	upgradeStart   time.Time // when the old master got the USR2 that started us
	parentDeadline time.Time // the old master has surely exited by then
	upgrading      bool
	upgradeAt      time.Time
	upgradeReason  string        // from the new master, when it failed
	upgradeStderr  []string      // its failing worker's last stderr lines
	upgradeReady   *ReloadResult // from the new master, when it took over
	lastUpgrade    *ReloadResult
	reloadWaiters  []*ctlConn
	stopWaiters    []*ctlConn // held open until exit
	control        *net.UnixListener
	failedStderr   []string // the failing worker's last stderr lines
	startAt        time.Time
	handedOverAt   time.Time
	drainedCount   int // workers that exited while draining
	killedCount    int // of them, SIGKILLed at the drain deadline
	accepts        *acceptWatch
}

type (
	evExit struct {
		pid   int
		state *os.ProcessState
	}
	evReady        struct{ pid int }
	evReadyTimeout struct{ pid int }
	evKill         struct{ pid int }
	evRestart      struct{ index int }
	evUpgradeDone  struct{ err error }
	evParentExited struct{}
	evWatchdog     struct{}
)

// Run runs a master until it stops or hands over to a new master. It returns
// nil after a clean stop or handover, and an error when the first generation
// could not start; only then (or on a setup error) is nothing left serving.
func Run(cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = zap.NewNop()
	}
	upg, err := tableflip.New(tableflip.Options{
		PIDFile: cfg.PIDFile,
		// The new master rolls itself back after the ready timeout and a
		// drain of what it started (PEERS P17); tableflip must not SIGKILL
		// it first.
		UpgradeTimeout: cfg.ReadyTimeout + cfg.DrainTimeout + 10*time.Second,
	})
	if err != nil {
		return fmt.Errorf("init upgrader: %w", err)
	}
	m := &master{
		cfg:     cfg,
		upg:     upg,
		self:    os.Getpid(),
		events:  make(chan any, 64),
		done:    make(chan struct{}),
		procs:   make(map[int]*worker),
		gen:     1,
		startAt: time.Now(),
	}
	// Nothing reaches a worker unless it is passed on purpose: not what
	// baton's launcher leaked to it, nor tableflip's ready and names pipes,
	// which arrive without O_CLOEXEC (PEERS P16). Passing an fd (ExtraFiles,
	// tableflip's files) dup2s it, which clears the flag on the copy.
	markCloexecFrom(3)
	m.shell = findShell()
	m.parentAlive = upg.HasParent()
	if m.parentAlive {
		if g, err := strconv.Atoi(os.Getenv(envNextGeneration)); err == nil && g > 0 {
			m.gen = g
		}
		if ns, err := strconv.ParseInt(os.Getenv(envUpgradeStart), 10, 64); err == nil {
			m.upgradeStart = time.Unix(0, ns)
		}
		m.parentNotify = os.Getenv(envParentNotify)
		m.parentToken = os.Getenv(envUpgradeToken)
	}
	for _, k := range []string{envNextGeneration, envUpgradeStart, envParentNotify, envUpgradeToken, "TABLEFLIP_HAS_PARENT_7DIU3"} {
		os.Unsetenv(k)
	}
	m.baseEnv = workerBaseEnv(os.Environ())
	if cfg.EnvFile != "" {
		extra, err := ReadEnvFile(cfg.EnvFile)
		if err != nil {
			upg.Stop()
			return err
		}
		m.baseEnv = mergeEnv(m.baseEnv, extra)
	}
	m.log = log.With(zap.Int("generation", m.gen), zap.Int("master_pid", m.self))

	err = m.setup()
	if err != nil {
		m.release(false)
		return err
	}
	return m.run()
}

// setup binds (or inherits) the sockets. The caller has run Config.Check.
func (m *master) setup() error {
	var act []listener.Activated
	if !m.parentAlive {
		// Started by a systemd .socket unit: its sockets, not new ones.
		// (A re-executed master gets everything from tableflip instead.)
		var err error
		if act, err = listener.TakeActivated(); err != nil {
			return err
		}
		if len(act) > 0 {
			m.log.Info("adopting sockets from socket activation", zap.Int("count", len(act)))
		}
	}
	lns, err := listener.Open(m.upg, m.cfg.Listen, act)
	if err != nil {
		return err
	}
	m.lns = lns
	quietListeners(lns.Files())
	n, err := openNotifySocket()
	if err != nil {
		return err
	}
	m.notify = n
	if m.cfg.Control != "" {
		if err := m.openControl(); err != nil {
			if m.cfg.ControlExplicit {
				return err
			}
			m.log.Warn("no control socket: baton reload/status/stop will not reach this master",
				zap.String("control", m.cfg.Control), zap.Error(err))
		}
	}
	return nil
}

// openControl binds (or inherits) the control socket. Like the listeners it
// goes through tableflip, so every new master answers on the same path.
func (m *master) openControl() error {
	if !strings.HasPrefix(m.cfg.Control, "@") {
		if err := os.MkdirAll(filepath.Dir(m.cfg.Control), 0o700); err != nil {
			return fmt.Errorf("--control %q: %w", m.cfg.Control, err)
		}
	}
	set, err := listener.Open(m.upg, []listener.Spec{{Name: "control", Network: "unix", Addr: m.cfg.Control}}, nil)
	if err != nil {
		return fmt.Errorf("--control: %w", err)
	}
	defer set.Close()
	ln, err := net.FileListener(set.Files()[0])
	if err != nil {
		return fmt.Errorf("--control %q: %w", m.cfg.Control, err)
	}
	if !strings.HasPrefix(m.cfg.Control, "@") {
		os.Chmod(m.cfg.Control, 0o600)
	}
	m.control = ln.(*net.UnixListener)
	return nil
}

// release frees what the master holds. owner says whether it is the master
// of record (not a new master that failed to take over, not an old one that
// handed over): only the owner unlinks unix sockets and removes the pid file.
func (m *master) release(owner bool) {
	if m.notify != nil {
		m.notify.close()
	}
	if m.control != nil {
		m.control.Close()
	}
	if m.lns != nil {
		m.lns.Close()
	}
	// Stop unlinks the unix sockets tableflip bound, unless an upgrade
	// succeeded: then tableflip's loop has already ended and Stop only
	// closes. So an old master that handed over may call it safely, and a
	// new master whose old one still serves must not.
	if owner || !m.parentAlive {
		m.upg.Stop()
		<-m.upg.Exit()
		if owner && m.cfg.PIDFile != "" {
			if b, err := os.ReadFile(m.cfg.PIDFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(m.self) {
				os.Remove(m.cfg.PIDFile)
			}
		}
	}
}

func (m *master) post(ev any) {
	select {
	case m.events <- ev:
	case <-m.done:
	}
}

func (m *master) run() error {
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Stop(sigc)

	m.spawn = newSpawner()
	go m.notify.run(func(msg notifyMsg) { m.post(msg) })
	if m.control != nil && !m.parentAlive {
		// A new master answers only once it serves; until then the old
		// one does.
		go m.serveControl(m.control)
	}
	if m.parentAlive {
		go func() {
			m.upg.WaitForParent(context.Background())
			m.post(evParentExited{})
		}()
	}

	if iv := m.watchdogInterval(); iv > 0 {
		// Pinged from the loop, not a goroutine of its own: a wedged loop
		// must look dead to systemd.
		go func() {
			t := time.NewTicker(iv)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					m.post(evWatchdog{})
				case <-m.done:
					return
				}
			}
		}()
	}
	m.startAcceptWatch()
	// A slow generation must not trip systemd's start or reload timeout.
	m.sdNotify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt((m.cfg.ReadyTimeout+m.cfg.DrainTimeout+10*time.Second).Microseconds(), 10))

	m.log.Info("master starting",
		zap.String("version", m.cfg.Version),
		zap.Int("workers", m.cfg.Workers),
		zap.Strings("listen", specStrings(m.cfg.Listen)),
		zap.Strings("command", m.cfg.Command),
		zap.Bool("upgrade", m.parentAlive))
	m.bootAt = time.Now()
	for i := 0; i < m.cfg.Workers; i++ {
		m.slots = append(m.slots, &slot{backoff: backoffMin})
		m.startWorker(i)
	}

	for !m.finished() {
		select {
		case sig := <-sigc:
			m.onSignal(sig.(syscall.Signal))
		case ev := <-m.events:
			m.onEvent(ev)
		}
	}
	close(m.done)
	m.spawn.stop()

	switch {
	case m.phase == phaseHandedOver:
		m.release(false)
		m.log.Info("master exiting after handover: old generation drained",
			zap.Duration("drain", time.Since(m.handedOverAt)), zap.Int("workers", m.drainedCount), zap.Int("killed", m.killedCount))
		return nil
	case m.bootErr != nil:
		m.release(false)
		return m.bootErr
	}
	m.release(true)
	m.log.Info("master stopped")
	return nil
}

func (m *master) finished() bool {
	return (m.phase == phaseStopping || m.phase == phaseHandedOver) && len(m.procs) == 0
}

func (m *master) onSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
		if m.phase == phaseStopping || m.phase == phaseHandedOver {
			if sig != syscall.SIGQUIT {
				m.log.Warn("second stop signal: killing workers now", zap.String("signal", sigName(sig)))
				m.killAll()
			}
			return
		}
		m.stop(sigName(sig))
	case syscall.SIGUSR2, syscall.SIGHUP:
		m.requestUpgrade(sigName(sig))
	case syscall.SIGTTIN:
		if m.phase != phaseServing && m.phase != phaseBooting {
			return
		}
		i := len(m.slots)
		m.slots = append(m.slots, &slot{backoff: backoffMin})
		m.log.Info("worker count increased", zap.Int("workers", len(m.slots)))
		m.startWorker(i)
	case syscall.SIGTTOU:
		if m.phase != phaseServing && m.phase != phaseBooting {
			return
		}
		if len(m.slots) <= 1 {
			m.log.Warn("worker count not decreased: at least one worker runs", zap.Int("workers", len(m.slots)))
			return
		}
		s := m.slots[len(m.slots)-1]
		m.slots = m.slots[:len(m.slots)-1]
		m.log.Info("worker count decreased", zap.Int("workers", len(m.slots)))
		if s.cur != nil {
			m.drain(s.cur)
		}
	case syscall.SIGUSR1:
		if m.cfg.ReopenLogs != nil {
			if err := m.cfg.ReopenLogs(); err != nil {
				m.log.Error("reopen log file failed", zap.Error(err))
			}
		}
		for _, w := range m.procs {
			syscall.Kill(w.pid, syscall.SIGUSR1)
		}
		m.log.Info("SIGUSR1 forwarded to workers", zap.Int("workers", len(m.procs)))
	}
}

// stop drains every worker; the loop ends when they are gone.
func (m *master) stop(trigger string) {
	if m.phase == phaseStopping || m.phase == phaseHandedOver {
		return
	}
	m.log.Info("stop requested: draining workers", zap.String("trigger", trigger),
		zap.Duration("drain_timeout", m.cfg.DrainTimeout))
	if m.phase == phaseBooting {
		m.bootErr = fmt.Errorf("%w: stopped by %s while starting", ErrBootFailed, trigger)
		if !m.parentAlive {
			m.bootErr = nil // a plain start interrupted by the operator is a clean stop
		}
		m.reportUpgradeFailure("new master received " + trigger + " before its workers were ready")
	} else {
		m.sdNotify("STOPPING=1")
	}
	m.phase = phaseStopping
	m.drainAll()
}

// watchdogInterval is how often to send WATCHDOG=1, or 0 when systemd's
// watchdog is not on for this master. WATCHDOG_PID names the first master;
// a re-executed one is its successor when it names our parent, and passes
// the role on by naming itself.
func (m *master) watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, _ := strconv.Atoi(p)
		if pid != m.self && !(m.parentAlive && pid == os.Getppid()) {
			return 0
		}
	}
	os.Setenv("WATCHDOG_PID", strconv.Itoa(m.self))
	return time.Duration(usec) * time.Microsecond / 2
}

// sdNotify tells the service manager that started baton, if any.
func (m *master) sdNotify(msg string) {
	if ns := os.Getenv("NOTIFY_SOCKET"); ns != "" {
		if err := sendNotify(ns, msg); err != nil {
			m.log.Warn("notify service manager failed", zap.Error(err))
		}
	}
}

func (m *master) onEvent(ev any) {
	switch ev := ev.(type) {
	case *ctlConn:
		m.onControl(ev)
	case evExit:
		m.onExit(ev)
	case notifyMsg:
		m.onNotify(ev)
	case evReady:
		if w := m.procs[ev.pid]; w != nil {
			m.markReady(w)
		}
	case evReadyTimeout:
		if w := m.procs[ev.pid]; w != nil && w.state == stateStarting {
			m.onReadyTimeout(w)
		}
	case evKill:
		if w := m.procs[ev.pid]; w != nil {
			w.log.Warn("drain timeout: killing worker", zap.Duration("drain_timeout", m.cfg.DrainTimeout))
			w.killed = true
			syscall.Kill(-w.pid, syscall.SIGKILL) // its process group: helpers too
		}
	case evRestart:
		if ev.index < len(m.slots) && m.phase == phaseServing {
			if s := m.slots[ev.index]; s.pending && s.cur == nil {
				s.pending = false
				s.restarts++
				m.startWorker(ev.index)
			}
		}
	case evUpgradeDone:
		m.onUpgradeDone(ev.err)
	case evWatchdog:
		m.sdNotify("WATCHDOG=1")
	case evAcceptCheck:
		m.onAcceptCheck()
	case evParentExited:
		m.parentDeadline = time.Time{}
		m.parentAlive = false
		// The goroutine count is here to make leaks visible in tests.
		m.log.Info("previous master exited", zap.Int("goroutines", runtime.NumGoroutine()))
	}
}

func (m *master) startWorker(index int) {
	env := append(m.baseEnv[:len(m.baseEnv):len(m.baseEnv)], m.compatEnv()...)
	env = append(env,
		"LISTEN_FDS="+strconv.Itoa(len(m.lns.Files())),
		"LISTEN_FDNAMES="+m.lns.Names(),
		"NOTIFY_SOCKET="+m.notify.addr,
		"BATON_WORKER="+strconv.Itoa(index),
		"BATON_GENERATION="+strconv.Itoa(m.gen),
		envShimPPID+"="+strconv.Itoa(m.self),
	)
	path, argv := shimCommand(m.shell, m.cfg.Command)
	cmd := &exec.Cmd{
		Path:       path,
		Args:       argv,
		Env:        env,
		Dir:        m.cfg.Chdir,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		ExtraFiles: m.lns.Files(),
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:    true, // a terminal's ^C reaches the master only
			Pdeathsig:  syscall.SIGKILL,
			Credential: m.cfg.Credential,
		},
	}
	s := m.slots[index]
	fail := func(err error) {
		m.log.Error("worker start failed", zap.Int("worker", index), zap.Error(err))
		if m.phase == phaseBooting {
			// No process, so no exit or timeout would ever end the boot.
			reason := fmt.Sprintf("worker %d could not start: %v", index, err)
			m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, reason), reason)
			return
		}
		m.scheduleRestart(index, s)
	}
	pipes, err := newWorkerPipes(m.cfg.WorkerOutput == OutputInherit)
	if err != nil {
		fail(fmt.Errorf("output pipes: %w", err))
		return
	}
	if pipes.outW != nil {
		cmd.Stdout = pipes.outW
	}
	cmd.Stderr = pipes.errW
	if err := m.spawn.start(cmd); err != nil {
		pipes.abandon()
		fail(err)
		return
	}
	w := &worker{
		index:   index,
		pid:     cmd.Process.Pid,
		started: time.Now(),
		pipes:   pipes,
	}
	w.log = m.log.With(zap.Int("worker", index), zap.Int("pid", w.pid))
	pipes.started(w.log)
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	s.cur = w
	m.procs[w.pid] = w
	w.log.Info("worker started", zap.Int("restarts", s.restarts))

	go func() {
		cmd.Wait()
		cancel()
		// Let the last words reach the log (and the failure report)
		// before the exit is handled; a grandchild holding the pipe
		// must not hold up the exit, hence the bound.
		select {
		case <-pipes.done:
		case <-time.After(200 * time.Millisecond):
		}
		m.notify.barrier(100 * time.Millisecond)
		m.post(evExit{pid: w.pid, state: cmd.ProcessState})
	}()
	m.after(ctx, m.cfg.ReadyTimeout, evReadyTimeout{w.pid})
	switch m.cfg.Ready.Mode {
	case ReadyDelay:
		m.after(ctx, m.cfg.Ready.Delay, evReady{w.pid})
	case ReadyExec:
		penv := append(env[:len(env):len(env)], "BATON_WORKER_PID="+strconv.Itoa(w.pid))
		go runProbe(ctx, m.cfg.Ready.Probe, m.cfg.Chdir, penv, func() { m.post(evReady{w.pid}) })
	}
}

// after posts ev once d has passed, unless ctx ends first.
func (m *master) after(ctx context.Context, d time.Duration, ev any) {
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			m.post(ev)
		case <-ctx.Done():
		}
	}()
}

func (m *master) onNotify(msg notifyMsg) {
	w := m.procs[msg.pid]
	if w == nil {
		w = m.workerAncestor(msg.pid)
	}
	if w == nil {
		// The new master may be gone (and reaped) by the time its report is
		// read, so it is known by the token it was given, not by its pid.
		if t := msg.fields[notifyToken]; t != "" && t == m.upgradeToken && m.onChildMasterReport(msg.pid, msg.fields) {
			return
		}
		m.log.Warn("notify message from unknown process ignored", zap.Int("sender_pid", msg.pid))
		return
	}
	w.notified = true
	if st, ok := msg.fields["STATUS"]; ok {
		w.log.Debug("worker status", zap.String("status", st))
	}
	if msg.fields["READY"] == "1" && m.cfg.Ready.Mode == ReadyNotify {
		m.markReady(w)
	}
}

// workerAncestor attributes a message from a worker's descendant (a server
// that notifies from a child process) to that worker.
func (m *master) workerAncestor(pid int) *worker {
	for i := 0; i < 16 && pid > 1; i++ {
		pid = parentOf(pid)
		if w := m.procs[pid]; w != nil {
			return w
		}
	}
	return nil
}

// parentOf reads a process's parent pid from /proc; 0 when unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses; fields follow the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func (m *master) markReady(w *worker) {
	if w.state != stateStarting {
		return
	}
	w.state = stateReady
	w.log.Info("worker ready", zap.Duration("startup", time.Since(w.started)))
	if m.phase == phaseBooting && m.allReady() {
		m.bootDone()
	}
}

func (m *master) allReady() bool {
	for _, s := range m.slots {
		if s.cur == nil || s.cur.state != stateReady {
			return false
		}
	}
	return true
}

func (m *master) bootDone() {
	now := time.Now()
	workers := now.Sub(m.bootAt)
	var total time.Duration
	if !m.upgradeStart.IsZero() {
		total = now.Sub(m.upgradeStart)
	}
	if m.parentNotify != "" {
		// Before Ready: the old master must have this when its Upgrade returns.
		b, _ := json.Marshal(ReloadResult{Generation: m.gen, TotalMS: ms(total),
			WorkersStartingMS: ms(workers), BatonMS: ms(total - workers)})
		sendNotify(m.parentNotify, notifyToken+"="+m.parentToken+"\n"+notifyUpgradeReady+"="+string(b))
	}
	if err := m.upg.Ready(); err != nil {
		m.bootFailed(fmt.Errorf("%w: %v", ErrBootFailed, err), "could not signal readiness: "+err.Error())
		return
	}
	m.phase = phaseServing
	fields := []zap.Field{zap.Int("workers", len(m.slots)), zap.Duration("workers_starting", workers)}
	if m.parentAlive {
		if total > 0 {
			fields = append(fields, zap.Duration("total", total), zap.Duration("baton", total-workers))
		}
		if m.control != nil {
			go m.serveControl(m.control)
		}
		// The old master drains for at most its drain timeout after this.
		m.parentDeadline = now.Add(m.cfg.DrainTimeout + time.Second)
		m.log.Info("handover complete: new generation serving", fields...)
	} else {
		m.log.Info("generation ready", fields...)
	}
	m.sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1\nSTATUS=generation %d, %d workers", m.self, m.gen, len(m.slots)))
}

func (m *master) onReadyTimeout(w *worker) {
	hint := startHint(w.stderrTail(), true, w.notified, m.cfg.Ready)
	w.log.Error("worker not ready in time", zap.Duration("ready_timeout", m.cfg.ReadyTimeout), zap.String("hint", hint))
	if m.phase == phaseBooting {
		m.failedStderr = w.stderrTail()
		m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, withHint(fmt.Sprintf("worker %d (pid %d) not ready after %s", w.index, w.pid, m.cfg.ReadyTimeout), hint)),
			withHint(fmt.Sprintf("worker %d (pid %d) not ready after %s (--ready-timeout)", w.index, w.pid, m.cfg.ReadyTimeout), hint))
		return
	}
	// A replacement that never comes up: drain it; its exit schedules another.
	m.drain(w)
}

func (m *master) bootFailed(err error, reason string) {
	if m.phase != phaseBooting {
		return
	}
	m.log.Error("generation failed to start; stopping its workers", zap.String("reason", reason))
	m.bootErr = err
	m.reportUpgradeFailure(reason)
	m.phase = phaseStopping
	m.drainAll()
}

func (m *master) reportUpgradeFailure(reason string) {
	if m.parentNotify == "" {
		return
	}
	msg := notifyToken + "=" + m.parentToken + "\n" + notifyUpgradeFail + "=" + strings.ReplaceAll(reason, "\n", " ")
	if len(m.failedStderr) > 0 {
		b, _ := json.Marshal(m.failedStderr)
		msg += "\nBATON_STDERR=" + string(b)
	}
	if err := sendNotify(m.parentNotify, msg); err != nil {
		m.log.Warn("could not tell the old master why this upgrade failed", zap.Error(err))
	}
}

func (m *master) onExit(ev evExit) {
	w := m.procs[ev.pid]
	if w == nil {
		return
	}
	delete(m.procs, ev.pid)
	w.cancel()
	fields := append(exitFields(ev.state), zap.Duration("uptime", time.Since(w.started)))
	var s *slot
	if w.index < len(m.slots) && m.slots[w.index].cur == w {
		s = m.slots[w.index]
		s.cur = nil
	}
	switch {
	case w.state == stateDraining:
		m.drainedCount++
		if w.killed {
			m.killedCount++
		}
		w.log.Info("worker drained", append(fields, zap.Duration("drain", time.Since(w.drainAt)), zap.Bool("killed", w.killed))...)
		if s != nil && m.phase == phaseServing {
			// Drained but still holding its slot: a replacement that never
			// became ready. Try again, with backoff.
			m.scheduleRestart(w.index, s)
		}
	case m.phase == phaseBooting:
		// A crash while the generation starts fails the generation, even
		// from a worker that had said READY=1: it is not healthy.
		when := "before it was ready"
		if w.state == stateReady {
			when = "while the generation was starting (after it was ready)"
		}
		w.log.Error("worker exited "+when, fields...)
		m.failedStderr = w.stderrTail()
		reason := withHint(fmt.Sprintf("worker %d (pid %d) exited with %s %s", w.index, w.pid, exitReason(ev.state), when),
			startHint(m.failedStderr, false, w.notified, m.cfg.Ready))
		m.bootFailed(fmt.Errorf("%w: %s", ErrBootFailed, reason), reason)
	case m.phase == phaseServing && s != nil:
		if hint := startHint(w.stderrTail(), false, w.notified, m.cfg.Ready); hint != "" {
			fields = append(fields, zap.String("hint", hint))
		}
		w.log.Warn("worker exited unexpectedly", fields...)
		if time.Since(w.started) >= backoffStable {
			s.backoff = backoffMin
		}
		m.scheduleRestart(w.index, s)
	default:
		w.log.Info("worker exited", fields...)
	}
}

func (m *master) scheduleRestart(index int, s *slot) {
	if m.phase != phaseServing && m.phase != phaseBooting {
		return
	}
	d := s.backoff
	s.backoff = min(s.backoff*2, backoffMax)
	s.pending = true
	m.log.Info("worker restart scheduled", zap.Int("worker", index), zap.Duration("backoff", d))
	m.after(context.Background(), d, evRestart{index})
}

// drain asks a worker to finish in-flight work and exit, and SIGKILLs it at
// the drain deadline.
func (m *master) drain(w *worker) {
	if w.state == stateDraining {
		return
	}
	w.state = stateDraining
	w.drainAt = time.Now()
	w.log.Info("draining worker", zap.String("signal", sigName(m.cfg.DrainSignal)))
	syscall.Kill(w.pid, m.cfg.DrainSignal)
	m.after(context.Background(), m.cfg.DrainTimeout, evKill{w.pid})
}

func (m *master) drainAll() {
	for _, s := range m.slots {
		s.pending = false
	}
	for _, w := range m.procs {
		m.drain(w)
	}
}

func (m *master) killAll() {
	for _, w := range m.procs {
		w.killed = true
		syscall.Kill(-w.pid, syscall.SIGKILL)
	}
}

// compatEnv describes the sockets in other supervisors' conventions too.
func (m *master) compatEnv() []string {
	var env []string
	n := len(m.cfg.Listen)
	for _, c := range m.cfg.Compat {
		switch c {
		case "einhorn":
			fds := make([]string, n)
			env = append(env, "EINHORN_FD_COUNT="+strconv.Itoa(n))
			for i := range n {
				fds[i] = strconv.Itoa(3 + i)
				env = append(env, "EINHORN_FD_"+strconv.Itoa(i)+"="+fds[i])
			}
			env = append(env, "EINHORN_FDS="+strings.Join(fds, " "))
		case "server-starter":
			ports := make([]string, n)
			for i, s := range m.cfg.Listen {
				ports[i] = s.Addr + "=" + strconv.Itoa(3+i)
			}
			env = append(env, "SERVER_STARTER_PORT="+strings.Join(ports, ";"),
				"SERVER_STARTER_GENERATION="+strconv.Itoa(m.gen))
		}
	}
	return env
}

// mergeEnv returns base with extra's assignments, extra winning.
func mergeEnv(base, extra []string) []string {
	keys := make(map[string]bool, len(extra))
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); !keys[k] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

func specStrings(specs []listener.Spec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.String()
	}
	return out
}
