//go:build linux

package verify

import (
	"bytes"
	"fmt"
	"html"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// This file draws `baton verify --report FILE`: a picture of the deploy a
// person can look at. Over one time axis: requests per second stacked by
// the release that answered, failed requests per second by kind, the
// latency of the fast requests (p50 and p99 per 100 ms), and each
// upgrade's request, first answer from the new release and handover as
// vertical marks. FILE.svg is the picture alone; FILE.html adds the
// figures as tables. Both are self-contained: no script, stylesheet, font
// or image is loaded from anywhere, so the file opens offline and can be
// attached to a ticket. The plotting is gonum/plot's (vgsvg), not ours.

// reportBucket is the width of one time bucket of the picture.
const reportBucket = 100 * time.Millisecond

// timeline is a run's samples in reportBucket buckets, seconds since the
// load started.
type timeline struct {
	seconds  float64
	buckets  int
	releases []string             // in the order they first answered
	ok       map[string][]float64 // answers per second, by release
	failed   map[string][]float64 // failures per second, by kind
	p50, p99 []float64            // ms, NaN where no fast request ended
	marks    []reportMark
}

// reportMark is one vertical mark: an upgrade's request, its first new
// answer, its handover or its rollback.
type reportMark struct {
	atS   float64
	kind  string // one of markKinds
	label string
}

var markKinds = []string{"upgrade requested", "first new answer", "handover", "rolled back"}

// newTimeline buckets samples (every client's) and fast (the main
// clients', for latency) over the run that started at start.
func newTimeline(start time.Time, seconds float64, samples []taggedSample, fast []loadgen.Sample, rep *Report) *timeline {
	n := int(math.Ceil(seconds/reportBucket.Seconds())) + 1
	tl := &timeline{seconds: seconds, buckets: n, ok: map[string][]float64{}, failed: map[string][]float64{}}
	idx := func(t time.Time) int {
		return min(max(int(t.Sub(start)/reportBucket), 0), n-1)
	}
	perSec := 1 / reportBucket.Seconds()
	for _, s := range samples {
		i := idx(s.End())
		if s.Failed {
			if tl.failed[s.Kind] == nil {
				tl.failed[s.Kind] = make([]float64, n)
			}
			tl.failed[s.Kind][i] += perSec
			continue
		}
		rel := s.Release
		if rel == "" {
			rel = "answered"
		}
		if tl.ok[rel] == nil {
			tl.ok[rel] = make([]float64, n)
			tl.releases = append(tl.releases, rel)
		}
		tl.ok[rel][i] += perSec
	}
	lat := make([][]float64, n)
	for _, s := range fast {
		if !s.Failed {
			i := idx(s.End())
			lat[i] = append(lat[i], loadgen.MS(s.Latency))
		}
	}
	tl.p50, tl.p99 = make([]float64, n), make([]float64, n)
	for i, l := range lat {
		tl.p50[i], tl.p99[i] = math.NaN(), math.NaN()
		if len(l) > 0 {
			sort.Float64s(l)
			tl.p50[i], tl.p99[i] = l[(len(l)-1)/2], l[min(len(l)-1, int(math.Ceil(0.99*float64(len(l))))-1)]
		}
	}
	for _, u := range rep.Upgrades {
		tl.marks = append(tl.marks, reportMark{u.SentAtS, markKinds[0], fmt.Sprintf("#%d", u.N)})
		if u.FirstNewMS != nil {
			tl.marks = append(tl.marks, reportMark{u.SentAtS + *u.FirstNewMS/1000, markKinds[1], ""})
		}
		switch u.Outcome {
		case "handed-over":
			tl.marks = append(tl.marks, reportMark{u.SentAtS + u.HandoverMS/1000, markKinds[2], ""})
		case "rolled-back":
			tl.marks = append(tl.marks, reportMark{u.SentAtS + u.AnsweredMS/1000, markKinds[3], ""})
		}
	}
	return tl
}

// tint is c mixed half with white, opaque: stacked areas keep their own
// colour where they overlap.
func tint(c color.Color) color.Color {
	r, g, b, _ := c.RGBA()
	mix := func(v uint32) uint8 { return uint8((v>>8 + 255) / 2) }
	return color.RGBA{mix(r), mix(g), mix(b), 255}
}

// timeTicks marks the time axis at a round step, about ten ticks.
type timeTicks struct{}

func (timeTicks) Ticks(lo, hi float64) []plot.Tick {
	step := 0.1
	for _, s := range []float64{0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300} {
		step = s
		if (hi-lo)/s <= 12 {
			break
		}
	}
	var ts []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+1e-9; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", v), "0"), ".")})
	}
	return ts
}

