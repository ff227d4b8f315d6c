//go:build linux

package supervisor

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

	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// A master's announcement to the keeper is a handshake: the master says
// BATON_MASTER=1 with the address of a socket of its own (BATON_ACK_TO),
// and waits for the keeper's answer, BATON_ACCEPTED=1 or BATON_REFUSED=why.
// A master the keeper did not accept exits with the reason (for an
// upgrade: the upgrade fails with it, the old master keeps serving), so
// the keeper never runs without knowing of a live master, and never exits
// while one lives. Keepers that predate the handshake do not set
// envKeeperAcks; masters under them announce without waiting.

const (
	envKeeperAcks  = "BATON_KEEPER_ACKS" // "1": the keeper answers announcements
	keeperAckTo    = "BATON_ACK_TO"      // where the keeper answers
	keeperAccepted = "BATON_ACCEPTED"
	keeperRefused  = "BATON_REFUSED"
)

// announceWait bounds the wait for the keeper's answer; a keeper that does
// not answer in this time (stopped, starved) fails the new master.
const announceWait = 10 * time.Second

// announce tells the keeper (pid keeper, notify socket at addr) that this
// process is a master, and returns once it accepted; the error says why
// not. It blocks for announceWait at most.
func announce(addr string, keeper int) error {
	if os.Getenv(envKeeperAcks) != "1" {
		return osutil.SendNotify(addr, keeperRegister+"=1")
	}
	name := "@baton-ack-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(rand.Uint64(), 36)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("socket for the keeper's answer: %w", err)
	}
	defer c.Close()
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	}
	if err := osutil.SendNotify(addr, keeperRegister+"=1\n"+keeperAckTo+"="+name); err != nil {
		return err
	}
	deadline := time.Now().Add(announceWait)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		nb, noob, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("keeper %d did not answer this master's announcement within %s (stopped or starved?)", keeper, announceWait)
			}
			return fmt.Errorf("read the keeper's answer: %w", err)
		}
		if senderPid(oob[:noob]) != keeper {
			continue // only the keeper answers
		}
		f := parseNotify(buf[:nb])
		if f[keeperAccepted] == "1" {
			return nil
		}
		if why, ok := f[keeperRefused]; ok {
			return fmt.Errorf("keeper %d refused this master: %s", keeper, why)
		}
	}
}

// openAckSocket opens the keeper's socket for answers (-1 if it cannot:
// then answers fail, and masters that asked give up after announceWait).
func openAckSocket() int {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// answer replies to a master's announcement that asked for an answer.
func (k *keeper) answer(msg notifyMsg, m *keptMaster, why string) {
	to := msg.fields[keeperAckTo]
	if to == "" || !strings.HasPrefix(to, "@baton-ack-") {
		return
	}
	reply := keeperAccepted + "=1"
	if m == nil {
		if why == "" {
			why = "not a master the keeper knows"
		}
		reply = keeperRefused + "=" + strings.ReplaceAll(why, "\n", " ")
	}
	// Through a socket opened at start: a keeper out of descriptors can
	// still say why it refuses.
	err := syscall.Sendto(k.ackFD, []byte(reply), 0, &syscall.SockaddrUnix{Name: to})
	if err != nil {
		k.log.Error("could not answer a master's announcement", zap.Int("master_pid", msg.pid), zap.Error(err))
	}
}
