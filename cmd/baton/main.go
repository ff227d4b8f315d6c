//go:build linux

// Command baton is a graceful-restart supervisor: it owns listening sockets,
// runs N workers of any server binary on them, and upgrades them on SIGUSR2
// without refusing or dropping a connection.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor"
	"github.com/baton-sh/baton/supervisor/control"
	_ "github.com/baton-sh/baton/supervisor/earlysig" // its init catches run's signals before any other package's
	"github.com/baton-sh/baton/supervisor/keeper"
	"github.com/baton-sh/baton/supervisor/sockets"
	"github.com/urfave/cli/v2"
)

// Exit codes.
const (
	exitFailure = 1 // the master could not start or its workers never came up
	exitUsage   = 2 // bad flags or arguments
)

// usageError marks errors the user fixes by changing the command line.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func main() {
	if len(os.Args) > 1 && os.Args[1] == supervisor.ShimArg {
		os.Exit(supervisor.ExecShim(os.Args[2:]))
	}
	// A write to a closed pipe must be an error, not death: Go kills the
	// process with SIGPIPE for a broken stdout or stderr unless SIGPIPE is
	// notified (ignoring it would be inherited by workers through exec).
	// baton's log reader going away must not take the master, and with it
	// every worker, down.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	if len(os.Args) > 1 && os.Args[1] == "run" {
		cwd, err := os.Getwd()
		if err == nil {
			err = absolutize(cwd)
		}
		if err == nil && cwd != "/" {
			err = reexecFromRoot(cwd)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "baton: "+oneLine(fmt.Sprintf("resolve paths against the working directory: %v", err)))
			os.Exit(exitUsage)
		}
	}
	os.Exit(run(os.Args))
}

func run(args []string) int {
	var err error
	if len(args) > 1 && args[1] == "master" && keeper.IsMaster() {
		err = runMaster(args[2:])
	} else {
		err = newApp().Run(args)
	}
	if err == nil {
		return 0
	}
	if msg := oneLine(err.Error()); msg != "" {
		fmt.Fprintln(os.Stderr, "baton: "+msg)
		// A new master's failure goes to whoever asked for the upgrade too.
		supervisor.ReportStartFailure(err)
	}
	var ue *usageError
	var ec *exitCode
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ec):
		return ec.code
	}
	if _, ok := err.(cli.ExitCoder); ok {
		return exitUsage // cli's own: "No help topic for …"
	}
	return exitFailure
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func newApp() *cli.App {
	onUsage := func(_ *cli.Context, err error, _ bool) error { return &usageError{err} }
	return &cli.App{
		Name:    "baton",
		Usage:   "run N workers of a server on sockets that survive upgrades",
		Version: buildVersion(),
		// Errors are printed once, by run, as a single line; cli must
		// neither print help nor call os.Exit behind our back.
		ExitErrHandler:       func(*cli.Context, error) {},
		OnUsageError:         onUsage,
		EnableBashCompletion: true,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return &usageError{fmt.Errorf("unknown command %q (see baton --help)", c.Args().First())}
			}
			return &usageError{errors.New("no command given (see baton --help)")}
		},
		Commands: []*cli.Command{runCommand(onUsage), masterCommand(onUsage), reloadCommand(onUsage), statusCommand(onUsage), scaleCommand(onUsage), stopCommand(onUsage),
			rolloutCommand(control.CmdPromote, onUsage), rolloutCommand(control.CmdRollback, onUsage),
			verifyCommand(onUsage), completionCommand(), manCommand()},
	}
}

