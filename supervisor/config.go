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

	"github.com/baton-sh/baton/supervisor/internal/osutil"
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
	// Rollout is --strategy and the checks of blue-green and canary.
	Rollout Rollout
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
	return 0, badConfig("--drain-signal", strconv.Quote(s), "want TERM, QUIT, INT, HUP, USR1, USR2, WINCH or KILL", nil)
}

// LookupCredential resolves --user and --group. The group defaults to the
// user's primary group; supplementary groups are the user's.
func LookupCredential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, badConfig("--user/--group", strconv.Quote(userName)+"/"+strconv.Quote(groupName), "baton must run as root to start workers as another user", nil)
	}
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	if userName != "" {
		u, err := user.Lookup(userName)
		if err != nil {
			if u, err = user.LookupId(userName); err != nil {
				return nil, badConfig("--user", strconv.Quote(userName), "no such user", nil)
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
				return nil, badConfig("--group", strconv.Quote(groupName), "no such group", nil)
			}
		}
		gid, _ := strconv.Atoi(g.Gid)
		cred.Gid = uint32(gid)
	}
	return cred, nil
}

// ErrBadConfig matches (errors.Is) every error about a bad flag value or
// command: Check's, ParseReadyRule's, ParseSignal's, LookupCredential's,
// ReadEnvFile's and ResolveCommand's.
var ErrBadConfig = errors.New("bad configuration")

// ConfigError is a bad value of one flag, or of the worker command. Its
// message names the flag and value once: `--chdir "/srv/x": no such file
// or directory`. It matches ErrBadConfig and unwraps to its cause.
type ConfigError struct {
	Flag  string // "--chdir", "command"; "" when no one flag is at fault
	Value string // as shown: quoted when a string
	Msg   string // what is wrong, or ""
	Err   error  // the cause, or nil
}

func badConfig(flag, value, msg string, err error) error {
	return &ConfigError{Flag: flag, Value: value, Msg: msg, Err: err}
}

func (e *ConfigError) Error() string {
	var parts []string
	if what := strings.TrimSpace(e.Flag + " " + e.Value); what != "" {
		parts = append(parts, what)
	}
	if e.Msg != "" {
		parts = append(parts, e.Msg)
	}
	if e.Err != nil && !errors.Is(e.Err, exec.ErrNotFound) {
		parts = append(parts, e.Err.Error())
	}
	return strings.Join(parts, ": ")
}

// Is makes every ConfigError match ErrBadConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrBadConfig }

// Unwrap returns the cause, or nil.
func (e *ConfigError) Unwrap() error { return e.Err }

// Check validates what can be checked without binding: the working
// directory, the command, and the pid file's directory. Every master runs it
// anew, so a deploy that moves a symlink is checked against the new target.
func (c *Config) Check() error {
	if len(c.Command) == 0 {
		return badConfig("", "", "no command given (baton run [flags] -- COMMAND [ARGS...])", nil)
	}
	if len(c.Listen) == 0 {
		return badConfig("", "", "no --listen given", nil)
	}
	if c.Workers < 1 {
		return badConfig("--workers", strconv.Itoa(c.Workers), "want at least 1", nil)
	}
	if c.Chdir != "" {
		fi, err := os.Stat(c.Chdir)
		if err != nil {
			return badConfig("--chdir", strconv.Quote(c.Chdir), "", osutil.Cause(err))
		}
		if !fi.IsDir() {
			return badConfig("--chdir", strconv.Quote(c.Chdir), "not a directory", nil)
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
	if err := c.Rollout.check(c.Listen); err != nil {
		return err
	}
	for _, m := range c.Compat {
		if m != "einhorn" && m != "server-starter" {
			return badConfig("--compat", strconv.Quote(m), "want einhorn or server-starter", nil)
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
		return nil, badConfig("--env-file", strconv.Quote(path), "", osutil.Cause(err))
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
			return nil, badConfig("--env-file", strconv.Quote(path), fmt.Sprintf("line %d: want KEY=VALUE, got %q", i+1, line), nil)
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
			return "", badConfig("command", strconv.Quote(name), "not found in $PATH", exec.ErrNotFound)
		}
		return p, nil
	}
	p := name
	if !filepath.IsAbs(p) && dir != "" {
		p = filepath.Join(dir, p)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", badConfig("command", strconv.Quote(name), "", osutil.Cause(err))
	}
	if fi.IsDir() {
		return "", badConfig("command", strconv.Quote(name), "is a directory", nil)
	}
	if err := syscall.Access(p, 1 /* X_OK */); err != nil {
		return "", badConfig("command", strconv.Quote(name), "not executable", err)
	}
	return p, nil
}

// checkPIDFile refuses a pid file naming a live process and a directory we
// cannot write, before anything is bound or started.
func checkPIDFile(path string) error {
	if b, err := os.ReadFile(path); err == nil {
		var pid int
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err == nil && pid > 0 && pid != os.Getpid() && pid != os.Getppid() && strconv.Itoa(pid) != os.Getenv(envKeeperPID) {
			// Our parent is the old master during an upgrade: the file is its.
			if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
				return badConfig("--pid-file", strconv.Quote(path), fmt.Sprintf("names running process %d", pid), nil)
			}
		}
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".baton-check-*")
	if err != nil {
		return badConfig("--pid-file", strconv.Quote(path), "directory not writable", osutil.Cause(err))
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}
