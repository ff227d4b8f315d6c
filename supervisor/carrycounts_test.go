//go:build linux

package supervisor

import (
	"strings"
	"testing"

	"github.com/baton-sh/baton/supervisor/control"
)

// TestDrainedExitsPassToTheNewMaster: after a handover, each old worker's
// drained exit is sent to the new master (whose notify socket came with its
// ready report), with the upgrade's token; the new master adds it to the
// series it serves.
func TestDrainedExitsPassToTheNewMaster(t *testing.T) {
	l := serving(t, testConfig(2))
	c := &ctlConn{conn: discardConn{}, req: control.Request{Cmd: control.CmdReload}}
	l.m.onControl(c)
	l.m.handle(evNotify{PID: 999, Fields: map[string]string{reportToken: l.m.up.token,
		reportReady: `{"generation":2,"total_ms":30,"workers_starting_ms":20}`, reportNotify: "@new-master"}})
	l.upg.results <- nil
	l.awaitEvent()
	if l.m.phase != phaseHandedOver {
		t.Fatalf("phase %d after handover", l.m.phase)
	}
	before := len(l.os.reports)
	l.exitDrained()
	var sent []string
	for _, r := range l.os.reports[before:] {
		if strings.Contains(r, orderCounts+"=") {
			sent = append(sent, r)
		}
	}
	if len(sent) == 0 || !strings.Contains(sent[0], reportToken+"="+l.m.up.token) {
		t.Fatalf("no counts sent to the new master after the drained exits: %q", l.os.reports[before:])
	}
	// The new master's side: each datagram adds to its counters.
	nm := newLoop(t, testConfig(1))
	nm.m.origin.parentToken = "tok"
	for _, r := range sent {
		_, js, _ := strings.Cut(r, orderCounts+"=")
		nm.m.handle(evNotify{PID: 1, Fields: map[string]string{reportToken: "tok", orderCounts: js}})
	}
	if got := nm.m.met.counts().Exits["drained"]; got != 2 {
		t.Fatalf("new master counts %v drained exits, want 2 (sent %q)", got, sent)
	}
}
