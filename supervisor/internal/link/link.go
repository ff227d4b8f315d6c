//go:build linux

// Package link is the protocol between the keeper (package keeper) and
// the masters below it, both ends: the environment the keeper gives its
// first master (which every later master inherits through tableflip's
// re-exec), and the messages a master sends on the keeper's notify socket.
// Nothing else reads or writes these variables and keys.
//
// A master's announcement is a handshake: the master says BATON_MASTER=1
// with the address of a socket of its own (BATON_ACK_TO), and waits for
// the keeper's answer, BATON_ACCEPTED=1 or BATON_REFUSED=why. A master
// the keeper did not accept exits with the reason (for an upgrade: the
// upgrade fails with it, the old master keeps serving), so the keeper
// never runs without knowing of a live master, and never exits while one
// lives. Keepers that predate the handshake do not set EnvAcks; masters
// under them announce without waiting.
package link

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/notify"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// Variables the keeper sets for its masters. Masters pass them on to the
// next master; workers never see them (a master strips every BATON_
// variable from a worker's environment).
const (
	EnvKeeperPID = "BATON_KEEPER_PID"  // the keeper's pid
	EnvAcks      = "BATON_KEEPER_ACKS" // "1": the keeper answers announcements
	// EnvCgroup is the cgroup v2 directory the generations' cgroups are
	// made in; absent: the subreaper mechanism.
	EnvCgroup = "BATON_CGROUP"
	// EnvTreesWhy, set where the keeper made no cgroup, says why, for
	// `baton status`.
	EnvTreesWhy = "BATON_TREES_WHY"
	// EnvOOMScoreAdj is the keeper's oom_score_adj at its start, which a
	// master restores for itself and its workers.
	EnvOOMScoreAdj = "BATON_OOM_SCORE_ADJ"
	// EnvToken is a random secret of the keeper's that every master
	// passes on and shows in its announcement: a new master that runs
	// another file than the keeper (baton upgraded by pointing a symlink
	// at a new binary) is known by it, where a worker, which never sees
	// BATON_ variables, is not.
	EnvToken = "BATON_KEEPER_TOKEN"
)

// Keys of a master's messages on the keeper's notify socket, besides
// sd_notify's own, and of the keeper's answers.
const (
	KeyRegister = "BATON_MASTER" // "1": a master announces itself
	KeyStop     = "BATON_STOP"   // "1": a master was told to stop (baton stop)
	KeyExit     = "BATON_EXIT"   // the status a master is about to exit with
	KeyAckTo    = "BATON_ACK_TO" // where the keeper answers an announcement
	KeyToken    = "BATON_TOKEN"  // the keeper's EnvToken, shown by an announcing master
	KeyAccepted = "BATON_ACCEPTED"
	KeyRefused  = "BATON_REFUSED"
)

// ackPrefix starts the abstract address of every master's answer socket;
// the keeper answers nowhere else.
const ackPrefix = "@baton-ack-"

// Tree mechanisms, as the keeper logs them and status reports them.
const (
	TreesCgroup    = "cgroup"
	TreesSubreaper = "subreaper"
)

// AnnounceWait bounds a master's wait for the keeper's answer; a keeper
// that does not answer in this time (stopped, starved) fails the new
// master.
const AnnounceWait = 10 * time.Second

// Link is a master's side of the link: whether a keeper started it, and
// what the keeper gave it. The zero Link is a master with no keeper.
type Link struct {
	KeeperPID int    // 0: no keeper
	Cgroup    string // the service's cgroup subtree, or "" (subreaper)
	TreesWhy  string // why there is no cgroup
	acks      bool
	notify    string // the keeper's notify socket
	oomScore  string
	token     string        // EnvToken
	wait      time.Duration // for the keeper's answer; 0: AnnounceWait
}

// FromEnv reads the link from this process's environment: the one place
// a process reads the keeper's variables (a master's, and whether it is
// one). It reads the environment on each call; it does not block.
func FromEnv() Link {
	pid, _ := strconv.Atoi(os.Getenv(EnvKeeperPID))
	return Link{
		KeeperPID: pid,
		Cgroup:    os.Getenv(EnvCgroup),
		TreesWhy:  os.Getenv(EnvTreesWhy),
		acks:      os.Getenv(EnvAcks) == "1",
		notify:    os.Getenv("NOTIFY_SOCKET"),
		oomScore:  os.Getenv(EnvOOMScoreAdj),
		token:     os.Getenv(EnvToken),
	}
}

