//go:build linux

package supervisor

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/sockets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// This file owns --metrics: Prometheus exposition at /metrics. The loop
// keeps the numbers in a metrics value (under its mutex, for the scrape's
// goroutine); a collector turns them into samples at scrape time.
//
// The service, not one master process, is what is measured: counters and
// histograms travel to the next master in its environment (envMetrics) at
// each upgrade, and the listening socket travels through tableflip like
// the workers' sockets, so a scrape during an upgrade finds a master
// accepting: the old one until the new one serves, then the new one.
// Counts the old master takes after it handed over (its workers' drained
// exits) stay with it; the drain's duration is observed by the new master,
// from its own handover to the old master's exit.

// Label values.
const (
	outcomeOK      = "ok"
	outcomeFailed  = "failed"
	outcomeRefused = "refused"
)

var (
	handoverBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}
	drainBuckets    = []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	exitReasons     = []string{"drained", "killed", "crashed", "failed_start", "other"}
	restartReasons  = []string{"crash", "not_ready", "start_error"}
	outcomes        = []string{outcomeOK, outcomeFailed, outcomeRefused}
)

// histo is a histogram's state: cumulative counts per upper bound.
type histo struct {
	Buckets []uint64 `json:"b"`
	Sum     float64  `json:"s"`
	Count   uint64   `json:"c"`
}

func (h *histo) observe(bounds []float64, v float64) {
	if len(h.Buckets) != len(bounds) {
		h.Buckets = make([]uint64, len(bounds))
	}
	for i, b := range bounds {
		if v <= b {
			h.Buckets[i]++
		}
	}
	h.Sum += v
	h.Count++
}

func (h *histo) metric(d *prometheus.Desc, bounds []float64, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(bounds))
	for i, b := range bounds {
		if i < len(h.Buckets) {
			buckets[b] = h.Buckets[i]
		}
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets, labels...)
}

// carried is what one master passes on to the next: every counter and
// histogram, and the last upgrade.
type carried struct {
	WorkerStarts   float64            `json:"worker_starts"`
	WorkerExits    map[string]float64 `json:"worker_exits"`
	WorkerRestarts map[string]float64 `json:"worker_restarts"`
	Upgrades       map[string]float64 `json:"upgrades"`
	HandoverApp    histo              `json:"handover_app"`
	HandoverBaton  histo              `json:"handover_baton"`
	HandoverChecks histo              `json:"handover_checks"`
	HandoverBake   histo              `json:"handover_bake"`
	Drain          histo              `json:"drain"`
	LastUpgrade    float64            `json:"last_upgrade"` // unix seconds; 0 for none
	LastOK         bool               `json:"last_ok"`
}

// metrics is one master's numbers. The loop writes them; the scrape reads.
type metrics struct {
	mu         sync.Mutex
	c          carried
	version    string
	gen        int
	configured int
	byState    [3]int    // workers by workerState, draining included
	drainUntil time.Time // the latest drain deadline, or zero
	stage      string    // the rollout's stage (control.Stage*), or ""
	candGen    int       // the rollout's candidate generation, or 0

	// Loop only.
	ln        net.Listener
	srv       *http.Server
	serveDone chan struct{} // closed when srv.Serve has returned
	conns     sync.WaitGroup
	stopped   chan struct{} // closed once a stopped server's scrapes ended
}

func newMetrics(version string, gen int) *metrics {
	if version == "" {
		version = "dev"
	}
	return &metrics{version: version, gen: gen, c: carried{
		WorkerExits: map[string]float64{}, WorkerRestarts: map[string]float64{}, Upgrades: map[string]float64{},
	}}
}

// carry returns the state for the next master (envMetrics).
func (mt *metrics) carry() string {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	b, _ := json.Marshal(mt.c)
	return string(b)
}

