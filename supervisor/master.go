//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/earlysig"
	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/notify"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"github.com/baton-sh/baton/supervisor/sockets"
	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"
)

// ErrBootFailed is wrapped by Run's error when the first generation of a
// master did not come up.
var ErrBootFailed = errors.New("workers did not become ready")

// ErrGenerationRefused is wrapped by Run's error when the first
// generation's workers became ready but the generation is refused (under
// blue-green or canary, a worker bound its own socket on a --listen
// address). errors.Is(err, ErrBootFailed) holds for it too.
var ErrGenerationRefused error = generationRefused{}

type generationRefused struct{}

func (generationRefused) Error() string        { return "workers became ready but the generation is refused" }
func (generationRefused) Is(target error) bool { return target == ErrBootFailed }

type phase int

const (
	phaseBooting    phase = iota // this master's first workers are starting
	phaseServing                 // all started once; crashes are replaced
	phaseStopping                // draining on a stop signal or a failed boot
	phaseHandedOver              // a new master took over; draining, then exit
)

// master is one baton master process. Its loop (run) owns every field from
// events down; other goroutines only post events. Workers and their timers
// are in workers.go, the handover in upgrade.go, control requests in
// control.go, the service manager in systemd.go.
type master struct {
	cfg     Config
	log     *zap.Logger
	sys     sys
	upg     upgrader
	ready   readiness
	self    int
	shell   string         // the trampoline's shell, or "" to re-execute baton
	baseEnv []string       // workers' environment before per-worker variables
	lns     *sockets.Set   // nil in tests
	files   []*os.File     // the listening sockets, fds 3, 4, … of workers
	fdNames string         // LISTEN_FDNAMES
	notify  *notify.Socket // nil in tests
	keeper  link.Link      // the keeper that started this master; zero: none (tests)
	control *net.UnixListener
	events  chan event
	done    chan struct{}

	gen          int
	phase        phase
	slots        []*slot
	procs        map[int]*worker // live workers by pid, current or draining
	group        groupState      // membership of blue-green's reuseport groups
	bootErr      error
	startAt      time.Time
	bootAt       time.Time
	runAt        time.Time      // Run was called (zero in tests that build a master directly)
	failedStderr []string       // the failing worker's last stderr lines
	failedOf     string         // whose lines they are: "worker 1's stderr", "the hook's output"
	pinned       release        // resolved at boot; every worker of the generation runs it
	origin       originState    // as a new master: the upgrade that started it
	up           upgradeState   // as an old master: the upgrade it started
	stopWaiters  []*ctlConn     // held open until exit
	writers      sync.WaitGroup // held reload writers still flushing
	stopAsked    bool           // a stop signal came after the handover
	accepts      *acceptWatch
	hook         *hookRun       // the --before-upgrade command while it runs (hook.go)
	hookLeft     []hookLeftover // groups of past hooks still being ended (hookleft.go)
	leftChecking bool           // a check of hookLeft is scheduled
	prog         progressState  // progress.go
	met          *metrics       // metrics.go
	rollout      rolloutState   // blue-green and canary (bluegreen.go)
	refusal      refusal        // a stop's refusal of new connections (refuse.go)
	trees        trees          // the generation's process trees (tree.go)
	steps        startSteps     // when each step of this master's start ended (steps.go)
	reserve      bool           // make the spare threads once serving (tasks.go); false in tests
	trims        int            // times trim gave memory back (trim.go)
	settle       settleState    // the trim after work done at rest (trim.go)
}

// newMaster returns a master that has started nothing. gen is its
// generation number.
func newMaster(cfg Config, s sys, upg upgrader, gen int) *master {
	log := cfg.Log
	if log == nil {
		log = zap.NewNop()
	}
	m := &master{
		cfg:     cfg,
		sys:     s,
		upg:     upg,
		ready:   newReadiness(cfg.Ready, s, cfg.Chdir),
		self:    os.Getpid(),
		events:  make(chan event, 64),
		done:    make(chan struct{}),
		procs:   make(map[int]*worker),
		gen:     gen,
		startAt: s.now(),
		met:     newMetrics(cfg.Version, gen),
	}
	m.log = log.With(zap.Int("generation", gen), zap.Int("master_pid", m.self))
	return m
}