// x is the time of bucket i's middle, in seconds.
func (tl *timeline) x(i int) float64 { return (float64(i) + 0.5) * reportBucket.Seconds() }

func (tl *timeline) series(ys []float64) plotter.XYs {
	var xy plotter.XYs
	for i, y := range ys {
		if !math.IsNaN(y) {
			xy = append(xy, plotter.XY{X: tl.x(i), Y: y})
		}
	}
	return xy
}

var markColors = []color.Color{color.RGBA{80, 80, 80, 255}, color.RGBA{0, 140, 70, 255}, color.RGBA{20, 90, 200, 255}, color.RGBA{210, 30, 30, 255}}

// newPanel is one of the picture's plots over the run's time axis.
func (tl *timeline) newPanel(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.X.Min, p.X.Max = 0, math.Max(tl.seconds, reportBucket.Seconds())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Y.Min = 0
	p.X.Tick.Marker = timeTicks{}
	return p
}

// addMarks draws the upgrade marks across p, once its data is in; legend
// says whether the marks get legend entries.
func (tl *timeline) addMarks(p *plot.Plot, legend bool) error {
	top := p.Y.Max
	if top <= 0 {
		top = 1
	}
	// Headroom above the data for the legend and the marks' labels.
	p.Y.Max = top * 1.4
	seen := map[string]bool{}
	for _, m := range tl.marks {
		l, err := plotter.NewLine(plotter.XYs{{X: m.atS, Y: 0}, {X: m.atS, Y: top}})
		if err != nil {
			return err
		}
		k := indexOf(markKinds, m.kind)
		l.Color = markColors[k]
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		if k == 0 {
			l.Dashes = nil
		}
		p.Add(l)
		if legend && !seen[m.kind] {
			seen[m.kind] = true
			p.Legend.Add(m.kind, l)
		}
		if m.label != "" && legend {
			lb, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: m.atS, Y: top}}, Labels: []string{m.label}})
			if err != nil {
				return err
			}
			p.Add(lb)
		}
	}
	return nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return 0
}

// plots builds the three panels.
func (tl *timeline) plots() ([]*plot.Plot, error) {
	rps := tl.newPanel("requests per second, stacked by the release that answered", "requests/s")
	// Stacked areas: each release's line is the sum of it and those below,
	// filled to zero, drawn top first so the lower ones paint over.
	cum := make([]float64, tl.buckets)
	var lines []*plotter.Line
	for i, rel := range tl.releases {
		for j, v := range tl.ok[rel] {
			cum[j] += v
		}
		l, err := plotter.NewLine(tl.series(cum))
		if err != nil {
			return nil, err
		}
		c := plotutil.Color(i)
		l.Color = c
		l.FillColor = tint(c)
		lines = append(lines, l)
		rps.Legend.Add("release "+rel, l)
	}
	for i := len(lines) - 1; i >= 0; i-- {
		rps.Add(lines[i])
	}
	if err := tl.addMarks(rps, true); err != nil {
		return nil, err
	}

	fail := tl.newPanel("failed requests per second, by kind", "failed/s")
	total := 0
	for i, kind := range loadgen.Kinds {
		ys := tl.failed[kind]
		if ys == nil {
			continue
		}
		total++
		l, sc, err := plotter.NewLinePoints(tl.series(ys))
		if err != nil {
			return nil, err
		}
		c := plotutil.Color(i + 3)
		l.Color, sc.Color = c, c
		fail.Add(l, sc)
		fail.Legend.Add(kind, l, sc)
	}
	if total == 0 {
		fail.Title.Text = "failed requests per second: none failed"
	}
	if err := tl.addMarks(fail, false); err != nil {
		return nil, err
	}

	lat := tl.newPanel("latency of the fast requests per 100 ms", "ms")
	for i, s := range []struct {
		name string
		ys   []float64
	}{{"p50", tl.p50}, {"p99", tl.p99}} {
		xy := tl.series(s.ys)
		if len(xy) == 0 {
			continue
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return nil, err
		}
		l.Color = plotutil.Color(i + 5)
		lat.Add(l)
		lat.Legend.Add(s.name, l)
	}
	if err := tl.addMarks(lat, false); err != nil {
		return nil, err
	}
	lat.X.Label.Text = "seconds since the load started"
	return []*plot.Plot{rps, fail, lat}, nil
}

