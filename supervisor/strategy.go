//go:build linux

package supervisor

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/baton-sh/baton/supervisor/sockets"
)

// Strategy is how a new generation takes over the listening sockets
// (--strategy). The blue-green and canary rollout itself is bluegreen.go;
// the checks it runs are checks.go.
type Strategy string

const (
	// StrategyShared: every generation accepts on the same sockets; a new
	// one takes connections as soon as its workers accept (the default).
	StrategyShared Strategy = "shared"
	// StrategyBlueGreen: each generation has its own sockets in a
	// SO_REUSEPORT group; a BPF program sends users to one of them, and
	// switches at once after the checks.
	StrategyBlueGreen Strategy = "blue-green"
	// StrategyCanary: as blue-green, but during the bake only
	// CanaryWeight percent of new connections reach the new generation.
	StrategyCanary Strategy = "canary"
)

// ParseStrategy parses --strategy. Errors match ErrBadConfig.
func ParseStrategy(s string) (Strategy, error) {
	switch st := Strategy(s); st {
	case StrategyShared, StrategyBlueGreen, StrategyCanary:
		return st, nil
	case "":
		return StrategyShared, nil
	}
	return "", badConfig("--strategy", strconv.Quote(s), "want shared, blue-green or canary", nil)
}

// steered reports whether generations have their own sockets.
func (s Strategy) steered() bool { return s == StrategyBlueGreen || s == StrategyCanary }

// HealthCheck is --health-check: how baton probes a candidate generation.
type HealthCheck struct {
	Kind string // "" (none), "tcp" (a connection completes) or "http"
	Path string // for http: the request target, starting with '/'
}

// ParseHealthCheck parses "", "tcp" or "http:PATH". Errors match
// ErrBadConfig.
func ParseHealthCheck(s string) (HealthCheck, error) {
	switch {
	case s == "":
		return HealthCheck{}, nil
	case s == "tcp":
		return HealthCheck{Kind: "tcp"}, nil
	case strings.HasPrefix(s, "http:"):
		p := strings.TrimPrefix(s, "http:")
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, " \r\n") {
			return HealthCheck{}, badConfig("--health-check", strconv.Quote(s), "want http:/PATH, a path starting with '/' and without spaces", nil)
		}
		return HealthCheck{Kind: "http", Path: p}, nil
	}
	return HealthCheck{}, badConfig("--health-check", strconv.Quote(s), "want http:/PATH or tcp", nil)
}

func (h HealthCheck) String() string {
	if h.Kind == "http" {
		return "http:" + h.Path
	}
	return h.Kind
}

// Rollout is the part of Config that only blue-green and canary use.
type Rollout struct {
	Strategy       Strategy
	HealthCheck    HealthCheck
	HealthInterval time.Duration // between health checks during the bake
	// HealthTimeout bounds the health check before the switch: probes
	// every 100 ms until one passes or this has passed (--health-timeout).
	HealthTimeout time.Duration
	SmokeTest     string // /bin/sh -c command; "" for none
	SmokeTimeout  time.Duration
	Bake          time.Duration // old generation kept warm after the switch
	CanaryWeight  int           // percent of new connections, canary only
}

// check validates the rollout flags against the listen specs. Errors match
// ErrBadConfig and name the flag.
func (r Rollout) check(specs []sockets.Spec) error {
	if !r.Strategy.steered() {
		for flag, set := range map[string]bool{
			"--health-check": r.HealthCheck.Kind != "", "--smoke-test": r.SmokeTest != "", "--bake": r.Bake > 0,
		} {
			if set {
				return badConfig(flag, "", "needs --strategy blue-green or canary (with the shared strategy no one but the new generation could be probed)", nil)
			}
		}
		return nil
	}
	for _, s := range specs {
		if err := sockets.GroupSpecOK(s); err != nil {
			return badConfig("--listen", "", "with --strategy "+string(r.Strategy), err)
		}
	}
	if r.Strategy == StrategyCanary && (r.CanaryWeight < 1 || r.CanaryWeight > 99) {
		return badConfig("--canary-weight", strconv.Itoa(r.CanaryWeight), "want a percentage from 1 to 99", nil)
	}
	if r.HealthCheck.Kind != "" && r.HealthInterval <= 0 {
		return badConfig("--health-interval", r.HealthInterval.String(), "want a positive duration", nil)
	}
	if r.HealthCheck.Kind != "" && r.HealthTimeout <= 0 {
		return badConfig("--health-timeout", r.HealthTimeout.String(), "want a positive duration", nil)
	}
	if r.SmokeTest != "" && r.SmokeTimeout <= 0 {
		return badConfig("--smoke-timeout", r.SmokeTimeout.String(), "want a positive duration", nil)
	}
	if r.Bake < 0 {
		return badConfig("--bake", r.Bake.String(), "want zero or a positive duration", nil)
	}
	if len(specs) > 0 && probesNeedMark(specs[0]) && !canMark() {
		// Checked here, not at the first probe: a check that cannot run
		// would otherwise fail every upgrade, long after the start.
		for _, f := range [][2]string{{"--health-check", r.HealthCheck.String()}, {"--smoke-test", r.SmokeTest}} {
			if f[1] != "" {
				return badConfig(f[0], strconv.Quote(f[1]), "probes of the IPv6 address "+specs[0].Addr+" are marked with SO_MARK, which needs CAP_NET_ADMIN (run baton as root, or grant it: AmbientCapabilities=CAP_NET_ADMIN under systemd)", nil)
			}
		}
	}
	return nil
}

// upgradeTimeout is what the rollout adds to tableflip's UpgradeTimeout:
// the whole check-switch-bake sequence runs inside the old master's
// Upgrade call, and the old generation's queue is emptied before it drains.
func (r Rollout) upgradeTimeout(readyTimeout, drainTimeout time.Duration) time.Duration {
	if !r.Strategy.steered() {
		return 0
	}
	d := r.Bake + drainTimeout + switchBackWait
	if r.HealthCheck.Kind != "" {
		d += r.HealthTimeout
	}
	if r.SmokeTest != "" {
		d += r.SmokeTimeout
	}
	return d
}

func (r Rollout) String() string {
	return fmt.Sprintf("%s (health check %q, smoke test %q, bake %s)", r.Strategy, r.HealthCheck, r.SmokeTest, r.Bake)
}