// Run runs one master in this process until it stops or hands over to a
// new master, blocking until then. It is called once per process: it
// installs signal handlers for TERM, INT, QUIT, HUP, USR1, USR2, TTIN and
// TTOU, marks inherited fds close-on-exec, and changes the process
// environment (it removes what the previous master passed, and sets what the
// next one needs).
//
// It returns nil after a clean stop or a handover, an error wrapping
// ErrBootFailed when this master's generation did not come up (for an
// upgrade: the old master keeps serving), and an error naming the operation
// on a setup failure (sockets, control socket, --env-file); only in the last
// two cases is nothing of this master left running.
func Run(cfg Config) error {
	runAt := time.Now()
	var steps startSteps
	if ns, err := strconv.ParseInt(os.Getenv(envUpgradeLaunch), 10, 64); err == nil {
		steps.mark("preflight", time.Unix(0, ns), -1) // the old master's
		steps.preflightCPU = -1
		if c, err := strconv.ParseInt(os.Getenv(envPreflightCPU), 10, 64); err == nil {
			steps.preflightCPU = time.Duration(c)
		}
	}
	steps.mark("exec_and_init", initDone, initCPU)
	steps.mark("command_line", runAt, processCPU())
	// The spawning threads are made while this master waits for the
	// keeper and the old master's fds, not when the workers are due.
	workers := cfg.Workers
	if n, err := strconv.Atoi(os.Getenv(envNextWorkers)); err == nil && n > 0 {
		workers = n
	}
	s, release := osSys(workers)
	defer release()
	keeper := link.FromEnv()
	pidFile := cfg.PIDFile
	var announced *link.Sent
	if keeper.Present() {
		// The keeper owns the pid file: its pid, for the service's life.
		pidFile = ""
		// Announce this master first thing (package link has the
		// handshake); its answer is awaited below, before anything is
		// started: the keeper must know this master before the old one
		// can exit. Meanwhile this master takes tableflip's fds. The
		// announcement is sent from here, not from a goroutine of its
		// own, which started on another thread (woken for it) and sent
		// it a scheduler's wake-up later.
		announced = keeper.Send()
		defer announced.Close()
	}
	upg, err := tableflip.New(tableflip.Options{
		PIDFile: pidFile,
		// The new master rolls itself back after the ready timeout and a
		// drain of what it started: workers that never said ready may already
		// be serving from the shared socket, so they drain like any
		// others rather than being killed; tableflip must not SIGKILL
		// it first.
		UpgradeTimeout: cfg.ReadyTimeout + cfg.DrainTimeout + 10*time.Second +
			cfg.Rollout.upgradeTimeout(cfg.ReadyTimeout, cfg.DrainTimeout),
	})
	if err != nil {
		return fmt.Errorf("init upgrader: %w", err)
	}
	steps.mark("tableflip", time.Now(), processCPU())
	// Nothing reaches a worker unless it is passed on purpose: not what
	// baton's launcher leaked to it, nor tableflip's ready and names pipes,
	// which tableflip v1.2.3 leaves inheritable (fds 3 and 4 of a
	// re-executed master have no O_CLOEXEC). Passing an fd (ExtraFiles,
	// tableflip's files) dup2s it, which clears the flag on the copy.
	osutil.MarkCloexecFrom(3)
	var origin originState
	gen := origin.readUpgradeEnv(upg.HasParent())
	if origin.workers > 0 {
		cfg.Workers = origin.workers // as TTIN, TTOU or scale left it
	}
	m := newMaster(cfg, s, tableflipUpgrader{upg, cfg.Log}, gen)
	m.origin = origin
	if origin.parentNotify != "" && origin.parentAlive {
		m.origin.keptNotify = s.keepNotify(origin.parentNotify)
	}
	m.runAt = runAt
	m.steps = steps
	m.keeper = keeper
	// The generation's cgroups are made while this master waits for the
	// keeper and opens its sockets (setupTrees takes them).
	trees := make(chan treesMade, 1)
	go func() { trees <- prepareTrees(keeper.Cgroup, gen, m.self, cfg.Workers) }()
	treesTaken := false
	defer func() {
		if !treesTaken { // a set-up failure: nothing was started in them
			(<-trees).discard()
		}
	}()
	if err := m.met.restore(origin.metrics); err != nil {
		m.log.Warn("previous master's metrics not carried over", zap.Error(err))
	}
	if err := m.startTasks(cfg.Workers); err != nil {
		upg.Stop()
		return err
	}
	if keeper.Present() {
		if err := announced.Await(); err != nil {
			// Exiting is the refusal: the old master's upgrade fails
			// with it, its sockets untouched.
			return fmt.Errorf("announce to keeper %d: %w", keeper.KeeperPID, err)
		}
		m.steps.mark("keeper_handshake", time.Now(), processCPU())
		keeper.RestoreOOMScore() // the keeper's lowered score is its own
		// Sockets of a systemd .socket unit, passed on by the keeper at
		// the same fd numbers.
		keeper.TakeActivation()
	}
	if m.origin.parentAlive {
		m.reserve = true // tasks.go: spare threads, made once the generation serves
	} else {
		reserveThreads(spareThreads) // a first start is no handover to hold up
	}
	m.shell = findShell()
	m.baseEnv = workerBaseEnv(os.Environ(), cfg.WorkerOutput == OutputTagged)
	if cfg.EnvFile != "" {
		extra, err := ReadEnvFile(cfg.EnvFile)
		if err != nil {
			upg.Stop()
			return err
		}
		m.baseEnv = mergeEnv(m.baseEnv, extra)
	}
	m.steps.mark("prepare", time.Now(), processCPU())
	if err := m.setup(); err != nil {
		m.release(false)
		return err
	}
	m.steps.mark("sockets", time.Now(), processCPU())
	m.setupTrees(keeper, <-trees)
	treesTaken = true
	defer m.closeTrees()
	if keeper.Present() {
		if err := m.watchKeeper(); err != nil {
			m.release(false)
			return err
		}
	}
	err = m.run()
	if keeper.Present() {
		// The status cmd/baton exits with (ErrBootFailed and the like: 1).
		code := 0
		if err != nil {
			code = 1
		}
		m.sdNotify(link.ExitMsg(code))
	}
	return err
}

