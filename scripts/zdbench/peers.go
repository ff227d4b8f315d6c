//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/baton-sh/baton/internal/harness"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-sh/baton/internal/loadgen"
)

// ---- 6: baton beside nginx and Unicorn under the same load ----
//
// Each server answers with "generation=G" from its own master, with the same
// number of workers, and is upgraded its own documented way:
//
//   - baton: USR2; baton itself stops the old generation once the new one is
//     ready (examples/hello as the app).
//   - nginx (binary upgrade): USR2 to the master, which re-executes the
//     binary (the same one: what is measured is the mechanism, not a new
//     build); once the new generation answers, WINCH to the old master (its
//     workers stop gracefully), and once they are gone, QUIT to it. The
//     answer is a `return 200` from the config, which is rewritten before
//     each USR2 with the next generation, as a deploy would ship a new one.
//   - Unicorn: USR2 to the master (it re-executes itself and loads the app
//     anew: a Rack app of three lines that reads its generation from a file
//     at load time, preload_app true); once the new generation answers, QUIT
//     to the old master.
//
// nginx and Unicorn have no readiness signal of their own, so the old master
// is told to go as soon as the new generation answers on a fresh connection:
// the earliest an outside script can know. What is compared is the handover
// (USR2 -> first answer of the new generation; USR2 -> old master gone),
// failed requests and the master's RSS; each server's throughput is its own
// (nginx answers from C, Unicorn from one Ruby process per worker that takes
// one request at a time and closes every connection).

// peerUpgrade is what one upgrade of any of the servers produced.
type peerUpgrade struct {
	oldPID, newPID int
	oldGen, newGen int
	sent           time.Time // USR2 sent
	oldGone        time.Time // old master exited
	ok             bool
	rssMB          float64 // new master's RSS once alone
	mem            memInfo // its smaps_rollup then
	keeper         memInfo // baton's keeper then; zero for the others
	batonMS        float64 // baton: its part of the handover (from its log)
}

// peerServer is one server with a master, started by zdbench, serving on
// addr() until stop.
type peerServer interface {
	stopper
	addr() string
	masterPID() int
	// upgrade runs one upgrade the server's own way and returns once the old
	// master has exited; tr sees the answers on fresh connections.
	upgrade(ctx context.Context, tr *genTracker) (peerUpgrade, error)
}

// peerKind is a server to compare, how it upgrades, and how to start it.
type peerKind struct {
	name  string
	how   string
	start func(ctx context.Context) (peerServer, error)
}

type peerRec struct {
	Round      int      `json:"round"`
	N          int      `json:"n"`
	OldMaster  int      `json:"old_master_pid"`
	NewMaster  int      `json:"new_master_pid,omitempty"`
	HandedOver bool     `json:"handed_over"`
	FirstNewMS *float64 `json:"first_new_response_ms"`
	LastOldMS  *float64 `json:"last_old_response_ms"`
	OldGoneMS  float64  `json:"old_master_gone_ms"`
	RSSMB      float64  `json:"master_rss_mb"`
	PSSMB      float64  `json:"master_pss_mb"`
	KeeperPSS  float64  `json:"keeper_pss_mb,omitempty"`
	KeeperRSS  float64  `json:"keeper_rss_mb,omitempty"`
	BatonMS    float64  `json:"baton_ms,omitempty"` // baton's part of the handover
}

