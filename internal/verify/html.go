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
	"strconv"
	"strings"
	"time"

	svg "github.com/ajstarks/svgo"
	"github.com/baton-sh/baton/internal/loadgen"
)

// This file draws `baton verify --report FILE`: a picture of the deploy a
// person can look at. Over one time axis: requests per second stacked by
// the release that answered, failed requests per second by kind, the
// latency of the fast requests (p50 and p99 per 100 ms), and each
// upgrade's request, first answer from the new release and handover as
// vertical marks. FILE.svg is the picture alone; FILE.html adds the
// figures as tables. Both are self-contained: no script, stylesheet, font
// or image is loaded from anywhere, so the file opens offline and can be
// attached to a ticket. svgo writes the SVG elements; the layout (panels,
// ticks, legend) is this file's. It was gonum/plot's: its package
// initialisation parses fonts, which every exec of baton paid, each new
// master's included, for a picture only verify --report draws.

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

// The picture's geometry in SVG user units (pixels at 100%): three panels
// stacked over one time axis, each with its title, a legend row and its
// plot area inside the margins.
const (
	chartW, chartH = 760, 640
	panelGap       = 10
	plotLeft       = 58 // the y ticks' labels and the y axis's label
	plotRight      = 14
	fontPx         = 11
	titlePx        = 13
)

// Colours of the releases' areas and the failure kinds' lines, distinct at
// a glance, then of the latency lines; the marks have their own, by kind.
var (
	seriesColors = []color.RGBA{{40, 100, 190, 255}, {230, 130, 20, 255}, {60, 160, 80, 255}, {150, 80, 180, 255},
		{200, 60, 60, 255}, {90, 160, 190, 255}, {140, 110, 60, 255}}
	markColors = []color.RGBA{{80, 80, 80, 255}, {0, 140, 70, 255}, {20, 90, 200, 255}, {210, 30, 30, 255}}
)

func seriesColor(i int) color.RGBA { return seriesColors[i%len(seriesColors)] }

// tint is c mixed half with white, opaque: stacked areas keep their own
// colour where they overlap.
func tint(c color.RGBA) color.RGBA {
	mix := func(v uint8) uint8 { return uint8((int(v) + 255) / 2) }
	return color.RGBA{mix(c.R), mix(c.G), mix(c.B), 255}
}

