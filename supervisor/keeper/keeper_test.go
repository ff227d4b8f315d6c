//go:build linux

package keeper

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"github.com/baton-sh/baton/supervisor/internal/notify"
	"go.uber.org/zap"
)

// The keeper's decisions, in-process: a fake OS (fake_test.go), the
// handlers the loop in Run calls, no process started.

const (
	TERM = syscall.SIGTERM
	INT  = syscall.SIGINT
	QUIT = syscall.SIGQUIT
	HUP  = syscall.SIGHUP
	USR1 = syscall.SIGUSR1
	USR2 = syscall.SIGUSR2
	TTIN = syscall.SIGTTIN
	TTOU = syscall.SIGTTOU
)

// serving is a keeper whose first master, 100, announced itself and
// serves.
func serving(t *testing.T) *lk {
	l := newLK(t)
	l.announce(100)
	l.ready(100)
	return l
}

func TestFirstMasterStartedAndSignalsHeldUntilItAnnounces(t *testing.T) {
	l := newLK(t)
	if len(l.k.masters) != 1 || l.k.masters[100] == nil {
		t.Fatalf("masters after start: %v, want the first master, 100", l.k.masters)
	}
	// Its handlers may not be in place yet: nothing reaches it.
	l.k.onSignal(USR2)
	l.k.onSignal(TTIN)
	l.wantSent(100)
	if n := l.events(logevent.SignalHeld.String); n != 2 {
		t.Fatalf("%d signal_held entries, want 2", n)
	}
	l.announce(100)
	l.wantAnswers("@baton-ack-100: ")
	l.wantSent(100, USR2, TTIN) // in the order they came
	l.k.onSignal(TTOU)
	l.wantSent(100, USR2, TTIN, TTOU)
}

func TestStopBeforeTheFirstMasterAnnouncesWinsOverHeldSignals(t *testing.T) {
	l := newLK(t)
	l.k.onSignal(USR2)
	l.k.onSignal(TERM)
	l.wantSent(100)
	l.announce(100)
	l.wantSent(100, TERM) // the held USR2 is dropped: a stop wins
	if l.k.record != nil {
		t.Fatal("a stopping first master became the master of record")
	}
	l.ready(100) // its generation came up as the stop reached it
	l.wantSent(100, TERM)
}

func TestStartFailureEndsTheService(t *testing.T) {
	f := newFakeOS()
	f.startErr = errors.New("exec: no such file")
	k := newKeeper(Config{}, f.sys(), keeperPid, zap.NewNop())
	f.k = k
	if k.startFirst() {
		t.Fatal("startFirst succeeded with a failing start")
	}
	if f.ended != 1 {
		t.Fatalf("endService called %d times, want 1 (pid file removed, trees ended)", f.ended)
	}
}

func TestUpgradeAdoptsTheNewMasterAndMovesTheRecordWhenItServes(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.wantAnswers("@baton-ack-100: ", "@baton-ack-101: ")
	if l.k.masters[101] == nil || l.events(logevent.MasterRegistered.String) != 1 {
		t.Fatal("new master 101 not registered")
	}
	// Until it serves, the old master is the one of record.
	l.k.onSignal(TTIN)
	l.wantSent(100, TTIN)
	l.wantSent(101)
	l.ready(101)
	l.k.onSignal(HUP) // no terminal: a deploy
	l.wantSent(101, HUP)
	// The old master drains and exits: the keeper stays.
	if _, done := l.exit(100, 0, false); done {
		t.Fatal("keeper exited with a master left")
	}
	if l.k.record != l.k.masters[101] {
		t.Fatal("101 is not the master of record after 100 exited")
	}
	// A third generation, started by 101 (100's pid is no master any more).
	l.child(102, 101)
	l.announce(102)
	if l.k.masters[102] == nil {
		t.Fatal("master 102, child of 101, not registered")
	}
}