// Present reports whether a keeper started this process, i.e. it is a
// master: FromEnv().Present() is how any caller asks.
func (l Link) Present() bool { return l.KeeperPID != 0 }

// WatchGone calls gone, from a goroutine of its own, once the keeper has
// exited (a pidfd on it becomes readable). child says the keeper started
// this process (a first master): a keeper that died before the watch began
// is then seen too, by this process no longer being its child, even where
// its pid was already reused (the pidfd would name another process). The
// error names the keeper when it cannot be watched (gone: ESRCH).
func (l Link) WatchGone(child bool, gone func()) error {
	w, err := osutil.WatchExit(l.KeeperPID)
	if err != nil {
		return fmt.Errorf("watch keeper %d: %w", l.KeeperPID, err)
	}
	if child && os.Getppid() != l.KeeperPID {
		// Re-parented: the keeper was gone before the pidfd was opened,
		// which may name another process.
		w.Close()
		go gone()
		return nil
	}
	// Through the poller: a blocking poll would hold an OS thread for the
	// master's life, one made while a new master starts.
	go func() {
		w.Wait()
		gone()
	}()
	return nil
}

// StopMsg tells the keeper that this master was told to stop: the keeper
// stops every other master.
const StopMsg = KeyStop + "=1"

// ExitMsg tells the keeper the status this master is about to exit with
// (its parent may be another master, which reaps it).
func ExitMsg(code int) string { return KeyExit + "=" + strconv.Itoa(code) }

// Announce tells the keeper that this process is a master, and returns
// once it accepted; the error says why not. It blocks for AnnounceWait
// at most.
func (l Link) Announce() error { return l.Send().Await() }

// Sent is an announcement sent to the keeper (Send) whose answer is read
// by Await.
type Sent struct {
	l   Link
	c   *net.UnixConn // the answer's socket; nil: no answer to read
	err error         // the send's
}

// Send announces this master to the keeper and returns without waiting
// for the answer (Await reads it), so that the master does its own set-up
// while the keeper handles the announcement. It does not block.
func (l Link) Send() *Sent {
	a := &Sent{l: l}
	wait := l.wait
	if wait == 0 {
		wait = AnnounceWait
	}
	if !l.acks {
		a.err = osutil.SendNotify(l.notify, KeyRegister+"=1")
		return a
	}
	name := ackPrefix + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(rand.Uint64(), 36)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		a.err = fmt.Errorf("socket for the keeper's answer: %w", err)
		return a
	}
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	}
	msg := KeyRegister + "=1\n" + KeyAckTo + "=" + name
	if l.token != "" {
		msg += "\n" + KeyToken + "=" + l.token
	}
	// Sent from the answer's socket: the keeper knows the sender by its
	// credentials, not by its socket, and a socket of its own (connect,
	// send, close: osutil.SendNotify) cost a tenth of the announcement.
	// A keeper whose queue stays full fails the send, as there.
	now := time.Now()
	c.SetWriteDeadline(now.Add(100 * time.Millisecond))
	if _, err := c.WriteToUnix([]byte(msg), &net.UnixAddr{Name: l.notify, Net: "unixgram"}); err != nil {
		c.Close()
		a.err = fmt.Errorf("notify %s: %w", l.notify, err)
		return a
	}
	c.SetReadDeadline(now.Add(wait))
	a.c = c
	return a
}

// Await returns once the keeper accepted the announcement; the error says
// why not (the send's error, a refusal, no answer). It blocks until
// AnnounceWait after Send at most. Call it once.
func (a *Sent) Await() error {
	if a.c == nil {
		return a.err
	}
	defer a.Close()
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		nb, noob, _, _, err := a.c.ReadMsgUnix(buf, oob)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				wait := a.l.wait
				if wait == 0 {
					wait = AnnounceWait
				}
				return fmt.Errorf("keeper %d did not answer this master's announcement within %s (stopped or starved?)", a.l.KeeperPID, wait)
			}
			return fmt.Errorf("read the keeper's answer: %w", err)
		}
		if notify.SenderPID(oob[:noob]) != a.l.KeeperPID {
			continue // only the keeper answers
		}
		f := notify.Parse(buf[:nb])
		if f[KeyAccepted] == "1" {
			return nil
		}
		if why, ok := f[KeyRefused]; ok {
			return fmt.Errorf("keeper %d refused this master: %s", a.l.KeeperPID, why)
		}
	}
}

