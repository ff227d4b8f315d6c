//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/harness"
	"github.com/baton-sh/baton/internal/loadgen"
)

// binDir holds baton and the example servers, built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "__baton_exec" {
		// never: workers run the real baton binary, not the test binary
		os.Exit(127)
	}
	if dir := os.Getenv(systemdStepsEnv); dir != "" {
		os.Exit(runSystemdSteps(dir)) // inside TestSystemdUnits' container
	}
	dir, err := os.MkdirTemp("", "baton-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Readable by every user: the permission test runs baton as nobody.
	os.Chmod(dir, 0o755)
	binDir = dir
	// baton as make build builds it (its tags); the examples plain.
	for name, pkg := range map[string]string{
		"baton":      ".",
		"hello":      "../../examples/hello",
		"activation": "../../examples/activation",
	} {
		tags := ""
		if name == "baton" {
			tags = batonTags
		}
		out, err := staticBuild("-tags", tags, "-o", filepath.Join(dir, name), pkg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	// A second baton, as a deploy would install it, to upgrade baton itself.
	out, err := staticBuild("-tags", batonTags, "-ldflags", "-X main.version=test-v2", "-o", filepath.Join(dir, "baton-v2"), ".")
	if err != nil {
		fmt.Fprintf(os.Stderr, "build baton-v2: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// batonTags are the Makefile's TAGS: the tests run the baton make build
// ships.
const batonTags = "urfave_cli_no_docs"

func bin(name string) string { return filepath.Join(binDir, name) }

// goTool is the go command running these tests: the one in $GOROOT (go test
// sets it), so a machine whose PATH lacks go still builds the binaries.
func goTool() string {
	for _, root := range []string{os.Getenv("GOROOT"), runtime.GOROOT()} {
		if p := filepath.Join(root, "bin", "go"); root != "" && syscall.Access(p, 1) == nil {
			return p
		}
	}
	return "go"
}

// logEvent is one JSON log entry of baton (a harness.Event with the
// tests' short accessors).
type logEvent map[string]any

func (e logEvent) str(k string) string { return harness.Event(e).Str(k) }
func (e logEvent) num(k string) int    { return harness.Event(e).Int(k) }

// logTail is the log every process of one baton run shares (masters that
// succeed the first inherit its stderr), waited on by event name.
type logTail struct{ *harness.Tail }

func newLogTail(r *os.File) *logTail { return &logTail{harness.New(r)} }

// waitFrom returns the first entry at index >= from with event name that
// satisfies match (nil: any), and its index; it fails the test after
// timeout. name "" matches every entry.
func (lt *logTail) waitFrom(t testing.TB, from int, name string, match func(logEvent) bool, timeout time.Duration) (logEvent, int) {
	t.Helper()
	checkEventName(t, name)
	ev, i, err := lt.Wait(context.Background(), from, timeout, "event "+strconv.Quote(name), eventMatch(name, match))
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, lt.Dump())
	}
	return logEvent(ev), i
}

// tryWaitFrom is waitFrom returning nil, -1 instead of failing: for events
// that must not come.
func (lt *logTail) tryWaitFrom(from int, name string, match func(logEvent) bool, timeout time.Duration) (logEvent, int) {
	ev, i, err := lt.Wait(context.Background(), from, timeout, "event "+strconv.Quote(name), eventMatch(name, match))
	if err != nil {
		return nil, -1
	}
	return logEvent(ev), i
}

func eventMatch(name string, match func(logEvent) bool) func(harness.Event) bool {
	return func(e harness.Event) bool {
		return (name == "" || e.Name() == name) && (match == nil || match(logEvent(e)))
	}
}

// checkEventName fails a wait on a log message's wording: tests wait on
// the stable event names (supervisor/internal/logevent).
func checkEventName(t testing.TB, name string) {
	t.Helper()
	if strings.ContainsAny(name, " :") {
		t.Fatalf("waiting on %q: wait on an event name (snake_case, listed in supervisor/internal/logevent), not on a message", name)
	}
}

func (lt *logTail) wait(t testing.TB, name string, match func(logEvent) bool, timeout time.Duration) logEvent {
	t.Helper()
	ev, _ := lt.waitFrom(t, 0, name, match, timeout)
	return ev
}

// count returns how many entries so far have event name.
func (lt *logTail) count(name string) int { return lt.Count(name) }

func (lt *logTail) len() int { return lt.Len() }

func (lt *logTail) all() []logEvent {
	evs := lt.Slice(0, -1)
	out := make([]logEvent, len(evs))
	for i, e := range evs {
		out[i] = logEvent(e)
	}
	return out
}

func (lt *logTail) dump() string { return lt.Dump() }

// baton is a master started by a test.
type baton struct {
	t    *testing.T
	cmd  *exec.Cmd
	pid  int
	log  *logTail
	done chan struct{} // closed when the first master has exited
	err  error         // its exit, valid after done
	// control is the control socket path, unless the test's args chose one.
	control string
}

// startBaton runs "baton run ARGS..." with JSON logs on a pipe. Cleanup kills
// every baton and worker process the log names, by pid, if still alive.
func startBaton(t *testing.T, env []string, args ...string) *baton {
	t.Helper()
	return startBatonCmd(t, exec.Command(bin("baton"), append([]string{"run", "--log-format", "json"}, args...)...), env)
}

// startBatonCmd starts a prepared command that runs baton (possibly through
// a shell), with JSON logs on a pipe.
func startBatonCmd(t *testing.T, cmd *exec.Cmd, env []string) *baton {
	t.Helper()
	b := launch(t, cmd, env)
	t.Cleanup(func() {
		for _, pid := range b.pids() {
			killOurs(pid)
		}
		select {
		case <-b.done:
		case <-time.After(5 * time.Second):
		}
	})
	return b
}

// launch starts cmd with JSON logs on a pipe; the caller arranges cleanup.
func launch(t *testing.T, cmd *exec.Cmd, env []string) *baton {
	t.Helper()
	// Every master gets its own control socket unless the test picks one.
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	cmd.Env = append(append(os.Environ(), "BATON_CONTROL="+ctl), env...)
	tail, err := harness.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	b := &baton{t: t, cmd: cmd, pid: cmd.Process.Pid, log: &logTail{tail}, done: make(chan struct{}), control: ctl}
	go func() { b.err = cmd.Wait(); close(b.done) }()
	return b
}

// pids lists every master and worker pid the log has named.
func (b *baton) pids() []int {
	masters, others := harness.Pids(b.log.Slice(0, -1))
	return append(append([]int{b.pid}, masters...), others...)
}

// killOurs SIGKILLs pid only if it still runs one of the binaries this test
// built, so a recycled pid is never hit.
func killOurs(pid int) {
	if harness.Ours(binDir, pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (b *baton) signal(sig syscall.Signal) {
	b.t.Helper()
	if err := syscall.Kill(b.pid, sig); err != nil {
		b.t.Fatalf("signal %v to master %d: %v", sig, b.pid, err)
	}
}

// waitExit waits for the first master to exit and returns its exit code.
func (b *baton) waitExit(timeout time.Duration) int {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		b.t.Fatalf("master %d still running after %s; log:\n%s", b.pid, timeout, b.log.dump())
	}
	code, ok := exitStatus(b.err)
	if !ok {
		b.t.Fatalf("wait master: %v", b.err)
	}
	return code
}

// firstMaster returns the pid of the first master, which the keeper (the
// process the test started, b.pid) starts.
func (b *baton) firstMaster() int {
	b.t.Helper()
	return b.log.wait(b.t, "master_starting", func(e logEvent) bool { return e["upgrade"] == false }, 20*time.Second).num("master_pid")
}

// waitReady waits until the generation of this master is serving.
func (b *baton) waitReady() logEvent {
	b.t.Helper()
	return b.log.wait(b.t, "generation_ready", nil, 20*time.Second)
}

// workerPids returns the pids of the "worker_ready" events of generation gen.
func (b *baton) workerPids(gen int) []int {
	var out []int
	for _, ev := range b.log.all() {
		if ev.str("event") == "worker_ready" && ev.num("generation") == gen {
			out = append(out, ev.num("pid"))
		}
	}
	return out
}

// freeAddr returns a loopback TCP address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := harness.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// get does one request on a fresh connection.
func get(network, addr, path string) (string, error) {
	c := &loadgen.Client{Network: network, Addr: addr, Timeout: 10 * time.Second}
	defer c.Close()
	body, _, err := c.Get(path)
	return string(body), err
}

func mustGet(t *testing.T, addr, path string) string {
	t.Helper()
	body, err := get("tcp", addr, path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	return body
}

// field extracts "key=value" from a hello response body.
func field(body, key string) string {
	for _, f := range strings.Fields(body) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// alive is false for a zombie: it serves nothing.
func alive(pid int) bool { return harness.Alive(pid) }

// eventually polls cond (harness.Until) and fails the test if it does not
// hold within timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !harness.Until(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// waitAccepted waits until a worker of generation gen holds a connection
// besides its listening socket: a slow request sent just before is now in
// that worker's hands, not in the shared accept queue.
func (b *baton) waitAccepted(t *testing.T, gen int) {
	t.Helper()
	eventually(t, 5*time.Second, "the slow request to be accepted", func() bool {
		for _, p := range b.workerPids(gen) {
			if countSockets(p) > 1 {
				return true
			}
		}
		return false
	})
}

// startLoad runs bounded load in the background until finish is called (or
// its own bounds end it); the test's cleanup finishes it too.
func startLoad(t *testing.T, cfg loadgen.Config) *runningLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &runningLoad{cancel: cancel, done: make(chan *loadgen.Result, 1)}
	go func() { l.done <- loadgen.Run(ctx, cfg) }()
	t.Cleanup(func() { l.finish() })
	return l
}

type runningLoad struct {
	cancel context.CancelFunc
	done   chan *loadgen.Result
	res    *loadgen.Result
}

// finish stops the load and returns its result.
func (l *runningLoad) finish() *loadgen.Result {
	if l.res == nil {
		l.cancel()
		l.res = <-l.done
	}
	return l.res
}

// ended reports whether the load stopped by itself already.
func (l *runningLoad) ended() bool {
	if l.res != nil {
		return true
	}
	select {
	case l.res = <-l.done:
		return true
	default:
		return false
	}
}

// runBounded runs cmd (its own process group) to completion, 20 s at most,
// and returns its exit code; out is shown if it does not end in time.
func runBounded(t *testing.T, cmd *exec.Cmd, out func() string) int {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("%v did not exit within 20s:\n%s", cmd.Args, out())
	}
	code, ok := exitStatus(err)
	if !ok {
		t.Fatal(err)
	}
	return code
}

// runDeploy runs scripts/deploy.sh ARGS with env added and returns its exit
// code and output.
func runDeploy(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("bash", append([]string{"../../scripts/deploy.sh"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	code := runBounded(t, cmd, out.String)
	return code, out.String()
}

// releaseOf returns the release APP_ROOT dir's current symlink points at.
func releaseOf(t *testing.T, dir string) string {
	t.Helper()
	p, err := filepath.EvalSymlinks(filepath.Join(dir, "current"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(p)
}

// exitStatus maps a finished command's Run or Wait error to its exit code:
// 0 for nil, the code of an *exec.ExitError; ok is false for any other
// error (the command did not run or was not waited for).
func exitStatus(err error) (code int, ok bool) {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, true
	case errors.As(err, &ee):
		return ee.ExitCode(), true
	}
	return -1, false
}

// procStat reads a process's state and parent pid from /proc.
func procStat(pid int) (state byte, ppid int, err error) {
	f, err := harness.Stat(pid)
	if err != nil {
		return 0, 0, err
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0][0], ppid, err
}

// startCopiedBaton starts baton run ARGS (JSON log) from a copy of the
// baton binary, self, in a directory of the test's own, so that the test
// may replace or remove it. The harness kills only binaries from binDir:
// at cleanup the keeper and every master that still runs from that
// directory are SIGKILLed.
func startCopiedBaton(t *testing.T, args ...string) (b *baton, self string) {
	t.Helper()
	dir := t.TempDir()
	self = filepath.Join(dir, "baton")
	data, err := os.ReadFile(bin("baton"))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeExecutable(self, data); err != nil {
		t.Fatal(err)
	}
	return startBatonFrom(t, dir, self, args...), self
}

// startBatonFrom starts baton run from path, a baton of the test's own in
// dir (the path may be a symlink to one), and ends at cleanup every
// master that runs a binary from dir.
func startBatonFrom(t *testing.T, dir, path string, args ...string) *baton {
	t.Helper()
	b := startBatonCmd(t, exec.Command(path, append([]string{"run", "--log-format", "json"}, args...)...), nil)
	t.Cleanup(func() {
		// The keeper first (it would start a master anew), while Wait has
		// not reaped it, so its pid cannot be another process's.
		select {
		case <-b.done:
		default:
			syscall.Kill(b.pid, syscall.SIGKILL)
		}
		for _, ev := range b.log.all() {
			if ev.str("event") == "master_starting" && alive(ev.num("master_pid")) {
				if exe, _ := os.Readlink("/proc/" + strconv.Itoa(ev.num("master_pid")) + "/exe"); strings.HasPrefix(exe, dir+"/") {
					syscall.Kill(ev.num("master_pid"), syscall.SIGKILL)
				}
			}
		}
	})
	return b
}

// writeExecutable writes data to path, mode 0755, through another process
// (sh's cat), never through a descriptor of this one: a child that a
// parallel test forks from this process while it holds a file open for
// writing keeps that descriptor until its own exec, and an exec of the file
// meanwhile fails with ETXTBSY ("text file busy", seen once in make test
// when a master re-executed a baton binary a test had just written).
func writeExecutable(path string, data []byte) error {
	cmd := exec.Command("/bin/sh", "-c", `cat > "$1" && chmod 0755 "$1"`, "sh", path)
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write executable %s: %w: %s", path, err, out)
	}
	return nil
}

// staticBuild runs go build without cgo, as make build does: the tests run
// the static binary users get.
func staticBuild(args ...string) ([]byte, error) {
	cmd := exec.Command(goTool(), append([]string{"build"}, args...)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}