func TestAnnouncementsRefused(t *testing.T) {
	l := serving(t)
	// A process no master started.
	l.child(200, 7)
	l.announce(200)
	// A worker: child of a master, but not running baton.
	l.child(201, 100)
	l.f.notBaton[201] = true
	l.announce(201)
	// The keeper cannot read /proc (out of descriptors): said as its own
	// failure, never taken for a fact about the process.
	l.f.parentErr[202] = fmt.Errorf("open /proc/202/stat: %w", syscall.EMFILE)
	l.announce(202)
	// Gone before the keeper could watch it.
	l.child(203, 100)
	l.f.watchErr[203] = fmt.Errorf("pidfd_open: %w", syscall.ESRCH)
	l.announce(203)
	// The keeper cannot watch it (out of descriptors).
	l.child(204, 100)
	l.f.watchErr[204] = fmt.Errorf("pidfd_open: %w", syscall.EMFILE)
	l.announce(204)

	// Exited before the keeper read it (a master that failed its own
	// start checks): no warning, as no stranger announced.
	l.f.parentErr[206] = fmt.Errorf("open /proc/206/stat: %w", syscall.ENOENT)
	l.announce(206)
	// The same, exiting between the keeper's reading of its parent and of
	// its executable (TestTightPidsMax's start refusal, 1 run in 20).
	l.child(207, 100)
	l.f.exitsAtExe[207] = true
	l.announce(207)
	for _, e := range l.logs.All() {
		for _, f := range e.Context {
			if f.Key == "sender_pid" && (f.Integer == 206 || f.Integer == 207) && e.Level > zap.DebugLevel {
				t.Fatalf("an announcement from an exited process logged at %s: %q", e.Level, e.Message)
			}
		}
	}

	want := []string{
		"@baton-ack-100: ",
		"@baton-ack-200: parent 7 is no master the keeper knows",
		"@baton-ack-201: not running baton",
		"@baton-ack-202: keeper cannot read the process: open /proc/202/stat: too many open files",
		"@baton-ack-203: keeper cannot watch it: pidfd_open: no such process",
		"@baton-ack-204: keeper cannot watch it: pidfd_open: too many open files",
		"@baton-ack-206: exited before its announcement was read",
		"@baton-ack-207: exited before its announcement was read",
	}
	l.wantAnswers(want...)
	if len(l.k.masters) != 1 {
		t.Fatalf("masters %v, want only 100", l.k.masters)
	}
	if n := l.events(logevent.MasterRefused.String); n != 2 {
		t.Fatalf("%d master_refused entries, want 2 (the keeper's own failures only)", n)
	}
	// A message from a process that is no master is ignored, not relayed.
	l.f.manager = nil
	l.note(300, "STATUS=hello")
	if len(l.f.manager) != 0 || l.events(logevent.NotifyUnknownSender.String) == 0 {
		t.Fatalf("message from unknown process: relayed %q, or not logged as unknown", l.f.manager)
	}
	// An announcement that asks no answer (a master older than the
	// handshake) is registered without one.
	l.child(205, 100)
	l.note(205, link.KeyRegister+"=1")
	if l.k.masters[205] == nil || len(l.f.answers) != len(want) {
		t.Fatalf("announcement without BATON_ACK_TO: registered %v, answers %q", l.k.masters[205] != nil, l.f.answers)
	}
}

func TestOldMasterGoneMidHandoverLeavesTheNewOneOfRecord(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	// 100 dies before 101 serves: 101, the one master left, is the
	// service now, and gets what comes.
	if _, done := l.exit(100, 137, false); done {
		t.Fatal("keeper exited with master 101 alive")
	}
	if l.k.record != l.k.masters[101] {
		t.Fatal("101 is not of record after 100 died mid-handover")
	}
	l.k.onSignal(USR2)
	l.wantSent(101, USR2)
}

func TestRecordGoneWithTwoMastersLeftHoldsSignals(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.child(102, 100)
	l.announce(102)
	l.exit(100, 137, false)
	// Two masters and neither has served: which is the service is not
	// known, so a signal for the master of record waits.
	l.k.onSignal(TTIN)
	l.wantSent(101)
	l.wantSent(102)
	l.ready(102)
	l.wantSent(102, TTIN)
}

