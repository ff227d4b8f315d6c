//go:build linux

package notify

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// Run reads each datagram whole, whatever its size (it learns the size
// before it reads), and attributes it to the sending process: a one-line
// READY=1, an empty one, and a failure report of 60 KiB, in order.
func TestRunReadsEachDatagramWhole(t *testing.T) {
	s, err := Open(nil)
	if err != nil {
		t.Fatalf("open notify socket: %v", err)
	}
	got := make(chan Msg, 3)
	done := make(chan struct{})
	go func() { s.Run(func(m Msg) { got <- m }); close(done) }()
	big := "BATON_REPORT=" + strings.Repeat("x", 60<<10)
	for _, msg := range []string{"READY=1", "", big} {
		if err := osutil.SendNotify(s.Addr(), msg); err != nil {
			t.Fatalf("send %d bytes: %v", len(msg), err)
		}
	}
	for i, want := range []int{1, 0, 1} {
		select {
		case m := <-got:
			if m.PID != os.Getpid() || len(m.Fields) != want {
				t.Fatalf("message %d: pid %d, %d fields, want pid %d and %d", i, m.PID, len(m.Fields), os.Getpid(), want)
			}
			if i == 2 && m.Fields["BATON_REPORT"] != big[len("BATON_REPORT="):] {
				t.Fatalf("message %d: %d bytes of the report, want %d", i, len(m.Fields["BATON_REPORT"]), 60<<10)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not delivered within 10 s", i)
		}
	}
	s.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of Close")
	}
}
