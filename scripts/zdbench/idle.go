//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/baton-sh/baton/internal/harness"
)

// The idle-memory phase: keeper + master PSS at rest is a low point (the
// moment after the trim); what the service costs over its life is what
// they hold later. Each strategy runs baton with --metrics and is sampled
// at rest, -idle-after later with nothing asked of it, just after
// idleScrapes /metrics scrapes, and -idle-after after those.

// idleScrapes is how many /metrics scrapes the phase sends, one after
// another, each on a fresh connection (as the master serves them).
const idleScrapes = 20

// memPair is keeper and master PSS at one moment, MiB.
type memPair struct {
	KeeperPSS float64 `json:"keeper_pss_mb"`
	MasterPSS float64 `json:"master_pss_mb"`
}

func (p memPair) sum() float64 { return p.KeeperPSS + p.MasterPSS }

type idleMemRow struct {
	Strategy     string  `json:"strategy"`
	AtRest       memPair `json:"at_rest"`
	Idle         memPair `json:"idle"`          // idle_after_s after rest, nothing asked
	Scraped      memPair `json:"scraped"`       // just after the scrapes
	AfterScrapes memPair `json:"after_scrapes"` // idle_after_s after them
}

type idleMemResult struct {
	Workers int          `json:"workers"`
	AfterS  float64      `json:"idle_after_s"`
	Scrapes int          `json:"scrapes"`
	Rows    []idleMemRow `json:"rows"`
}

func (b *bench) idlePhase(ctx context.Context) (*idleMemResult, error) {
	o := b.opts
	res := &idleMemResult{Workers: o.workers, AfterS: o.idleAfter.Seconds(), Scrapes: idleScrapes}
	for _, strategy := range []string{"shared", "blue-green"} {
		row, err := b.idleRow(ctx, strategy)
		if err != nil {
			return res, fmt.Errorf("%s: %w", strategy, err)
		}
		res.Rows = append(res.Rows, row)
	}
	return res, nil
}

func (b *bench) idleRow(ctx context.Context, strategy string) (idleMemRow, error) {
	row := idleMemRow{Strategy: strategy}
	metrics, err := harness.FreeAddr()
	if err != nil {
		return row, err
	}
	p, err := b.startBaton(ctx, b.opts.workers, nil, "--strategy", strategy, "--metrics", metrics)
	if err != nil {
		return row, err
	}
	defer p.stop()
	sample := func(into *memPair) error {
		k, err := procMem(p.keeper)
		if err != nil {
			return fmt.Errorf("keeper's memory: %w", err)
		}
		m, err := procMem(p.master)
		if err != nil {
			return fmt.Errorf("master's memory: %w", err)
		}
		*into = memPair{KeeperPSS: k.pssMB(), MasterPSS: m.pssMB()}
		return nil
	}
	// What is measured here is memory over time: waiting is the point.
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(b.opts.idleAfter):
			return nil
		}
	}
	if err := sample(&row.AtRest); err != nil {
		return row, err
	}
	if err := wait(); err != nil {
		return row, err
	}
	if err := sample(&row.Idle); err != nil {
		return row, err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < idleScrapes; i++ {
		resp, err := client.Get("http://" + metrics + "/metrics")
		if err != nil {
			return row, fmt.Errorf("scrape %d: %w", i+1, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return row, fmt.Errorf("scrape %d: status %d, %v", i+1, resp.StatusCode, err)
		}
	}
	if err := sample(&row.Scraped); err != nil {
		return row, err
	}
	if err := wait(); err != nil {
		return row, err
	}
	return row, sample(&row.AfterScrapes)
}

func printIdle(w io.Writer, r *idleMemResult) {
	after := time.Duration(r.AfterS * float64(time.Second))
	fmt.Fprintf(w, "\n7. Keeper + master PSS over time (MiB, keeper + master), %d workers, --metrics: at rest, %s later idle, just after %d /metrics scrapes, %s after them\n",
		r.Workers, after, r.Scrapes, after)
	tw := table(w)
	fmt.Fprintf(tw, "  strategy\tat rest\tidle %s after rest\tjust after %d scrapes\t%s after the scrapes\t\n", after, r.Scrapes, after)
	cell := func(p memPair) string { return fmt.Sprintf("%.2f (%.2f + %.2f)", p.sum(), p.KeeperPSS, p.MasterPSS) }
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t\n", row.Strategy, cell(row.AtRest), cell(row.Idle), cell(row.Scraped), cell(row.AfterScrapes))
	}
	tw.Flush()
}

// idleTarget is the at-rest target held over time: keeper + master PSS
// idle and after scrapes, the larger of the two in each strategy.
func idleTarget(r *idleMemResult) target {
	t := target{Name: "keeper + master PSS steady (idle, and after scrapes), 4 workers", Want: "<= 10 MiB", Status: notMeasured}
	if r == nil || len(r.Rows) == 0 {
		return t
	}
	after := time.Duration(r.AfterS * float64(time.Second))
	var parts []string
	ok := true
	for _, row := range r.Rows {
		ok = ok && row.Idle.sum() <= 10 && row.AfterScrapes.sum() <= 10
		parts = append(parts, fmt.Sprintf("%s %.2f idle, %.2f after scrapes", row.Strategy, row.Idle.sum(), row.AfterScrapes.sum()))
	}
	t.Measured = strings.Join(parts, "; ") + " MiB"
	t.Note = fmt.Sprintf("%s after rest and after %d scrapes; just after the scrapes it is higher, see the table", after, r.Scrapes)
	t.Status = status(ok)
	return t
}