// restore takes over the previous master's state; a value it cannot read
// (another baton version's) starts from zero.
func (mt *metrics) restore(s string) error {
	if s == "" {
		return nil
	}
	var c carried
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return err
	}
	for _, m := range []*map[string]float64{&c.WorkerExits, &c.WorkerRestarts, &c.Upgrades} {
		if *m == nil {
			*m = map[string]float64{}
		}
	}
	mt.mu.Lock()
	mt.c = c
	mt.mu.Unlock()
	return nil
}

func (mt *metrics) add(f func(c *carried)) {
	mt.mu.Lock()
	f(&mt.c)
	mt.mu.Unlock()
}

func (mt *metrics) workerStarted() { mt.add(func(c *carried) { c.WorkerStarts++ }) }
func (mt *metrics) workerExited(reason string) {
	mt.add(func(c *carried) { c.WorkerExits[reason]++ })
}
func (mt *metrics) workerRestart(reason string) {
	mt.add(func(c *carried) { c.WorkerRestarts[reason]++ })
}
func (mt *metrics) upgrade(outcome string) { mt.add(func(c *carried) { c.Upgrades[outcome]++ }) }

func (mt *metrics) upgradeFailed(at time.Time) {
	mt.add(func(c *carried) {
		c.Upgrades[outcomeFailed]++
		c.LastUpgrade, c.LastOK = float64(at.UnixNano())/1e9, false
	})
}

// handoverParts splits an upgrade's time from its start to the new
// generation serving: app is its workers' start-up, checks the health
// check and smoke test before the switch, bake the time after it, baton
// the rest.
type handoverParts struct{ app, checks, bake, baton time.Duration }

// tookOver counts this master's own successful upgrade. The checks and
// bake parts are observed only for blue-green and canary upgrades.
func (mt *metrics) tookOver(at time.Time, p handoverParts) {
	mt.add(func(c *carried) {
		c.Upgrades[outcomeOK]++
		c.LastUpgrade, c.LastOK = float64(at.UnixNano())/1e9, true
		c.HandoverApp.observe(handoverBuckets, p.app.Seconds())
		c.HandoverBaton.observe(handoverBuckets, max(p.baton, 0).Seconds())
		if p.checks > 0 || p.bake > 0 {
			c.HandoverChecks.observe(handoverBuckets, p.checks.Seconds())
			c.HandoverBake.observe(handoverBuckets, p.bake.Seconds())
		}
	})
}

func (mt *metrics) drained(d time.Duration) {
	mt.add(func(c *carried) { c.Drain.observe(drainBuckets, d.Seconds()) })
}

// sync copies the loop's live state (workers by state, drain deadline).
// Called by the loop after every event.
func (m *master) syncMetrics() {
	mt := m.met
	var by [3]int
	var until time.Time
	for _, w := range m.procs {
		by[w.state]++
		if w.state == stateDraining {
			if d := w.drainAt.Add(m.cfg.DrainTimeout); d.After(until) {
				until = d
			}
		}
	}
	if m.origin.parentAlive && m.origin.parentDeadline.After(until) {
		until = m.origin.parentDeadline
	}
	stage, cand := m.rolloutStage(), 0
	if stage != "" {
		cand = m.gen + 1
	}
	mt.mu.Lock()
	mt.byState, mt.drainUntil, mt.configured = by, until, len(m.slots)
	mt.stage, mt.candGen = stage, cand
	mt.mu.Unlock()
	m.passCounts()
}