// setup binds (or inherits) the sockets and opens the notify and control
// sockets. The caller has run Config.Check.
func (m *master) setup() error {
	var act []sockets.Activated
	if !m.origin.parentAlive {
		// Started by a systemd .socket unit: its sockets, not new ones.
		// (A re-executed master gets everything from tableflip instead.)
		var err error
		if act, err = sockets.TakeActivated(); err != nil {
			return err
		}
		if len(act) > 0 {
			m.log.Info("adopting sockets from socket activation", logevent.SocketsActivated, zap.Int("count", len(act)))
		}
	}
	reg := m.upg.Registry()
	var lns *sockets.Set
	var err error
	if st := m.cfg.Rollout.Strategy; st.steered() {
		lns, err = m.openGroup(reg, act)
	} else {
		lns, err = sockets.Open(reg, m.cfg.Listen, act)
	}
	if err != nil {
		return err
	}
	m.lns, m.files, m.fdNames = lns, lns.Files(), lns.Names()
	quietListeners(m.files)
	n, err := notify.Open(m.cfg.Credential)
	if err != nil {
		return err
	}
	m.notify = n
	if m.cfg.Control != "" {
		// Never a warning: a master nothing can reach, or a path another
		// service answers on, makes "baton reload" reach the wrong one.
		if err := m.openControl(reg); err != nil {
			return err
		}
	}
	if m.cfg.Metrics != "" {
		return m.openMetrics(reg)
	}
	return nil
}