func runFlags() []cli.Flag {
	env := func(name string) []string {
		return []string{"BATON_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "listen", Aliases: []string{"l"}, EnvVars: env("listen"),
			Usage: "socket to listen on, repeatable: [NAME=][tcp|tcp4|tcp6|mptcp://]HOST:PORT or [NAME=]unix:///PATH[?mode=0660&user=U&group=G] (under --user, unix socket files default to the worker user and mode 0666)"},
		&cli.IntFlag{Name: "workers", Aliases: []string{"w"}, Value: 1, EnvVars: env("workers"),
			Usage: "number of worker processes"},
		&cli.StringFlag{Name: "ready", Value: "notify", EnvVars: env("ready"),
			Usage: "when a worker counts as ready: notify (READY=1 on $NOTIFY_SOCKET), delay:DURATION or exec:COMMAND"},
		&cli.DurationFlag{Name: "ready-timeout", Value: 60 * time.Second, EnvVars: env("ready-timeout"),
			Usage: "how long a worker may take to become ready"},
		&cli.StringFlag{Name: "drain-signal", Value: "TERM", EnvVars: env("drain-signal"),
			Usage: "signal that asks a worker to finish in-flight requests and exit (TERM, QUIT, INT, …)"},
		&cli.DurationFlag{Name: "drain-timeout", Value: 30 * time.Second, EnvVars: env("drain-timeout"),
			Usage: "how long a draining worker may take before it is killed"},
		&cli.StringFlag{Name: "pid-file", EnvVars: env("pid-file"),
			Usage: "write baton's pid here (the keeper's: it stays the same across upgrades)"},
		&cli.StringFlag{Name: "control", EnvVars: env("control"),
			Usage: "control socket for baton reload/status/stop (default: beside --pid-file as NAME.sock, else one per set of --listen values in $XDG_RUNTIME_DIR/baton, /run/baton for root)"},
		&cli.StringFlag{Name: "chdir", EnvVars: env("chdir"),
			Usage: "workers' working directory, resolved anew at every upgrade (e.g. /srv/app/current)"},
		&cli.StringFlag{Name: "user", EnvVars: env("user"),
			Usage: "run workers as this user (baton must start as root; sockets are bound before)"},
		&cli.StringFlag{Name: "group", EnvVars: env("group"),
			Usage: "run workers with this group (default: the --user's primary group)"},
		&cli.StringFlag{Name: "env-file", EnvVars: env("env-file"),
			Usage: "KEY=VALUE lines added to workers' environment, read anew by every generation"},
		&cli.StringSliceFlag{Name: "compat", EnvVars: env("compat"),
			Usage: "also describe the sockets the way another supervisor does: einhorn (EINHORN_FD_COUNT, EINHORN_FD_0, …), server-starter (SERVER_STARTER_PORT)"},
		&cli.StringFlag{Name: "worker-output", EnvVars: env("worker-output"),
			Usage: "tagged (baton logs each line of workers' stdout/stderr with generation, worker and pid) or inherit (default: inherit on a terminal, tagged otherwise)"},
		&cli.StringFlag{Name: "log-format", EnvVars: env("log-format"),
			Usage: "console, json or journal (journald's native protocol, with baton's fields as journal fields; default: console on a terminal, journal when stderr is systemd's journal, json otherwise)"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"),
			Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-file", EnvVars: env("log-file"),
			Usage: "write baton's log here instead of stderr (reopened on SIGUSR1)"},
		&cli.StringFlag{Name: "before-upgrade", EnvVars: env("before-upgrade"),
			Usage: "run this by /bin/sh -c before every upgrade starts anything new (e.g. migrations), in --chdir with the workers' environment and BATON_GENERATION; failing it fails the upgrade"},
		&cli.DurationFlag{Name: "before-upgrade-timeout", Value: 10 * time.Minute, EnvVars: env("before-upgrade-timeout"),
			Usage: "how long --before-upgrade may run before its process group is killed and the upgrade fails"},
		&cli.BoolFlag{Name: "before-start", EnvVars: env("before-start"),
			Usage: "run --before-upgrade before the first generation starts too (failing it, baton exits 1)"},
		&cli.StringFlag{Name: "metrics", EnvVars: env("metrics"),
			Usage: "serve Prometheus metrics at http://ADDRESS/metrics (HOST:PORT, e.g. 127.0.0.1:9101), from whichever master serves"},
		&cli.StringFlag{Name: "strategy", Value: "shared", EnvVars: env("strategy"),
			Usage: "how a new generation takes over: shared (same sockets, works everywhere), blue-green (own sockets, checked while no user reaches it, then switched at once) or canary (as blue-green, a share of users during the bake)"},
		&cli.StringFlag{Name: "health-check", EnvVars: env("health-check"),
			Usage: "blue-green/canary: probe the new generation before the switch and during the bake: http:/PATH (2xx passes) or tcp"},
		&cli.DurationFlag{Name: "health-timeout", Value: 10 * time.Second, EnvVars: env("health-timeout"),
			Usage: "blue-green/canary: how long the health check before the switch retries (every 100 ms, a progress line per failed probe) before the upgrade rolls back"},
		&cli.DurationFlag{Name: "health-interval", Value: time.Second, EnvVars: env("health-interval"),
			Usage: "blue-green/canary: time between health checks during the bake"},
		&cli.StringFlag{Name: "smoke-test", EnvVars: env("smoke-test"),
			Usage: "blue-green/canary: command run by /bin/sh -c before the switch, with BATON_CANDIDATE=HOST:PORT reaching only the new generation; non-zero exit rolls back"},
		&cli.DurationFlag{Name: "smoke-timeout", Value: time.Minute, EnvVars: env("smoke-timeout"),
			Usage: "blue-green/canary: how long the smoke test may run"},
		&cli.DurationFlag{Name: "bake", EnvVars: env("bake"),
			Usage: "blue-green/canary: keep the old generation warm this long after the switch (baton promote ends it, baton rollback goes back)"},
		&cli.IntFlag{Name: "canary-weight", Value: 10, EnvVars: env("canary-weight"),
			Usage: "canary: percent of new connections the new generation gets during the bake"},
	}
}

func runCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:            "run",
		Usage:           "start a master and its workers",
		ArgsUsage:       "-- COMMAND [ARGS...]",
		Flags:           runFlags(),
		OnUsageError:    onUsage,
		HideHelpCommand: true,
		Action:          runAction,
	}
}

// runAction is baton run's action, and baton master's: the keeper, or a
// master when the keeper started this process.
func runAction(c *cli.Context) error {
	cfg, err := configFrom(c)
	if err != nil {
		return &usageError{err}
	}
	log, reopen, dropped, err := newLogger(c.String("log-format"), c.String("log-level"), c.String("log-file"))
	if err != nil {
		return &usageError{err}
	}
	defer syncLogger(log)
	if !keeper.IsMaster() {
		// This process stays for the service's whole life; the
		// masters below it come and go at every upgrade.
		code := keeper.Run(keeper.Config{
			Args: masterArgs(os.Args), PIDFile: cfg.PIDFile, ReopenLogs: reopen, Log: log.Named("keeper"),
		})
		if code != 0 {
			return &exitCode{code, ""} // the master said why
		}
		return nil
	}
	cfg.Log = log.Named("master")
	cfg.Version = buildVersion()
	cfg.ReopenLogs = reopen
	cfg.LogDropped = dropped
	return supervisor.Run(cfg)
}

// runMaster runs baton master as the keeper starts it (and tableflip
// re-executes it at every upgrade): args is its command line after
// "master", baton run's own. It is parsed with the flag package against
// baton run's flag definitions, as urfave/cli would parse it (each flag's
// Apply gives its default and its BATON_* variable, the same values and
// the same errors), and goes to the same action, configFrom's checks
// included. urfave/cli's own run of a command, before the action, asks
// IsSet about every name of every flag, each a scan of all the flags'
// names through a regular expression: about a millisecond of CPU, on the
// way to every new master's first spawn. No help, completion or
// subcommand is wanted here: the keeper's urfave/cli parsed this line
// already, as baton run.
func runMaster(args []string) error {
	c, err := masterContext(args)
	if err != nil {
		return &usageError{err}
	}
	return runAction(c)
}

// masterContext parses runMaster's args into a context for runAction.
func masterContext(args []string) (*cli.Context, error) {
	flags := runFlags()
	set := flag.NewFlagSet("master", flag.ContinueOnError)
	set.SetOutput(io.Discard)
	for _, f := range flags {
		if err := f.Apply(set); err != nil {
			return nil, err
		}
	}
	if err := set.Parse(args); err != nil {
		return nil, err
	}
	if err := sameAliases(flags, set); err != nil {
		return nil, err
	}
	c := cli.NewContext(nil, set, nil)
	// LocalFlagNames (rolloutFlagsFit) finds flags set from the
	// environment through the command's flags.
	c.Command = &cli.Command{Name: "master", Flags: flags}
	return c, nil
}

