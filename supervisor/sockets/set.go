//go:build linux

package sockets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// Registry is the part of *tableflip.Fds that Open needs: it hands back a
// socket inherited from the previous master, or binds a new one and keeps a
// copy for the next master.
type Registry interface {
	Listener(network, addr string) (net.Listener, error)
	ListenWithCallback(network, addr string, bind func(network, addr string) (net.Listener, error)) (net.Listener, error)
	// Sockets from systemd socket activation travel as plain files, so
	// that tableflip never unlinks a unix socket path systemd owns.
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error
}

// Set is the master's view of its listening sockets, in --listen order.
type Set struct {
	specs []Spec
	files []*os.File
	// systemd marks the sockets a systemd .socket unit passed in (to this
	// master or an earlier one): systemd keeps listening on them.
	systemd map[int]bool
	// eBPF steering (ebpf.go): per spec, nil where the group is steered
	// by classic BPF; key is this generation's key in the maps.
	progs []*steerProg
	key   uint32
}

// Open returns the sockets for specs, inherited where the registry has them
// and bound otherwise. A stale unix socket file (nothing accepting on it) is
// replaced; a live one is an error. On error nothing opened here stays open,
// but sockets bound here stay in the registry: the caller's registry Stop
// removes them.
//
// activated are sockets systemd passed to baton itself (TakeActivated);
// they are matched to specs by name, else by order, and used instead of
// binding. Later masters inherit them like any other socket.
func Open(reg Registry, specs []Spec, activated []Activated) (*Set, error) {
	s := &Set{specs: specs}
	adopt := match(specs, activated)
	for i, spec := range specs {
		var f *os.File
		var err error
		var fromSystemd bool
		if a := adopt[i]; a != nil {
			f, err = adoptFile(reg, spec, a)
			fromSystemd = true
		} else {
			f, fromSystemd, err = open(reg, spec)
		}
		if err != nil {
			s.Close()
			return nil, err
		}
		if fromSystemd {
			if s.systemd == nil {
				s.systemd = make(map[int]bool)
			}
			s.systemd[i] = true
		}
		s.files = append(s.files, f)
	}
	return s, nil
}

func activatedKey(spec Spec) string { return "activated:" + spec.Network + ":" + spec.Addr }

func adoptFile(reg Registry, spec Spec, f *os.File) (*os.File, error) {
	defer f.Close()
	if err := reg.AddFile(activatedKey(spec), f); err != nil {
		return nil, fmt.Errorf("adopt %s: %w", spec, err)
	}
	dup, err := dupFile(f, spec.String())
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", spec, err)
	}
	return dup, nil
}

// open inherits or binds spec; fromSystemd says it is a socket systemd
// passed to an earlier master.
func open(reg Registry, spec Spec) (f *os.File, fromSystemd bool, err error) {
	// Adopted from systemd by an earlier master?
	if f, err := reg.File(activatedKey(spec)); err != nil {
		return nil, false, fmt.Errorf("inherit %s: %w", spec, err)
	} else if f != nil {
		return f, true, nil
	}
	ln, err := reg.Listener(spec.Network, spec.Addr)
	if err != nil {
		return nil, false, fmt.Errorf("inherit %s: %w", spec, err)
	}
	if ln == nil {
		if spec.Network == "unix" {
			if err := removeStaleSocket(spec.Addr); err != nil {
				return nil, false, err
			}
		}
		// tableflip flattens bind errors to strings; keep ours to wrap.
		var bindErr error
		ln, err = reg.ListenWithCallback(spec.Network, spec.Addr, func(network, addr string) (net.Listener, error) {
			l, err := listen(spec)
			bindErr = err
			return l, err
		})
		if bindErr != nil {
			return nil, false, fmt.Errorf("listen %s %s: %w", spec.Network, spec.Addr, osutil.Cause(bindErr))
		}
		if err != nil {
			return nil, false, fmt.Errorf("listen %s %s: %w", spec.Network, spec.Addr, err)
		}
	}
	defer ln.Close() // the registry keeps its own copy; ours is the dup below
	f, err = dupFile(ln.(syscall.Conn), spec.String())
	if err != nil {
		return nil, false, fmt.Errorf("dup %s: %w", spec, err)
	}
	return f, false, nil
}

// listen binds spec: TCP as plain TCP unless it asks for MPTCP (Go 1.24
// and later make ListenConfig's sockets MPTCP by default on Linux, which
// servers that check SO_PROTOCOL or attach socket filters refuse), and a
// unix socket file with its mode and owner set before anyone is told of it.
func listen(spec Spec) (net.Listener, error) {
	var lc net.ListenConfig
	network := spec.Network
	if network == "mptcp" {
		network = "tcp"
	}
	if network != "unix" {
		lc.SetMultipathTCP(spec.Network == "mptcp")
	}
	l, err := lc.Listen(context.Background(), network, spec.Addr)
	if err != nil || spec.Perm == nil {
		return l, err
	}
	if err := applyPerm(spec.Addr, spec.Perm); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func applyPerm(path string, p *Perm) error {
	if p.UID >= 0 || p.GID >= 0 {
		if err := os.Lchown(path, p.UID, p.GID); err != nil {
			return fmt.Errorf("chown socket: %w", osutil.Cause(err))
		}
	}
	if p.Mode != 0 {
		if err := os.Chmod(path, p.Mode); err != nil {
			return fmt.Errorf("chmod socket %#o: %w", p.Mode, osutil.Cause(err))
		}
	}
	return nil
}

// dupFile duplicates a socket without touching its O_NONBLOCK flag. The flag
// lives on the open file description shared with every worker, so a blocking
// switch here (what net.TCPListener.File's Fd does) would stall their accepts.
// os.NewFile on an already non-blocking fd leaves Fd() side-effect free.
func dupFile(c syscall.Conn, name string) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	var dupErr error
	err = rc.Control(func(fd uintptr) {
		var r uintptr
		var errno syscall.Errno
		r, _, errno = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 3)
		if errno != 0 {
			dupErr = errno
			return
		}
		dup = int(r)
	})
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(dup), name), nil
}

func removeStaleSocket(path string) error {
	if strings.HasPrefix(path, "@") {
		return nil // abstract: no file
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen unix %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("listen unix %s: file exists and is not a socket", path)
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen unix %s: address already in use (something accepts on it)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("listen unix %s: probe stale socket: %w", path, osutil.Cause(err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen unix %s: remove stale socket: %w", path, err)
	}
	return nil
}

// Files returns the sockets in --listen order, for exec.Cmd.ExtraFiles
// (entry i becomes fd 3+i in the worker). The Set keeps ownership.
func (s *Set) Files() []*os.File { return s.files }

// Names returns the LISTEN_FDNAMES value for the Set.
func (s *Set) Names() string {
	names := make([]string, len(s.specs))
	for i, spec := range s.specs {
		names[i] = spec.Name
	}
	return strings.Join(names, ":")
}

// Close closes the master's copies handed to workers. It does not close the
// sockets themselves: the registry and running workers hold those.
func (s *Set) Close() {
	for _, f := range s.files {
		f.Close()
	}
	s.files = nil
	for _, p := range s.progs {
		if p != nil {
			p.close()
		}
	}
	s.progs = nil
}
