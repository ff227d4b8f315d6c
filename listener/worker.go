package listener

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// firstFd is SD_LISTEN_FDS_START.
const firstFd = 3

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

// listenEnv reads the socket-activation variables meant for this process
// and removes them, so that programs it starts do not take them for their
// own. ok is false when they are absent or name another pid.
func listenEnv() (n int, names []string, ok bool) {
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return 0, nil, false
	}
	n, err = strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return 0, nil, false
	}
	return n, strings.Split(os.Getenv("LISTEN_FDNAMES"), ":"), true
}

func readEnv() ([]named, error) {
	n, names, ok := listenEnv()
	if !ok {
		return nil, ErrNoListeners
	}
	out := make([]named, 0, n)
	for i := 0; i < n; i++ {
		fd := firstFd + i
		// Children of this server must not keep the port open after it dies.
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, o := range out {
				o.ln.Close()
			}
			return nil, fmt.Errorf("listener: fd %d (%s): %w", fd, name, err)
		}
		out = append(out, named{name, ln})
	}
	return out, nil
}

// Ready tells the supervisor that this process serves: it sends READY=1 to
// $NOTIFY_SOCKET (sd_notify(3)). Without NOTIFY_SOCKET it does nothing and
// returns nil, so a server runs the same outside baton.
func Ready() error { return Notify("READY=1") }

// Notify sends one sd_notify(3) datagram, such as "STATUS=warming cache".
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	// Go maps a leading '@' to the abstract namespace itself.
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("listener: notify %s: %w", path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("listener: notify %s: %w", path, err)
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