// Close closes the answer's socket, for a master that gives up before
// Await (Await closes it too). Safe to call more than once.
func (a *Sent) Close() {
	if a.c != nil {
		a.c.Close()
	}
}

// RestoreOOMScore sets this master's oom_score_adj back to the keeper's
// original (raising one's own score needs no privilege), so that masters
// and workers keep the score the service was given. The variable stays
// for the next master, which inherits this one's score anyway.
func (l Link) RestoreOOMScore() {
	if l.oomScore == "" {
		return
	}
	if cur, ok := ReadOOMScore(); ok && strconv.Itoa(cur) != l.oomScore {
		os.WriteFile(OOMScoreAdjPath, []byte(l.oomScore), 0)
	}
}

// OOMScoreAdjPath is this process's oom_score_adj.
const OOMScoreAdjPath = "/proc/self/oom_score_adj"

// ReadOOMScore is this process's oom_score_adj; false if unreadable.
func ReadOOMScore() (int, bool) {
	b, err := os.ReadFile(OOMScoreAdjPath)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}

// TakeActivation makes sockets of a systemd .socket unit, which the keeper
// passed on at the same fd numbers with LISTEN_PID naming the keeper, this
// master's (LISTEN_PID set to its own pid).
func (l Link) TakeActivation() {
	if l.Present() && os.Getenv("LISTEN_PID") == strconv.Itoa(l.KeeperPID) {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
}

// Offer is what the keeper gives its first master.
type Offer struct {
	KeeperPID   int
	Notify      string // the keeper's notify socket
	Cgroup      string // the service's cgroup subtree, or ""
	TreesWhy    string // why there is no cgroup (Cgroup "")
	OOMScoreAdj string // the score the keeper started with, or ""
	Token       string // EnvToken's value
}

// Env is the first master's environment: environ (the keeper's) without
// the service manager's notify and watchdog pid (masters speak sd_notify
// to the keeper, which relays as itself; the watchdog interval stays, its
// pid check is for the masters to pass), without the link's variables of
// another keeper, without socket activation unless activated (LISTEN_PID
// names this keeper), and with the offer.
func (o Offer) Env(environ []string, activated bool) []string {
	env := make([]string, 0, len(environ)+6)
	for _, kv := range environ {
		key, _, _ := strings.Cut(kv, "=")
		switch {
		case key == "NOTIFY_SOCKET", key == "WATCHDOG_PID", key == EnvKeeperPID, key == EnvCgroup, key == EnvToken:
			continue
		case strings.HasPrefix(key, "LISTEN_") && !activated:
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "NOTIFY_SOCKET="+o.Notify, EnvKeeperPID+"="+strconv.Itoa(o.KeeperPID), EnvAcks+"=1")
	if o.OOMScoreAdj != "" {
		env = append(env, EnvOOMScoreAdj+"="+o.OOMScoreAdj)
	}
	if o.Token != "" {
		env = append(env, EnvToken+"="+o.Token)
	}
	if o.Cgroup != "" {
		env = append(env, EnvCgroup+"="+o.Cgroup)
	} else {
		env = append(env, EnvTreesWhy+"="+o.TreesWhy)
	}
	return env
}

// Announcement is a master's announcement as the keeper reads it: whether
// fields hold one, and where to answer ("" when the master does not wait
// for an answer).
func Announcement(fields map[string]string) (ok bool, ackTo string) {
	if fields[KeyRegister] != "1" {
		return false, ""
	}
	to := fields[KeyAckTo]
	if !strings.HasPrefix(to, ackPrefix) {
		to = ""
	}
	return true, to
}

// OpenAnswerSocket opens the keeper's socket for answers (-1 if it
// cannot: then answers fail, and masters that asked give up after
// AnnounceWait). It is opened at the keeper's start so that a keeper out
// of descriptors can still say why it refuses.
func OpenAnswerSocket() int {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// Answer sends the keeper's answer to an announcement at to, through fd
// (OpenAnswerSocket): accepted when refusal is "", else refused with it.
func Answer(fd int, to, refusal string) error {
	reply := KeyAccepted + "=1"
	if refusal != "" {
		reply = KeyRefused + "=" + strings.ReplaceAll(refusal, "\n", " ")
	}
	if err := syscall.Sendto(fd, []byte(reply), 0, &syscall.SockaddrUnix{Name: to}); err != nil {
		return fmt.Errorf("answer %s: %w", to, err)
	}
	return nil
}
