//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/cmd/baton/loadgen"
	"github.com/urfave/cli/v2"
)

// exitUnreachable: the service did not answer before any upgrade, so
// nothing was verified (exit 1 means the deploy dropped requests).
const exitUnreachable = 4

// verifyPlan is a checked `baton verify` command line.
type verifyPlan struct {
	url            string // as given, for reports
	network, addr  string // where to connect: "tcp" and a resolved IP:port, or "unix" and a path
	host           string // Host header
	target         string // request target (path and query)
	slow           string // slow request target, or ""
	reloads        int
	interval       time.Duration
	concurrency    int
	requestTimeout time.Duration
	duration       time.Duration
	maxRequests    int
	versionHeader  string
	upgradeTimeout time.Duration
	report         string // --report FILE (.html or .svg), or ""
}

// Clients split: a quarter of --concurrency (at least one) sends --slow;
// the rest is half keep-alive, half fresh connections.
func (p verifyPlan) slowClients() int {
	if p.slow == "" {
		return 0
	}
	return max(1, p.concurrency/4)
}

func verifyCommand(onUsage cli.OnUsageErrorFunc) *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "prove that a running service upgrades with zero downtime: load it, trigger upgrades, report every failed request (exit 0 verified, 1 not, 2 bad usage, 4 the service did not answer before any upgrade)",
		Description: "Runs bounded HTTP/1.1 load against --url (keep-alive and fresh connections, optional slow\n" +
			"requests), triggers --reloads upgrades one after another through the master's control socket,\n" +
			"keeps loading for --interval after the last, and reports failed requests by kind and by the\n" +
			"upgrade after which they happened. Only loopback addresses unless --allow-remote.",
		Flags: append(controlFlags(2*time.Minute, "how long to wait for the outcome of each upgrade"),
			&cli.StringFlag{Name: "url", Usage: "http://HOST:PORT/PATH to load (loopback unless --allow-remote)"},
			&cli.StringFlag{Name: "unix-socket", Usage: "connect to this unix socket instead of --url's host (which then only names the Host header)"},
			&cli.IntFlag{Name: "reloads", Value: 1, Usage: "upgrades to trigger, one after another"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "load alone before the first upgrade, between upgrades (once the old generation has exited) and after the last"},
			&cli.IntFlag{Name: "concurrency", Value: 8, Usage: "requests in flight at most (half on kept-alive connections, half on fresh ones; a quarter on --slow if given)"},
			&cli.StringFlag{Name: "slow", Usage: "PATH of a slow request (e.g. /report?days=30) to keep in flight across every drain"},
			&cli.DurationFlag{Name: "request-timeout", Value: 5 * time.Second, Usage: "a request with no full answer by then counts as failed (timeout)"},
			&cli.DurationFlag{Name: "duration", Value: 2 * time.Minute, Usage: "hard cap on the whole run; reaching it fails the check"},
			&cli.IntFlag{Name: "max-requests", Value: 1_000_000, Usage: "hard cap on requests; reaching it fails the check"},
			&cli.StringFlag{Name: "version-header", Usage: "response header naming the release that answered (e.g. X-Release), to show which release served when"},
			&cli.BoolFlag{Name: "allow-remote", Usage: "allow a --url that is not a loopback address (this is a load generator: only against hosts you own)"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.StringFlag{Name: "report", Usage: "also write a picture of the run to FILE.html (with the figures) or FILE.svg: requests per second by release, failures by kind, latency, upgrade marks; self-contained"},
		),
		OnUsageError: onUsage,
		Action: func(c *cli.Context) error {
			p, err := verifyPlanFrom(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := runVerify(ctx, c, p)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				rep.writeJSON(os.Stdout)
			} else {
				rep.writeText(os.Stdout)
			}
			if p.report != "" {
				if err := rep.writeReportFile(p.report); err != nil {
					return &exitCode{exitFailure, err.Error()}
				}
			}
			if !rep.Verified {
				return &exitCode{exitFailure, "not verified: " + strings.Join(rep.Problems, "; ")}
			}
			return nil
		},
	}
}

