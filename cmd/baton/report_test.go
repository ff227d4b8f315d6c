//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"image"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// baton verify --report (issue 24): the picture of a deploy is produced for
// a run with upgrades and for a failed one, is well-formed (the HTML is
// also XML, the SVG is XML), loads nothing from elsewhere, and renders in
// a real browser to something that is not blank.

// TestVerifyReport: two upgrades handed over, drawn as HTML and SVG; then
// a release answering 500, drawn too.
func TestVerifyReport(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	envFile := filepath.Join(dir, "app.env")
	writeEnv(t, envFile, "HELLO_TAG=v1\n")
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "2", "--env-file", envFile, "--", bin("hello"))
	b.waitReady()
	args := append([]string{"--url", "http://" + addr + "/", "--control", b.control, "--version-header", "Hello-Generation"}, verifyLight...)

	good := filepath.Join(dir, "deploy.html")
	code, rep, errOut := verifyJSON(t, append(args, "--reloads", "2", "--report", good)...)
	if code != 0 || !rep.Verified {
		t.Fatalf("verify exit %d, problems %q, stderr %q", code, rep.Problems, errOut)
	}
	page := readReport(t, good)
	for _, want := range []string{"release 1", "release 2", "release 3", "upgrade requested", "handover", "first new answer",
		"requests per second", "none failed", "<td class=\"l\">handed-over</td>", "verified: 2 upgrade(s)"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	goodSVG := filepath.Join(dir, "deploy.svg")
	if code, _, errOut := verifyRun(t, append(args, "--reloads", "1", "--report", goodSVG)...); code != 0 {
		t.Fatalf("verify --report .svg: exit %d: %s", code, errOut)
	}
	if svg := readReport(t, goodSVG); !strings.HasPrefix(svg, "<?xml") || !strings.Contains(svg, "release 4") {
		t.Errorf("deploy.svg is not the picture of the run (%d bytes)", len(svg))
	}

	writeEnv(t, envFile, "HELLO_TAG=v2\nHELLO_STATUS=500\n")
	bad := filepath.Join(dir, "failed.html")
	code, rep, _ = verifyJSON(t, append(args, "--reloads", "1", "--report", bad)...)
	if code != 1 || rep.Verified || rep.Failed == 0 {
		t.Fatalf("verify of a release answering 500: exit %d, verified %v, failed %d", code, rep.Verified, rep.Failed)
	}
	page = readReport(t, bad)
	for _, want := range []string{"NOT verified", "failed requests per second, by kind", "First failures"} {
		if !strings.Contains(page, want) {
			t.Errorf("report of the failed run lacks %q", want)
		}
	}
	for _, f := range []string{good, bad} {
		screenshotNotBlank(t, f)
	}
}

// readReport reads a report, checks it parses as XML (strictly, with the
// HTML's entities), that it draws something, and that it loads nothing
// from anywhere else.
func readReport(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("report not written: %v", err)
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	dec.Strict = true
	dec.Entity = xml.HTMLEntity
	elems := map[string]int{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s does not parse: %v", filepath.Base(path), err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			elems[se.Name.Local]++
			for _, a := range se.Attr {
				if a.Name.Local == "src" || (a.Name.Local == "href" && !strings.HasPrefix(a.Value, "#")) {
					t.Errorf("%s loads %s=%q", filepath.Base(path), a.Name.Local, a.Value)
				}
			}
		}
	}
	for _, el := range []string{"script", "link", "img", "iframe", "object"} {
		if elems[el] > 0 {
			t.Errorf("%s has a <%s>: not self-contained", filepath.Base(path), el)
		}
	}
	if s := string(b); strings.Contains(s, "@import") || strings.Contains(s, "url(") {
		t.Errorf("%s loads a stylesheet or font", filepath.Base(path))
	}
	if elems["svg"] != 1 || elems["path"] < 20 || elems["text"] < 10 {
		t.Errorf("%s draws little: %d svg, %d path, %d text elements", filepath.Base(path), elems["svg"], elems["path"], elems["text"])
	}
	return string(b)
}

// screenshotNotBlank opens path in headless Chromium and checks the
// screenshot: a blank or error page is one or two colours.
func screenshotNotBlank(t *testing.T, path string) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Logf("SKIP rendering %s: chromium not installed (Debian package chromium; .ci/run installs it)", filepath.Base(path))
		t.Skip("chromium not installed (Debian package chromium; .ci/run installs it): reports not rendered")
	}
	shot := filepath.Join(t.TempDir(), "shot.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// As root Chromium needs --no-sandbox; without the background
	// networking it would wait on the network this machine does not have.
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(), "--screenshot="+shot, "--window-size=1100,1300", "file://"+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	colours, inked, all := countInk(img)
	t.Logf("%s rendered by chromium in %s: %d colours, %.1f%% of pixels not white", filepath.Base(path),
		time.Since(start).Round(time.Millisecond), colours, 100*float64(inked)/float64(all))
	if colours < 16 || float64(inked) < 0.03*float64(all) {
		t.Errorf("%s renders nearly blank: %d colours, %d of %d pixels not white", filepath.Base(path), colours, inked, all)
	}
}

func countInk(img image.Image) (colours, inked, all int) {
	seen := map[[3]uint32]bool{}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			seen[[3]uint32{cr >> 8, cg >> 8, cb >> 8}] = true
			if cr>>8 < 240 || cg>>8 < 240 || cb>>8 < 240 {
				inked++
			}
			all++
		}
	}
	return len(seen), inked, all
}
