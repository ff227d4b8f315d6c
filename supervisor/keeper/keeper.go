//go:build linux

package keeper

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/earlysig"
	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/notify"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// stopDebounce: a repeated stop signal within this window is the same stop
// (timeout(1) signals the process and then its group; a terminal's ^C
// reaches the whole foreground group). A deliberate second ^C comes later.
const stopDebounce = 300 * time.Millisecond

// Config is what the keeper needs.
type Config struct {
	// Args is the command line the first master is started with: baton's
	// own, so the master parses the same flags. Args[0] is the absolute
	// path of the binary, which is executed by that path (not
	// /proc/self/exe): the kernel names a process (comm, what ps -C, pgrep
	// -x and top show) after the file it executes, so masters are named
	// "baton" as the keeper is.
	Args []string
	// PIDFile, if set (absolute), gets the keeper's pid at its start and
	// stays locked by the keeper for its life (package pidfile); it is removed
	// when the keeper exits.
	PIDFile string
	// ReopenLogs, if set, is called on SIGUSR1 before it is forwarded.
	ReopenLogs func() error
	Log        *zap.Logger
}

// IsMaster reports whether a keeper started this process, i.e. it is a
// master; a `baton run` that is not becomes the keeper.
func IsMaster() bool { return link.FromEnv().Present() }

// keptMaster is a master the keeper knows of. Signals go through its
// pidfd, so a master that has exited is never confused with a process
// that got its pid.
type keptMaster struct {
	pid  int
	proc proc
	// announced: it said BATON_MASTER=1, which it does once its signal
	// handlers are in place; nothing is forwarded to it before (announced).
	announced bool
	// status is its exit status once known (statusKnown): reaped by the
	// keeper, or said in its last note (link.KeyExit) when its parent, an
	// older master, reaps it.
	status      int
	statusKnown bool
}

// setStatus keeps status as m's exit status unless one is known already
// (fromNote false: the kernel's word, which wins over the master's own).
func (m *keptMaster) setStatus(status int, fromNote bool) {
	if m.statusKnown && fromNote {
		return
	}
	m.status, m.statusKnown = status, true
}

func (k *keptMaster) signal(sig syscall.Signal) error {
	if err := k.proc.signal(sig); err != nil {
		return fmt.Errorf("signal master %d %s: %w", k.pid, sigName(sig), err)
	}
	return nil
}

// keeper is the keeper's state, owned by its loop (Run): the masters it
// knows, the master of record, the stop. Its decisions act on the OS
// through sys only.
type keeper struct {
	kc   Config
	log  *zap.Logger
	sys  sys
	self int
	tty  bool // started with a controlling terminal, hangups not ignored
	// ttyHungAt is when the terminal hung up, as its poll said.
	ttyHungAt time.Time

	masters  map[int]*keptMaster // live masters by pid
	record   *keptMaster         // the master signals go to
	pending  []syscall.Signal    // for the master of record, while there is none
	ready    bool                // the first generation came up
	stopping bool
	stopSig  syscall.Signal
	stopAt   time.Time
	exited   chan *keptMaster // from the masters' watchers
	// gone are the masters that exited last, oldest first, at most
	// keptGone: a master's last note or its reaping may be read after its
	// exit was handled, and still finds it. Only these and lastRecord are
	// kept of the masters that exited, so that the keeper, which lives as
	// long as the service, holds no more after thousands of upgrades than
	// after one.
	gone       []*keptMaster
	lastRecord *keptMaster // the last master of record that exited
}

// keptGone is how many exited masters the keeper remembers (gone): an
// upgrade has two masters, and a stop during one can end three at once.
const keptGone = 4

func newKeeper(kc Config, s sys, self int, log *zap.Logger) *keeper {
	return &keeper{kc: kc, log: log, sys: s, self: self, masters: make(map[int]*keptMaster),
		exited: make(chan *keptMaster, 16), gone: make([]*keptMaster, 0, keptGone)}
}