// verifyPlanFrom checks the command line; every error is a usage error
// naming the bad value.
func verifyPlanFrom(c *cli.Context) (verifyPlan, error) {
	bad := func(format string, a ...any) (verifyPlan, error) {
		return verifyPlan{}, &usageError{fmt.Errorf(format, a...)}
	}
	if c.NArg() > 0 {
		return bad("unexpected argument %q (verify takes flags only)", c.Args().First())
	}
	p := verifyPlan{
		url: c.String("url"), reloads: c.Int("reloads"), interval: c.Duration("interval"),
		concurrency: c.Int("concurrency"), requestTimeout: c.Duration("request-timeout"),
		duration: c.Duration("duration"), maxRequests: c.Int("max-requests"),
		versionHeader: c.String("version-header"), upgradeTimeout: c.Duration("timeout"), slow: c.String("slow"),
	}
	if p.url == "" {
		return bad("--url is required (e.g. --url http://127.0.0.1:8080/)")
	}
	u, err := url.Parse(p.url)
	switch {
	case err != nil:
		return bad("--url %q: %v", p.url, unwrapURLError(err))
	case u.Scheme == "https":
		return bad("--url %q: https is not supported; point it at the plain HTTP socket baton owns", p.url)
	case u.Scheme != "http":
		return bad("--url %q: want http://HOST:PORT/PATH", p.url)
	case u.Hostname() == "":
		return bad("--url %q: no host", p.url)
	case u.User != nil:
		return bad("--url %q: credentials in the URL are not supported", p.url)
	}
	p.host = u.Host
	p.target = u.RequestURI()
	if p.slow != "" && !strings.HasPrefix(p.slow, "/") {
		return bad("--slow %q: want a path on the same host, starting with /", p.slow)
	}
	if p.report = c.String("report"); p.report != "" {
		if _, err := reportFormat(p.report); err != nil {
			return verifyPlan{}, &usageError{err}
		}
		if fi, err := os.Stat(filepath.Dir(p.report)); err != nil || !fi.IsDir() {
			return bad("--report %q: directory %q does not exist", p.report, filepath.Dir(p.report))
		}
	}
	if p.reloads < 1 {
		return bad("--reloads %d: want at least 1", p.reloads)
	}
	if p.concurrency < 1 || p.concurrency > 1024 {
		return bad("--concurrency %d: want 1 to 1024", p.concurrency)
	}
	if p.slow != "" && p.concurrency < 2 {
		return bad("--concurrency %d: --slow needs at least 2 (one slow client, one other)", p.concurrency)
	}
	if p.maxRequests < 1 {
		return bad("--max-requests %d: want at least 1", p.maxRequests)
	}
	for _, d := range []string{"interval", "request-timeout", "duration", "timeout"} {
		if c.Duration(d) <= 0 {
			return bad("--%s %s: want a positive duration", d, c.Duration(d))
		}
	}
	if h := p.versionHeader; h != "" && !validHeaderName(h) {
		return bad("--version-header %q: not a header name", h)
	}
	if sock := c.String("unix-socket"); sock != "" {
		p.network, p.addr = "unix", sock
	} else {
		port := u.Port()
		if port == "" {
			port = "80"
		}
		ip, err := loopbackOnly(u.Hostname(), c.Bool("allow-remote"))
		if err != nil {
			return bad("--url %q: %v", p.url, err)
		}
		p.network, p.addr = "tcp", net.JoinHostPort(ip.String(), port)
	}
	// A control socket that is not there is a wrong flag, not a failed
	// upgrade: say so before loading anything.
	path, err := controlPath(c)
	if err != nil {
		return verifyPlan{}, &exitCode{exitUsage, err.(*exitCode).msg}
	}
	if !strings.HasPrefix(path, "@") {
		if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
			return verifyPlan{}, &exitCode{exitUsage, fmt.Sprintf("no master at %s (give --control or --pid-file)", path)}
		}
	}
	return p, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func validHeaderName(h string) bool {
	for _, r := range h {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return h != ""
}

// loopbackOnly resolves host and returns the address to connect to. Unless
// allowRemote, every address the name resolves to must be loopback
// (127.0.0.0/8, ::1): verify is a load generator. The address is resolved
// once, here, so what was checked is what is loaded.
func loopbackOnly(host string, allowRemote bool) (net.IP, error) {
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, unwrapDNS(err))
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	if !allowRemote {
		for _, ip := range ips {
			if !ip.IsLoopback() {
				what := host
				if what != ip.String() {
					what += " is " + ip.String() + ", which"
				}
				return nil, fmt.Errorf("%s is not a loopback address; verify is a load generator, so --allow-remote must say that this host is yours to load", what)
			}
		}
	}
	return ips[0], nil
}