// sameAliases gives every name of a flag the value given under one of
// them (-w 4 is --workers 4), as urfave/cli does after its parse: the
// flag package keeps a value per name. Two names of one flag given is
// urfave/cli's error.
func sameAliases(flags []cli.Flag, set *flag.FlagSet) error {
	given := map[string]bool{}
	set.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, f := range flags {
		names := f.Names()
		var from *flag.Flag
		for _, n := range names {
			if !given[n] {
				continue
			}
			if from != nil {
				return errors.New("Cannot use two forms of the same flag: " + n + " " + from.Name)
			}
			from = set.Lookup(n)
		}
		if from == nil || len(names) == 1 {
			continue
		}
		v := from.Value.String()
		if s, ok := from.Value.(cli.Serializer); ok {
			v = s.Serialize()
		}
		for _, n := range names {
			if !given[n] {
				if err := set.Set(n, v); err != nil {
					return fmt.Errorf("--%s: %w", n, err)
				}
			}
		}
	}
	return nil
}

// masterArgs is the keeper's command line for its masters: the same, with
// "master" for "run", so that ps tells the keeper (baton run …) from the
// masters (baton master …); tableflip re-executes each master with its own
// command line, so every later master says "master" too.
func masterArgs(args []string) []string {
	out := append([]string(nil), args...)
	if len(out) > 1 && out[1] == "run" {
		out[1] = "master"
	}
	return out
}

// masterCommand is baton run as the keeper starts it for a master: hidden,
// and refused anywhere else.
func masterCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	c := runCommand(onUsage)
	run := c.Action
	c.Name, c.Usage, c.Hidden = "master", "a master, as baton run starts it (ps shows the keeper as baton run, masters as baton master)", true
	c.Action = func(ctx *cli.Context) error {
		if !keeper.IsMaster() {
			return &usageError{errors.New("baton master is started by baton run, for each generation; use baton run")}
		}
		return run(ctx)
	}
	return c
}

// rolloutOnly are the flags that only a rollout (blue-green, canary) reads,
// with the strategies that read them.
var rolloutOnly = []struct {
	flag       string
	strategies []supervisor.Strategy
}{
	{"health-check", []supervisor.Strategy{supervisor.StrategyBlueGreen, supervisor.StrategyCanary}},
	{"health-interval", []supervisor.Strategy{supervisor.StrategyBlueGreen, supervisor.StrategyCanary}},
	{"health-timeout", []supervisor.Strategy{supervisor.StrategyBlueGreen, supervisor.StrategyCanary}},
	{"smoke-test", []supervisor.Strategy{supervisor.StrategyBlueGreen, supervisor.StrategyCanary}},
	{"smoke-timeout", []supervisor.Strategy{supervisor.StrategyBlueGreen, supervisor.StrategyCanary}},
	{"bake", []supervisor.Strategy{supervisor.StrategyBlueGreen, supervisor.StrategyCanary}},
	{"canary-weight", []supervisor.Strategy{supervisor.StrategyCanary}},
}

// rolloutFlagsFit refuses a rollout flag given (on the command line or in
// the environment) with a strategy that would ignore it: a flag accepted
// and then silently not acted on reads as a check that runs.
func rolloutFlagsFit(c *cli.Context, st supervisor.Strategy) error {
	// One listing of the flags given (command line or environment): IsSet
	// of a flag not given looks every flag of the command up by its
	// names, which urfave/cli cleans with a regexp each time; for the
	// seven flags here that was half of a master's command line (0.3 ms
	// of CPU before every upgrade's first spawn). None has an alias.
	given := c.LocalFlagNames()
	for _, f := range rolloutOnly {
		if slices.Contains(f.strategies, st) || !slices.Contains(given, f.flag) {
			continue
		}
		names := make([]string, len(f.strategies))
		for i, s := range f.strategies {
			names[i] = string(s)
		}
		v := fmt.Sprint(c.Value(f.flag))
		if _, ok := c.Value(f.flag).(string); ok {
			v = strconv.Quote(v)
		}
		return &supervisor.ConfigError{Flag: "--" + f.flag, Value: v,
			Msg: "needs --strategy " + strings.Join(names, " or ") + " (--strategy is " + string(st) + ")"}
	}
	return nil
}