var (
	descBuild       = prometheus.NewDesc("baton_build_info", "baton's version, always 1.", []string{"version", "goversion"}, nil)
	descGeneration  = prometheus.NewDesc("baton_generation", "Generation number of the serving master.", nil, nil)
	descWorkers     = prometheus.NewDesc("baton_workers", "Worker processes of this master by state.", []string{"state"}, nil)
	descConfigured  = prometheus.NewDesc("baton_workers_configured", "Worker count the master keeps running (--workers, TTIN, TTOU, baton scale).", nil, nil)
	descStarts      = prometheus.NewDesc("baton_worker_starts_total", "Worker processes started.", nil, nil)
	descExits       = prometheus.NewDesc("baton_worker_exits_total", "Worker processes that exited, by reason.", []string{"reason"}, nil)
	descRestarts    = prometheus.NewDesc("baton_worker_restarts_total", "Worker restarts scheduled, by reason.", []string{"reason"}, nil)
	descUpgrades    = prometheus.NewDesc("baton_upgrades_total", "Upgrades by outcome: ok (took over), failed (rolled back), refused (not started).", []string{"outcome"}, nil)
	descHandover    = prometheus.NewDesc("baton_handover_duration_seconds", "Time from an upgrade's start to the new generation serving, by part: app (its workers' start-up), checks (blue-green/canary health check and smoke test), bake (after the switch), baton (the rest).", []string{"part"}, nil)
	descStage       = prometheus.NewDesc("baton_rollout_stage", "1 for the stage of the blue-green or canary upgrade under way, 0 for the others (all 0 when none).", []string{"stage"}, nil)
	descCandidate   = prometheus.NewDesc("baton_rollout_candidate_generation", "Generation number of the blue-green or canary candidate under way, 0 when none.", nil, nil)
	descDrain       = prometheus.NewDesc("baton_drain_duration_seconds", "Time a previous generation took to drain after a handover.", nil, nil)
	descLastTime    = prometheus.NewDesc("baton_last_upgrade_timestamp_seconds", "When the last upgrade ended, as a Unix time; 0 before any.", nil, nil)
	descLastOK      = prometheus.NewDesc("baton_last_upgrade_success", "1 if the last upgrade took over, 0 if it failed or there was none.", nil, nil)
	descDrainRemain = prometheus.NewDesc("baton_drain_remaining_seconds", "Time left at most in the drain under way (the previous generation's, or this master's own), 0 when none.", nil, nil)
)

// Describe and Collect make metrics a prometheus.Collector.
func (mt *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descGeneration, descWorkers, descConfigured, descStarts, descExits,
		descRestarts, descUpgrades, descHandover, descDrain, descLastTime, descLastOK, descDrainRemain, descStage, descCandidate} {
		ch <- d
	}
}

func (mt *metrics) Collect(ch chan<- prometheus.Metric) {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	gauge(descBuild, 1, mt.version, runtime.Version())
	gauge(descGeneration, float64(mt.gen))
	for s := stateStarting; s <= stateDraining; s++ {
		gauge(descWorkers, float64(mt.byState[s]), s.String())
	}
	gauge(descConfigured, float64(mt.configured))
	counter(descStarts, mt.c.WorkerStarts)
	for _, r := range exitReasons {
		counter(descExits, mt.c.WorkerExits[r], r)
	}
	for _, r := range restartReasons {
		counter(descRestarts, mt.c.WorkerRestarts[r], r)
	}
	for _, o := range outcomes {
		counter(descUpgrades, mt.c.Upgrades[o], o)
	}
	ch <- mt.c.HandoverApp.metric(descHandover, handoverBuckets, "app")
	ch <- mt.c.HandoverBaton.metric(descHandover, handoverBuckets, "baton")
	ch <- mt.c.HandoverChecks.metric(descHandover, handoverBuckets, "checks")
	ch <- mt.c.HandoverBake.metric(descHandover, handoverBuckets, "bake")
	for _, s := range control.RolloutStages {
		v := 0.0
		if s == mt.stage {
			v = 1
		}
		gauge(descStage, v, s)
	}
	gauge(descCandidate, float64(mt.candGen))
	ch <- mt.c.Drain.metric(descDrain, drainBuckets)
	gauge(descLastTime, mt.c.LastUpgrade)
	ok := 0.0
	if mt.c.LastOK {
		ok = 1
	}
	gauge(descLastOK, ok)
	gauge(descDrainRemain, max(time.Until(mt.drainUntil), 0).Seconds())
}

