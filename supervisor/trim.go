package supervisor

import (
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"go.uber.org/zap"
)

// trim gives back what the master's start-up or last upgrade used and will
// not use again (osutil.Trim), and from then on keeps the heap small
// (osutil.LowGC): called once it serves alone. A new master starts with
// the runtime's default GC target, so that its start is not slowed.
func (m *master) trim() {
	osutil.LowGC()
	t0 := m.sys.now()
	dropped := osutil.Trim()
	m.log.Debug("memory trimmed", zap.Int64("binary_bytes_unmapped", dropped), zap.Duration("took", m.sys.now().Sub(t0)))
}

// trim is the keeper's: after its first generation came up, and after each
// master's exit.
func (k *keeper) trim() {
	dropped := osutil.Trim()
	k.log.Debug("memory trimmed", zap.Int64("binary_bytes_unmapped", dropped))
}
