package osutil

import (
	"net"
	"os"
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

// A Notifier sends over one socket while its reader stays (each datagram
// comes from the same peer socket), and reaches a reader that bound a new
// socket at the same path after the old one closed.
func TestNotifierReusesItsSocket(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	listen := func() *net.UnixConn {
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	c := listen()
	n := NewNotifier(addr)
	defer n.Close()
	// One socket for every send: one fd more in this process, not three.
	// (No test of this package runs in parallel with it.)
	before := len(OwnFds())
	for i := range 3 {
		if err := n.Send("STATUS=x", time.Second); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		buf := make([]byte, 64)
		if k, err := c.Read(buf); err != nil || string(buf[:k]) != "STATUS=x" {
			t.Fatalf("read %d: %q, %v", i, buf[:k], err)
		}
	}
	if added := len(OwnFds()) - before; added != 1 {
		t.Fatalf("three sends opened %d fds, want 1", added)
	}
	c.Close()
	os.Remove(addr)
	c = listen()
	defer c.Close()
	if err := n.Send("READY=1", time.Second); err != nil {
		t.Fatalf("send to the reader's new socket: %v", err)
	}
	buf := make([]byte, 64)
	if k, err := c.Read(buf); err != nil || string(buf[:k]) != "READY=1" {
		t.Fatalf("new socket read: %q, %v", buf[:k], err)
	}
	n.Close()
	if added := len(OwnFds()) - before; added != 0 {
		t.Fatalf("%d fds left after Close", added)
	}
}