func TestStopGoesToEveryMasterOnce(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.k.onSignal(TERM)
	l.wantSent(100, TERM)
	l.wantSent(101, TERM)
	// The same stop again at once (timeout(1) signals the process, then
	// its group; ^C reaches the whole foreground group): one stop.
	l.f.now = l.f.now.Add(stopDebounce - time.Millisecond)
	l.k.onSignal(TERM)
	l.wantSent(100, TERM)
	// Another signal is another stop.
	l.k.onSignal(INT)
	l.wantSent(100, TERM, INT)
	// A deliberate second one, later, is forwarded (a master's second
	// TERM/INT kills its workers).
	l.f.now = l.f.now.Add(stopDebounce)
	l.k.onSignal(INT)
	l.wantSent(100, TERM, INT, INT)
	l.wantSent(101, TERM, INT, INT)
	if n := l.events(logevent.KeeperStopping.String); n != 1 {
		t.Fatalf("%d keeper_stopping entries, want 1", n)
	}
	// A master registering during the stop is stopped too: a stop wins
	// over an upgrade in flight.
	l.child(102, 101)
	l.announce(102)
	l.wantSent(102, TERM)
	// QUIT is a stop too.
	l2 := serving(t)
	l2.k.onSignal(QUIT)
	l2.wantSent(100, QUIT)
}

func TestStopThroughAMasterStopsEveryOtherMaster(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.note(100, link.StopMsg) // baton stop, told to master 100
	l.wantSent(100)           // it stops already: a second TERM would kill
	l.wantSent(101, TERM)
	// Said twice, stopped once.
	l.note(100, link.StopMsg)
	l.wantSent(101, TERM)
	// A signal after a stop through a master, within the debounce, is the
	// same stop.
	l.k.onSignal(TERM)
	l.wantSent(100)
}

func TestHangupFromTheTerminalStopsAndFromADeployUpgrades(t *testing.T) {
	// No terminal: HUP is a deploy.
	l := serving(t)
	l.k.onSignal(HUP)
	l.wantSent(100, HUP)

	// A terminal that is there: a deploy.
	l = serving(t)
	l.k.tty = true
	l.k.onSignal(HUP)
	l.wantSent(100, HUP)

	// The terminal hung up just now (its poll said so): a graceful stop.
	l = serving(t)
	l.k.tty = true
	l.k.ttyHungAt = l.f.now.Add(-time.Second)
	l.k.onSignal(HUP)
	l.wantSent(100, TERM)
	if l.events(logevent.TerminalHungUp.String) != 1 {
		t.Fatal("no terminal_hung_up entry")
	}

	// The signal beat the poll: the terminal cannot be opened any more.
	l = serving(t)
	l.k.tty = true
	l.f.ttyDead = true
	l.k.onSignal(HUP)
	l.wantSent(100, TERM)

	// The terminal went long ago (a job that survived it): a deploy.
	l = serving(t)
	l.k.tty = true
	l.k.ttyHungAt = l.f.now.Add(-3 * time.Second)
	l.k.onSignal(HUP)
	l.wantSent(100, HUP)
}

func TestUSR1ReopensTheLogAndReachesEveryAnnouncedMaster(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.k.onSignal(USR1)
	if l.reopened != 1 {
		t.Fatalf("ReopenLogs called %d times, want 1", l.reopened)
	}
	l.wantSent(100, USR1)
	l.wantSent(101, USR1)
	// A master that has not announced itself opens its log at its start.
	l2 := newLK(t)
	l2.k.onSignal(USR1)
	l2.wantSent(100)
}

func TestNotificationsRelayedAsTheKeepersOwn(t *testing.T) {
	l := newLK(t)
	l.announce(100) // BATON_ keys only: nothing to relay
	if len(l.f.manager) != 0 {
		t.Fatalf("an announcement was relayed: %q", l.f.manager)
	}
	l.note(100, "READY=1", "MAINPID=100", "STATUS=serving")
	l.note(100, "RELOADING=1", "MONOTONIC_USEC=5")
	l.note(100, "STOPPING=1")
	l.note(100, link.ExitMsg(0))
	want := [][]string{{"READY=1", "STATUS=serving"}, {"MONOTONIC_USEC=5", "RELOADING=1"}, {"STOPPING=1"}}
	if len(l.f.manager) != len(want) {
		t.Fatalf("relayed %q, want %q", l.f.manager, want)
	}
	for i, msg := range l.f.manager {
		lines := strings.Split(msg, "\n")
		slices.Sort(lines)
		if !slices.Equal(lines, want[i]) {
			t.Fatalf("relayed message %d: %q, want %q (MAINPID= is the keeper's, BATON_ keys are baton's)", i, lines, want[i])
		}
	}
	if l.k.record != l.k.masters[100] || !l.k.ready {
		t.Fatal("READY=1 with MAINPID= did not make 100 the serving master of record")
	}
}

