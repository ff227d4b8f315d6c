//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// TestFleet drives scripts/fleet's playbooks with Ansible against two rigs
// of 3 hosts behind HAProxy, side by side (the runs wait on SSH, HAProxy and
// health checks more than on the CPU), each under load through its HAProxy.
// On each rig one scenario starts where the previous one left the fleet:
//
//	drain/deploy        v1 -> v2, fleet_serial 1, drained in HAProxy
//	drain/rollback      rollback.yml: v2 -> v1
//	nodrain/deploy      v1 -> v2, fleet_serial 1, lb_drain false (baton
//	                    alone); v2 was unpacked already and must stay as it is
//	nodrain/failing     v3, unhealthy on h2, default batches [1, 50%, 100%]:
//	                    h1 on v3, h2 back on v2 and enabled, h3 untouched,
//	                    the play failed
//
// Every scenario must lose no request.
func TestFleet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (the fleet rig creates network namespaces and runs sshd and HAProxy)")
	}
	if m := Missing(); len(m) > 0 {
		t.Skipf("skipped: needs the Debian packages %s (make fleet-deps)", strings.Join(m, ", "))
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	for _, b := range []struct{ out, pkg string }{
		{"baton", "github.com/baton-sh/baton/cmd/baton"},
		{"hello", "github.com/baton-sh/baton/examples/hello"},
	} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, b.out), b.pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	release := func(id, fault string) string {
		path := filepath.Join(dir, id+".tar.gz")
		if err := WriteRelease(path, filepath.Join(bin, "hello"), RunScript(id, fault)); err != nil {
			t.Fatal(err)
		}
		return path
	}
	v1 := release("v1", "")
	v2 := release("v2", "")
	v3 := release("v3", `# fault injected by TestFleet: broken on h2 only
[ "$FLEET_HOST" = h2 ] && export HELLO_STATUS=503`)
	rigs := closeOnSignal(t)
	up := func(t *testing.T, staged map[string]string) *fleet {
		t0 := time.Now()
		r, err := Up(Config{Dir: t.TempDir(), Hosts: 3, Workers: 2, Baton: filepath.Join(bin, "baton"),
			Release: v1, ReleaseID: "v1", Staged: staged, Log: testWriter{t}})
		if err != nil {
			t.Fatal(err)
		}
		rigs.add(r)
		t.Cleanup(func() {
			netns := r.Netns
			if err := r.Close(); err != nil {
				t.Errorf("rig teardown: %v", err)
			}
			for _, ns := range netns {
				if _, err := os.Stat("/run/netns/" + ns); err == nil {
					t.Errorf("rig teardown left network namespace %s", ns)
				}
			}
		})
		t.Logf("rig up in %s", time.Since(t0).Round(time.Millisecond))
		return &fleet{r: r}
	}

	t.Run("drain", func(t *testing.T) {
		t.Parallel()
		f := up(t, nil)
		ok := t.Run("deploy", func(t *testing.T) {
			run := f.playbook(t, "deploy.yml", "-e", "release_archive="+v2, "-e", "release_id=v2", "-e", "fleet_serial=1")
			run.succeeded(t)
			f.on(t, map[string]string{"h1": "v2", "h2": "v2", "h3": "v2"})
			f.allEnabled(t)
			run.summary(t, `h1 +v1 +v2 +deployed +ok +\d+ ms +\d+\.\d s`, `h2 +v1 +v2 +deployed`, `h3 +v1 +v2 +deployed`)
			run.sawTags(t, "v1", "v2")
			f.serves(t, "v2")
		})
		_ = ok && t.Run("rollback", func(t *testing.T) {
			run := f.playbook(t, "rollback.yml", "-e", "fleet_serial=1")
			run.succeeded(t)
			f.on(t, map[string]string{"h1": "v1", "h2": "v1", "h3": "v1"})
			f.allEnabled(t)
			run.summary(t, `h1 +v2 +v1 +rolled back +ok`, `h2 +v2 +v1 +rolled back`, `h3 +v2 +v1 +rolled back`)
			run.sawTags(t, "v1", "v2")
			f.serves(t, "v1")
		})
	})

	t.Run("nodrain", func(t *testing.T) {
		t.Parallel()
		// v2 unpacked already, as a halted or repeated deploy leaves it.
		f := up(t, map[string]string{"v2": v2})
		r := f.r
		ok := t.Run("deploy", func(t *testing.T) {
			unpacked := inode(t, filepath.Join(r.Hosts[0].AppRoot, "releases/v2/bin/hello"))
			run := f.playbook(t, "deploy.yml", "-e", "release_archive="+v2, "-e", "release_id=v2", "-e", "fleet_serial=1", "-e", "lb_drain=false")
			run.succeeded(t)
			f.on(t, map[string]string{"h1": "v2", "h2": "v2", "h3": "v2"})
			f.allEnabled(t)
			// No DRAIN column: HAProxy was left alone.
			run.summary(t, `h1 +v1 +v2 +deployed +ok +\d+ ms +-$`, `h2 +v1 +v2 +deployed +ok +\d+ ms +-$`, `h3 +v1 +v2 +deployed +ok +\d+ ms +-$`)
			if got := inode(t, filepath.Join(r.Hosts[0].AppRoot, "releases/v2/bin/hello")); got != unpacked {
				t.Errorf("releases/v2 was unpacked again (inode %d -> %d); staging must leave an existing release alone", unpacked, got)
			}
			run.sawTags(t, "v1", "v2")
			f.serves(t, "v2")
		})
		_ = ok && t.Run("failing", func(t *testing.T) {
			gen3 := f.generation(t, r.Hosts[2])
			run := f.playbook(t, "deploy.yml", "-e", "release_archive="+v3, "-e", "release_id=v3")
			if run.err == nil {
				t.Errorf("deploy of a release unhealthy on h2 succeeded; want the play to fail\n%s", run.out)
			}
			f.on(t, map[string]string{"h1": "v3", "h2": "v2", "h3": "v2"})
			f.allEnabled(t)
			if g := f.generation(t, r.Hosts[2]); g != gen3 {
				t.Errorf("h3: baton generation %d -> %d; a halted rollout must not touch it", gen3, g)
			}
			run.summary(t, `FLEET SUMMARY \(stopped: h2 failed; not started: h3\)`,
				`h1 +v2 +v3 +deployed +ok`, `h2 +v2 +v2 +failed, back on v2 +ok, back ok +\d+ ms`, `h3 +v2 +v2 +not started`,
				`h2: Check http://\S+/healthz: Status code was 503`)
			f.serves(t, "v2", "v3")
		})
	})
}