type peerSide struct {
	Name        string        `json:"name"`
	Upgrade     string        `json:"upgrade"`
	Requested   int           `json:"upgrades_requested"`
	HandedOver  int           `json:"upgrades_handed_over"`
	Requests    requestCounts `json:"requests"` // load clients and probe
	LoadSeconds float64       `json:"load_seconds"`
	RPS         float64       `json:"rps"`
	FirstNew    loadgen.Dist  `json:"first_new_response_ms"`
	LastOld     loadgen.Dist  `json:"last_old_response_ms"`
	OldGone     loadgen.Dist  `json:"old_master_gone_ms"`
	MasterRSS   loadgen.Dist  `json:"master_rss_mb"`
	MasterPSS   loadgen.Dist  `json:"master_pss_mb"`
	KeeperRSS   loadgen.Dist  `json:"keeper_rss_mb"` // baton only
	KeeperPSS   loadgen.Dist  `json:"keeper_pss_mb"`
	BatonPart   loadgen.Dist  `json:"baton_ms"` // baton only: handover - app start-up
	Error       string        `json:"error,omitempty"`
	List        []peerRec     `json:"upgrades"`

	firstNew, lastOld, oldGone, rss      []float64
	pss, keeperRSS, keeperPSS, batonPart []float64
	results                              []*loadgen.Result
}

type peersResult struct {
	Workers     int        `json:"workers"`
	Concurrency int        `json:"concurrency"`
	KeepAlive   float64    `json:"keep_alive_share"`
	IntervalMS  float64    `json:"interval_ms"`
	Rounds      int        `json:"rounds"`
	Upgrades    int        `json:"upgrades_per_server"`
	Sides       []peerSide `json:"servers"`
	Missing     []string   `json:"missing,omitempty"`
}

// side returns the result of the server named name, or nil.
func (r *peersResult) side(name string) *peerSide {
	for i := range r.Sides {
		if r.Sides[i].Name == name {
			return &r.Sides[i]
		}
	}
	return nil
}

// findPeer looks a server's program up in $PATH and then in dir, where
// Debian installs it (a non-root $PATH often lacks /usr/sbin).
func findPeer(name, dir string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	p := filepath.Join(dir, name)
	if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return p, true
	}
	return "", false
}

// peersPhase runs baton, nginx and Unicorn in turn under the same load, in
// rounds whose order rotates, so that the machine's drift hits each alike.
// A server that fails is reported and left out of the later rounds; the
// others go on.
func (b *bench) peersPhase(ctx context.Context) (*peersResult, error) {
	o := b.opts
	rounds := min(o.peerRounds, o.peerUpgrades)
	res := &peersResult{Workers: o.workers, Concurrency: o.concurrency, KeepAlive: o.keepAlive,
		IntervalMS: msOf(o.interval), Rounds: rounds, Upgrades: o.peerUpgrades}
	kinds := []peerKind{{name: "baton", how: "USR2 (baton retires the old generation)",
		start: func(ctx context.Context) (peerServer, error) {
			p, err := b.startBaton(ctx, o.workers, nil)
			if p == nil {
				return nil, err
			}
			return batonPeer{p}, err
		}}}
	if exe, ok := findPeer("nginx", "/usr/sbin"); ok {
		kinds = append(kinds, peerKind{name: "nginx", how: "USR2, WINCH, QUIT (binary upgrade)",
			start: func(ctx context.Context) (peerServer, error) { return b.startNginx(ctx, exe) }})
	} else {
		res.Missing = append(res.Missing, "nginx (Debian package nginx-light; make bench-deps)")
	}
	if exe, ok := findPeer("unicorn", "/usr/bin"); ok {
		kinds = append(kinds, peerKind{name: "unicorn", how: "USR2, QUIT",
			start: func(ctx context.Context) (peerServer, error) { return b.startUnicorn(ctx, exe) }})
	} else {
		res.Missing = append(res.Missing, "unicorn (Debian package unicorn; make bench-deps)")
	}
	for _, m := range res.Missing {
		b.note("peers: %s is not installed; left out", m)
	}
	for _, k := range kinds {
		res.Sides = append(res.Sides, peerSide{Name: k.name, Upgrade: k.how})
	}
	for r := range rounds {
		n := o.peerUpgrades / rounds
		if r < o.peerUpgrades%rounds {
			n++
		}
		for i := range kinds {
			k := kinds[(i+r)%len(kinds)]
			side := res.side(k.name)
			if side.Error != "" {
				continue
			}
			b.progress("peers round %d/%d: %s, %d upgrades", r+1, rounds, k.name, n)
			err := b.peerRound(ctx, k, r+1, n, side)
			if err != nil {
				if ctx.Err() != nil {
					return res, err
				}
				side.Error = oneLine(err.Error())
				b.note("peers: %s failed, left out of later rounds: %s", k.name, side.Error)
			}
		}
	}
	for i := range res.Sides {
		s := &res.Sides[i]
		s.FirstNew, s.LastOld, s.OldGone, s.MasterRSS = loadgen.DistOf(s.firstNew), loadgen.DistOf(s.lastOld), loadgen.DistOf(s.oldGone), loadgen.DistOf(s.rss)
		s.MasterPSS, s.KeeperRSS, s.KeeperPSS = loadgen.DistOf(s.pss), loadgen.DistOf(s.keeperRSS), loadgen.DistOf(s.keeperPSS)
		s.BatonPart = loadgen.DistOf(s.batonPart)
		s.Requests = countsOf(loadgen.Merge(s.results...))
		if s.LoadSeconds > 0 {
			s.RPS = float64(s.Requests.Requests-s.Requests.Failed) / s.LoadSeconds
		}
	}
	return res, nil
}