func TestExitStatusIsTheLastServingMasters(t *testing.T) {
	// The serving master exits 3 and is the keeper's child.
	l := serving(t)
	code, done := l.exit(100, 3, true)
	if !done || code != 3 {
		t.Fatalf("keeper exit %d (done %v), want 3", code, done)
	}
	if l.f.ended != 1 || l.f.endedAt != 0 {
		t.Fatalf("endService called %d times with %d masters known, want once with none", l.f.ended, l.f.endedAt)
	}
	if l.events(logevent.KeeperExiting.String) != 1 {
		t.Fatal("no keeper_exiting entry")
	}

	// The master of record exits during a stop with two new masters
	// starting: the status is the one that served (0), not that of the
	// last new master the stop cut short (1).
	l = serving(t)
	l.child(101, 100)
	l.announce(101)
	l.child(102, 100)
	l.announce(102)
	l.k.onSignal(TERM)
	l.exit(100, 0, true)
	l.note(101, link.ExitMsg(1)) // reaped by 100, its parent: only said
	l.exit(101, 1, false)
	l.note(102, link.ExitMsg(1))
	code, done = l.exit(102, 1, false)
	if !done || code != 0 {
		t.Fatalf("keeper exit %d (done %v), want 0, the serving master's", code, done)
	}

	// A first master that never served: its own status.
	l = newLK(t)
	l.announce(100)
	if code, _ := l.exit(100, 1, true); code != 1 {
		t.Fatalf("keeper exit %d, want 1", code)
	}

	// Not reaped by SIGCHLD's time: the keeper waits for its child.
	l = serving(t)
	l.f.children[100] = 4
	if code, _ := l.exit(100, 0, false); code != 4 {
		t.Fatalf("keeper exit %d, want 4 from the wait", code)
	}

	// Nobody can say: 1.
	l = serving(t)
	if code, _ := l.exit(100, 0, false); code != 1 {
		t.Fatalf("keeper exit %d, want 1 when the status is unknown", code)
	}
}

func TestKeeperStaysWhileAnyMasterLives(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.ready(101)
	if _, done := l.exit(101, 0, false); done {
		t.Fatal("keeper exited while master 100 lives")
	}
	if l.f.ended != 0 {
		t.Fatal("service ended while a master lives")
	}
	// The exited master's handle is let go, and it gets nothing more.
	if !l.f.procs[101].closed {
		t.Fatal("handle on 101 not closed after its exit")
	}
	l.k.onSignal(TERM)
	l.wantSent(101)
}

func TestAnnouncementQueuedAtTheLastExitKeepsTheService(t *testing.T) {
	l := serving(t)
	// 101 announced itself, but the keeper has not read it yet when 100,
	// the only master it knows, exits; 101, an orphan now, is the
	// keeper's child (child subreaper).
	l.child(101, keeperPid)
	l.queued = []notify.Msg{{PID: 101, Fields: map[string]string{link.KeyRegister: "1", link.KeyAckTo: "@baton-ack-101"}}}
	if _, done := l.exit(100, 0, true); done {
		t.Fatal("keeper exited with master 101's announcement queued")
	}
	if l.barriers != 1 || l.k.masters[101] == nil || l.k.record != nil {
		t.Fatalf("barriers %d, 101 registered %v, record %v: want one barrier, 101 registered, not yet of record",
			l.barriers, l.k.masters[101] != nil, l.k.record)
	}
	if l.f.ended != 0 {
		t.Fatal("service ended with master 101 alive")
	}
	l.ready(101)
	if code, done := l.exit(101, 0, true); !done || code != 0 {
		t.Fatalf("keeper exit %d (done %v), want 0 after 101 exited", code, done)
	}
}

