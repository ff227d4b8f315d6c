//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/baton-sh/baton/internal/harness"
	"github.com/baton-sh/baton/internal/loadgen"
)

// stepOrder is the order of the steps a new master logs in its
// handover_complete line (the steps object: milliseconds each, from the end
// of the step before): the old master's USR2 -> its pre-flight checks ->
// exec of the new binary and package initialisation -> the command line ->
// tableflip's set-up (the inherited fds) -> the rest of its state and the
// keeper's answer to its announcement (sent at the command line's end) ->
// the rest before its sockets -> sockets -> the loop's start -> every
// worker spawned -> every worker ready -> (blue-green: the old master's
// checks and switch) -> the old master told. Names the benchmark does not
// know follow, sorted. (Binaries before the announcement overlapped
// tableflip's set-up logged keeper_handshake before tableflip.)
var stepOrder = []string{"preflight", "exec_and_init", "command_line", "tableflip", "keeper_handshake", "prepare", "sockets",
	"loop_start", "spawn", "workers_ready", "checks_and_switch", "ready_signal"}

// stepsOf reads an object of step durations (steps: wall time, steps_cpu:
// the new master's CPU time) of a handover_complete event.
func stepsOf(ev harness.Event, key string) map[string]float64 {
	obj, _ := ev[key].(map[string]any)
	out := make(map[string]float64, len(obj))
	for k, v := range obj {
		if f, ok := v.(float64); ok {
			out[k] = f
		}
	}
	return out
}

// stepDist is one step over a phase's upgrades.
type stepDist struct {
	Name  string       `json:"name"`
	MS    loadgen.Dist `json:"ms"`
	CPUMS loadgen.Dist `json:"cpu_ms"` // the new master's CPU time in it
}

// stepDists gathers each step over the handovers that logged it, in
// stepOrder.
func stepDists(hs []handover) []stepDist {
	vals, cpu := map[string][]float64{}, map[string][]float64{}
	for _, h := range hs {
		for k, v := range h.steps {
			vals[k] = append(vals[k], v)
		}
		for k, v := range h.stepsCPU {
			cpu[k] = append(cpu[k], v)
		}
	}
	var names []string
	known := map[string]bool{}
	for _, n := range stepOrder {
		known[n] = true
		if len(vals[n]) > 0 {
			names = append(names, n)
		}
	}
	var extra []string
	for n := range vals {
		if !known[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	var out []stepDist
	for _, n := range append(names, extra...) {
		out = append(out, stepDist{Name: n, MS: loadgen.DistOf(vals[n]), CPUMS: loadgen.DistOf(cpu[n])})
	}
	return out
}

// stepColumn is one column of the step table: a phase's steps, its
// handovers' baton part and app start-up, and the load average around it.
type stepColumn struct {
	title      string
	steps      []stepDist
	baton, app loadgen.Dist
	load       string
}

// printSteps prints where a handover's time goes, one column per phase
// measured (medians in ms), with the load average each ran under.
func printSteps(w io.Writer, r *report) {
	var cols []stepColumn
	add := func(r *report, prefix string) {
		for _, row := range r.Scaling {
			if row.Workers == 4 && row.AppDelayMS == 0 && row.HandedOver > 0 {
				cols = append(cols, stepColumn{fmt.Sprintf("%sno load (%d)", prefix, row.HandedOver), row.Steps, row.BatonPart, row.AppStartup, row.LoadAvg})
			}
		}
		for _, u := range []*upgradesResult{r.Upgrades, r.UpgradesBlueGreen} {
			if u != nil && u.HandedOver > 0 {
				cols = append(cols, stepColumn{fmt.Sprintf("%s%s, %d clients (%d)", prefix, strategyOf(u), u.Concurrency, u.HandedOver), u.Steps, u.BatonPart, u.AppStartup, u.LoadAvg})
			}
		}
	}
	if r.Baseline != nil {
		add(r.Baseline, "before: ")
		add(r, "after: ")
	} else {
		add(r, "")
	}
	if len(cols) == 0 {
		return
	}
	fmt.Fprintf(w, "\nWhere a handover's time goes, 4 workers (from the new master's log: median ms of wall time, and in brackets of the new master's CPU time,\n  the old master's for preflight; upgrades per column in brackets)\n")
	tw := table(w)
	fmt.Fprint(tw, "  step\t")
	for _, c := range cols {
		fmt.Fprintf(tw, "%s\t", c.title)
	}
	fmt.Fprintln(tw)
	seen := map[string]bool{}
	var names []string
	for _, c := range cols {
		for _, s := range c.steps {
			if !seen[s.Name] {
				seen[s.Name] = true
				names = append(names, s.Name)
			}
		}
	}
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t", n)
		for _, c := range cols {
			cell := "-"
			for _, s := range c.steps {
				if s.Name == n {
					cell = fmt.Sprintf("%.1f", s.MS.Median)
					if s.CPUMS.N > 0 {
						cell += fmt.Sprintf(" (%.1f)", s.CPUMS.Median)
					}
				}
			}
			fmt.Fprintf(tw, "%s\t", cell)
		}
		fmt.Fprintln(tw)
	}
	for _, row := range []struct {
		name string
		get  func(stepColumn) string
	}{
		{"app start-up (longest worker)", func(c stepColumn) string { return fmt.Sprintf("%.1f", c.app.Median) }},
		{"baton's part (median)", func(c stepColumn) string { return fmt.Sprintf("%.1f", c.baton.Median) }},
		{"baton's part (p90)", func(c stepColumn) string { return fmt.Sprintf("%.1f", c.baton.P90) }},
		{"load average (1 5 15 min, at the end)", func(c stepColumn) string { return c.load }},
	} {
		fmt.Fprintf(tw, "  %s\t", row.name)
		for _, c := range cols {
			fmt.Fprintf(tw, "%s\t", row.get(c))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintln(w, "  (medians of each step do not add up to the median of the whole; the steps are in order, each from the end of the one above)")
}

// withBaseline runs phase for -baseline's binary into the report's
// Baseline (when there is one), then for this tree's into r.
func (b *bench) withBaseline(r *report, phase func(*report) error) error {
	if r.Baseline != nil {
		cur := b.bin.baton
		b.bin.baton = b.bin.baseline
		b.progress("baseline (%s):", b.opts.baseline)
		err := phase(r.Baseline)
		b.bin.baton = cur
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		b.progress("this tree:")
	}
	return phase(r)
}

// copyBinary copies the executable at from to to (a new file), as cp(1)
// and install(1) do (copy_file_range). Every binary zdbench runs is such a
// copy, as make build and make install leave them: a file fresh from Go's
// linker, which writes it through a shared mapping, sits in the page cache
// in 4 KiB pages, while a copy (or a binary read back from disk) sits in
// 64 KiB folios on ext4 since Linux 6.16, and each exec of it took 1.4 ms
// less CPU here (a new master's exec_and_init, 30 interleaved upgrades
// each: 6.27 vs 4.89 ms). A baseline copied while the tree's own binary
// was the linker's file had that edge. (One write of the whole file, as
// os.WriteFile does, leaves it in folios of up to 2 MiB instead, which
// nothing deployed looks like.)
func copyBinary(from, to string) (string, error) {
	in, err := os.Open(from)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", from, err)
	}
	defer in.Close()
	os.Remove(to) // a running binary cannot be rewritten (ETXTBSY)
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", from, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	if err := out.Close(); err != nil {
		return "", fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return to, nil
}