// openControl binds (or inherits) the control socket. Like the listeners it
// goes through tableflip, so every new master answers on the same path.
func (m *master) openControl(reg sockets.Registry) error {
	path := m.cfg.Control
	flag := m.cfg.controlFlag()
	if !strings.HasPrefix(path, "@") {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("%s %q: %w", flag, path, err)
		}
		if !m.cfg.ControlExplicit && filepath.Dir(path) == control.Dir() {
			if err := control.CheckDir(filepath.Dir(path)); err != nil {
				return fmt.Errorf("%s %q: %w", flag, path, err)
			}
		}
	}
	set, err := sockets.Open(reg, []sockets.Spec{{Name: "control", Network: "unix", Addr: path}}, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	defer set.Close()
	ln, err := net.FileListener(set.Files()[0])
	if err != nil {
		return fmt.Errorf("--control %q: %w", path, err)
	}
	if !strings.HasPrefix(path, "@") {
		os.Chmod(path, 0o600)
	}
	m.control = ln.(*net.UnixListener)
	return nil
}

// release frees what the master holds. owner says whether it is the master
// of record (not a new master that failed to take over, not an old one that
// handed over): only the owner unlinks unix sockets and removes the pid file.
func (m *master) release(owner bool) {
	if m.notify != nil {
		m.notify.Close()
	}
	if m.control != nil {
		m.control.Close()
	}
	m.stopMetrics()
	m.waitMetrics()
	m.leaveGroup() // bluegreen.go; closes m.lns

	// Stop unlinks the unix sockets tableflip bound, unless an upgrade
	// succeeded: then tableflip's loop has already ended and Stop only
	// closes. So an old master that handed over may call it safely, and a
	// new master whose old one still serves must not.
	if owner || !m.origin.parentAlive {
		m.upg.Stop()
		<-m.upg.Exit()
		if owner && m.cfg.PIDFile != "" && !m.keeper.Present() {
			if b, err := os.ReadFile(m.cfg.PIDFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(m.self) {
				os.Remove(m.cfg.PIDFile)
			}
		}
	}
}

// post hands ev to the loop; after the loop has ended it drops ev.
func (m *master) post(ev event) {
	select {
	case m.events <- ev:
	case <-m.done:
	}
}

func (m *master) run() error {
	// Caught since the process's first package init (earlysig), and
	// kept caught until it exits: none takes its default action, ever.
	sigc := earlysig.Chan()

	go m.notify.Run(func(msg notify.Msg) { m.post(evNotify(msg)) })
	if m.control != nil && !m.origin.parentAlive {
		// A new master answers only once it serves; until then the old
		// one does.
		go m.serveControl(m.control)
	}
	if !m.origin.parentAlive {
		m.serveMetrics()
	}
	if m.origin.parentAlive {
		go m.waitForParent()
	}
	m.startWatchdog()
	m.startAcceptWatch()
	// A slow generation must not trip systemd's start or reload timeout.
	m.sdNotify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt((m.cfg.ReadyTimeout+m.cfg.DrainTimeout+10*time.Second).Microseconds(), 10))
	m.boot()
	for !m.finished() {
		select {
		case sig := <-sigc:
			m.handle(evSignal{sig.(syscall.Signal)})
		case ev := <-m.events:
			m.handle(ev)
		}
	}
	close(m.done)
	return m.exit()
}

// boot starts this master's generation.
func (m *master) boot() {
	m.bootAt = m.sys.now()
	m.steps.mark("loop_start", m.bootAt, processCPU())
	fields := []zap.Field{logevent.MasterStarting,
		zap.String("version", m.cfg.Version),
		zap.Int("workers", m.cfg.Workers),
		zap.Strings("listen", specStrings(m.cfg.Listen)),
		zap.Strings("command", m.cfg.Command),
		zap.Bool("upgrade", m.origin.parentAlive),
	}
	if !m.runAt.IsZero() {
		launch := m.origin.start
		if !m.origin.launch.IsZero() {
			launch = m.origin.launch
		}
		fields = append(fields, startupFields(launch, m.runAt, m.bootAt)...)
	}
	m.log.Info("master starting", fields...)
	m.step(control.Progress{Event: control.EvMasterStarted, Count: m.cfg.Workers,
		Message: fmt.Sprintf("new master %d started: %d workers", m.self, m.cfg.Workers)})
	if m.cfg.BeforeStart && !m.origin.parentAlive {
		m.startHook(m.gen, false)
		return
	}
	m.startGeneration()
}