func TestExitNoteReadAfterTheExitIsNoStranger(t *testing.T) {
	// The master said its status and exited; the keeper handles the exit
	// before it reads the note (queued on the notify socket): no warning
	// of an unknown sender, the keeper exits with the status.
	l := serving(t)
	l.queued = []notify.Msg{{PID: 100, Fields: map[string]string{link.KeyExit: "0"}}}
	if code, done := l.exit(100, 0, true); !done || code != 0 {
		t.Fatalf("keeper exit %d (done %v), want 0", code, done)
	}
	if n := l.events(logevent.NotifyUnknownSender.String); n != 0 {
		t.Fatalf("%d notify_unknown_sender entries for the exited master's own note, want 0", n)
	}

	// Not the keeper's child (its parent reaps it): the late note is the
	// only word of its status, and it counts.
	l = serving(t)
	l.queued = []notify.Msg{{PID: 100, Fields: map[string]string{link.KeyExit: "3"}}}
	if code, _ := l.exit(100, 3, false); code != 3 {
		t.Fatalf("keeper exit %d, want 3 from the late note", code)
	}
	if n := l.events(logevent.NotifyUnknownSender.String); n != 0 {
		t.Fatalf("%d notify_unknown_sender entries, want 0", n)
	}

	// A stranger is still one.
	l.note(4242, "STATUS=hi")
	if n := l.events(logevent.NotifyUnknownSender.String); n != 1 {
		t.Fatalf("%d notify_unknown_sender entries for pid 4242, want 1", n)
	}
}

func TestAnswerToAMasterThatStoppedWaitingIsNoError(t *testing.T) {
	// The first master announced itself, then failed a check of its own
	// (a start that does not fit its task limit) and exited before the
	// answer: nobody listens at its address. Its one-line refusal is the
	// last word, not an error of the keeper's after it.
	l := newLK(t)
	l.f.answerErr = fmt.Errorf("answer @baton-ack-100: %w", syscall.ECONNREFUSED)
	l.announce(100)
	if n := len(l.logs.FilterLevelExact(zap.ErrorLevel).All()); n != 0 {
		t.Fatalf("%d error entries for an answer nobody waited for, want 0: %v", n, l.logs.All())
	}
	if code, done := l.exit(100, 1, true); !done || code != 1 {
		t.Fatalf("keeper exit %d (done %v), want the master's 1", code, done)
	}
	// Any other failure to answer is the keeper's, and said.
	l = newLK(t)
	l.f.answerErr = fmt.Errorf("answer @baton-ack-100: %w", syscall.EBADF)
	l.announce(100)
	if n := len(l.logs.FilterLevelExact(zap.ErrorLevel).All()); n != 1 {
		t.Fatalf("%d error entries for an EBADF answer, want 1", n)
	}
}

// The keeper lives as long as the service and holds almost nothing: what
// it keeps of the masters it knew must not grow with the upgrades. 2,000
// upgrades on the fake OS, in each order an exit can be seen in (reaped
// by the keeper before or after its pidfd said so, or by its parent with
// only a note to say its status): the keeper's state stays the size it
// had after the first few.
func TestStateStaysBoundedOverManyUpgrades(t *testing.T) {
	l := serving(t)
	old, next := 100, 101
	upgrade := func(i int) {
		l.child(next, old)
		l.announce(next)
		l.ready(next)
		switch i % 3 {
		case 0: // the keeper's child, reaped at SIGCHLD before the pidfd
			l.exit(old, 0, true)
		case 1: // reaped by its parent: its note is the only word
			l.note(old, link.ExitMsg(0))
			l.exit(old, 0, false)
		case 2: // the note read after the exit was handled
			l.exit(old, 0, false)
			l.note(old, link.ExitMsg(0))
		}
		if l.k.record == nil || l.k.record.pid != next {
			t.Fatalf("upgrade %d: master of record %v, want %d", i, l.k.record, next)
		}
		old, next = next, next+1
	}
	for i := range 10 {
		upgrade(i)
	}
	warm := l.k.held()
	for i := 10; i < 2000; i++ {
		upgrade(i)
		if n := l.k.held(); n > warm {
			t.Fatalf("after upgrade %d the keeper holds %d entries, after 10 it held %d", i, n, warm)
		}
	}
	if n := l.events(logevent.NotifyUnknownSender.String); n != 0 {
		t.Fatalf("%d notify_unknown_sender entries, want 0", n)
	}
	// The service still ends with the status of the master that served.
	l.note(old, link.ExitMsg(5))
	if code, done := l.exit(old, 5, false); !done || code != 5 {
		t.Fatalf("keeper exit %d (done %v), want 5", code, done)
	}
}

