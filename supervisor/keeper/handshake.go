//go:build linux

package keeper

import (
	"errors"
	"syscall"

	"go.uber.org/zap"
)

// answer replies to the announcement of pid that asked for an answer at
// ackTo (package link has the handshake): accepted when m is the master
// it became, else refused with why.
func (k *keeper) answer(pid int, ackTo string, m *keptMaster, why string) {
	if ackTo == "" {
		return
	}
	if m == nil && why == "" {
		why = "not a master the keeper knows"
	} else if m != nil {
		why = ""
	}
	// Through a socket opened at start (link.OpenAnswerSocket): a keeper
	// out of descriptors can still say why it refuses.
	err := k.sys.answer(ackTo, why)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nobody listens there any more: the master stopped waiting (it
		// failed a check of its own first, as a start that does not fit
		// its task limit does, or timed out and said so itself). Its
		// exit is what counts; an error here would only follow its
		// one-line refusal.
		k.log.Debug("master gone before the keeper's answer", zap.Int("master_pid", pid), zap.Error(err))
	case err != nil:
		k.log.Error("could not answer a master's announcement", zap.Int("master_pid", pid), zap.Error(err))
	}
}