// Run runs the keeper: it starts the first master and returns, with the
// status to exit with, once no master is left. It blocks for the service's
// whole life, is called once per process, installs signal handlers, makes
// the process a child subreaper (so it reaps every orphan below it, as PID
// 1 of a container must) and changes the process environment passed to the
// master. An error starting the first master is logged and returns 1.
func Run(kc Config) int {
	osutil.LowGC()
	osutil.OneProc()
	log := kc.Log
	if log == nil {
		log = zap.NewNop()
	}
	log = log.With(zap.Int("keeper_pid", os.Getpid()))
	o := openOS(kc, log) // sys.go
	if o == nil {
		return 1
	}
	defer o.close()
	// Caught since the first package init (earlysig) and for good.
	sigc := earlysig.Chan(syscall.SIGCHLD)
	notes := make(chan notify.Msg, 64)
	go o.sock.Run(func(msg notify.Msg) { notes <- msg })

	k := newKeeper(kc, o.sys(), o.self, log)
	k.tty = o.tty
	if !k.startFirst() {
		return 1
	}
	for {
		select {
		case sig := <-sigc:
			if sig == syscall.SIGCHLD {
				k.reap()
				continue
			}
			k.onSignal(sig.(syscall.Signal))
		case at := <-o.ttyHung:
			k.ttyHungAt = at
		case msg := <-notes:
			k.onNote(msg)
		case m := <-k.exited:
			queued := func() (notify.Msg, bool) {
				if len(notes) == 0 {
					return notify.Msg{}, false
				}
				return <-notes, true
			}
			if code, done := k.onGone(m, func() { o.sock.Barrier(100 * time.Millisecond) }, queued); done {
				return code
			}
		}
	}
}

// onGone handles the exit of master m: it returns the keeper's exit
// status and true once no master is left. A new master announces itself
// at its start, long before the old one exits; before the keeper takes
// the last exit for the service's end, barrier makes sure that nothing
// still queued on the notify socket says otherwise, and queued hands over
// each message queued so far.
func (k *keeper) onGone(m *keptMaster, barrier func(), queued func() (notify.Msg, bool)) (int, bool) {
	k.onExited(m)
	if len(k.masters) > 0 {
		return 0, false
	}
	barrier()
	for msg, ok := queued(); ok; msg, ok = queued() {
		k.onNote(msg)
	}
	if len(k.masters) > 0 {
		return 0, false
	}
	return k.exit(), true
}

// startFirst starts the first master and watches it; false when it could
// not (logged, and what the keeper made is ended). The first master
// becomes the master of record once it announces itself; signals wait for
// it until then (announced).
func (k *keeper) startFirst() bool {
	m := &keptMaster{}
	pid, p, err := k.sys.startMaster(func() { k.exited <- m })
	if err != nil {
		k.sys.endService()
		k.log.Error("keeper: cannot start the master", zap.Error(err))
		return false
	}
	m.pid, m.proc = pid, p
	k.masters[pid] = m
	// Debug: a start that fails should print the master's one line, not
	// the keeper's chatter around it.
	k.log.Debug("keeper started", zap.Int("master_pid", pid))
	return true
}

// reap collects every exited child: masters re-parented to the keeper,
// and orphans of any process below it (PID 1's duty in a container). It
// keeps the statuses of masters for the keeper's own exit status.
func (k *keeper) reap() {
	for _, r := range k.sys.reap() {
		pid, status := r.pid, r.status
		m := k.masters[pid]
		if last := k.lastExited(); m == nil && last != nil && last.pid == pid {
			m = last // its pidfd said so first
		}
		if m != nil {
			m.setStatus(status, false)
			k.logOutcome("master exited", logevent.MasterExited, zap.Int("master_pid", pid), zap.Int("status", status))
		} else {
			k.log.Debug("keeper reaped an orphan", zap.Int("pid", pid), zap.Int("status", status))
		}
	}
}

