//go:build linux

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/baton-sh/baton/supervisor/control"
)

// TestForeignShadowStatus: baton status under eBPF steering no longer says
// plainly that no other socket is chosen when a foreign socket on a more
// specific address (127.0.0.1:P beside baton's 0.0.0.0:P) takes that
// address's connections, outside the group; with only a socket in the
// group it still does. A unit test over the status data: a socket bound to
// 0.0.0.0 is not allowed on this machine outside a network namespace, and
// the decision itself is TestForeignAction's.
func TestForeignShadowStatus(t *testing.T) {
	for _, tt := range []struct {
		shadows string
		want    bool
	}{{"0.0.0.0:8080", true}, {"", false}} {
		st := control.Status{Steering: "ebpf", ForeignSockets: []control.ForeignSocket{{Address: "127.0.0.1:8080", Inode: 7, Kind: "foreign", Shadows: tt.shadows, Detail: "a socket"}}}
		var b bytes.Buffer
		printStatus(&b, st)
		if got := strings.Contains(b.String(), "takes that address's connections"); got != tt.want {
			t.Errorf("shadows %q: status says the shadowing socket takes connections: %v, want %v:\n%s", tt.shadows, got, tt.want, b.String())
		}
	}
}