func css(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

// chartLine is one series of a panel: a value per bucket (NaN where there
// is none), as a line, filled down to zero, or with a dot at each value.
type chartLine struct {
	ys     []float64
	color  color.RGBA
	filled bool
	dots   bool
}

// legendEntry is one swatch and its name in a panel's legend row.
type legendEntry struct {
	name   string
	color  color.RGBA
	dashed bool
}

// panel is one of the picture's plots over the run's time axis.
type panel struct {
	title, ylabel, xlabel string
	lines                 []chartLine // drawn in order: later ones paint over earlier
	legend                []legendEntry
	markLabels            bool // the marks' labels (#1, #2, ...) above the plot area
}

// axisTick is one labelled tick of an axis.
type axisTick struct {
	v     float64
	label string
}

// timeTicks marks the time axis at a round step, about ten ticks.
func timeTicks(lo, hi float64) []axisTick {
	step := 0.1
	for _, s := range []float64{0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300} {
		step = s
		if (hi-lo)/s <= 12 {
			break
		}
	}
	var ts []axisTick
	for v := math.Ceil(lo/step) * step; v <= hi+1e-9; v += step {
		ts = append(ts, axisTick{v, strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", v), "0"), ".")})
	}
	return ts
}

// valueTicks marks 0 to above top at a step of 1, 2 or 5 times a power of
// ten, four to eight ticks; the last tick is the axis's top.
func valueTicks(top float64) []axisTick {
	if !(top > 0) || math.IsInf(top, 0) {
		top = 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(top/5)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * mag; top/step <= 6 {
			break
		}
	}
	decimals := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	n := int(math.Ceil(top/step - 1e-9))
	ts := make([]axisTick, 0, n+1)
	for i := 0; i <= n; i++ {
		ts = append(ts, axisTick{float64(i) * step, strconv.FormatFloat(float64(i)*step, 'f', decimals, 64)})
	}
	return ts
}

// x is the time of bucket i's middle, in seconds.
func (tl *timeline) x(i int) float64 { return (float64(i) + 0.5) * reportBucket.Seconds() }

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return 0
}

// panels builds the three panels.
func (tl *timeline) panels() []*panel {
	rps := &panel{title: "requests per second, stacked by the release that answered", ylabel: "requests/s", markLabels: true}
	// Stacked areas: each release's line is the sum of it and those below,
	// filled to zero, drawn top first so the lower ones paint over.
	cum := make([]float64, tl.buckets)
	for i, rel := range tl.releases {
		for j, v := range tl.ok[rel] {
			cum[j] += v
		}
		c := seriesColor(i)
		rps.lines = append([]chartLine{{ys: append([]float64(nil), cum...), color: c, filled: true}}, rps.lines...)
		rps.legend = append(rps.legend, legendEntry{name: "release " + rel, color: c})
	}
	seen := map[string]bool{}
	for _, m := range tl.marks {
		if !seen[m.kind] {
			seen[m.kind] = true
			k := indexOf(markKinds, m.kind)
			rps.legend = append(rps.legend, legendEntry{name: m.kind, color: markColors[k], dashed: k != 0})
		}
	}

	fail := &panel{title: "failed requests per second, by kind", ylabel: "failed/s"}
	for i, kind := range loadgen.Kinds {
		if ys := tl.failed[kind]; ys != nil {
			c := seriesColor(i + 3)
			fail.lines = append(fail.lines, chartLine{ys: ys, color: c, dots: true})
			fail.legend = append(fail.legend, legendEntry{name: kind, color: c})
		}
	}
	if len(fail.lines) == 0 {
		fail.title = "failed requests per second: none failed"
	}

	lat := &panel{title: "latency of the fast requests per 100 ms", ylabel: "ms", xlabel: "seconds since the load started"}
	for i, s := range []struct {
		name string
		ys   []float64
	}{{"p50", tl.p50}, {"p99", tl.p99}} {
		c := seriesColor(i + 5)
		lat.lines = append(lat.lines, chartLine{ys: s.ys, color: c})
		lat.legend = append(lat.legend, legendEntry{name: s.name, color: c})
	}
	return []*panel{rps, fail, lat}
}

// svg draws the panels into one SVG document (svgo writes the elements).
func (tl *timeline) svg() []byte {
	var buf bytes.Buffer
	c := svg.New(&buf)
	// The viewBox lets the page scale the picture to its width.
	c.Startview(chartW, chartH, 0, 0, chartW, chartH)
	c.Rect(0, 0, chartW, chartH, "fill:#fff")
	c.Gstyle(fmt.Sprintf("font-family:sans-serif;font-size:%dpx;fill:#222", fontPx))
	ps := tl.panels()
	h := (chartH - panelGap*(len(ps)+1)) / len(ps)
	for i, p := range ps {
		tl.drawPanel(c, p, panelGap+i*(h+panelGap), h)
	}
	c.Gend()
	c.End()
	return buf.Bytes()
}

// drawPanel draws p in the band from y0, h high, across the picture.
func (tl *timeline) drawPanel(c *svg.SVG, p *panel, y0, h int) {
	left, right := plotLeft, chartW-plotRight
	c.Text((left+right)/2, y0+titlePx, p.title, fmt.Sprintf("text-anchor:middle;font-size:%dpx", titlePx))

	// The legend: one row under the title, wrapping; a name's width is
	// estimated from its length (the viewer's sans-serif font decides).
	lx, ly := left, y0+titlePx+16
	for _, e := range p.legend {
		w := 26 + int(math.Ceil(0.62*fontPx*float64(len(e.name)))) + 14
		if lx+w > right && lx > left {
			lx, ly = left, ly+fontPx+5
		}
		dash := ""
		if e.dashed {
			dash = ";stroke-dasharray:4,3"
		}
		c.Path(fmt.Sprintf("M%d %dH%d", lx, ly-fontPx/3, lx+22), fmt.Sprintf("fill:none;stroke:%s;stroke-width:2%s", css(e.color), dash))
		c.Text(lx+26, ly, e.name)
		lx += w
	}

	top := ly + 18 // room for the marks' labels above the plot area
	bottom := y0 + h - 18
	if p.xlabel != "" {
		bottom -= 14
	}
	xmax := math.Max(tl.seconds, reportBucket.Seconds())
	ymaxData := 0.0
	for _, l := range p.lines {
		for _, y := range l.ys {
			if y > ymaxData {
				ymaxData = y
			}
		}
	}
	yt := valueTicks(ymaxData * 1.05)
	ymax := yt[len(yt)-1].v
	px := func(x float64) float64 { return float64(left) + x/xmax*float64(right-left) }
	py := func(y float64) float64 { return float64(bottom) - y/ymax*float64(bottom-top) }

	// Grid and ticks.
	var grid, ticks strings.Builder
	for _, t := range yt {
		y := py(t.v)
		fmt.Fprintf(&grid, "M%d %.1fH%d", left, y, right)
		fmt.Fprintf(&ticks, "M%d %.1fh-4", left, y)
		c.Text(left-6, int(math.Round(y))+fontPx/3, t.label, "text-anchor:end")
	}
	for _, t := range timeTicks(0, xmax) {
		x := px(t.v)
		fmt.Fprintf(&ticks, "M%.1f %dv4", x, bottom)
		c.Text(int(math.Round(x)), bottom+fontPx+5, t.label, "text-anchor:middle")
	}
	c.Path(grid.String(), "fill:none;stroke:#e4e4e4;stroke-width:1")
	ly0 := (top + bottom) / 2
	c.Text(14, ly0, p.ylabel, "text-anchor:middle", fmt.Sprintf(`transform="rotate(-90 14 %d)"`, ly0))
	if p.xlabel != "" {
		c.Text((left+right)/2, bottom+2*fontPx+12, p.xlabel, "text-anchor:middle")
	}

	// The series.
	for _, l := range p.lines {
		var d strings.Builder
		first, last := -1, -1
		for i, y := range l.ys {
			if tl.x(i) > xmax {
				break // the last bucket's middle may be past the run's end
			}
			if math.IsNaN(y) {
				last = -1 // a gap: the line starts again after it
				continue
			}
			cmd := "L"
			if last < 0 {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%.1f %.1f", cmd, px(tl.x(i)), py(y))
			if first < 0 {
				first = i
			}
			last = i
		}
		if first < 0 {
			continue
		}
		stroke := fmt.Sprintf("stroke:%s;stroke-width:1.5;stroke-linejoin:round", css(l.color))
		if l.filled {
			// Filled series have no gaps (a bucket without answers is 0).
			c.Path(fmt.Sprintf("M%.1f %.1f%sL%.1f %.1fZ", px(tl.x(first)), py(0), "L"+strings.TrimPrefix(d.String(), "M"), px(tl.x(last)), py(0)),
				"fill:"+css(tint(l.color))+";stroke:none")
		}
		c.Path(d.String(), "fill:none;"+stroke)
		if l.dots {
			for i, y := range l.ys {
				if !math.IsNaN(y) && y > 0 && tl.x(i) <= xmax {
					c.Circle(int(math.Round(px(tl.x(i)))), int(math.Round(py(y))), 2, "fill:"+css(l.color))
				}
			}
		}
	}

	// The upgrades' marks across the plot area, over the data.
	for _, m := range tl.marks {
		k := indexOf(markKinds, m.kind)
		style := fmt.Sprintf("fill:none;stroke:%s;stroke-width:1.2", css(markColors[k]))
		if k != 0 {
			style += ";stroke-dasharray:4,3"
		}
		x := px(m.atS)
		c.Path(fmt.Sprintf("M%.1f %dV%d", x, top, bottom), style)
		if p.markLabels && m.label != "" {
			c.Text(int(math.Round(x)), top-4, m.label, "text-anchor:middle")
		}
	}
	c.Path(ticks.String()+fmt.Sprintf("M%d %dV%dH%d", left, top, bottom, right), "fill:none;stroke:#444;stroke-width:1")
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
	pic := r.timeline.svg()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".baton-report-*")
	if err != nil {
		return fmt.Errorf("--report %q: %w", path, err)
	}
	if format == "svg" {
		_, err = tmp.Write(pic)
	} else {
		err = r.writeHTML(tmp, pic)
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
