// Command activation is a server with no baton-specific code: it takes its
// sockets from go-systemd's activation package, exactly as it would under a
// systemd .socket unit, and says it is ready with go-systemd's daemon
// package. baton must run it unchanged, which needs LISTEN_PID to be the
// server's own pid.
//
// Its drain is plain net/http plus the care any server handed over under
// load needs (golang/go#65802): Shutdown alone drops a request that arrives
// on a connection accepted just before it, so the server first stops
// accepting, asks clients to go ("Connection: close"), waits for its
// connections to finish, and only then shuts down.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

func main() {
	listenPid := os.Getenv("LISTEN_PID") // activation.Listeners unsets it
	lns, err := activation.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	if len(lns) == 0 {
		log.Fatal("activation: no sockets (LISTEN_PID/LISTEN_FDS not for this process)")
	}
	var draining atomic.Bool
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprintf(w, "activation pid=%d listen_pid=%s\n", os.Getpid(), listenPid)
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			if st == http.StateClosed || st == http.StateHijacked {
				delete(conns, c)
			} else {
				conns[c] = true
			}
		},
	}
	// Before the first accept, or a TERM in between kills an accepted
	// connection with the process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGQUIT)
	var serving sync.WaitGroup
	for _, ln := range lns {
		serving.Add(1)
		go func() { defer serving.Done(); srv.Serve(ln) }()
	}
	daemon.SdNotify(false, daemon.SdNotifyReady)
	<-sig
	draining.Store(true)
	for _, ln := range lns {
		ln.Close()
	}
	// Serve returns only after handing on what it accepted last, so from
	// then on every connection is counted.
	serving.Wait()
	// Busy keep-alive clients leave after their next response; wait a
	// second for them before Shutdown closes what is idle.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(conns)
		mu.Unlock()
		if n == 0 {
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