// peerRound starts one server, puts it under the load and upgrades it n
// times, one interval apart (or later, if the previous old master took longer
// to go), then stops it.
func (b *bench) peerRound(ctx context.Context, k peerKind, round, n int, side *peerSide) error {
	o := b.opts
	srv, err := k.start(ctx)
	if srv != nil {
		defer func() { b.noteErr(srv.stop()) }()
	}
	if err != nil {
		return err
	}
	if m, err := procMem(srv.masterPID()); err == nil {
		side.rss, side.pss = append(side.rss, m.rssMB()), append(side.pss, m.pssMB())
	}
	if bp, ok := srv.(batonPeer); ok {
		if m, err := procMem(bp.p.keeper); err == nil {
			side.keeperRSS, side.keeperPSS = append(side.keeperRSS, m.rssMB()), append(side.keeperPSS, m.pssMB())
		}
	}
	tr := newGenTracker()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	wait := startLoad(loadCtx, loadPlan{
		addr: srv.addr(), clients: o.concurrency, keepAlive: o.keepAlive, probe: true, tracker: tr,
		bound: time.Duration(n)*(o.interval+readyTimeout+drainTimeout) + 5*time.Minute,
	})
	started := time.Now()
	var ups []peerUpgrade
	loopErr := func() error {
		if err := pause(ctx, time.Second); err != nil {
			return err
		}
		for i := range n {
			if i > 0 {
				if err := pause(ctx, time.Until(ups[i-1].sent.Add(o.interval))); err != nil {
					return err
				}
			}
			side.Requested++
			u, err := srv.upgrade(ctx, tr)
			ups = append(ups, u)
			if err != nil {
				return fmt.Errorf("upgrade %d: %w", side.Requested, err)
			}
			b.progress("peers %s upgrade %d/%d: old master %d gone after %.0f ms", k.name, i+1, n, u.oldPID, msOf(u.oldGone.Sub(u.sent)))
		}
		return pause(ctx, time.Second)
	}()
	stopLoad()
	out := wait()
	side.LoadSeconds += time.Since(started).Seconds()
	side.results = append(side.results, out.Main, out.Probe)
	for i, u := range ups {
		rec := peerRec{Round: round, N: i + 1, OldMaster: u.oldPID, NewMaster: u.newPID, HandedOver: u.ok}
		if u.ok {
			side.HandedOver++
			rec.OldGoneMS, rec.RSSMB, rec.PSSMB = msOf(u.oldGone.Sub(u.sent)), u.rssMB, u.mem.pssMB()
			side.oldGone, side.rss = append(side.oldGone, rec.OldGoneMS), append(side.rss, u.rssMB)
			if u.mem.PSS > 0 {
				side.pss = append(side.pss, rec.PSSMB)
			}
			if u.keeper.PSS > 0 {
				rec.KeeperPSS, rec.KeeperRSS = u.keeper.pssMB(), u.keeper.rssMB()
				side.keeperPSS, side.keeperRSS = append(side.keeperPSS, rec.KeeperPSS), append(side.keeperRSS, rec.KeeperRSS)
			}
			if u.batonMS > 0 {
				rec.BatonMS = u.batonMS
				side.batonPart = append(side.batonPart, u.batonMS)
			}
			if s, ok := tr.get(u.newGen); ok {
				v := msOf(s.first.Sub(u.sent))
				rec.FirstNewMS = &v
				side.firstNew = append(side.firstNew, v)
			}
			if s, ok := tr.get(u.oldGen); ok {
				v := msOf(s.last.Sub(u.sent))
				rec.LastOldMS = &v
				side.lastOld = append(side.lastOld, v)
			}
		}
		side.List = append(side.List, rec)
	}
	return loopErr
}

