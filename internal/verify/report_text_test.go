//go:build linux

package verify

import (
	"strings"
	"testing"
)

// A blue-green or canary handover's checks and bake are printed apart
// from the app's start-up, as baton reload prints them; a shared one
// prints no such parts.
func TestHandoverLineSeparatesChecksAndBake(t *testing.T) {
	for _, tc := range []struct {
		up   upgradeReport
		want string
	}{
		{upgradeReport{N: 1, Outcome: "handed-over", Generation: 2, HandoverMS: 20104.2, AppStartupMS: 36, ChecksMS: 40.7, BakeMS: 20006.9, BatonMS: 20.6},
			"handover 20104.2 ms (app 36.0 ms, checks 40.7 ms, bake 20006.9 ms, baton 20.6 ms)"},
		{upgradeReport{N: 1, Outcome: "handed-over", Generation: 2, HandoverMS: 50, AppStartupMS: 40, BatonMS: 10},
			"handover 50.0 ms (app 40.0 ms, baton 10.0 ms)"},
	} {
		var b strings.Builder
		(&Report{Upgrades: []upgradeReport{tc.up}}).WriteText(&b)
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("report text lacks %q:\n%s", tc.want, b.String())
		}
	}
}