// onExited forgets a master that has exited.
func (k *keeper) onExited(m *keptMaster) {
	k.log.Debug("master gone", zap.Int("master_pid", m.pid), zap.Int("masters_left", len(k.masters)-1))
	m.proc.close()
	delete(k.masters, m.pid)
	if len(k.gone) == keptGone {
		k.gone = append(k.gone[:0], k.gone[1:]...) // in place: no new array per exit
	}
	k.gone = append(k.gone, m)
	if len(k.masters) > 0 {
		// An upgrade is over: what it used is garbage now. With no
		// master left the keeper is about to exit: nothing to rest for.
		k.trim(m, "master_exited")
	}
	if m == k.record {
		k.record = nil
		k.lastRecord = m
		// The one master left is the service now (a new master whose old
		// one died mid-handover takes over): signals go to it. Not in a
		// stop: the one left is a new generation the stop cut short (a
		// blue-green candidate in its bake), whose failure to start is not
		// the service's exit status.
		if len(k.masters) == 1 && !k.stopping {
			for _, o := range k.masters {
				k.setRecord(o)
			}
		}
	}
}

// exit returns the keeper's exit status once no master is left: that of
// the master that served last (not of a new one a stop cut short), else of
// the last master; 1 if it cannot be known.
func (k *keeper) exit() int {
	// The last masters are the keeper's children by now (their parents
	// exited first): collect them.
	k.reap()
	k.sys.endService()
	k.reap() // what was left of the service, killed
	status, pick := 1, k.lastExited()
	if k.ready && k.lastRecord != nil {
		pick = k.lastRecord
	}
	if !pick.statusKnown {
		// Its pidfd said it exited; as the keeper's child it is reapable
		// at once (not ours: its parent reaps it, and the status is lost).
		if s, ok := k.sys.waitChild(pick.pid); ok {
			pick.setStatus(s, false)
		}
	}
	if pick.statusKnown {
		status = pick.status
	}
	k.logOutcome("keeper exiting: no master left", logevent.KeeperExiting, zap.Int("status", status))
	return status
}

func (k *keeper) onSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
		k.stop(sig)
	case syscall.SIGHUP:
		if k.tty && k.hangup() {
			// The terminal hung up: not a deploy. A job whose terminal is
			// gone stops, gracefully.
			k.log.Warn("terminal hung up: stopping", logevent.TerminalHungUp)
			k.stop(syscall.SIGTERM)
			return
		}
		k.toRecord(sig)
	case syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU:
		k.toRecord(sig)
	case syscall.SIGUSR1:
		if k.kc.ReopenLogs != nil {
			if err := k.kc.ReopenLogs(); err != nil {
				k.log.Error("reopen log file failed", zap.Error(err))
			}
		}
		k.toAll(sig, nil)
	}
}

// stop forwards a stop to every master: the serving one stops, one that is
// starting a new generation gives up (a stop wins over an upgrade), an old
// one that is draining finishes its drain.
func (k *keeper) stop(sig syscall.Signal) {
	now := k.sys.now()
	if k.stopping && sig == k.stopSig && now.Sub(k.stopAt) < stopDebounce {
		k.log.Debug("repeated stop signal ignored", zap.String("signal", sigName(sig)))
		return
	}
	if !k.stopping {
		k.log.Info("stop requested: forwarding to every master", logevent.KeeperStopping, zap.String("signal", sigName(sig)), zap.Int("masters", len(k.masters)))
	}
	k.stopping, k.stopSig, k.stopAt = true, sig, now
	k.toAll(sig, nil)
}

// toAll sends sig to every master but skip (nil: none).
func (k *keeper) toAll(sig syscall.Signal, skip *keptMaster) {
	for _, m := range k.masters {
		if m == skip || !m.announced {
			continue // one that has not announced itself gets the stop then
		}
		if err := m.signal(sig); err != nil {
			k.log.Warn("forward signal failed", zap.Error(err))
		}
	}
}

// setRecord makes m the master of record and delivers the signals held
// while there was none.
func (k *keeper) setRecord(m *keptMaster) {
	k.record = m
	pending := k.pending
	k.pending = nil
	for _, sig := range pending {
		k.toRecord(sig)
	}
}

// toRecord forwards sig to the master of record, or keeps it until there
// is one again.
func (k *keeper) toRecord(sig syscall.Signal) {
	if k.record == nil {
		k.log.Info("signal held until a master is of record", logevent.SignalHeld, zap.String("signal", sigName(sig)))
		k.pending = append(k.pending, sig)
		return
	}
	if err := k.record.signal(sig); err != nil {
		k.log.Warn("forward signal failed", zap.Error(err))
	}
}