// batonPeer is baton under the peers' load.
type batonPeer struct{ p *batonProc }

func (s batonPeer) addr() string   { return s.p.addr }
func (s batonPeer) masterPID() int { return s.p.master }
func (s batonPeer) stop() error    { return s.p.stop() }

func (s batonPeer) upgrade(ctx context.Context, _ *genTracker) (peerUpgrade, error) {
	u := peerUpgrade{oldPID: s.p.master, oldGen: s.p.gen, newGen: s.p.gen + 1}
	if !harness.Ours(s.p.dir, u.oldPID) {
		return u, fmt.Errorf("baton master %d is gone%s", u.oldPID, s.p.log.Problem())
	}
	w, err := watchExit(u.oldPID)
	if err != nil {
		return u, err
	}
	defer w.close()
	h, err := s.p.upgrade(ctx)
	u.sent, u.newPID = h.sent, h.newPID
	if err != nil {
		return u, err
	}
	if !h.ok {
		return u, fmt.Errorf("generation %d: %s", u.newGen, h.failure)
	}
	// baton's upgrade returned once the new master logged the old one's
	// exit: the watch has seen it by now or within moments.
	if u.oldGone, err = w.wait(ctx, 5*time.Second); err != nil {
		return u, err
	}
	u.ok, u.rssMB, u.mem, u.keeper, u.batonMS = true, h.rssMB, h.mem, h.keeperMem, h.batonMS
	return u, nil
}

// signalPeer is nginx or Unicorn: a master started by zdbench (from its own
// directory, which every master's and Unicorn worker's command line names)
// and every master that succeeded it through USR2.
type signalPeer struct {
	kind      string
	dir       string // ends in "/"
	listen    string
	pidFile   string
	gen       int
	master    int
	masters   []int // every master known, for stop
	winch     bool  // nginx: WINCH the old master and wait for its workers before QUIT
	writeGen  func(gen int) error
	log       *harness.Tail // the stderr every process of it shares; EOF when all are gone
	reaped    chan struct{} // zdbench's own child has been waited for
	stopped   bool
	exitLimit time.Duration // how long a master may take to answer or to go
}

func (s *signalPeer) addr() string   { return s.listen }
func (s *signalPeer) masterPID() int { return s.master }

var peerSeq int

