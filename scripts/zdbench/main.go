//go:build linux

// Command zdbench measures baton's zero-downtime claims on this machine
// (make bench): throughput against hello run directly, failed requests and
// handover time over many upgrades under load, what a naive restart costs in
// comparison, how handover time grows with the worker count, and baton beside
// nginx's binary upgrade and Unicorn's USR2 under the same load (when they
// are installed: make bench-deps).
//
// It builds baton and examples/hello into a temporary directory, talks to
// them on loopback only, prints a table and writes every figure as JSON.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	upgrades        int
	concurrency     int
	naiveRestarts   int
	jsonPath        string
	quick           bool
	skipSteady      bool
	skipNaive       bool
	skipScaling     bool
	workers         int
	interval        time.Duration
	keepAlive       float64
	slowClients     int
	slowMS          int
	rounds          int
	roundDur        time.Duration
	scalingWorkers  []int
	scalingUpgrades int
	skipPeers       bool
	peerUpgrades    int
	peerRounds      int
	idleAfter       time.Duration // idle-memory phase: how long after rest and after the scrapes it samples (0: skip)
	soak            int           // > 0: run only the soak (make soak), this many upgrades
	soakStrategy    string
	soakKill        bool
	baseline        string // a baton binary whose handovers are measured beside this tree's
	sameSession     bool   // servers in zdbench's session instead of one each
	// scalingProbePause paces the scaling phase's probe (0: back to back)
	scalingProbePause time.Duration
	tags              string // build tags for baton, as make build gives them
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := mainCode(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// mainCode runs the benchmark with the command line args; the smoke test
// calls it in-process.
func mainCode(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "zdbench: "+err.Error())
		return 2
	}
	if err := run(ctx, o, stdout, stderr); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted (%w)", err)
		}
		fmt.Fprintln(stderr, "zdbench: "+oneLine(err.Error()))
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("zdbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.upgrades, "upgrades", 50, "upgrades under load (0: skip that phase)")
	fs.IntVar(&o.concurrency, "concurrency", 64, "concurrent load clients")
	fs.IntVar(&o.naiveRestarts, "naive-restarts", 10, "naive restarts (SIGTERM + start) for comparison (0: skip)")
	fs.StringVar(&o.jsonPath, "json", filepath.Join("bench-results", "zdbench.json"), "write all figures to this JSON file")
	fs.BoolVar(&o.quick, "quick", false, "short run: 3 upgrades, concurrency 8, 1 naive restart, 1 steady round, scaling with 1 and 4 workers, 2 upgrades of each peer (flags given explicitly win)")
	fs.BoolVar(&o.skipSteady, "skip-steady", false, "skip the steady-state comparison with hello run directly")
	fs.BoolVar(&o.skipNaive, "skip-naive", false, "skip the naive restarts")
	fs.BoolVar(&o.skipScaling, "skip-scaling", false, "skip handover time against worker count")
	fs.IntVar(&o.workers, "workers", 4, "workers during the upgrades phase")
	fs.DurationVar(&o.interval, "interval", 3*time.Second, "time between upgrades (and naive restarts); an upgrade waits longer if the previous old generation still drains")
	fs.Float64Var(&o.keepAlive, "keep-alive", 0.5, "share of load clients that reuse their connection (the rest connect anew per request)")
	fs.IntVar(&o.slowClients, "slow-clients", 4, "extra clients that always have a slow request in flight")
	fs.IntVar(&o.slowMS, "slow-ms", 1000, "duration of a slow request (hello's ?sleep=)")
	fs.IntVar(&o.rounds, "rounds", 7, "steady-state rounds (each runs direct and baton once)")
	fs.DurationVar(&o.roundDur, "round-duration", 3*time.Second, "load duration of one steady-state run")
	scaling := fs.String("scaling-workers", "1,4,16,64", "worker counts for the handover scaling phase")
	fs.IntVar(&o.scalingUpgrades, "scaling-upgrades", 3, "upgrades per worker count in the scaling phase")
	fs.DurationVar(&o.scalingProbePause, "scaling-probe-pause", 2*time.Millisecond, "the scaling phase's probe (its only load) sends a request on a fresh connection this often; 0: back to back, which keeps about one CPU busy")
	fs.BoolVar(&o.skipPeers, "skip-peers", false, "skip the comparison with nginx and Unicorn")
	fs.DurationVar(&o.idleAfter, "idle-after", 5*time.Second, "idle-memory phase: keeper + master PSS this long after rest, and after 20 /metrics scrapes (0: skip)")
	fs.IntVar(&o.peerUpgrades, "peer-upgrades", 15, "upgrades of each server (baton, nginx, Unicorn) in the peers phase (0: skip it)")
	fs.IntVar(&o.peerRounds, "peer-rounds", 3, "rounds the peers' upgrades are split into; each round starts every server afresh, in rotating order")
	fs.IntVar(&o.soak, "soak", 0, "run only the soak: this many upgrades back to back under load (make soak), then a summary of failures, handover percentiles, and the keeper's and master's memory and fds")
	fs.StringVar(&o.soakStrategy, "soak-strategy", "shared", "the soak's --strategy: shared, blue-green or canary")
	fs.StringVar(&o.tags, "tags", "", "build tags for baton (make bench and make soak pass make build's, so that what is measured is the baton make build makes)")
	fs.StringVar(&o.baseline, "baseline", "", "a baton binary (built from another commit) whose handovers are measured first in each handover phase (upgrades, scaling), for before/after figures from one run")
	fs.BoolVar(&o.sameSession, "same-session", false, "start every server in zdbench's own session, the load generator's, instead of a session of its own as systemd starts each service (and nginx's daemon mode itself): with the kernel's autogroup on, each thread of the load generator then competes with each of the server's for the CPUs")
	fs.BoolVar(&o.soakKill, "soak-kill", false, "soak: SIGKILL a random worker after about one upgrade in four, and wait for its replacement")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		// Only what the user did not set explicitly.
		quick := map[string]func(){
			"upgrades":         func() { o.upgrades = 3 },
			"concurrency":      func() { o.concurrency = 8 },
			"naive-restarts":   func() { o.naiveRestarts = 1 },
			"interval":         func() { o.interval = 1500 * time.Millisecond },
			"slow-clients":     func() { o.slowClients = 2 },
			"slow-ms":          func() { o.slowMS = 500 },
			"rounds":           func() { o.rounds = 1 },
			"round-duration":   func() { o.roundDur = time.Second },
			"scaling-workers":  func() { *scaling = "1,4" },
			"scaling-upgrades": func() { o.scalingUpgrades = 2 },
			"peer-upgrades":    func() { o.peerUpgrades = 2 },
			"peer-rounds":      func() { o.peerRounds = 1 },
			"idle-after":       func() { o.idleAfter = 3 * time.Second },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
	}
	for _, f := range strings.Split(*scaling, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1024 {
			return o, fmt.Errorf("-scaling-workers %q: want worker counts from 1 to 1024, comma-separated", *scaling)
		}
		o.scalingWorkers = append(o.scalingWorkers, n)
	}
	switch {
	case o.upgrades < 0 || o.upgrades > 10000:
		return o, fmt.Errorf("-upgrades %d: want 0..10000", o.upgrades)
	case o.concurrency < 1 || o.concurrency > 4096:
		return o, fmt.Errorf("-concurrency %d: want 1..4096", o.concurrency)
	case o.naiveRestarts < 0 || o.naiveRestarts > 1000:
		return o, fmt.Errorf("-naive-restarts %d: want 0..1000", o.naiveRestarts)
	case o.workers < 1 || o.workers > 1024:
		return o, fmt.Errorf("-workers %d: want 1..1024", o.workers)
	case o.scalingProbePause < 0 || o.scalingProbePause > time.Second:
		return o, fmt.Errorf("-scaling-probe-pause %s: want 0..1s", o.scalingProbePause)
	case o.interval < 100*time.Millisecond || o.interval > time.Hour:
		return o, fmt.Errorf("-interval %s: want 100ms..1h", o.interval)
	case o.keepAlive < 0 || o.keepAlive > 1:
		return o, fmt.Errorf("-keep-alive %g: want 0..1", o.keepAlive)
	case o.slowClients < 0 || o.slowClients > 1024:
		return o, fmt.Errorf("-slow-clients %d: want 0..1024", o.slowClients)
	case o.slowMS < 1 || o.slowMS > 20000:
		// hello drains for at most 25 s; a longer request would be cut.
		return o, fmt.Errorf("-slow-ms %d: want 1..20000", o.slowMS)
	case o.rounds < 1 || o.rounds > 100:
		return o, fmt.Errorf("-rounds %d: want 1..100", o.rounds)
	case o.roundDur < 100*time.Millisecond || o.roundDur > time.Hour:
		return o, fmt.Errorf("-round-duration %s: want 100ms..1h", o.roundDur)
	case o.scalingUpgrades < 1 || o.scalingUpgrades > 1000:
		return o, fmt.Errorf("-scaling-upgrades %d: want 1..1000", o.scalingUpgrades)
	case o.peerUpgrades < 0 || o.peerUpgrades > 1000:
		return o, fmt.Errorf("-peer-upgrades %d: want 0..1000", o.peerUpgrades)
	case o.peerRounds < 1 || o.peerRounds > 100:
		return o, fmt.Errorf("-peer-rounds %d: want 1..100", o.peerRounds)
	case o.soak < 0 || o.soak > 1000000:
		return o, fmt.Errorf("-soak %d: want 0..1000000", o.soak)
	case o.soakStrategy != "shared" && o.soakStrategy != "blue-green" && o.soakStrategy != "canary":
		return o, fmt.Errorf("-soak-strategy %q: want shared, blue-green or canary", o.soakStrategy)
	case o.idleAfter < 0 || o.idleAfter > 10*time.Minute:
		return o, fmt.Errorf("-idle-after %s: want 0..10m", o.idleAfter)
	case o.jsonPath == "":
		return o, errors.New("-json: want a file path")
	}
	return o, nil
}