func (k *keeper) onNote(msg notify.Msg) {
	m := k.masters[msg.PID]
	if announce, ackTo := link.Announcement(msg.Fields); announce {
		var why string
		if m == nil {
			m, why = k.register(msg.PID, msg.Fields[link.KeyToken])
		} else {
			k.announced(m) // the first master
		}
		k.answer(msg.PID, ackTo, m, why) // handshake.go
		if m == nil {
			return // refused, and said why once (register)
		}
	}
	if m == nil {
		if e := k.exitedMaster(msg.PID); e != nil {
			// A master's last words, read after its exit was handled (the
			// socket is read after the exit is seen): its status still
			// counts, the rest is moot.
			noteExit(e, msg.Fields)
			k.log.Debug("notify message from an exited master", zap.Int("master_pid", msg.PID))
			return
		}
		k.log.Warn("notify message from unknown process ignored", logevent.NotifyUnknownSender, zap.Int("sender_pid", msg.PID))
		return
	}
	noteExit(m, msg.Fields)
	if msg.Fields[link.KeyStop] == "1" && !k.stopping {
		k.log.Info("stop requested through a master: stopping every other master", logevent.KeeperStopping, zap.Int("master_pid", m.pid))
		k.stopping, k.stopSig, k.stopAt = true, syscall.SIGTERM, k.sys.now()
		k.toAll(syscall.SIGTERM, m) // m stops already; a second TERM would kill

	}
	if _, ok := msg.Fields["MAINPID"]; ok && msg.Fields["READY"] == "1" {
		// Masters say MAINPID= when their generation serves: it is now the
		// master of record.
		k.setRecord(m)
		if !k.ready {
			k.ready = true // first: the at-rest line is said at info from now on
			k.trim(m, "generation_ready")
		}
	}
	k.relay(msg.Fields)
}

// lastExited is the master that exited last, nil before any did.
func (k *keeper) lastExited() *keptMaster {
	if len(k.gone) == 0 {
		return nil
	}
	return k.gone[len(k.gone)-1]
}

// exitedMaster is the master of pid among those that exited lately (gone)
// and the last of record, nil if none: a late note of a master that
// exited long before is taken for a stranger's.
func (k *keeper) exitedMaster(pid int) *keptMaster {
	for i := len(k.gone) - 1; i >= 0; i-- {
		if k.gone[i].pid == pid {
			return k.gone[i]
		}
	}
	if k.lastRecord != nil && k.lastRecord.pid == pid {
		return k.lastRecord
	}
	return nil
}

// noteExit keeps the exit status m said in fields (link.KeyExit), unless
// one is known already (reaped, which is the kernel's word). Its parent
// may be another master, which reaps it: this is then the only way to
// learn its status.
func noteExit(m *keptMaster, fields map[string]string) {
	v, ok := fields[link.KeyExit]
	if !ok {
		return
	}
	if code, err := strconv.Atoi(v); err == nil {
		m.setStatus(code, true)
	}
}

// register adopts a master that announced itself: a child of a master we
// know (tableflip's re-exec) or of ours. It returns nil and why when it
// does not; a failure of the keeper's own (out of descriptors) is said as
// such, never taken for a fact about the process.
func (k *keeper) register(pid int, token string) (*keptMaster, string) {
	exited := func() (*keptMaster, string) {
		// Gone before its announcement was read: a master that failed its
		// own start checks says so in one line and exits without waiting
		// for the answer. Nothing to adopt, and no stranger to warn of.
		k.log.Debug("master announcement from a process that has exited", zap.Int("sender_pid", pid))
		return nil, "exited before its announcement was read"
	}
	ppid, err := k.sys.parent(pid)
	if osutil.NoProcess(err) {
		return exited()
	}
	if err != nil {
		k.log.Error("master announcement not accepted: keeper cannot read the process", logevent.MasterRefused, zap.Int("sender_pid", pid), zap.Error(err))
		return nil, "keeper cannot read the process: " + err.Error()
	}
	// The keeper's own program, or a master that shows the keeper's
	// token (baton upgraded by a symlink moved to another file).
	if !k.sys.sameProgram(pid) && !k.sys.knowsToken(token) {
		// A zombie's executable cannot be read: one that exited since its
		// parent was read is no stranger either.
		if _, err := k.sys.parent(pid); osutil.NoProcess(err) {
			return exited()
		}
		k.log.Warn("master announcement from a process that does not run baton ignored", zap.Int("sender_pid", pid))
		return nil, "not running baton"
	}
	if ppid != k.self && k.masters[ppid] == nil {
		k.log.Warn("master announcement from a process no master started ignored", zap.Int("sender_pid", pid), zap.Int("parent_pid", ppid))
		return nil, fmt.Sprintf("parent %d is no master the keeper knows", ppid)
	}
	m := &keptMaster{pid: pid, announced: true}
	p, err := k.sys.watch(pid, func() { k.exited <- m })
	if err != nil {
		if !osutil.NoProcess(err) {
			k.log.Error("master announcement not accepted: keeper cannot watch the process", logevent.MasterRefused, zap.Int("sender_pid", pid), zap.Error(err))
		}
		return nil, "keeper cannot watch it: " + err.Error()
	}
	m.proc = p
	k.masters[pid] = m
	k.log.Info("master registered", logevent.MasterRegistered, zap.Int("master_pid", pid))
	if k.stopping {
		m.signal(syscall.SIGTERM) // a stop wins over an upgrade in flight
	}
	return m, ""
}