// startNginx starts nginx as a daemon (its binary upgrade needs that: a
// master still running under the parent that started it ignores USR2), with
// its error log on a pipe that all of its processes share.
func (b *bench) startNginx(ctx context.Context, exe string) (*signalPeer, error) {
	peerSeq++
	s, err := b.newSignalPeer("nginx", peerSeq, "nginx.pid")
	if err != nil {
		return nil, err
	}
	s.winch = true
	conf := s.dir + "nginx.conf"
	workers := b.opts.workers
	s.writeGen = func(gen int) error {
		return writeFileAtomic(conf, nginxConf(s.dir, s.listen, s.pidFile, workers, gen))
	}
	if err := s.writeGen(1); err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-p", s.dir, "-c", conf, "-e", "stderr")
	if err := s.start(ctx, b, cmd); err != nil {
		return s, err
	}
	// With daemon on, the process started exits once the master runs.
	select {
	case <-s.reaped:
		if !cmd.ProcessState.Success() {
			s.log.WaitClosed(5 * time.Second)
			return s, fmt.Errorf("nginx: %s%s", cmd.ProcessState, s.log.Problem())
		}
	case <-time.After(s.exitLimit):
		return s, fmt.Errorf("nginx did not daemonize within %s", s.exitLimit)
	case <-ctx.Done():
		return s, ctx.Err()
	}
	return s, s.ready(ctx)
}

// nginxConf serves "hello pid=P generation=G" from every worker.
func nginxConf(dir, addr, pidFile string, workers, gen int) string {
	var c strings.Builder
	fmt.Fprintf(&c, "daemon on;\nmaster_process on;\nworker_processes %d;\npid %s;\nerror_log stderr notice;\n", workers, pidFile)
	c.WriteString("events { worker_connections 1024; }\nhttp {\n  access_log off;\n")
	// Temporary files in our directory, not the package's /var/lib/nginx.
	for _, t := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&c, "  %s_temp_path %stmp-%s;\n", t, dir, t)
	}
	fmt.Fprintf(&c, "  server {\n    listen %s;\n", addr)
	fmt.Fprintf(&c, "    location / { default_type text/plain; return 200 \"hello pid=$pid generation=%d\\n\"; }\n  }\n}\n", gen)
	return c.String()
}

// startUnicorn starts Unicorn in the foreground with a Rack app that answers
// "hello pid=P generation=G", G read from a file when the app loads.
func (b *bench) startUnicorn(ctx context.Context, exe string) (*signalPeer, error) {
	peerSeq++
	s, err := b.newSignalPeer("unicorn", peerSeq, "unicorn.pid")
	if err != nil {
		return nil, err
	}
	genFile := s.dir + "generation"
	s.writeGen = func(gen int) error { return writeFileAtomic(genFile, strconv.Itoa(gen)+"\n") }
	if err := s.writeGen(1); err != nil {
		return nil, err
	}
	app := `gen = File.read(File.join(__dir__, "generation")).strip
run lambda { |env| [200, { "content-type" => "text/plain" }, ["hello pid=#{Process.pid} generation=#{gen}\n"]] }
`
	conf := fmt.Sprintf("worker_processes %d\nlisten %q, backlog: 1024\npid %q\npreload_app true\ntimeout 60\n",
		b.opts.workers, s.listen, s.pidFile)
	for name, text := range map[string]string{"config.ru": app, "unicorn.conf.rb": conf} {
		if err := writeFileAtomic(s.dir+name, text); err != nil {
			return nil, err
		}
	}
	// -E production: no request logging middleware.
	cmd := exec.Command(exe, "-E", "production", "-c", s.dir+"unicorn.conf.rb", s.dir+"config.ru")
	cmd.Dir = s.dir
	if err := s.start(ctx, b, cmd); err != nil {
		return s, err
	}
	return s, s.ready(ctx)
}

func (b *bench) newSignalPeer(kind string, seq int, pidName string) (*signalPeer, error) {
	dir := filepath.Join(b.bin.dir, fmt.Sprintf("%s-%d", kind, seq)) + "/"
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s directory: %w", kind, err)
	}
	addr, err := harness.FreeAddr()
	if err != nil {
		return nil, err
	}
	return &signalPeer{kind: kind, dir: dir, listen: addr, pidFile: dir + pidName, gen: 1,
		reaped: make(chan struct{}), exitLimit: readyTimeout}, nil
}

