package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/sockets"
	"go.uber.org/zap"
)

// Config is everything a master needs. cmd/baton builds it from flags.
type Config struct {
	Listen       []sockets.Spec
	Workers      int
	Ready        ReadyRule
	ReadyTimeout time.Duration
	DrainSignal  syscall.Signal
	DrainTimeout time.Duration
	PIDFile      string // absolute; empty for none
	Chdir        string // workers' working directory; resolved anew by every master
	Command      []string
	// Control is the control socket's path ("" for none). When
	// ControlExplicit is false, failing to bind it is only a warning.
	Control         string
	ControlExplicit bool
	// EnvFile holds KEY=VALUE lines added to workers' environment. Every
	// master reads it anew, so a deploy can change the app's environment.
	EnvFile string
	// Compat lists other supervisors' fd conventions to set as well:
	// "einhorn", "server-starter".
	Compat []string
	// ReopenLogs, if set, is called on SIGUSR1 (logrotate).
	ReopenLogs func() error
	// WorkerOutput is OutputTagged or OutputInherit.
	WorkerOutput string
	// Version is baton's own, for the logs: after an upgrade it tells
	// whether the new master runs a new baton.
	Version string
	// Credential, if set, is the user and groups workers run as.
	Credential *syscall.Credential
	Log        *zap.Logger
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGTERM: "TERM", syscall.SIGQUIT: "QUIT", syscall.SIGINT: "INT",
	syscall.SIGHUP: "HUP", syscall.SIGUSR1: "USR1", syscall.SIGUSR2: "USR2",
	syscall.SIGWINCH: "WINCH", syscall.SIGKILL: "KILL",
	syscall.SIGTTIN: "TTIN", syscall.SIGTTOU: "TTOU",
}

// sigName is the short name operators use: "USR2", not "user defined signal 2".
func sigName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return "SIG" + n
	}
	return s.String()
}

// ParseSignal accepts TERM, SIGTERM, QUIT, INT, … (case-insensitive).
func ParseSignal(s string) (syscall.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	for sig, n := range signalNames {
		if n == name && sig != syscall.SIGTTIN && sig != syscall.SIGTTOU {
			return sig, nil
		}
	}
	return 0, fmt.Errorf("signal %q: want TERM, QUIT, INT, HUP, USR1, USR2, WINCH or KILL", s)
}

// LookupCredential resolves --user and --group. The group defaults to the
// user's primary group; supplementary groups are the user's.
func LookupCredential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("--user/--group %q/%q: baton must run as root to start workers as another user", userName, groupName)
	}
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	if userName != "" {
		u, err := user.Lookup(userName)
		if err != nil {
			if u, err = user.LookupId(userName); err != nil {
				return nil, fmt.Errorf("--user %q: no such user", userName)
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
		if gids, err := u.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.Atoi(g); err == nil {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	} else {
		cred.NoSetGroups = true
	}
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			if g, err = user.LookupGroupId(groupName); err != nil {
				return nil, fmt.Errorf("--group %q: no such group", groupName)
			}
		}
		gid, _ := strconv.Atoi(g.Gid)
		cred.Gid = uint32(gid)
	}
	return cred, nil
}

// ErrBadConfig is wrapped by Check's errors.
var ErrBadConfig = errors.New("bad configuration")

// Check validates what can be checked without binding: the working
// directory, the command, and the pid file's directory. Every master runs it
// anew, so a deploy that moves a symlink is checked against the new target.
func (c *Config) Check() error {
	if len(c.Command) == 0 {
		return fmt.Errorf("%w: no command given (baton run [flags] -- COMMAND [ARGS...])", ErrBadConfig)
	}
	if len(c.Listen) == 0 {
		return fmt.Errorf("%w: no --listen given", ErrBadConfig)
	}
	if c.Workers < 1 {
		return fmt.Errorf("%w: --workers %d: want at least 1", ErrBadConfig, c.Workers)
	}
	if c.Chdir != "" {
		fi, err := os.Stat(c.Chdir)
		if err != nil {
			return fmt.Errorf("--chdir %q: %w", c.Chdir, pathErr(err))
		}
		if !fi.IsDir() {
			return fmt.Errorf("--chdir %q: not a directory", c.Chdir)
		}
	}
	if _, err := ResolveCommand(c.Chdir, c.Command[0]); err != nil {
		return err
	}
	if c.PIDFile != "" {
		if err := checkPIDFile(c.PIDFile); err != nil {
			return err
		}
	}
	if c.EnvFile != "" {
		if _, err := ReadEnvFile(c.EnvFile); err != nil {
			return err
		}
	}
	for _, m := range c.Compat {
		if m != "einhorn" && m != "server-starter" {
			return fmt.Errorf("--compat %q: want einhorn or server-starter", m)
		}
	}
	return nil
}

// ReadEnvFile reads KEY=VALUE lines, as systemd's EnvironmentFile= does in
// its simple form: blank lines and lines starting with '#' are skipped, an
// "export " prefix is allowed, and one pair of surrounding quotes is removed.
func ReadEnvFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--env-file %q: %w", path, pathErr(err))
	}
	var out []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			return nil, fmt.Errorf("--env-file %q: line %d: want KEY=VALUE, got %q", path, i+1, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out = append(out, k+"="+v)
	}
	return out, nil
}

// ResolveCommand finds name the way the worker's exec will: a name with a
// slash relative to dir, a bare name on $PATH.
func ResolveCommand(dir, name string) (string, error) {
	if !strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("command %q: not found in $PATH", name)
		}
		return p, nil
	}
	p := name
	if !filepath.IsAbs(p) && dir != "" {
		p = filepath.Join(dir, p)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("command %q: %w", name, pathErr(err))
	}
	if fi.IsDir() {
		return "", fmt.Errorf("command %q: is a directory", name)
	}
	if err := syscall.Access(p, 1 /* X_OK */); err != nil {
		return "", fmt.Errorf("command %q: not executable: %w", name, err)
	}
	return p, nil
}

func pathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkPIDFile refuses a pid file naming a live process and a directory we
// cannot write, before anything is bound or started.
func checkPIDFile(path string) error {
	if b, err := os.ReadFile(path); err == nil {
		var pid int
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err == nil && pid > 0 && pid != os.Getpid() && pid != os.Getppid() {
			// Our parent is the old master during an upgrade: the file is its.
			if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
				return fmt.Errorf("--pid-file %q: names running process %d", path, pid)
			}
		}
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".baton-check-*")
	if err != nil {
		return fmt.Errorf("--pid-file %q: directory not writable: %w", path, pathErr(err))
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}