func unwrapDNS(err error) error {
	var de *net.DNSError
	if errors.As(err, &de) {
		return errors.New(de.Err)
	}
	return err
}

// upgradeRun is one triggered upgrade as verify saw it.
type upgradeRun struct {
	n        int
	sent     time.Time // request sent to the master
	answered time.Time // outcome received (zero if none)
	gone     time.Time // old master exited (zero if not seen)
	out      upgradeOutcome
	err      error // no outcome
}

// runVerify runs the load and the upgrades and returns the report. It
// blocks for at most about --duration (plus the last bounded waits).
func runVerify(parent context.Context, c *cli.Context, p verifyPlan) (*verifyReport, error) {
	// The service must answer before anything is upgraded, or every later
	// failure would be blamed on an upgrade.
	probe := &loadgen.Client{Network: p.network, Addr: p.addr, Host: p.host, Timeout: p.requestTimeout}
	_, err := probe.Do(p.target)
	probe.Close()
	if err != nil {
		return nil, &exitCode{exitUnreachable, fmt.Sprintf("GET %s before any upgrade: %v; nothing was upgraded", p.url, err)}
	}

	ctx, cancel := context.WithTimeoutCause(parent, p.duration, fmt.Errorf("--duration %s reached", p.duration))
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	budget := loadgen.NewBudget(p.maxRequests)
	slow := p.slowClients()
	start := time.Now()
	wait := loadgen.StartMix(loadCtx, loadgen.Mix{
		Network: p.network, Addr: p.addr, Host: p.host, Path: p.target,
		Clients: p.concurrency - slow, KeepAlive: 0.5,
		SlowClients: slow, SlowPath: p.slow,
		Timeout: p.requestTimeout, Duration: p.duration, Budget: budget, ReleaseHeader: p.versionHeader,
	})
	loadDone := make(chan loadgen.MixResult, 1)
	go func() { loadDone <- wait() }()
	var (
		res       loadgen.MixResult
		loadEnded bool // the load stopped by itself (--max-requests)
	)
	// pause waits d with the load running; false if the load or ctx ended.
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
		case res = <-loadDone:
			loadEnded = true
		}
		return false
	}

	var ups []upgradeRun
	func() {
		if !pause(p.interval) {
			return
		}
		for k := 1; k <= p.reloads; k++ {
			u := upgradeRun{n: k, sent: time.Now()}
			u.out, u.err = triggerUpgrade(ctx, c)
			u.answered = time.Now()
			if u.err == nil && u.out.OK {
				left := min(p.upgradeTimeout, time.Until(start.Add(p.duration)))
				if waitMasterGone(ctx, u.out.OldMasterPID, max(left, 0)) {
					u.gone = time.Now()
				}
			}
			ups = append(ups, u)
			if u.err != nil || !u.out.OK {
				// The release in place failed once; trying again says little more.
				pause(p.interval)
				return
			}
			if !pause(p.interval) {
				return
			}
		}
	}()
	cause := context.Cause(ctx)
	stopLoad()
	if !loadEnded {
		res = <-loadDone
	}
	rep := buildReport(p, start, res, ups)
	switch {
	case parent.Err() != nil:
		rep.problem("interrupted")
	case ctx.Err() != nil:
		rep.problem(cause.Error() + " before the check ended")
	}
	if budget.Exhausted() {
		rep.problem("--max-requests " + strconv.Itoa(p.maxRequests) + " reached before the check ended")
	}
	rep.Verified = len(rep.Problems) == 0
	return rep, nil
}