// start starts cmd with its output on the shared log pipe.
func (s *signalPeer) start(ctx context.Context, b *bench, cmd *exec.Cmd) error {
	cmd.Env = childEnv()
	// Its own session or process group: a Ctrl-C on the terminal reaches
	// only zdbench.
	cmd.SysProcAttr = b.serverAttr()
	log, err := harness.Start(cmd)
	if err != nil {
		return fmt.Errorf("%s: %w", s.kind, err)
	}
	s.log = log
	go func() { cmd.Wait(); close(s.reaped) }()
	b.track(s)
	return nil
}

// ready waits for the first answer and learns the master's pid.
func (s *signalPeer) ready(ctx context.Context) error {
	if _, err := waitAnswer(ctx, s.listen, s.exitLimit, nil); err != nil {
		return fmt.Errorf("%s on %s: %w%s", s.kind, s.listen, err, s.log.Problem())
	}
	pid, err := s.readPIDFile(ctx, 0)
	if err != nil {
		return err
	}
	s.master, s.masters = pid, []int{pid}
	return nil
}

// readPIDFile waits until the pid file names a master of ours other than not.
func (s *signalPeer) readPIDFile(ctx context.Context, not int) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(s.pidFile)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid != not && s.ours(pid) {
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: pid file %s did not name a new master within 10s%s", s.kind, s.pidFile, s.log.Problem())
		}
		if err := pause(ctx, 5*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// ours reports whether pid is a live process whose command line names this
// server's directory (masters of both, Unicorn's workers).
func (s *signalPeer) ours(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(b), s.dir) && harness.Alive(pid)
}

// upgrade: USR2, wait for the new generation's first answer, [WINCH, wait
// for the old workers to go,] QUIT, wait for the old master to exit.
func (s *signalPeer) upgrade(ctx context.Context, tr *genTracker) (peerUpgrade, error) {
	u := peerUpgrade{oldPID: s.master, oldGen: s.gen, newGen: s.gen + 1}
	if !s.ours(u.oldPID) {
		return u, fmt.Errorf("%s master %d is gone%s", s.kind, u.oldPID, s.log.Problem())
	}
	if err := s.writeGen(u.newGen); err != nil {
		return u, err
	}
	w, err := watchExit(u.oldPID)
	if err != nil {
		return u, err
	}
	defer w.close()
	if err := syscall.Kill(u.oldPID, syscall.SIGUSR2); err != nil {
		return u, fmt.Errorf("SIGUSR2 to %s master %d: %w", s.kind, u.oldPID, err)
	}
	u.sent = time.Now()
	if _, err := tr.waitSeen(ctx, u.newGen, s.exitLimit); err != nil {
		return u, fmt.Errorf("%s: %w%s", s.kind, err, s.log.Problem())
	}
	if u.newPID, err = s.readPIDFile(ctx, u.oldPID); err != nil {
		return u, err
	}
	s.masters = append(s.masters, u.newPID)
	if s.winch {
		if err := syscall.Kill(u.oldPID, syscall.SIGWINCH); err != nil {
			return u, fmt.Errorf("SIGWINCH to %s master %d: %w", s.kind, u.oldPID, err)
		}
		if err := waitWorkersGone(ctx, u.oldPID, u.newPID, drainTimeout); err != nil {
			return u, fmt.Errorf("%s master %d after WINCH: %w", s.kind, u.oldPID, err)
		}
	}
	if err := syscall.Kill(u.oldPID, syscall.SIGQUIT); err != nil {
		return u, fmt.Errorf("SIGQUIT to %s master %d: %w", s.kind, u.oldPID, err)
	}
	if u.oldGone, err = w.wait(ctx, drainTimeout+10*time.Second); err != nil {
		return u, fmt.Errorf("%s master %d after QUIT: %w", s.kind, u.oldPID, err)
	}
	s.master, s.gen = u.newPID, u.newGen
	if rss, err := procRSS(u.newPID); err == nil {
		u.rssMB = float64(rss) / (1 << 20)
	}
	u.mem, _ = procMem(u.newPID)
	u.ok = true
	return u, nil
}