// startGeneration starts this master's workers.
func (m *master) startGeneration() {
	m.prog.forwarding.Store(m.origin.parentNotify != "" && m.origin.followed)
	rel, err := resolveRelease(m.cfg)
	if err != nil {
		m.bootFailed(fmt.Errorf("%w: %w", ErrBootFailed, err), err.Error())
		return
	}
	m.pinned = rel
	m.log.Info("release pinned for this generation", zap.String("dir", rel.dir), zap.String("command", rel.command[0]))
	m.addSlots(m.cfg.Workers) // forked at once (workers.go)
	m.steps.mark("spawn", m.sys.now(), processCPU())
}

// exit releases what the master holds once its loop has ended, and returns
// Run's result.
func (m *master) exit() error {
	// A reload still waiting gets its answer now: the master is going.
	if len(m.up.waiters) > 0 {
		m.finishReload(control.ReloadResult{Code: control.ReloadRollback, OldMasterPID: m.self, Generation: m.gen + 1,
			Reason: "the master stopped before the upgrade finished"})
	}
	// A reload answered just now must reach its client before this
	// process (and the connection) goes; bounded by the writers' own
	// write deadlines.
	flushed := make(chan struct{})
	go func() { m.writers.Wait(); close(flushed) }()
	select {
	case <-flushed:
	case <-time.After(3 * time.Second):
	}
	switch {
	case m.phase == phaseHandedOver:
		m.killHookLeftovers() // hookleft.go
		m.release(false)
		m.log.Info("master exiting after handover: old generation drained", logevent.OldGenerationDrained,
			zap.Duration("drain", m.sys.now().Sub(m.up.handedOverAt)), zap.Int("workers", m.up.drained), zap.Int("killed", m.up.killed),
			zap.Int("survivors_killed", m.trees.killed))
		return nil
	case m.bootErr != nil:
		m.release(false)
		return m.bootErr
	}
	m.killHookLeftovers()
	// A new master stopped before it took over owns nothing while its
	// old master lives: the unix sockets' paths and the pid file are the
	// old one's.
	m.release(!m.origin.parentAlive || !m.origin.servingAt.IsZero())
	m.log.Info("master stopped", logevent.MasterStopped)
	return nil
}

// finished reports whether the loop is done. A blue-green or canary
// candidate (a stop during its checks or bake) keeps an old master's loop
// going until tableflip's Upgrade has returned with its exit
// (rolloutDone): the loop must answer the candidate's stop (users back
// here, so that it drains at once), tableflip reaps it (else the keeper
// did, and logged a failed master), and tableflip's Stop would SIGKILL a
// candidate still running, with its workers and their requests.
func (m *master) finished() bool {
	return (m.phase == phaseStopping || m.phase == phaseHandedOver) && len(m.procs) == 0 && m.hook == nil && m.treesEmpty() &&
		m.hookLeftoversGone() && m.rollout.cand == nil
}

// handle is the loop's one dispatch: every state change starts here.
func (m *master) handle(ev event) {
	switch ev := ev.(type) {
	case evSignal:
		m.onSignal(ev.sig)
	case evControl:
		m.onControl(ev.c)
	case evExit:
		m.onExit(ev.w, ev.status)
	case evNotify:
		m.onNotify(notify.Msg(ev))
	case evReady:
		m.markReady(ev.w)
	case evReadyTimeout:
		m.onReadyTimeout(ev.w)
	case evDrainTimeout:
		m.onDrainTimeout(ev.w)
	case evRestart:
		m.onRestart(ev.s)
	case evUpgradeDone:
		m.onUpgradeDone(ev.err)
	case evWatchdog:
		m.sdNotify("WATCHDOG=1")
	case evParentExited:
		m.onParentExited()
	case evStopAckTimeout:
		m.answerReload()
	case evKeeperGone:
		m.onKeeperGone()
	case evAcceptCheck:
		m.onAcceptCheck()
	case evRefuseCheck:
		m.onRefuseCheck()
	case evTreeCheck:
		m.onTreeCheck()
	case evHookLeftCheck:
		m.onHookLeftCheck()
	case evHookExit:
		m.onHookExit(ev.h, ev.status)
	case evHookTimeout:
		m.onHookTimeout(ev.h)
	case evHookOutput:
		m.onHookOutput(ev.h, ev.stream, ev.line)
	case evCheckDone:
		m.onCheckDone(ev)
	case evProbe:
		m.onProbe(ev)
	case evBakeDone:
		m.onBakeDone(ev.c)
	case evProbeDue:
		m.onProbeDue(ev.c)
	case evHealthTimeout:
		m.onHealthTimeout(ev.c)
	case evSwitchBackWait:
		m.onSwitchBackWait()
	case evQueueIdle:
		m.onQueueIdle(ev)
	case evMemberCheck:
		m.onMemberCheck()
	case evMembers:
		m.onMembers(ev)
	case evSettle:
		m.onSettle(ev)
	case evScraped:
		m.unsettle()
	}
	m.syncMetrics()
}