func configFrom(c *cli.Context) (supervisor.Config, error) {
	var cfg supervisor.Config
	specs, err := sockets.ParseSpecs(c.StringSlice("listen"))
	if err != nil {
		// The spec's error names the value; this names the flag.
		return cfg, &supervisor.ConfigError{Flag: "--listen", Err: err}
	}
	ready, err := supervisor.ParseReadyRule(c.String("ready"))
	if err != nil {
		return cfg, err
	}
	sig, err := supervisor.ParseSignal(c.String("drain-signal"))
	if err != nil {
		return cfg, err
	}
	for _, d := range []string{"ready-timeout", "drain-timeout"} {
		if c.Duration(d) <= 0 {
			return cfg, &supervisor.ConfigError{Flag: "--" + d, Value: c.Duration(d).String(), Msg: "want a positive duration"}
		}
	}
	strategy, err := supervisor.ParseStrategy(c.String("strategy"))
	if err != nil {
		return cfg, err
	}
	hc, err := supervisor.ParseHealthCheck(c.String("health-check"))
	if err != nil {
		return cfg, err
	}
	if err := rolloutFlagsFit(c, strategy); err != nil {
		return cfg, err
	}
	cfg = supervisor.Config{
		Rollout: supervisor.Rollout{
			Strategy: strategy, HealthCheck: hc, HealthInterval: c.Duration("health-interval"),
			HealthTimeout: c.Duration("health-timeout"),
			SmokeTest:     c.String("smoke-test"), SmokeTimeout: c.Duration("smoke-timeout"),
			Bake: c.Duration("bake"), CanaryWeight: c.Int("canary-weight"),
		},
		Listen:       specs,
		Workers:      c.Int("workers"),
		Ready:        ready,
		ReadyTimeout: c.Duration("ready-timeout"),
		DrainSignal:  sig,
		DrainTimeout: c.Duration("drain-timeout"),
		Chdir:        c.String("chdir"),
		ChdirDefault: c.String("chdir") == "",
		Command:      c.Args().Slice(),
		EnvFile:      c.String("env-file"),
		Compat:       c.StringSlice("compat"),

		BeforeUpgrade:        c.String("before-upgrade"),
		BeforeUpgradeTimeout: c.Duration("before-upgrade-timeout"),
		BeforeStart:          c.Bool("before-start"),
		Metrics:              c.String("metrics"),
	}
	if cfg.ChdirDefault {
		// Workers start where baton did, named explicitly: the master
		// itself leaves that directory.
		if cfg.Chdir = os.Getenv(envStartDir); cfg.Chdir == "" {
			if cfg.Chdir, err = os.Getwd(); err != nil {
				return cfg, fmt.Errorf("working directory: %w", err)
			}
		}
	}
	if p := c.String("pid-file"); p != "" {
		if cfg.PIDFile, err = filepath.Abs(p); err != nil {
			return cfg, fmt.Errorf("--pid-file %q: %w", p, err)
		}
	}
	if cfg.Credential, err = supervisor.LookupCredential(c.String("user"), c.String("group")); err != nil {
		return cfg, err
	}
	if cr := cfg.Credential; cr != nil {
		// Workers run as another user: their unix sockets are theirs.
		sockets.DefaultPerm(cfg.Listen, int(cr.Uid), int(cr.Gid))
	}
	switch cfg.WorkerOutput = c.String("worker-output"); cfg.WorkerOutput {
	case "":
		cfg.WorkerOutput = supervisor.OutputTagged
		if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			cfg.WorkerOutput = supervisor.OutputInherit
		}
	case supervisor.OutputTagged, supervisor.OutputInherit:
	default:
		return cfg, &supervisor.ConfigError{Flag: "--worker-output", Value: strconv.Quote(cfg.WorkerOutput), Msg: "want tagged or inherit"}
	}
	cfg.Control = c.String("control")
	cfg.ControlExplicit = cfg.Control != ""
	if cfg.Control == "" {
		cfg.Control = control.DefaultPath(cfg.PIDFile, specStrings(specs))
	} else if !strings.HasPrefix(cfg.Control, "@") {
		if cfg.Control, err = filepath.Abs(cfg.Control); err != nil {
			return cfg, fmt.Errorf("--control %q: %w", c.String("control"), err)
		}
	}
	// Validate everything cheap before anything is bound or started.
	return cfg, cfg.Check()
}