// checkMetricsAddr validates --metrics: HOST:PORT with a fixed port (every
// master must find the same socket).
func checkMetricsAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return badConfig("--metrics", strconv.Quote(addr), "want HOST:PORT", nil)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return badConfig("--metrics", strconv.Quote(addr), "want a port from 1 to 65535", nil)
	}
	return nil
}

// openMetrics binds (or inherits) the --metrics socket. Like the listeners
// it goes through tableflip, so every master holds the same socket.
func (m *master) openMetrics(reg sockets.Registry) error {
	set, err := sockets.Open(reg, []sockets.Spec{{Name: "metrics", Network: "tcp", Addr: m.cfg.Metrics}}, nil)
	if err != nil {
		return badConfig("--metrics", strconv.Quote(m.cfg.Metrics), "", err)
	}
	defer set.Close()
	ln, err := net.FileListener(set.Files()[0])
	if err != nil {
		return badConfig("--metrics", strconv.Quote(m.cfg.Metrics), "", err)
	}
	m.met.ln = ln
	return nil
}

// serveMetrics starts answering /metrics: when this master becomes the
// master of record.
func (m *master) serveMetrics() {
	mt := m.met
	if mt.ln == nil || mt.srv != nil {
		return
	}
	// The go_* and process_* series come from the Go and process
	// collectors client_golang registers on its default registry in its
	// own package initialisation, which every baton runs anyway: gathered
	// from there, not built again from the collectors package, whose
	// import cost each exec of baton its package-level regexps and
	// database/sql's initialisation. Only this master's own collector is
	// registered here.
	reg := prometheus.NewRegistry()
	reg.MustRegister(mt)
	mux := http.NewServeMux()
	h := promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, reg}, promhttp.HandlerOpts{})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		// For the trim that follows a burst of scrapes (trim.go). Not
		// waiting for the loop: a master that stops waits for this
		// connection's end (stopMetrics), and its loop may be that wait.
		select {
		case m.events <- evScraped{}:
		default:
		}
	})
	// ConnState counts connections, so that a master about to exit can
	// answer every scrape it accepted (stopMetrics).
	mt.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				mt.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				mt.conns.Done()
			}
		}}
	// One connection per scrape: a kept-alive connection would be closed
	// by this master at the handover just as a scraper reuses it (an EOF
	// for that scrape); a new one always finds a master accepting.
	mt.srv.SetKeepAlivesEnabled(false)
	srv, ln, done := mt.srv, mt.ln, make(chan struct{})
	mt.serveDone = done
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, net.ErrClosed) {
			m.log.Warn("metrics server ended", zap.Error(err))
		}
	}()
	m.log.Info("serving metrics", zap.String("metrics", "http://"+m.cfg.Metrics+"/metrics"))
}

// stopMetrics stops answering /metrics, letting scrapes under way finish
// (waitMetrics waits for them). The socket stays open in the other masters
// that hold it. Never blocks.
func (m *master) stopMetrics() {
	mt := m.met
	if mt.ln != nil {
		// Not srv.Shutdown: a connection accepted just before it would be
		// closed unanswered once its request is read (net/http drops
		// requests read during a shutdown), an EOF for the scraper. Closing
		// the listener stops the accepts; what was accepted is answered.
		mt.ln.Close()
	}
	if mt.srv != nil {
		serveDone, done := mt.serveDone, make(chan struct{})
		mt.stopped = done
		go func() {
			defer close(done)
			<-serveDone // after it, no connection is added
			answered := make(chan struct{})
			go func() { mt.conns.Wait(); close(answered) }()
			select {
			case <-answered:
			case <-time.After(metricsStopWait):
			}
		}()
	}
	mt.ln, mt.srv = nil, nil
}

// metricsStopWait bounds how long a master about to exit waits for scrapes
// it accepted: exiting would cut them off.
const metricsStopWait = 5 * time.Second

// waitMetrics blocks until the scrapes a stopped server had accepted have
// been answered, at most metricsStopWait.
func (m *master) waitMetrics() {
	if m.met.stopped != nil {
		<-m.met.stopped
	}
}
