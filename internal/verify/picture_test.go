//go:build linux

package verify

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-sh/baton/internal/loadgen"
)

// A run of 3 s: release 1 answers, then release 2 after an upgrade at
// 1.5 s; some requests are refused around it. The picture has each
// panel's title, the releases, the failure kind and the marks in its
// legends, every element inside the picture, and draws the areas.
func TestReportPicture(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	var samples []taggedSample
	var fast []loadgen.Sample
	for ms := 0; ms < 3000; ms += 5 {
		s := loadgen.Sample{Start: start.Add(time.Duration(ms) * time.Millisecond), Latency: time.Duration(1+ms%7) * time.Millisecond, Release: "1"}
		if ms >= 1550 {
			s.Release = "2"
		}
		if ms >= 1500 && ms < 1550 {
			s.Release, s.Failed, s.Kind = "", true, loadgen.Kinds[0]
		}
		samples = append(samples, taggedSample{Sample: s})
		fast = append(fast, s)
	}
	first := 40.0
	rep := &Report{Upgrades: []upgradeReport{{N: 1, Outcome: "handed-over", SentAtS: 1.5, HandoverMS: 60, FirstNewMS: &first}}}
	pic := newTimeline(start, 3, samples, fast, rep).svg()

	dec := xml.NewDecoder(bytes.NewReader(pic))
	dec.Strict = true
	var texts []string
	paths := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the picture does not parse: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if el.Name.Local == "path" {
				paths++
			}
			for _, a := range el.Attr {
				if a.Name.Local != "x" && a.Name.Local != "y" {
					continue
				}
				v, err := strconv.Atoi(a.Value)
				if lim := map[string]int{"x": chartW, "y": chartH}[a.Name.Local]; err != nil || v < 0 || v > lim {
					t.Errorf("<%s %s=%q> outside the %dx%d picture", el.Name.Local, a.Name.Local, a.Value, chartW, chartH)
				}
			}
		case xml.CharData:
			if s := strings.TrimSpace(string(el)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	all := "\n" + strings.Join(texts, "\n") + "\n"
	for _, want := range []string{"requests per second, stacked by the release that answered", "failed requests per second, by kind",
		"latency of the fast requests per 100 ms", "seconds since the load started", "release 1", "release 2", loadgen.Kinds[0],
		"upgrade requested", "first new answer", "handover", "#1", "p50", "p99", "requests/s"} {
		if !strings.Contains(all, "\n"+want+"\n") {
			t.Errorf("the picture lacks the text %q; it has %q", want, texts)
		}
	}
	// 2 areas and their lines, 1 failure line, 2 latency lines, 3 marks in
	// each of 3 panels, and per panel its grid and axes, legend swatches.
	if paths < 2*2+1+2+9+3*2 {
		t.Errorf("the picture draws %d paths", paths)
	}
}

// The value axis ends on a round tick at or above the data's top, with
// four to eight ticks.
func TestValueTicks(t *testing.T) {
	for _, top := range []float64{0, 0.3, 1, 7, 9.99, 10, 42, 180, 999, 1234, 25000} {
		ts := valueTicks(top)
		end := ts[len(ts)-1].v
		if ts[0].v != 0 || end < top || len(ts) < 3 || len(ts) > 8 {
			t.Errorf("valueTicks(%v) = %v", top, ts)
		}
		for _, tk := range ts {
			if v, err := strconv.ParseFloat(tk.label, 64); err != nil || math.Abs(v-tk.v) > 1e-9*math.Max(1, tk.v) {
				t.Errorf("valueTicks(%v): label %q for %v", top, tk.label, tk.v)
			}
		}
	}
}