// svg draws the panels into one SVG document.
func (tl *timeline) svg() ([]byte, error) {
	ps, err := tl.plots()
	if err != nil {
		return nil, err
	}
	w, h := vg.Points(760), vg.Points(640)
	c := vgsvg.New(w, h)
	dc := draw.New(c)
	rows := make([][]*plot.Plot, len(ps))
	for i, p := range ps {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(ps), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6),
		PadLeft: vg.Points(6), PadRight: vg.Points(12), PadY: vg.Points(10)}
	canvases := plot.Align(rows, tiles, dc)
	for i, p := range ps {
		p.Draw(canvases[i][0])
	}
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ReportFormat checks --report's file name: .html or .svg.
func ReportFormat(path string) (string, error) {
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".html", ".htm":
		return "html", nil
	case ".svg":
		return "svg", nil
	default:
		return "", fmt.Errorf("--report %q: want a file name ending in .html or .svg", path)
	}
}

// WriteReportFile writes the picture (and for HTML the figures) to path,
// through a temporary file renamed into place.
func (r *Report) WriteReportFile(path string) error {
	format, err := ReportFormat(path)
	if err != nil {
		return err
	}
	if r.timeline == nil {
		return fmt.Errorf("--report %q: no timeline to draw", path)
	}
	svg, err := r.timeline.svg()
	if err != nil {
		return fmt.Errorf("--report %q: draw: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".baton-report-*")
	if err != nil {
		return fmt.Errorf("--report %q: %w", path, err)
	}
	if format == "svg" {
		_, err = tmp.Write(svg)
	} else {
		err = r.writeHTML(tmp, svg)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("--report %q: %w", path, err)
	}
	return nil
}

// writeHTML writes the report as one HTML page that is also well-formed
// XML (so that strict parsers, and the tests, can read it): the SVG
// inline, then the figures.
func (r *Report) writeHTML(w io.Writer, svg []byte) error {
	e := html.EscapeString
	var b strings.Builder
	b.WriteString("<!DOCTYPE html>\n<html lang=\"en\" xmlns=\"http://www.w3.org/1999/xhtml\">\n<head>\n<meta charset=\"utf-8\"/>\n")
	fmt.Fprintf(&b, "<title>baton verify: %s</title>\n", e(r.URL))
	b.WriteString(`<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
.ok { color: #106b21; font-weight: bold; }
.bad { color: #b00020; font-weight: bold; }
svg { max-width: 100%; height: auto; }
</style>
</head>
<body>
`)
	fmt.Fprintf(&b, "<h1>baton verify: %s</h1>\n", e(r.URL))
	if r.Verified {
		fmt.Fprintf(&b, "<p class=\"ok\">verified: %d upgrade(s) handed over, %d requests, none failed</p>\n", len(r.Upgrades), r.Requests)
	} else {
		fmt.Fprintf(&b, "<p class=\"bad\">NOT verified: %s</p>\n", e(strings.Join(r.Problems, "; ")))
	}
	fmt.Fprintf(&b, "<p>%.1f s of load from %d keep-alive, %d fresh-connection and %d slow clients; %d requests, %d failed, %d retried.</p>\n",
		r.Seconds, r.KeepAliveClients, r.FreshClients, r.SlowClients, r.Requests, r.Failed, r.Retried)
	b.WriteString("<figure>\n")
	s := string(svg)
	if i := strings.Index(s, "<svg"); i >= 0 {
		s = s[i:] // the XML declaration may only open a document
	}
	b.WriteString(s)
	b.WriteString("</figure>\n<h2>Upgrades</h2>\n<table>\n<tr><th>#</th><th class=\"l\">outcome</th><th>at s</th><th>generation</th><th>handover ms</th><th>app ms</th><th>baton ms</th><th>first new answer ms</th><th>old generation gone ms</th><th>failed after it</th><th class=\"l\">reason</th></tr>\n")
	opt := func(p *float64) string {
		if p == nil {
			return ""
		}
		return fmt.Sprintf("%.0f", *p)
	}
	for _, u := range r.Upgrades {
		fmt.Fprintf(&b, "<tr><td>%d</td><td class=\"l\">%s</td><td>%.2f</td><td>%d</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%s</td><td>%s</td><td>%d</td><td class=\"l\">%s</td></tr>\n",
			u.N, e(u.Outcome), u.SentAtS, u.Generation, u.HandoverMS, u.AppStartupMS, u.BatonMS, opt(u.FirstNewMS), opt(u.OldGoneMS), u.Failed, e(u.Reason))
	}
	b.WriteString("</table>\n<h2>Requests</h2>\n<table>\n<tr><th class=\"l\">latency ms</th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>\n")
	for _, row := range []struct {
		name string
		l    loadgen.Latency
	}{{"steady", r.LatencySteady}, {"around upgrades", r.LatencyUpgrades}} {
		fmt.Fprintf(&b, "<tr><td class=\"l\">%s</td><td>%d</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%.2f</td></tr>\n",
			row.name, row.l.N, row.l.P50, row.l.P90, row.l.P99, row.l.Max)
	}
	b.WriteString("</table>\n<table>\n<tr><th class=\"l\">failed by kind</th><th>requests</th></tr>\n")
	for _, k := range loadgen.Kinds {
		fmt.Fprintf(&b, "<tr><td class=\"l\">%s</td><td>%d</td></tr>\n", e(k), r.FailedByKind[k])
	}
	b.WriteString("</table>\n")
	if len(r.Releases) > 0 {
		fmt.Fprintf(&b, "<h2>Releases (%s)</h2>\n<table>\n<tr><th class=\"l\">release</th><th>answers</th><th>non-2xx</th><th>first s</th><th>last s</th></tr>\n", e(r.VersionHeader))
		for _, rs := range r.Releases {
			fmt.Fprintf(&b, "<tr><td class=\"l\">%s</td><td>%d</td><td>%d</td><td>%.2f</td><td>%.2f</td></tr>\n", e(rs.Release), rs.Responses, rs.Failed, rs.FirstS, rs.LastS)
		}
		b.WriteString("</table>\n")
	}
	if len(r.FirstFailures) > 0 {
		b.WriteString("<h2>First failures</h2>\n<table>\n<tr><th>at s</th><th>count</th><th class=\"l\">kind</th><th class=\"l\">path</th><th class=\"l\">error</th><th>after upgrade</th></tr>\n")
		for _, f := range r.FirstFailures {
			fmt.Fprintf(&b, "<tr><td>%.3f</td><td>%d</td><td class=\"l\">%s</td><td class=\"l\">%s</td><td class=\"l\">%s</td><td>%d</td></tr>\n",
				f.AtS, f.Count, e(f.Kind), e(f.Path), e(strings.Join(strings.Fields(f.Error), " ")), f.AfterUpgrade)
		}
		b.WriteString("</table>\n")
	}
	b.WriteString("</body>\n</html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