// stop sends QUIT (graceful stop, for both) to every master still running
// and waits until every process has closed the shared log, killing what is
// left after a deadline.
func (s *signalPeer) stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	var err error
	if s.log != nil {
		for _, pid := range s.ownPIDs() {
			if isMaster(pid) {
				syscall.Kill(pid, syscall.SIGQUIT)
			}
		}
		if !s.log.WaitClosed(drainTimeout + 10*time.Second) {
			left := s.ownPIDs()
			for _, pid := range left {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			err = fmt.Errorf("%s on %s did not stop within %s of QUIT; killed pids %v", s.kind, s.listen, drainTimeout+10*time.Second, left)
		}
	}
	select {
	case <-s.reaped:
	case <-time.After(5 * time.Second):
		if err == nil {
			err = fmt.Errorf("%s on %s: the process zdbench started was not reaped", s.kind, s.listen)
		}
	}
	return err
}

// ownPIDs lists the live processes whose command line names this server's
// directory, and their children (nginx's workers name nothing).
func (s *signalPeer) ownPIDs() []int {
	var mine []int
	byParent := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s.ours(pid) {
			mine = append(mine, pid)
			continue
		}
		if f, err := harness.Stat(pid); err == nil && f[0] != "Z" {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				byParent[ppid] = append(byParent[ppid], pid)
			}
		}
	}
	for _, pid := range mine {
		mine = append(mine, byParent[pid]...)
	}
	return mine
}

// isMaster tells a master from a worker by the title both servers give them.
func isMaster(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(b), "master")
}

// waitWorkersGone waits until the old master has no live child left but
// the new master (which it forked): its workers are gone after WINCH.
func waitWorkersGone(ctx context.Context, old, new int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	workers := func() []int {
		var out []int
		for _, c := range harness.Children(old) {
			if c != new {
				out = append(out, c)
			}
		}
		return out
	}
	for {
		left := workers()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workers %v still running after %s", left, timeout)
		}
		if err := pause(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// exitWatch learns when a process exits through a pidfd, which keeps naming
// that process even if its pid is reused; it works for processes that
// are not zdbench's children (masters started by other masters).
type exitWatch struct {
	pid   int
	done  chan struct{} // closed at the exit; at and err are set before
	at    time.Time
	err   error
	stopC chan struct{}
}

// watchExit starts watching pid; close releases the watch.
func watchExit(pid int) (*exitWatch, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	w := &exitWatch{pid: pid, done: make(chan struct{}), stopC: make(chan struct{})}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			// Bounded polls, so that close is noticed.
			n, err := unix.Poll(fds, 100)
			if n > 0 || (err != nil && !errors.Is(err, unix.EINTR)) {
				w.at, w.err = time.Now(), err
				close(w.done)
				return
			}
			select {
			case <-w.stopC:
				return
			default:
			}
		}
	}()
	return w, nil
}

// wait returns when the process exited, blocking for at most timeout.
func (w *exitWatch) wait(ctx context.Context, timeout time.Duration) (time.Time, error) {
	select {
	case <-w.done:
		if w.err != nil {
			return w.at, fmt.Errorf("watching pid %d: %w", w.pid, w.err)
		}
		return w.at, nil
	case <-time.After(timeout):
		return time.Time{}, fmt.Errorf("pid %d still running after %s", w.pid, timeout)
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

func (w *exitWatch) close() { close(w.stopC) }

// writeFileAtomic replaces path, so that a master reading it (nginx's new
// binary reads its config) never sees half a file.
func writeFileAtomic(path, text string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
