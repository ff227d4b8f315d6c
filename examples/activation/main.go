// Command activation is a server with no baton-specific code: it takes its
// sockets from go-systemd's activation package, exactly as it would under a
// systemd .socket unit, and says it is ready with go-systemd's daemon
// package. baton must run it unchanged, which needs LISTEN_PID to be the
// server's own pid.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
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
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "activation pid=%d listen_pid=%s\n", os.Getpid(), listenPid)
	})}
	for _, ln := range lns {
		go srv.Serve(ln)
	}
	daemon.SdNotify(false, daemon.SdNotifyReady)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGQUIT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