// held counts the entries of the keeper's state that could grow with the
// masters it has known.
func (k *keeper) held() int {
	return len(k.masters) + len(k.gone) + cap(k.gone) + len(k.pending) + len(k.exited)
}

// The keeper says when it is at rest (at info), after it gave memory
// back: once its first generation serves, and after each master's exit,
// naming that master; a benchmark measures it from that line on.
func TestAtRestSaidAfterEachTrim(t *testing.T) {
	l := newLK(t)
	l.announce(100)
	if l.f.trims != 0 || l.events(logevent.KeeperAtRest.String) != 0 {
		t.Fatalf("%d trims before the first generation serves, want 0", l.f.trims)
	}
	l.ready(100)
	l.child(101, 100)
	l.announce(101)
	l.ready(101)
	l.exit(100, 0, true)
	var got []string
	for _, e := range l.logs.All() {
		if c := e.ContextMap(); c["event"] == logevent.KeeperAtRest.String && e.Level == zap.InfoLevel {
			got = append(got, fmt.Sprintf("%v %v %v", c["trigger"], c["master_pid"], c["masters"]))
		}
	}
	want := []string{"generation_ready 100 1", "master_exited 100 1"}
	if !slices.Equal(got, want) || l.f.trims != 2 {
		t.Fatalf("keeper_at_rest entries %q after %d trims, want %q after 2", got, l.f.trims, want)
	}
	// The last master's exit ends the keeper: no rest said before it goes.
	l.exit(101, 0, true)
	if n := l.events(logevent.KeeperAtRest.String); n != 2 || l.f.trims != 2 {
		t.Fatalf("after the last master's exit: %d keeper_at_rest entries, %d trims; want 2 and 2", n, l.f.trims)
	}
}

// A new master that runs another file than the keeper (baton upgraded by
// moving a symlink on its path to a new binary) is known by the keeper's
// token, which only masters carry; without it, or with another, it is
// refused as before.
func TestAnnouncementOfAnotherBinaryKnownByToken(t *testing.T) {
	l := serving(t)
	l.child(301, 100)
	l.f.notBaton[301] = true
	l.note(301, link.KeyRegister+"=1", link.KeyAckTo+"=@baton-ack-301", link.KeyToken+"="+fakeToken)
	if l.k.masters[301] == nil {
		t.Fatal("a master of another binary that showed the keeper's token was not registered")
	}
	l.child(302, 100)
	l.f.notBaton[302] = true
	l.note(302, link.KeyRegister+"=1", link.KeyAckTo+"=@baton-ack-302", link.KeyToken+"=forged")
	l.child(303, 100)
	l.f.notBaton[303] = true
	l.announce(303)
	if l.k.masters[302] != nil || l.k.masters[303] != nil {
		t.Fatal("a process of another binary with a wrong or no token was registered")
	}
}

// A stop during a blue-green bake: the old master (of record) exits
// first, then the candidate, which the stop cut short (status 1). The
// service stopped cleanly: the keeper exits with the old master's 0, not
// the candidate's (TestStopDuringBlueGreenBake, when the old one exited
// first).
func TestStopDuringBakeExitsWithTheServingMastersStatus(t *testing.T) {
	l := serving(t)
	l.child(101, 100)
	l.announce(101)
	l.k.onSignal(TERM)
	if _, done := l.exit(100, 0, true); done {
		t.Fatal("keeper exited with the candidate left")
	}
	code, done := l.exit(101, 1, true)
	if !done || code != 0 {
		t.Fatalf("keeper exit %d (done %v), want 0: the serving master's", code, done)
	}
}
