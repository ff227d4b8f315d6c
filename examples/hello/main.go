// Command hello is baton's example worker: an HTTP server on the sockets
// baton hands it, answering with its pid, worker index and generation.
//
//	GET /            -> "hello pid=123 worker=0 generation=1\n"
//	GET /?sleep=2000 -> the same after 2 s (a slow in-flight request)
//
// On SIGTERM or SIGQUIT it drains: it stops accepting, answers every
// request already accepted (with Connection: close), then exits.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/listener"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("hello[%d]: ", os.Getpid()))

	// HELLO_STARTUP_MS simulates an app that takes a while to boot.
	if ms, _ := strconv.Atoi(os.Getenv("HELLO_STARTUP_MS")); ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	lns, err := listener.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	body := fmt.Sprintf("hello pid=%d worker=%d generation=%d\n",
		os.Getpid(), listener.Worker(), listener.Generation())

	d := newDrainer()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil && ms > 0 {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, body)
		}),
		ConnState:         d.track,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	for _, ln := range lns {
		go srv.Serve(ln)
	}
	if err := listener.Ready(); err != nil {
		log.Printf("notify: %v", err)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGINT)
	<-sig
	for _, ln := range lns {
		ln.Close()
	}
	d.drain(srv, 25*time.Second)
}

// drainer works around golang/go#65802: http.Server.Shutdown may close a
// connection that was accepted but whose request it has not read yet. It
// waits until every accepted connection has had its request read (or gone
// idle) before Shutdown, which then waits for active requests to finish.
type drainer struct {
	mu    sync.Mutex
	fresh map[net.Conn]bool // accepted, no request read yet
}

func newDrainer() *drainer { return &drainer{fresh: make(map[net.Conn]bool)} }

func (d *drainer) track(c net.Conn, st http.ConnState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st == http.StateNew {
		d.fresh[c] = true
	} else {
		delete(d.fresh, c)
	}
}

func (d *drainer) drain(srv *http.Server, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Responses from now on carry Connection: close, so keep-alive clients
	// move to the new generation after their current request.
	srv.SetKeepAlivesEnabled(false)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		d.mu.Lock()
		n := len(d.fresh)
		d.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}