func (m *master) onSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
		if m.phase == phaseHandedOver && !m.stopAsked {
			// Already on its way out: the first stop means "finish the
			// drain, then exit", as it would for a serving master.
			m.stopAsked = true
			m.log.Info("stop requested while draining after handover: finishing the drain", zap.String("signal", sigName(sig)))
			return
		}
		if m.phase == phaseStopping || m.phase == phaseHandedOver {
			if sig != syscall.SIGQUIT {
				m.log.Warn("second stop signal: killing workers now", zap.String("signal", sigName(sig)))
				m.killAll()
			}
			return
		}
		m.stop(sigName(sig))
	case syscall.SIGUSR2, syscall.SIGHUP:
		m.requestUpgrade(sigName(sig), true)
	case syscall.SIGTTIN:
		m.addWorker()
	case syscall.SIGTTOU:
		m.removeWorker()
	case syscall.SIGUSR1:
		if m.cfg.ReopenLogs != nil {
			if err := m.cfg.ReopenLogs(); err != nil {
				m.log.Error("reopen log file failed", zap.Error(err))
			}
		}
		m.forwardUSR1() // signals.go
	}
}

// stop drains every worker; the loop ends when they are gone.
func (m *master) stop(trigger string) {
	if m.phase == phaseStopping || m.phase == phaseHandedOver {
		return
	}
	m.log.Info("stop requested: draining workers", logevent.MasterStopping, zap.String("trigger", trigger),
		zap.Duration("drain_timeout", m.cfg.DrainTimeout))
	if m.phase == phaseBooting {
		// A stop is the operator's (baton stop reaches every master
		// through the keeper, a blue-green candidate in its bake
		// included): the generation did not fail, it is not wanted any
		// more, and the master exits 0 once drained. The old master, if
		// any, still hears why its upgrade ended; what it owns stays its
		// own (exit).
		m.reportFailure("new master received " + trigger + " before its workers were ready")
		m.dropQueued("master stopping (" + trigger + ")")
		m.phase = phaseStopping
		m.drainCandidate() // and refuses new connections once the drain is ordered
		return
	}
	m.sdNotify("STOPPING=1")
	m.phase = phaseStopping
	m.stopHook(m.cfg.DrainSignal)
	m.dropQueued("master stopping (" + trigger + ")")
	m.drainAll()
	m.refuseNew()
}

