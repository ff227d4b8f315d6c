// Package loadgen is the HTTP/1.1 load generator shared by baton's tests and
// its benchmark (scripts/zdbench). It speaks raw HTTP/1.1 over TCP or unix
// sockets so that every failure is seen: unlike net/http's Transport it does
// not hide a request that failed on a reused connection, except for the one
// retry RFC 9112 §9.3.1 allows (an idempotent request on a reused connection
// that got no byte of response), which it counts apart.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// Failure kinds.
const (
	Refused = "refused" // connect: ECONNREFUSED
	Reset   = "reset"   // ECONNRESET or EPIPE
	EOF     = "eof"     // connection closed before a full response
	Timeout = "timeout"
	Status5 = "5xx"
	Other   = "other"
)

// Config describes one load run. Every run stops by itself: at Duration, at
// MaxRequests, or when ctx ends, whichever comes first.
type Config struct {
	Network     string        // "tcp" or "unix"
	Addr        string        // host:port or socket path
	Path        string        // request path; default "/"
	Clients     int           // concurrent clients; default 16
	KeepAlive   float64       // share of clients that reuse their connection, 0..1
	Duration    time.Duration // default 10s
	MaxRequests int           // 0: no cap besides Duration
	Timeout     time.Duration // per request; default 5s
	// Pause is how long each client waits between its requests; 0 sends
	// the next at once. Tests that share the CPU with what they drive
	// (Ansible, sshd) use it to keep concurrency without saturating it.
	Pause time.Duration
	// OnResponse, if set, sees every successful response body (from many
	// goroutines at once).
	OnResponse func(body []byte)
}

// Sample is one finished request.
type Sample struct {
	Start   time.Time
	Latency time.Duration
	Failed  bool
}

// Result sums up a run.
type Result struct {
	Requests int            // finished, failed or not
	Failed   map[string]int // by kind
	Retried  int            // idempotent retries after an idle keep-alive close
	Examples []string       // the first few failures, for messages
	Samples  []Sample
	Elapsed  time.Duration
}

// Failures is the total of Failed.
func (r *Result) Failures() int {
	n := 0
	for _, v := range r.Failed {
		n += v
	}
	return n
}

func (r *Result) String() string {
	return fmt.Sprintf("%d requests in %s, %d failed %v, %d retried; first failures: %q",
		r.Requests, r.Elapsed.Round(time.Millisecond), r.Failures(), r.Failed, r.Retried, r.Examples)
}

// Run drives load until the run's bounds are reached.
func Run(ctx context.Context, cfg Config) *Result {
	if cfg.Clients <= 0 {
		cfg.Clients = 16
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	var (
		mu     sync.Mutex
		res    = &Result{Failed: make(map[string]int)}
		issued int
	)
	take := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if cfg.MaxRequests > 0 && issued >= cfg.MaxRequests {
			return false
		}
		issued++
		return true
	}
	keepAliveClients := int(float64(cfg.Clients)*cfg.KeepAlive + 0.5)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		wg.Add(1)
		go func(keepAlive bool) {
			defer wg.Done()
			c := &Client{Network: cfg.Network, Addr: cfg.Addr, KeepAlive: keepAlive, Timeout: cfg.Timeout}
			defer c.Close()
			var local []Sample
			for ctx.Err() == nil && take() {
				t0 := time.Now()
				body, retried, err := c.Get(cfg.Path)
				s := Sample{Start: t0, Latency: time.Since(t0), Failed: err != nil}
				local = append(local, s)
				if err == nil && cfg.OnResponse != nil {
					cfg.OnResponse(body)
				}
				mu.Lock()
				res.Requests++
				if retried {
					res.Retried++
				}
				if err != nil {
					res.Failed[Classify(err)]++
					if len(res.Examples) < 5 {
						res.Examples = append(res.Examples, err.Error())
					}
				}
				mu.Unlock()
				if cfg.Pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(cfg.Pause):
					}
				}
			}
			mu.Lock()
			res.Samples = append(res.Samples, local...)
			mu.Unlock()
		}(i < keepAliveClients)
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// Client sends GET requests one at a time, on one connection if KeepAlive.
type Client struct {
	Network   string
	Addr      string
	KeepAlive bool
	Timeout   time.Duration

	conn net.Conn
	br   *bufio.Reader
	used bool // conn has carried a request already
}

// StatusError is a response with a 5xx (or otherwise unwanted) status.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return fmt.Sprintf("status %d", e.Code) }

// Get sends one request and returns the body of a 2xx response. retried
// reports the RFC 9112 idle-close retry.
func (c *Client) Get(path string) (body []byte, retried bool, err error) {
	body, early, err := c.try(path)
	if err != nil && early {
		// The server closed a reused idle connection as we sent: the request
		// was not processed; any HTTP client retries it once.
		body, _, err = c.try(path)
		return body, true, err
	}
	return body, false, err
}

func (c *Client) try(path string) (body []byte, early bool, err error) {
	if c.conn == nil {
		d := net.Dialer{Timeout: c.Timeout}
		conn, err := d.Dial(c.Network, c.Addr)
		if err != nil {
			return nil, false, err
		}
		c.conn, c.br, c.used = conn, bufio.NewReader(conn), false
	}
	reused := c.used
	c.used = true
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	connHdr := "keep-alive"
	if !c.KeepAlive {
		connHdr = "close"
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: loadgen\r\nConnection: " + connHdr + "\r\n\r\n"
	if _, err := io.WriteString(c.conn, req); err != nil {
		c.Close()
		return nil, reused, err
	}
	if _, err := c.br.Peek(1); err != nil {
		c.Close()
		return nil, reused && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)), err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.Close()
		return nil, false, err
	}
	var buf bytes.Buffer
	_, err = io.Copy(&buf, resp.Body)
	resp.Body.Close()
	if err != nil {
		c.Close()
		return nil, false, err
	}
	if resp.Close || !c.KeepAlive {
		c.Close()
	}
	if resp.StatusCode >= 300 {
		return nil, false, &StatusError{resp.StatusCode}
	}
	return buf.Bytes(), false, nil
}

// Close drops the connection, if any.
func (c *Client) Close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// Classify names the kind of a request failure.
func Classify(err error) string {
	var se *StatusError
	var ne net.Error
	switch {
	case errors.As(err, &se) && se.Code >= 500:
		return Status5
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Reset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return EOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Timeout
	}
	return Other
}
