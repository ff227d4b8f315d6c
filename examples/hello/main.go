// Command hello is baton's example worker: an HTTP server on the sockets
// baton hands it, answering with its pid, worker index and generation.
//
//	GET /            -> "hello pid=123 worker=0 generation=1\n"
//	GET /?sleep=2000 -> the same after 2 s (a slow in-flight request)
//	GET /?sleep=2000&head=1 -> the status line and headers at once, the
//	                   body after 2 s: a client that has the headers knows
//	                   its request is in a worker's hands (tests send a stop
//	                   only then)
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
// release, for baton verify). With HELLO_LISTEN, HELLO_REUSE_PORT=1 binds
// with SO_REUSEPORT (gunicorn --reuse-port); HELLO_LEFTOVER=DIR leaves a
// helper holding the inherited socket behind (pid in DIR/leftover.PID).
// Every answer carries a Hello-Generation header.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-sh/baton/listener"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("hello[%d]: ", os.Getpid()))

	if os.Getenv("HELLO_HOLD") != "" {
		// A helper that inherited the worker's socket (fd 3) and outlives
		// it without accepting: what a leftover child does to a reuseport
		// group. Bounded, for tests.
		time.Sleep(2 * time.Minute)
		return
	}
	if dir := os.Getenv("HELLO_LEFTOVER"); dir != "" {
		leaveHelper(dir)
	}
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
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Hello-Generation", generation)
			early := r.URL.Query().Get("head") != ""
			if early {
				w.WriteHeader(status)
				http.NewResponseController(w).Flush()
			}
			if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil && ms > 0 {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
			b := body
			if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && names[a.String()] != "" {
				b = strings.TrimSuffix(b, "\n") + " listener=" + names[a.String()] + "\n"
			}
			if !early {
				w.WriteHeader(status)
			}
			fmt.Fprint(w, b)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	var err error
	if addr := os.Getenv("HELLO_LISTEN"); addr != "" {
		var ln net.Listener
		lc := net.ListenConfig{}
		if os.Getenv("HELLO_REUSE_PORT") != "" {
			// Its own socket in the address's reuseport group, as
			// gunicorn --reuse-port binds one.
			lc.Control = func(_, _ string, c syscall.RawConn) error {
				var serr error
				c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1) })
				return serr
			}
		}
		if ln, err = lc.Listen(context.Background(), "tcp", addr); err == nil {
			err = listener.ServeHTTPOn(srv, []net.Listener{ln}, 25*time.Second)
		}
	} else {
		err = listener.ServeHTTP(srv, 25*time.Second)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// leaveHelper starts a copy of this program that holds the inherited
// listening socket (fd 3) in a session of its own and writes its pid to
// dir/leftover.PID.
func leaveHelper(dir string) {
	exe, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "HELLO_HOLD=1")
	cmd.ExtraFiles = []*os.File{os.NewFile(3, "listener")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "leftover."+strconv.Itoa(cmd.Process.Pid)), nil, 0o644)
	cmd.Process.Release()
}