// relay passes a master's sd_notify message to the service manager as the
// keeper's own: the keeper is the service's main pid, so MAINPID= is left
// out, and so are baton's own keys.
func (k *keeper) relay(fields map[string]string) {
	var lines []string
	for key, v := range fields {
		if key == "MAINPID" || strings.HasPrefix(key, "BATON_") {
			continue
		}
		lines = append(lines, key+"="+v)
	}
	if len(lines) == 0 {
		return
	}
	if err := k.sys.notifyManager(strings.Join(lines, "\n")); err != nil {
		k.log.Warn("notify service manager failed", zap.Error(err))
	}
}

// hangup reports whether a SIGHUP now comes from the terminal hanging up:
// it hung up just now (the kernel sends SIGHUP as it does). A HUP long
// after the terminal went (a job that survived it, then a deploy) is an
// upgrade.
func (k *keeper) hangup() bool {
	if k.ttyHungAt.IsZero() && !k.sys.ttyAlive() {
		k.ttyHungAt = k.sys.now() // the signal beat the poll
	}
	return !k.ttyHungAt.IsZero() && k.sys.now().Sub(k.ttyHungAt) < 2*time.Second
}

// logOutcome logs at info once the service has served, at debug for a
// start that failed (its master already said why, in one line).
func (k *keeper) logOutcome(msg string, fields ...zap.Field) {
	if k.ready {
		k.log.Info(msg, fields...)
	} else {
		k.log.Debug(msg, fields...)
	}
}

// announced notes that the first master announced itself: it becomes the
// master of record and gets what was held for it.
func (k *keeper) announced(m *keptMaster) {
	if m.announced {
		return
	}
	m.announced = true
	if k.stopping {
		k.pending = nil // a stop wins over what was held
		if err := m.signal(k.stopSig); err != nil {
			k.log.Warn("forward signal failed", zap.Error(err))
		}
		return
	}
	if k.record == nil && !k.ready {
		k.setRecord(m)
	}
}

// trim gives back what start-up or an upgrade used (osutil.Trim): after
// the first generation came up, and after each master's exit (m, and
// trigger says which). It then says so (keeper_at_rest): the keeper's
// memory from that line on is its memory at rest, which is what a
// benchmark or a soak waits for before it measures. (It does not read its
// heap's size for the line: runtime/metrics' first read built its tables
// and mapped again pages the trim had just given back, 0.27 MiB of the
// keeper's PSS at rest.)
func (k *keeper) trim(m *keptMaster, trigger string) {
	unmapped := k.sys.trim()
	k.logOutcome("keeper at rest: memory given back", logevent.KeeperAtRest, zap.Int("master_pid", m.pid),
		zap.String("trigger", trigger), zap.Int("masters", len(k.masters)),
		zap.Int64("binary_bytes_unmapped", unmapped))
}

// sigName is a signal's name as logs give it: "SIGUSR2".
func sigName(sig syscall.Signal) string { return unix.SignalName(sig) }