// fleet holds what the scenarios share.
type fleet struct {
	r *Rig
}

// playbookRun is one ansible-playbook run under load.
type playbookRun struct {
	out        string
	err        error
	load, slow *loadgen.Result
	tags       map[string]int
}

// playbook runs scripts/fleet/NAME as the rig's controller while 16 clients
// (half of them keep-alive) and 4 clients of 500 ms requests load the fleet
// through HAProxy, and checks that no request failed.
func (f *fleet) playbook(t *testing.T, name string, args ...string) *playbookRun {
	t.Helper()
	res := &playbookRun{tags: map[string]int{}}
	var mu sync.Mutex
	tagRE := regexp.MustCompile(`tag=(\S+)`)
	onResp := func(b []byte) {
		if m := tagRE.FindSubmatch(b); m != nil {
			mu.Lock()
			res.tags[string(m[1])]++
			mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Bounded in time (Duration) and count (MaxRequests) even if the
	// playbook hangs; the playbook's own deadline is shorter.
	loads := []loadgen.Config{
		{Path: "/", Clients: 16, KeepAlive: 0.5, Pause: 50 * time.Millisecond},
		{Path: "/?sleep=500", Clients: 4, KeepAlive: 0.5},
	}
	results := make([]chan *loadgen.Result, len(loads))
	for i, c := range loads {
		c.Network, c.Addr, c.OnResponse = "tcp", f.r.Frontend, onResp
		c.Duration, c.MaxRequests, c.Timeout = 5*time.Minute, 2_000_000, 10*time.Second
		results[i] = make(chan *loadgen.Result, 1)
		go func() { results[i] <- loadgen.Run(ctx, c) }()
	}
	pctx, pcancel := context.WithTimeout(ctx, 4*time.Minute)
	defer pcancel()
	cmd := f.r.Command(pctx, "ansible-playbook", "-i", f.r.Inventory, filepath.Join("..", name))
	cmd.Args = append(cmd.Args, args...)
	// Per-task times, for a slow run's log.
	cmd.Env = append(cmd.Env, "ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks")
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(t0)
	res.out, res.err = string(out), err
	cancel()
	res.load, res.slow = <-results[0], <-results[1]
	var cpu time.Duration
	if ps := cmd.ProcessState; ps != nil {
		cpu = ps.UserTime() + ps.SystemTime()
	}
	t.Logf("%s %s: %s (controller CPU %s), exit %v\n%s", name, strings.Join(args, " "),
		took.Round(100*time.Millisecond), cpu.Round(100*time.Millisecond), err, res.summaryText())
	t.Logf("load: %s\nslow (/?sleep=500): %s\nanswers by release: %v", res.load, res.slow, res.tags)
	for _, l := range []*loadgen.Result{res.load, res.slow} {
		if l.Failures() != 0 || l.Requests == 0 {
			t.Errorf("want requests and none failed during %s: %s", name, l)
		}
	}
	return res
}

func (p *playbookRun) summaryText() string {
	if i := strings.LastIndex(p.out, "FLEET SUMMARY"); i >= 0 {
		return p.out[i:]
	}
	return "(no FLEET SUMMARY in the output)"
}

func (p *playbookRun) succeeded(t *testing.T) {
	t.Helper()
	if p.err != nil {
		t.Fatalf("playbook failed: %v\n%s", p.err, p.out)
	}
}

// summary checks that the summary table has a line matching each pattern.
func (p *playbookRun) summary(t *testing.T, patterns ...string) {
	t.Helper()
	text := p.summaryText()
	for _, pat := range patterns {
		if !regexp.MustCompile(`(?m)^` + pat).MatchString(text) {
			t.Errorf("summary has no line matching %q:\n%s", pat, text)
		}
	}
}

// sawTags checks that clients got answers from each release during the
// run: the fleet really was mixed while it rolled.
func (p *playbookRun) sawTags(t *testing.T, tags ...string) {
	t.Helper()
	for _, tag := range tags {
		if p.tags[tag] == 0 {
			t.Errorf("no answer from release %s during the run: %v", tag, p.tags)
		}
	}
}

// on checks where each host's current symlink points.
func (f *fleet) on(t *testing.T, want map[string]string) {
	t.Helper()
	for _, h := range f.r.Hosts {
		l, err := os.Readlink(filepath.Join(h.AppRoot, "current"))
		if err != nil {
			t.Errorf("%s: %v", h.Name, err)
			continue
		}
		if got := filepath.Base(l); got != want[h.Name] {
			t.Errorf("%s: current -> %s, want release %s", h.Name, l, want[h.Name])
		}
	}
}

// allEnabled checks that HAProxy has every server UP with its weight.
func (f *fleet) allEnabled(t *testing.T) {
	t.Helper()
	st, err := f.r.Servers()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range f.r.Hosts {
		if s := st[h.Name]; s.Status != "UP" || s.Weight == 0 {
			t.Errorf("HAProxy server %s: %+v, want UP with its weight", h.Name, s)
		}
	}
}

// serves checks, with fresh connections through HAProxy, that the fleet
// answers from exactly the given releases.
func (f *fleet) serves(t *testing.T, tags ...string) {
	t.Helper()
	seen := map[string]int{}
	tagRE := regexp.MustCompile(`tag=(\S+)`)
	for i := 0; i < 24; i++ {
		c := &loadgen.Client{Network: "tcp", Addr: f.r.Frontend, Timeout: 5 * time.Second}
		body, _, err := c.Get("/")
		c.Close()
		if err != nil {
			t.Fatalf("probe through HAProxy: %v", err)
		}
		if m := tagRE.FindSubmatch(body); m != nil {
			seen[string(m[1])]++
		}
	}
	var got []string
	for tag := range seen {
		got = append(got, tag)
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(tags, ",") {
		t.Errorf("fleet answers from releases %v, want %v", seen, tags)
	}
}

func (f *fleet) generation(t *testing.T, h *Host) int {
	t.Helper()
	out, err := output(f.r.Baton, "status", "--json", "--pid-file", h.PIDFile)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	var st struct {
		Generation int `json:"generation"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("%s: baton status: %q", h.Name, out)
	}
	return st.Generation
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// rigList is every rig a test built, for closeOnSignal.
type rigList struct {
	mu   sync.Mutex
	rigs []*Rig
}

func (l *rigList) add(r *Rig) {
	l.mu.Lock()
	l.rigs = append(l.rigs, r)
	l.mu.Unlock()
}

// closeOnSignal tears down every rig added to the list it returns if the
// test binary is interrupted (Ctrl-C, or SIGTERM), then exits.
func closeOnSignal(t *testing.T) *rigList {
	l := &rigList{}
	sig := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "TestFleet: %v: tearing the rigs down\n", s)
			l.mu.Lock()
			for _, r := range l.rigs {
				r.Close()
			}
			os.Exit(1)
		case <-done:
		}
	}()
	t.Cleanup(func() {
		signal.Stop(sig)
		close(done)
	})
	return l
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
