package osutil

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// A reader that is slow for longer than SendNotify waits (a keeper a
// loaded machine did not schedule) still gets a message sent with
// SendNotifyWait, once it reads again; SendNotify gives up on the full
// queue.
func TestSendNotifyWaitFullQueue(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Fill the queue: sends fail once it is full.
	full := false
	for i := 0; i < 10000 && !full; i++ {
		full = SendNotify(addr, "STATUS=filler") != nil
	}
	if !full {
		t.Fatal("the queue never filled")
	}
	go func() {
		time.Sleep(300 * time.Millisecond) // slower than SendNotify waits
		buf := make([]byte, 4096)
		for {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, _, err := c.ReadFromUnix(buf); err != nil {
				return
			}
		}
	}()
	if err := SendNotifyWait(addr, "BATON_MASTER=1", 5*time.Second); err != nil {
		t.Fatalf("SendNotifyWait on a queue drained after 300 ms: %v", err)
	}
}
