package control

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// MaxPath is the longest control socket path: sun_path holds 108 bytes
// with the NUL.
const MaxPath = 107

// ErrPathTooLong is wrapped by CheckPath's error.
var ErrPathTooLong = errors.New("path too long")

// CheckPath refuses a control socket path the kernel cannot bind or
// connect to. Errors wrap ErrPathTooLong.
func CheckPath(path string) error {
	if len(path) > MaxPath && !(strings.HasPrefix(path, "@") && len(path) <= MaxPath+1) {
		return fmt.Errorf("%w: %d bytes, a unix socket path holds at most %d", ErrPathTooLong, len(path), MaxPath)
	}
	return nil
}

// Dir is the directory default control sockets live in:
// $XDG_RUNTIME_DIR/baton, else /run/baton for root, else
// $TMPDIR/baton-UID (a directory of one user's; see CheckDir).
func Dir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "baton")
	}
	if os.Geteuid() == 0 {
		return "/run/baton"
	}
	return filepath.Join(os.TempDir(), "baton-"+strconv.Itoa(os.Geteuid()))
}

// DefaultPath is where the control socket of a service lives when
// --control is not given. With a pid file it is beside it (app.pid ->
// app.sock); without one it is in Dir, named after the service's listen
// specs, so two services never share one. A path beside the pid file
// that is too long for a unix socket falls back to Dir, named after the
// pid file. The master and the client derive the same path from the same
// flags.
func DefaultPath(pidFile string, listen []string) string {
	if pidFile != "" {
		p := strings.TrimSuffix(pidFile, ".pid") + ".sock"
		if CheckPath(p) == nil {
			return p
		}
		return filepath.Join(Dir(), "pid-"+shortHash(pidFile)+".sock")
	}
	specs := slices.Clone(listen)
	slices.Sort(specs)
	return filepath.Join(Dir(), "listen-"+shortHash(strings.Join(specs, "\n"))+".sock")
}

func shortHash(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	return strconv.FormatUint(h.Sum64(), 36)
}

// Discover returns the one control socket in Dir, for a client given
// neither --control, --pid-file nor --listen. Several sockets there (more
// than one service) is an error naming them: the client must not guess.
func Discover() (string, error) {
	dir := Dir()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: read %s: %w", ErrNoMaster, dir, err)
	}
	var found []string
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 && strings.HasSuffix(e.Name(), ".sock") {
			found = append(found, filepath.Join(dir, e.Name()))
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%w: no control socket in %s (give --control, --pid-file or --listen)", ErrNoMaster, dir)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%w: %d services have control sockets in %s (%s): name one with --control, --pid-file or --listen",
		ErrAmbiguous, len(found), dir, strings.Join(found, ", "))
}

// ErrAmbiguous is wrapped by Discover's error when more than one service
// could be meant.
var ErrAmbiguous = errors.New("which master?")

// CheckDir refuses a control socket directory that is not the caller's
// own: in a shared temporary directory another user could have created it
// to receive baton's commands.
func CheckDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("%s: not a directory", dir)
	}
	if int(st.Uid) != os.Geteuid() && st.Uid != 0 {
		return fmt.Errorf("%s: owned by uid %d, not by this user", dir, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("%s: writable by others (mode %#o)", dir, fi.Mode().Perm())
	}
	return nil
}
