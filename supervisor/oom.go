//go:build linux

package supervisor

import (
	"os"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// The keeper holds nothing but the service's life (no sockets, no
// workers, a few MB), yet the kernel's OOM killer would end every master
// and worker with it. It lowers its own oom_score_adj so that masters and
// workers go first. Lowering needs CAP_SYS_RESOURCE (root, or
// AmbientCapabilities= under systemd); unprivileged, the write fails and
// the keeper keeps the score it was given (systemd's OOMScoreAdjust= can
// set it for the whole unit instead). Children inherit the value, so a
// master sets its own back to what the keeper started with.

const (
	envOOMScoreAdj   = "BATON_OOM_SCORE_ADJ" // the keeper's score at start, for masters
	keeperOOMScore   = -900                  // leaves -1000 (never killed) to the admin
	keeperReserveFDs = 4
	oomScoreAdjPath  = "/proc/self/oom_score_adj"
)

func readOOMScore() (int, bool) {
	b, err := os.ReadFile(oomScoreAdjPath)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}

// lowerOOMScore lowers the keeper's oom_score_adj to keeperOOMScore where
// it may, and remembers the score it had for the masters (oomEnv).
func (k *keeper) lowerOOMScore() {
	orig, ok := readOOMScore()
	if !ok || orig <= keeperOOMScore {
		return
	}
	k.oomOrig = strconv.Itoa(orig)
	if err := os.WriteFile(oomScoreAdjPath, []byte(strconv.Itoa(keeperOOMScore)), 0); err != nil {
		k.log.Debug("keeper's OOM score not lowered (needs CAP_SYS_RESOURCE)", zap.Int("oom_score_adj", orig), zap.Error(err))
		k.oomOrig = ""
		return
	}
	k.log.Debug("keeper's OOM score lowered", zap.Int("oom_score_adj", keeperOOMScore), zap.Int("masters_and_workers", orig))
}

// oomEnv passes the score to restore to the first master.
func (k *keeper) oomEnv() []string {
	if k.oomOrig == "" {
		return nil
	}
	return []string{envOOMScoreAdj + "=" + k.oomOrig}
}

// restoreOOMScore sets a master's oom_score_adj back to the keeper's
// original (raising one's own score needs no privilege), so that masters
// and workers keep the score the service was given. The variable stays
// for the next master, which inherits this one's score anyway.
func restoreOOMScore() {
	v := os.Getenv(envOOMScoreAdj)
	if v == "" {
		return
	}
	if cur, ok := readOOMScore(); ok && strconv.Itoa(cur) != v {
		os.WriteFile(oomScoreAdjPath, []byte(v), 0)
	}
}