func (m *master) bootDone() {
	now := m.sys.now()
	if !m.rollout.readyAt.IsZero() {
		// The old master's checks, its switch and its order to take over.
		m.steps.mark("checks_and_switch", now, processCPU())
	}
	// The app's start-up: its slowest worker's, from its exec to its
	// readiness. Spawning the workers is baton's part, as is everything
	// before and after (blue-green and canary: the checks and bake are
	// apart).
	workers := m.steps.longest
	var total time.Duration
	if !m.origin.start.IsZero() {
		total = now.Sub(m.origin.start)
	}
	checks, bake := m.rollout.checks, m.rollout.bake
	batonPart := max(total-workers-checks-bake, 0)
	// Before Ready: the old master must have this when its Upgrade returns.
	res := control.ReloadResult{Generation: m.gen, TotalMS: ms(total),
		WorkersStartingMS: ms(workers), ChecksMS: ms(checks), BakeMS: ms(bake), BatonMS: ms(batonPart)}
	m.reportReady(res)
	if m.rollout.readyAt.IsZero() {
		since := now.Sub(m.bootAt)
		m.step(control.Progress{Event: control.EvGenerationReady, Count: len(m.slots), DurationMS: ms(since),
			Message: fmt.Sprintf("all %d workers ready after %s; handing over", len(m.slots), since.Round(time.Millisecond))})
	}
	// Output the workers wrote before they were ready may still be in
	// their pipes' readers: forward a moment longer.
	time.AfterFunc(250*time.Millisecond, func() { m.prog.forwarding.Store(false) })
	if err := m.upg.Ready(); err != nil {
		if !m.parentGone() {
			m.bootFailed(fmt.Errorf("%w: %w", ErrBootFailed, err), "could not signal readiness: "+err.Error())
			return
		}
		// tableflip tells the old master over a pipe; with the old master
		// gone that fails, and this generation is the only one serving.
		m.log.Warn("old master gone before the handover: serving as the master", zap.Error(err))
	}
	m.steps.mark("ready_signal", m.sys.now(), processCPU())
	m.phase = phaseServing
	if m.lns != nil && m.cfg.Rollout.Strategy.steered() && m.origin.parentAlive {
		m.allowed() // records the previous generation's sockets, to name a leftover later
	}
	m.scheduleMemberCheck()
	fields := []zap.Field{zap.Int("workers", len(m.slots)), zap.Duration("workers_starting", workers)}
	if m.origin.parentPID != 0 {
		// Started by an old master (alive, or gone mid-handover): this one
		// answers the control socket and /metrics from now on.
		if total > 0 {
			fields = append(fields, zap.Duration("total", total), zap.Duration("baton", batonPart))
		}
		if checks > 0 || bake > 0 {
			fields = append(fields, zap.Duration("checks", checks), zap.Duration("bake", bake))
		}
		if !m.origin.start.IsZero() {
			fields = append(fields, zap.Object("steps", stepsSince{m.origin.start, &m.steps}), zap.Object("steps_cpu", stepsCPU{&m.steps}))
		}
		if m.control != nil {
			go m.serveControl(m.control)
		}
		m.serveMetrics()
		m.met.tookOver(now, handoverParts{app: workers, checks: checks, bake: bake, baton: batonPart})
		m.origin.tookOver(now, m.cfg.DrainTimeout)
		m.log.Info("handover complete: new generation serving", append(fields, logevent.HandoverComplete)...)
	} else {
		if m.notify != nil {
			// The sweep below, done here: no handover waits on a first
			// master, and run after the trim, the sweep mapped again
			// what the trim gave back (1.4 MiB of the master's PSS at
			// rest).
			notify.Sweep(m.cfg.Credential)
		}
		m.trim() // before the line: whoever waits for it sees a master at rest
		m.log.Info("generation ready", append(fields, logevent.GenerationReady)...)
	}
	m.sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1\nSTATUS=generation %d, %d workers", m.self, m.gen, len(m.slots)))
	if m.notify != nil && m.origin.parentPID != 0 {
		// Notify directories of SIGKILLed masters: litter that can wait
		// until this generation serves (a dial per running master on the
		// machine; it was a quarter of a new master's CPU before its
		// loop).
		go notify.Sweep(m.cfg.Credential)
	}
	if m.reserve {
		// Only the next upgrade needs them, and it cannot start before
		// this point: creating threads before the first spawn cost a new
		// master several scheduler waits on a busy machine. (A first
		// master makes them before its boot, so that a reload asked for as
		// soon as it serves does not wait behind them.)
		m.reserve = false
		go reserveThreads(spareThreads)
	}
	if m.origin.parentPID == 0 {
		m.startQueued() // an upgrade held while the first generation booted
	}
}

