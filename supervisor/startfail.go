//go:build linux

package supervisor

import (
	"os"
	"strings"
	"sync/atomic"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// A new master can fail before its loop runs: a flag the old master
// accepted but this one cannot use (a --log-file that became a directory),
// its sockets, its control socket. Its stderr is the old master's, which
// may be a file nobody watches; what "baton reload" would show is only
// tableflip's "exit status 2". So every such failure is reported to the
// old master the way a failed boot is, and reaches whoever asked.

// startedBy is what an old master passed to this process, read before Run
// removes it from the environment (package variables are set before main).
var startedBy = struct{ notify, token string }{
	notify: os.Getenv(envParentNotify),
	token:  os.Getenv(envUpgradeToken),
}

// failureReported is set once this process told its old master why it
// failed, so that a caller of ReportStartFailure does not repeat it
// without the details (the failing worker's stderr) of the first report.
var failureReported atomic.Bool

// ReportStartFailure tells the old master, when this process is a new
// master started by an upgrade, why it is about to exit: err's message,
// on one line. It does nothing for a first start, or when Run already
// reported. It blocks for one datagram send at most.
func ReportStartFailure(err error) {
	if err == nil || startedBy.notify == "" || failureReported.Load() {
		return
	}
	reason := "new master could not start: " + strings.Join(strings.Fields(err.Error()), " ")
	if osutil.SendNotify(startedBy.notify, reportToken+"="+startedBy.token+"\n"+reportFailed+"="+reason) == nil {
		failureReported.Store(true)
	}
}
