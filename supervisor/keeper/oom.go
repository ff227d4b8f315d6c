//go:build linux

package keeper

import (
	"os"
	"strconv"

	"github.com/baton-sh/baton/supervisor/internal/link"
	"go.uber.org/zap"
)

// The keeper holds nothing but the service's life (no sockets, no
// workers, a few MB), yet the kernel's OOM killer would end every master
// and worker with it. It lowers its own oom_score_adj so that masters and
// workers go first. Lowering needs CAP_SYS_RESOURCE (root, or
// AmbientCapabilities= under systemd); unprivileged, the write fails and
// the keeper keeps the score it was given (systemd's OOMScoreAdjust= can
// set it for the whole unit instead). Children inherit the value, so a
// master sets its own back to what the keeper started with
// (link.RestoreOOMScore).

const (
	keeperOOMScore   = -900 // leaves -1000 (never killed) to the admin
	keeperReserveFDs = 4
)

// lowerOOMScore lowers the keeper's oom_score_adj to keeperOOMScore where
// it may, and remembers the score it had for the masters (link.Offer).
func (o *osSys) lowerOOMScore() {
	orig, ok := link.ReadOOMScore()
	if !ok || orig <= keeperOOMScore {
		return
	}
	o.oomOrig = strconv.Itoa(orig)
	if err := os.WriteFile(link.OOMScoreAdjPath, []byte(strconv.Itoa(keeperOOMScore)), 0); err != nil {
		o.log.Debug("keeper's OOM score not lowered (needs CAP_SYS_RESOURCE)", zap.Int("oom_score_adj", orig), zap.Error(err))
		o.oomOrig = ""
		return
	}
	o.log.Debug("keeper's OOM score lowered", zap.Int("oom_score_adj", keeperOOMScore), zap.Int("masters_and_workers", orig))
}