// bootFailed ends a generation that did not come up: err is what the
// master exits with, reason the log's and the old master's word for it,
// fields more of generation_failed's (a reason_code).
func (m *master) bootFailed(err error, reason string, fields ...zap.Field) {
	if m.phase != phaseBooting {
		return
	}
	m.log.Error("generation failed to start; stopping its workers", append([]zap.Field{logevent.GenerationFailed, zap.String("reason", reason)}, fields...)...)
	m.prog.forwarding.Store(false)
	m.bootErr = err
	m.reportFailure(reason)
	m.phase = phaseStopping
	m.drainCandidate() // and refuses new connections once the drain is ordered
}

// onNotify handles one sd_notify datagram, attributed by the kernel to the
// sending pid.
func (m *master) onNotify(msg notify.Msg) {
	w := m.procs[msg.PID]
	if w == nil {
		// The new master may be gone (and reaped) by the time its report is
		// read, so it is known by the token it was given, not by its pid.
		// Looked at before the walk up the sender's ancestors in /proc: a
		// new master sends a report for each step of its start, and the
		// walk (up to 16 reads of /proc) for each took the old master's
		// CPU while the new one spawned.
		if t := msg.Fields[reportToken]; t != "" && t == m.up.token && m.onChildReport(msg.PID, msg.Fields) {
			return
		}
		if t := msg.Fields[reportToken]; t != "" && t == m.origin.parentToken && m.onParentOrder(msg.Fields) {
			return
		}
		w = m.workerAncestor(msg.PID)
	}
	if w == nil {
		m.log.Warn("notify message from unknown process ignored", logevent.NotifyUnknownSender, zap.Int("sender_pid", msg.PID))
		return
	}
	w.notified = true
	if st, ok := msg.Fields["STATUS"]; ok {
		w.log.Debug("worker status", zap.String("status", st))
	}
	if msg.Fields["READY"] == "1" && m.ready.byNotify() {
		m.markReady(w)
	}
	if msg.Fields["STOPPING"] == "1" {
		m.oldWorkerStopped(w)
	}
}

// workerAncestor attributes a message from a worker's descendant (a server
// that notifies from a child process) to that worker.
func (m *master) workerAncestor(pid int) *worker {
	for i := 0; i < 16 && pid > 1; i++ {
		pid = m.sys.parentOf(pid)
		if w := m.procs[pid]; w != nil {
			return w
		}
	}
	return nil
}

func (m *master) notifyAddr() string {
	if m.notify == nil {
		return ""
	}
	return m.notify.Addr()
}

// stateName is the master's state as status reports it.
func (m *master) stateName() string {
	switch {
	case m.phase == phaseBooting:
		return control.StateStarting
	case m.phase == phaseStopping:
		return control.StateStopping
	case m.phase == phaseHandedOver:
		return control.StateHandedOver
	case m.up.running:
		return control.StateUpgrading
	}
	return control.StateServing
}

func specStrings(specs []sockets.Spec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.String()
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// watchKeeper ends this master, and so its workers' whole trees, when the
// keeper dies: SIGKILLed or OOM-killed, it can no longer stop or follow
// the service, and nothing may outlive it. The master's own parent may be
// an old master, so PR_SET_PDEATHSIG cannot say it; a pidfd can. The
// first master, the keeper's child, is watched the same way (a PDEATHSIG
// SIGKILL would leave its workers' helpers running), from before its
// first worker starts.
func (m *master) watchKeeper() error {
	return m.keeper.WatchGone(!m.origin.parentAlive, func() { m.post(evKeeperGone{}) })
}

// onKeeperGone kills every worker now; the loop ends once they are reaped.
func (m *master) onKeeperGone() {
	m.log.Error("keeper is gone: killing workers and exiting", logevent.KeeperGone)
	if m.phase != phaseHandedOver {
		m.phase = phaseStopping
	}
	m.drainAll() // stops restarts and readiness
	m.killAll()
}

// keeperPID is the keeper's pid, or 0 when this master has none.
func (m *master) keeperPID() int {
	return m.keeper.KeeperPID
}

// parentGone reports whether the old master that started this one has
// exited (this master was re-parented, to the keeper).
func (m *master) parentGone() bool {
	return !m.origin.parentAlive || (m.origin.parentPID != 0 && m.sys.parentOf(m.self) != m.origin.parentPID)
}