type binaries struct{ dir, baton, hello, baseline string }

// lastBinDir is where the last run put its binaries: the smoke test checks
// that no process runs from there once the run has returned.
var lastBinDir string

// stopper is anything zdbench started and must stop before it exits.
type stopper interface{ stop() error }

type bench struct {
	opts     options
	bin      binaries
	mu       sync.Mutex
	started  []stopper
	notes    []string
	progress func(format string, args ...any)
}

// serverAttr is how every server (baton, hello run directly, Unicorn,
// nginx's first process) starts: in a session of its own, as systemd
// starts each service, unless -same-session. The session decides how the
// kernel shares the CPUs when its autogroup is on: between sessions first,
// so a server competes with the load generator as one group, not thread
// by thread. nginx's daemon mode starts a session of its own either way.
func (b *bench) serverAttr() *syscall.SysProcAttr {
	if b.opts.sameSession {
		return &syscall.SysProcAttr{Setpgid: true}
	}
	return &syscall.SysProcAttr{Setsid: true}
}

func (b *bench) track(s stopper) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.started = append(b.started, s)
}

// note records something surprising that did not stop the run.
func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.mu.Lock()
	b.notes = append(b.notes, s)
	b.mu.Unlock()
	b.progress("note: %s", s)
}

func (b *bench) noteErr(err error) {
	if err != nil {
		b.note("%s", oneLine(err.Error()))
	}
}

