package listener

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

var (
	inheritOnce sync.Once
	inherited   []named
	inheritErr  error
)

type named struct {
	name string
	ln   net.Listener
}

// ErrNoListeners is returned when the process was not given sockets by baton
// (or by systemd): LISTEN_FDS is unset or LISTEN_PID names another process.
var ErrNoListeners = errors.New("listener: no inherited sockets (LISTEN_FDS/LISTEN_PID not set for this process)")

// Listeners returns the inherited listening sockets by name, as given by
// LISTEN_FDNAMES. The sockets are read once; later calls return the same
// listeners. The LISTEN_* variables are removed from the environment so that
// programs this server starts do not mistake them for their own.
func Listeners() (map[string]net.Listener, error) {
	lns, err := inherit()
	if err != nil {
		return nil, err
	}
	m := make(map[string]net.Listener, len(lns))
	for _, n := range lns {
		m[n.name] = n.ln
	}
	return m, nil
}

// Listener returns the inherited socket called name, or the first one when
// name is empty.
func Listener(name string) (net.Listener, error) {
	lns, err := inherit()
	if err != nil {
		return nil, err
	}
	for _, n := range lns {
		if name == "" || n.name == name {
			return n.ln, nil
		}
	}
	return nil, fmt.Errorf("listener: no inherited socket named %q", name)
}

func inherit() ([]named, error) {
	inheritOnce.Do(func() { inherited, inheritErr = readEnv() })
	return inherited, inheritErr
}

func readEnv() ([]named, error) {
	// go-systemd checks LISTEN_PID, marks the fds close-on-exec (children
	// of this server must not keep the port open after it dies), names
	// them by LISTEN_FDNAMES, and removes the variables.
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, ErrNoListeners
	}
	out := make([]named, 0, len(files))
	for _, f := range files {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, o := range out {
				o.ln.Close()
			}
			return nil, fmt.Errorf("listener: fd %d (%s): %w", f.Fd(), f.Name(), err)
		}
		out = append(out, named{f.Name(), ln})
	}
	return out, nil
}

// Ready tells the supervisor that this process serves: it sends READY=1 to
// $NOTIFY_SOCKET (sd_notify(3)). Without NOTIFY_SOCKET it does nothing and
// returns nil, so a server runs the same outside baton.
func Ready() error { return Notify("READY=1") }

// Notify sends one sd_notify(3) datagram, such as "STATUS=warming cache".
// Without NOTIFY_SOCKET it does nothing and returns nil. It does not block
// beyond one datagram send.
func Notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("listener: notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}

// Worker returns this worker's index (BATON_WORKER), or -1 outside baton.
func Worker() int { return envInt("BATON_WORKER") }

// Generation returns this worker's generation (BATON_GENERATION), or -1
// outside baton.
func Generation() int { return envInt("BATON_GENERATION") }

func envInt(key string) int {
	n, err := strconv.Atoi(os.Getenv(key))
	if err != nil {
		return -1
	}
	return n
}
