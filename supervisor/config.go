//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/link"
	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"github.com/baton-sh/baton/supervisor/internal/pidfile"
	"github.com/baton-sh/baton/supervisor/sockets"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/baton-sh/baton/supervisor/internal/account"
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
	// ChdirDefault says Chdir is where baton started (no --chdir given),
	// for error messages.
	ChdirDefault bool
	Command      []string
	// Control is the control socket's path ("" for none, in tests).
	// Failing to bind it refuses the start: a master that cannot be
	// reached, or a path answered by another service, would let "baton
	// reload" reach the wrong one. ControlExplicit says it was given with
	// --control, not derived (control.DefaultPath), for error messages
	// and the directory check.
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
	// LogDropped, if set, returns how many log entries the log's output
	// could not take so far (status shows it).
	LogDropped func() uint64
	// WorkerOutput is OutputTagged or OutputInherit.
	WorkerOutput string
	// Version is baton's own, for the logs: after an upgrade it tells
	// whether the new master runs a new baton.
	Version string
	// Credential, if set, is the user and groups workers run as.
	Credential *syscall.Credential
	Log        *zap.Logger

	// BeforeUpgrade, if set, is run by /bin/sh -c before every upgrade
	// starts anything of the new generation (hook.go); a non-zero exit or
	// running past BeforeUpgradeTimeout fails the upgrade. BeforeStart
	// runs it before the first generation too.
	BeforeUpgrade        string
	BeforeUpgradeTimeout time.Duration
	BeforeStart          bool
	// Metrics, if set, is the TCP address (HOST:PORT) of the Prometheus
	// endpoint /metrics, served by the master of record (metrics.go).
	Metrics string
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
		u, err := account.LookupUser(userName)
		if err != nil {
			return nil, badConfig("--user", strconv.Quote(userName), notFound("user", err), nil)
		}
		cred.Uid, cred.Gid = uint32(u.UID), uint32(u.GID)
		for _, g := range u.Groups {
			cred.Groups = append(cred.Groups, uint32(g))
		}
	} else {
		cred.NoSetGroups = true
	}
	if groupName != "" {
		gid, err := account.LookupGroup(groupName)
		if err != nil {
			return nil, badConfig("--group", strconv.Quote(groupName), notFound("group", err), nil)
		}
		cred.Gid = uint32(gid)
	}
	return cred, nil
}

// notFound is the reason a user or group lookup failed: "no such user"
// when no source knows the name, else what went wrong (getent's timeout).
func notFound(what string, err error) string {
	if errors.Is(err, account.ErrNotFound) {
		return "no such " + what
	}
	return err.Error()
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
	if err := c.checkWorkers(); err != nil {
		return err
	}
	if c.Chdir != "" {
		flag := "--chdir"
		if c.ChdirDefault {
			flag = "working directory (where baton started; set --chdir)"
		}
		fi, err := os.Stat(c.Chdir)
		if err != nil {
			return badConfig(flag, strconv.Quote(c.Chdir), "", osutil.Cause(err))
		}
		if !fi.IsDir() {
			return badConfig(flag, strconv.Quote(c.Chdir), "not a directory", nil)
		}
	}
	if _, err := ResolveCommand(c.Chdir, c.Command[0]); err != nil {
		return err
	}
	if c.PIDFile != "" && !link.FromEnv().Present() {
		// Only the keeper writes it: a master, and so an upgrade, checks
		// only what it writes (a removed /run/app must not refuse deploys).
		if err := checkPIDFile(c.PIDFile); err != nil {
			return err
		}
	}
	if err := c.checkControl(); err != nil {
		return err
	}
	if c.EnvFile != "" {
		if _, err := ReadEnvFile(c.EnvFile); err != nil {
			return err
		}
	}
	if c.BeforeUpgrade != "" && c.BeforeUpgradeTimeout <= 0 {
		return badConfig("--before-upgrade-timeout", c.BeforeUpgradeTimeout.String(), "want a positive duration", nil)
	}
	if c.BeforeStart && c.BeforeUpgrade == "" {
		return badConfig("--before-start", "", "needs --before-upgrade COMMAND to run", nil)
	}
	if c.Metrics != "" {
		if err := checkMetricsAddr(c.Metrics); err != nil {
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

// checkPIDFile refuses a pid file a running keeper holds (package pidfile) and a
// directory we cannot write, before anything is bound or started.
func checkPIDFile(path string) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		what := "not a regular file"
		if fi.IsDir() {
			what = "is a directory"
		}
		return badConfig("--pid-file", strconv.Quote(path), what, nil)
	}
	// A masters' keeper holds the file (the masters run this check too).
	if !link.FromEnv().Present() {
		if pid, held := pidfile.Holder(path); held {
			return badConfig("--pid-file", strconv.Quote(path), fmt.Sprintf("%v (pid %d)", pidfile.ErrHeld, pid), nil)
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

// controlFlag names the control socket's path in errors: the flag, or
// where the default came from.
func (c *Config) controlFlag() string {
	if c.ControlExplicit {
		return "--control"
	}
	return "control socket (default; set --control)"
}

// checkControl refuses a control socket path no socket can have, and one
// that is also a listening socket (the workers would answer baton's
// commands, or the control socket would replace the listener).
func (c *Config) checkControl() error {
	if c.Control == "" {
		return nil
	}
	if err := control.CheckPath(c.Control); err != nil {
		return badConfig(c.controlFlag(), strconv.Quote(c.Control), "", err)
	}
	for _, s := range c.Listen {
		if s.Network == "unix" && s.Addr == c.Control {
			return badConfig(c.controlFlag(), strconv.Quote(c.Control), "is also a --listen socket", nil)
		}
	}
	return nil
}

// MaxWorkers is the most workers one master runs (control.MaxWorkers: a
// scale request has the same bound as --workers).
const MaxWorkers = control.MaxWorkers

// checkWorkers refuses a worker count the master or the machine's limits
// cannot hold, before anything starts: past them, fork or pipe fails half
// way through the start instead.
func (c *Config) checkWorkers() error {
	n := strconv.Itoa(c.Workers)
	if c.Workers < 1 {
		return badConfig("--workers", n, "want at least 1", nil)
	}
	if c.Workers > MaxWorkers {
		return badConfig("--workers", n, fmt.Sprintf("want at most %d (one master waits on each worker with an OS thread)", MaxWorkers), nil)
	}
	// RLIMIT_NPROC counts every process of the workers' user and binds
	// unless that user is root.
	var lim syscall.Rlimit
	asRoot := os.Geteuid() == 0 && (c.Credential == nil || c.Credential.Uid == 0)
	if err := syscall.Getrlimit(unix.RLIMIT_NPROC, &lim); err == nil && !asRoot && lim.Cur != unix.RLIM_INFINITY && uint64(c.Workers) >= lim.Cur {
		return badConfig("--workers", n, fmt.Sprintf("over the process limit (ulimit -u %d)", lim.Cur), nil)
	}
	// Tagged output takes two pipes per worker in the master, beside the
	// sockets and the master's own few.
	if c.WorkerOutput == OutputTagged {
		need := uint64(2*c.Workers + len(c.Listen) + 64)
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur != unix.RLIM_INFINITY && need > lim.Cur {
			return badConfig("--workers", n, fmt.Sprintf("needs about %d open files for tagged output, over the limit (ulimit -n %d)", need, lim.Cur), nil)
		}
	}
	return nil
}
