package listener

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// HTTPDrainer lets an http.Server hand its clients over to the next
// generation without failing a request.
//
// http.Server.Shutdown alone closes idle keep-alive connections at once; a
// client that sent its next request at that moment sees EOF or a reset
// (golang/go#65802: a connection accepted just before Shutdown whose
// request is read after it began is closed unanswered). While draining, HTTPDrainer instead answers
// every request with "Connection: close", so busy keep-alive clients leave
// after their next response, and only then shuts down what is still idle.
type HTTPDrainer struct {
	srv      *http.Server
	serving  sync.WaitGroup // Serve calls still in their accept loop
	mu       sync.Mutex
	conns    map[net.Conn]http.ConnState
	draining bool
	changed  chan struct{} // closed and replaced on every connection change
}

// NewHTTPDrainer wraps srv.Handler and srv.ConnState; call it before Serve.
func NewHTTPDrainer(srv *http.Server) *HTTPDrainer {
	d := &HTTPDrainer{srv: srv, conns: make(map[net.Conn]http.ConnState), changed: make(chan struct{})}
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &closingWriter{ResponseWriter: w, d: d}
		next.ServeHTTP(cw, r)
		if !cw.wroteHeader {
			cw.WriteHeader(http.StatusOK) // what net/http would send; now with our header
		}
	})
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		d.mu.Lock()
		if st == http.StateClosed || st == http.StateHijacked {
			delete(d.conns, c)
		} else {
			d.conns[c] = st
		}
		close(d.changed)
		d.changed = make(chan struct{})
		d.mu.Unlock()
		if prev != nil {
			prev(c, st)
		}
	}
	return d
}

func (d *HTTPDrainer) isDraining() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.draining
}

// closingWriter decides on "Connection: close" when the response starts,
// not when the request did: a slow request that began before the drain must
// still send its client away, or the client's next request lands on this
// worker again and the drain lasts twice as long.
type closingWriter struct {
	http.ResponseWriter
	d           *HTTPDrainer
	wroteHeader bool
}

func (w *closingWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.wroteHeader = true
		if w.d.isDraining() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *closingWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush, Hijack and deadlines.
func (w *closingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Serve runs srv.Serve(ln) for Drain to wait on: a connection accepted at
// the moment the listener closes is only tracked once Serve has handed it
// on, and Serve returns only after that.
func (d *HTTPDrainer) Serve(ln net.Listener) error {
	d.serving.Add(1)
	defer d.serving.Done()
	return d.srv.Serve(ln)
}

// Drain closes lns, sends STOPPING=1 (sd_notify(3)) once nothing more is
// accepted, lets clients finish, and returns when every connection is gone
// or ctx ends. grace bounds how long idle keep-alive connections
// are waited for before they are closed. Serve on lns through d.Serve, not
// srv.Serve.
func (d *HTTPDrainer) Drain(ctx context.Context, lns []net.Listener, grace time.Duration) error {
	for _, ln := range lns {
		ln.Close()
	}
	d.mu.Lock()
	d.draining = true
	d.mu.Unlock()
	// Until every Serve has returned, a connection may be accepted but not
	// yet counted; Shutdown would then close it before its first request
	// is answered.
	served := make(chan struct{})
	go func() { d.serving.Wait(); close(served) }()
	select {
	case <-served:
		// Nothing is accepted any more: tell the supervisor, which then
		// tells the deploy that the old code no longer takes connections.
		Notify("STOPPING=1")
	case <-ctx.Done():
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		n, changed := len(d.conns), d.changed
		d.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-changed:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		break
	}
	// What remains is idle past the grace period, or mid-request: Shutdown
	// closes the former and waits for the latter. It also closes the
	// listeners again, which says net.ErrClosed: they are ours, and closed.
	if err := d.srv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// ServeHTTP is the whole life of a Go HTTP worker under baton in one call:
// it serves srv on every inherited socket, reports ready, and on SIGTERM or
// SIGQUIT drains (see HTTPDrainer) within timeout. It returns nil after a
// clean drain.
func ServeHTTP(srv *http.Server, timeout time.Duration) error {
	m, err := Listeners()
	if err != nil {
		return err
	}
	lns := make([]net.Listener, 0, len(m))
	for _, ln := range m {
		lns = append(lns, ln)
	}
	return ServeHTTPOn(srv, lns, timeout)
}

// ServeHTTPOn is ServeHTTP on listeners the caller chose.
func ServeHTTPOn(srv *http.Server, lns []net.Listener, timeout time.Duration) error {
	d := NewHTTPDrainer(srv)
	// Catch the drain signal before the first accept: a TERM that lands
	// between the two would otherwise kill the process with its default
	// action, and with it a connection already accepted.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGINT)
	defer signal.Stop(sig)
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func(ln net.Listener) { errc <- d.Serve(ln) }(ln)
	}
	if err := Ready(); err != nil {
		return err
	}
	select {
	case <-sig:
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.Drain(ctx, lns, time.Second)
}
