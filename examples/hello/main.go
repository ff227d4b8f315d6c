// Command hello is baton's example worker: an HTTP server on the sockets
// baton hands it, answering with its pid, worker index and generation.
//
//	GET /            -> "hello pid=123 worker=0 generation=1\n"
//	GET /?sleep=2000 -> the same after 2 s (a slow in-flight request)
//
// On SIGTERM or SIGQUIT it drains without failing a request: it stops
// accepting, answers what it has, and exits (listener.ServeHTTP).
//
// Variables for tests and benchmarks: HELLO_STARTUP_MS delays start-up (an
// app that boots slowly), HELLO_TAG is added to every answer, and
// HELLO_LISTEN=HOST:PORT makes it bind the port itself, without baton (the
// "run directly" baseline), HELLO_CRASH_WORKER=N makes worker N report
// ready and exit 300 ms later without serving (a crash after readiness), and
// HELLO_STATUS=CODE answers every request with that status (a broken
// release, for baton verify). Every answer carries a Hello-Generation header.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/listener"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("hello[%d]: ", os.Getpid()))

	if ms, _ := strconv.Atoi(os.Getenv("HELLO_STARTUP_MS")); ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	if n, err := strconv.Atoi(os.Getenv("HELLO_CRASH_WORKER")); err == nil && n == listener.Worker() {
		// Ready, never accepting (so no request dies with it), then gone.
		listener.Ready()
		time.Sleep(300 * time.Millisecond)
		log.Fatal("crashing after ready (HELLO_CRASH_WORKER)")
	}
	// logrotate sends USR1 through baton; this server logs to stderr only,
	// so there is nothing to reopen, but it must not die of the signal.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			log.Print("USR1: reopening logs")
		}
	}()
	body := fmt.Sprintf("hello pid=%d worker=%d generation=%d",
		os.Getpid(), listener.Worker(), listener.Generation())
	if tag := os.Getenv("HELLO_TAG"); tag != "" {
		body += " tag=" + tag
	}
	body += "\n"
	status := http.StatusOK
	if code, err := strconv.Atoi(os.Getenv("HELLO_STATUS")); err == nil && code >= 200 && code <= 599 {
		status = code
	}
	generation := strconv.Itoa(listener.Generation())

	// Which named socket a request came in on (LISTEN_FDNAMES), by address.
	names := map[string]string{}
	if lns, err := listener.Listeners(); err == nil {
		for name, ln := range lns {
			names[ln.Addr().String()] = name
		}
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil && ms > 0 {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Hello-Generation", generation)
			b := body
			if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && names[a.String()] != "" {
				b = strings.TrimSuffix(b, "\n") + " listener=" + names[a.String()] + "\n"
			}
			w.WriteHeader(status)
			fmt.Fprint(w, b)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	var err error
	if addr := os.Getenv("HELLO_LISTEN"); addr != "" {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			err = listener.ServeHTTPOn(srv, []net.Listener{ln}, 25*time.Second)
		}
	} else {
		err = listener.ServeHTTP(srv, 25*time.Second)
	}
	if err != nil {
		log.Fatal(err)
	}
}