// cleanup stops whatever is still running, newest first.
func (b *bench) cleanup() error {
	b.mu.Lock()
	started := append([]stopper(nil), b.started...)
	b.mu.Unlock()
	var errs []string
	for i := len(started) - 1; i >= 0; i-- {
		if err := started[i].stop(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New("cleanup: " + strings.Join(errs, "; "))
	}
	return nil
}

func run(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	rep := &report{Machine: machineInfo(), Config: configOf(o)}
	rep.Machine.ServerSession = "own"
	if o.sameSession {
		rep.Machine.ServerSession = "zdbench"
	}
	b := &bench{opts: o}
	t0 := time.Now()
	b.progress = func(format string, args ...any) {
		fmt.Fprintf(stderr, "zdbench %6.1fs: %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
	}
	dir, err := os.MkdirTemp("", "zdbench-")
	if err != nil {
		return err
	}
	lastBinDir = dir
	// Deferred in this order so that the processes are gone before their
	// binaries' directory.
	defer os.RemoveAll(dir)
	defer func() {
		if cerr := b.cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	b.progress("building baton and hello")
	if b.bin, err = build(ctx, dir, o.tags); err != nil {
		return err
	}
	if o.baseline != "" {
		// In the binaries' directory: only processes running from there
		// are the benchmark's (harness.Ours).
		if b.bin.baseline, err = copyBinary(o.baseline, filepath.Join(dir, "baton-baseline")); err != nil {
			return fmt.Errorf("-baseline: %w", err)
		}
		rep.Baseline = &report{}
	}
	var phaseErr error
	if o.soak > 0 {
		b.progress("soak: %d upgrades, --strategy %s, %d workers, concurrency %d", o.soak, o.soakStrategy, o.workers, o.concurrency)
		rep.Soak, phaseErr = b.soak(ctx)
		if phaseErr == nil && rep.Soak != nil {
			phaseErr = soakVerdict(rep.Soak)
		}
	} else {
		phaseErr = b.phases(ctx, rep)
	}
	rep.Machine.LoadAvgEnd = loadAvg()
	rep.Notes = b.notes
	if phaseErr != nil {
		rep.Error = oneLine(phaseErr.Error())
	}
	rep.Targets = targetsOf(rep, o)
	printReport(stdout, rep)
	if werr := writeJSON(o.jsonPath, rep); werr != nil {
		return werr
	}
	fmt.Fprintf(stdout, "\nJSON: %s\n", o.jsonPath)
	return phaseErr
}

// phases runs every phase asked for, stopping at the first error; what was
// measured before it stays in the report.
func (b *bench) phases(ctx context.Context, rep *report) error {
	o := b.opts
	var err error
	if !o.skipSteady {
		b.progress("steady state: %d round(s) of %s, direct vs. baton, concurrency %d", o.rounds, o.roundDur, o.concurrency)
		rep.Steady, err = b.steadyPhase(ctx)
		if rep.Steady != nil {
			rep.Direct = &rep.Steady.Direct
		}
		if err != nil {
			return err
		}
	}
	if o.upgrades > 0 {
		err = b.withBaseline(rep, func(r *report) (err error) {
			b.progress("upgrades: %d every %s, %d workers, concurrency %d + %d slow clients", o.upgrades, o.interval, o.workers, o.concurrency, o.slowClients)
			if r.Upgrades, err = b.upgradesPhase(ctx, "shared"); err != nil {
				return fmt.Errorf("upgrades: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = b.withBaseline(rep, func(r *report) (err error) {
			b.progress("upgrades with --strategy blue-green: the same, each generation on its own socket, switched by BPF")
			if r.UpgradesBlueGreen, err = b.upgradesPhase(ctx, "blue-green"); err != nil {
				return fmt.Errorf("blue-green upgrades: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if !o.skipNaive && o.naiveRestarts > 0 {
		b.progress("naive restarts: %d, concurrency %d + %d slow clients", o.naiveRestarts, o.concurrency, o.slowClients)
		if rep.Naive, err = b.naivePhase(ctx); err != nil {
			return fmt.Errorf("naive restarts: %w", err)
		}
	}
	if !o.skipScaling {
		err = b.withBaseline(rep, func(r *report) (err error) {
			b.progress("scaling: workers %v, %d upgrades each", o.scalingWorkers, o.scalingUpgrades)
			r.Scaling, err = b.scalingPhase(ctx)
			return err
		})
		if err != nil {
			return err
		}
	}
	if o.idleAfter > 0 {
		b.progress("idle memory: keeper + master PSS at rest, %s later, and %s after %d /metrics scrapes, shared and blue-green", o.idleAfter, o.idleAfter, idleScrapes)
		if rep.IdleMemory, err = b.idlePhase(ctx); err != nil {
			return fmt.Errorf("idle memory: %w", err)
		}
	}
	if !o.skipPeers && o.peerUpgrades > 0 {
		b.progress("peers: baton, nginx and Unicorn, %d upgrades each in %d round(s), %d workers, concurrency %d", o.peerUpgrades, min(o.peerRounds, o.peerUpgrades), o.workers, o.concurrency)
		if rep.Peers, err = b.peersPhase(ctx); err != nil {
			return fmt.Errorf("peers: %w", err)
		}
	}
	return nil
}

// build compiles baton (with build tags tags) and hello from the module
// zdbench belongs to.
func build(ctx context.Context, dir, tags string) (binaries, error) {
	bin := binaries{dir: dir, baton: filepath.Join(dir, "baton"), hello: filepath.Join(dir, "hello")}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return bin, errors.New("the go tool is not in $PATH")
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return bin, errors.New("run zdbench from within the baton module (go env GOMOD is empty)")
	}
	for path, pkg := range map[string]string{
		bin.baton: "github.com/baton-sh/baton/cmd/baton",
		bin.hello: "github.com/baton-sh/baton/examples/hello",
	} {
		linked := path + ".linked"
		args := []string{"build", "-o", linked}
		if path == bin.baton && tags != "" {
			args = append(args, "-tags", tags)
		}
		cmd := exec.CommandContext(ctx, goTool, append(args, pkg)...)
		cmd.Dir = filepath.Dir(gomod)
		if path == bin.baton {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			if ctx.Err() != nil {
				return bin, fmt.Errorf("go build %s: %w", pkg, ctx.Err())
			}
			return bin, fmt.Errorf("go build %s: %v: %s", pkg, err, oneLine(string(out)))
		}
		// Run a copy, as installed (copyBinary says why).
		if _, err := copyBinary(linked, path); err != nil {
			return bin, err
		}
		os.Remove(linked)
	}
	return bin, nil
}

type machine struct {
	NProc        int    `json:"nproc"`
	CPUModel     string `json:"cpu_model"`
	Kernel       string `json:"kernel"`
	GoVersion    string `json:"go_version"`
	GOMAXPROCS   int    `json:"gomaxprocs"`
	MemTotalMB   int    `json:"mem_total_mb"`
	Date         string `json:"date"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	// Autogroup is the kernel's sched_autogroup_enabled ("1": the CPUs are
	// shared between sessions first, then between the threads of each).
	Autogroup string `json:"sched_autogroup_enabled"`
	// ServerSession is where the servers ran: "own" (a session each) or
	// "zdbench" (-same-session).
	ServerSession string `json:"server_session"`
}

func machineInfo() machine {
	m := machine{
		NProc:        runtime.NumCPU(),
		GoVersion:    runtime.Version(),
		GOMAXPROCS:   runtime.GOMAXPROCS(0),
		Date:         time.Now().UTC().Format(time.RFC3339),
		LoadAvgStart: loadAvg(),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.Autogroup = "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/sched_autogroup_enabled"); err == nil {
		m.Autogroup = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					kb, _ := strconv.Atoi(f[0])
					m.MemTotalMB = kb >> 10
				}
			}
		}
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load averages: how busy the shared
// machine was, to read the figures against.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
