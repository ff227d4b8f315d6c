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
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/internal/verify"
	"github.com/urfave/cli/v2"
)

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
			rep, err := verify.Run(ctx, p, func(ctx context.Context) (verify.Outcome, error) { return triggerUpgrade(ctx, c) })
			if err != nil {
				// The service did not answer before any upgrade: nothing
				// was verified, which is not "the deploy dropped requests".
				return &exitCode{exitUnreachable, err.Error()}
			}
			if c.Bool("json") {
				rep.WriteJSON(os.Stdout)
			} else {
				rep.WriteText(os.Stdout)
			}
			if p.Report != "" {
				if err := rep.WriteReportFile(p.Report); err != nil {
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

// exitUnreachable: the service did not answer before any upgrade, so
// nothing was verified (exit 1 means the deploy dropped requests).
const exitUnreachable = 4

// verifyPlanFrom checks the command line; every error is a usage error
// naming the bad value.
func verifyPlanFrom(c *cli.Context) (verify.Plan, error) {
	bad := func(format string, a ...any) (verify.Plan, error) {
		return verify.Plan{}, &usageError{fmt.Errorf(format, a...)}
	}
	if c.NArg() > 0 {
		return bad("unexpected argument %q (verify takes flags only)", c.Args().First())
	}
	p := verify.Plan{
		URL: c.String("url"), Reloads: c.Int("reloads"), Interval: c.Duration("interval"),
		Concurrency: c.Int("concurrency"), RequestTimeout: c.Duration("request-timeout"),
		Duration: c.Duration("duration"), MaxRequests: c.Int("max-requests"),
		VersionHeader: c.String("version-header"), UpgradeTimeout: c.Duration("timeout"), Slow: c.String("slow"),
	}
	if p.URL == "" {
		return bad("--url is required (e.g. --url http://127.0.0.1:8080/)")
	}
	u, err := url.Parse(p.URL)
	switch {
	case err != nil:
		return bad("--url %q: %v", p.URL, unwrapURLError(err))
	case u.Scheme == "https":
		return bad("--url %q: https is not supported; point it at the plain HTTP socket baton owns", p.URL)
	case u.Scheme != "http":
		return bad("--url %q: want http://HOST:PORT/PATH", p.URL)
	case u.Hostname() == "":
		return bad("--url %q: no host", p.URL)
	case u.User != nil:
		return bad("--url %q: credentials in the URL are not supported", p.URL)
	}
	p.Host = u.Host
	p.Target = u.RequestURI()
	if p.Slow != "" && !strings.HasPrefix(p.Slow, "/") {
		return bad("--slow %q: want a path on the same host, starting with /", p.Slow)
	}
	if p.Report = c.String("report"); p.Report != "" {
		if _, err := verify.ReportFormat(p.Report); err != nil {
			return verify.Plan{}, &usageError{err}
		}
		if fi, err := os.Stat(filepath.Dir(p.Report)); err != nil || !fi.IsDir() {
			return bad("--report %q: directory %q does not exist", p.Report, filepath.Dir(p.Report))
		}
	}
	if p.Reloads < 1 {
		return bad("--reloads %d: want at least 1", p.Reloads)
	}
	if p.Concurrency < 1 || p.Concurrency > 1024 {
		return bad("--concurrency %d: want 1 to 1024", p.Concurrency)
	}
	if p.Slow != "" && p.Concurrency < 2 {
		return bad("--concurrency %d: --slow needs at least 2 (one slow client, one other)", p.Concurrency)
	}
	if p.MaxRequests < 1 {
		return bad("--max-requests %d: want at least 1", p.MaxRequests)
	}
	for _, d := range []string{"interval", "request-timeout", "duration", "timeout"} {
		if c.Duration(d) <= 0 {
			return bad("--%s %s: want a positive duration", d, c.Duration(d))
		}
	}
	if h := p.VersionHeader; h != "" && !validHeaderName(h) {
		return bad("--version-header %q: not a header name", h)
	}
	if sock := c.String("unix-socket"); sock != "" {
		p.Network, p.Addr = "unix", sock
	} else {
		port := u.Port()
		if port == "" {
			port = "80"
		}
		ip, err := loopbackOnly(u.Hostname(), c.Bool("allow-remote"))
		if err != nil {
			return bad("--url %q: %v", p.URL, err)
		}
		p.Network, p.Addr = "tcp", net.JoinHostPort(ip.String(), port)
	}
	// A control socket that is not there is a wrong flag, not a failed
	// upgrade: say so before loading anything.
	path, err := controlPath(c)
	if err != nil {
		return verify.Plan{}, &exitCode{exitUsage, err.(*exitCode).msg}
	}
	if !strings.HasPrefix(path, "@") {
		if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
			return verify.Plan{}, &exitCode{exitUsage, fmt.Sprintf("no master at %s (give --control or --pid-file)", path)}
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
