// Package loadgen is the HTTP/1.1 load generator behind `baton verify`,
// baton's tests and its benchmark (scripts/zdbench). It speaks raw HTTP/1.1
// over TCP or unix sockets so that every failure is seen: unlike net/http's
// Transport it does not hide a request that failed on a reused connection,
// except for the one retry RFC 9112 §9.3.1 allows (an idempotent request on
// a reused connection that got no byte of response), which it counts apart.
//
// It lives beside cmd/baton rather than under an internal/ directory because
// scripts/zdbench imports it too, and baton's top level is fixed; it is not a
// stable API for anyone else.
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
	"net/netip"
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
	Timeout = "timeout" // no full response within Config.Timeout
	Status  = "non-2xx" // a complete response whose status is not 2xx
	Other   = "other"
)

// Kinds lists the failure kinds in the order reports show them.
var Kinds = []string{Refused, Reset, EOF, Timeout, Status, Other}

// Config describes one load run. Every run stops by itself: at Duration, at
// MaxRequests (or when Budget runs out), or when ctx ends, whichever comes
// first.
type Config struct {
	Network     string        // "tcp" or "unix"
	Addr        string        // host:port or socket path
	Host        string        // Host header; default "loadgen"
	Path        string        // request target, path and query; default "/"
	Clients     int           // concurrent clients; default 16
	KeepAlive   float64       // share of clients that reuse their connection, 0..1
	Duration    time.Duration // default 10s
	MaxRequests int           // 0: no cap besides Duration; ignored if Budget is set
	Budget      *Budget       // a request cap shared with other runs
	Timeout     time.Duration // per request, connect included; default 5s
	// Pause is how long each client waits between its requests; 0 sends
	// the next at once. Tests that share the CPU with what they drive
	// (Ansible, sshd) use it to keep concurrency without saturating it.
	Pause time.Duration
	// ReleaseHeader names a response header whose value each Sample
	// records (which release answered), on failed responses too.
	ReleaseHeader string
	// OnResponse, if set, sees every successful response body (from many
	// goroutines at once).
	OnResponse func(body []byte)
	// NoSamples keeps the counts and drops the per-request Samples: a soak
	// of an hour would otherwise hold tens of millions of them.
	NoSamples bool
	// MaxFailures caps Result.FailedConns (with or without samples); further
	// failures are only counted (Result.FailedDropped). Default 10,000:
	// about 1 MB.
	MaxFailures int
}

// DefaultMaxFailures is Config.MaxFailures's default.
const DefaultMaxFailures = 10000

// Conn names the connection a request went over: its two ends as the
// client saw them and when its dial began. Zero when no connection was made
// (refused, a connect timeout) and over unix sockets (no ports).
type Conn struct {
	Local  netip.AddrPort // the client's end: 127.0.0.1:EPHEMERAL on loopback
	Remote netip.AddrPort // the server's end
	// Dialed is when connect began (monotonic reading included): the
	// connection cannot exist before it, so a snapshot of a server's
	// connections taken after Dialed and before the failure saw this one
	// and no earlier user of the same ports.
	Dialed time.Time
}

// Failure is one failed request and the connection it failed on (for a
// request retried after an idle keep-alive close, the retry's).
type Failure struct {
	At   time.Time // when the failure was seen
	Kind string
	Conn Conn
}

// Sample is one finished request.
type Sample struct {
	Start   time.Time
	Latency time.Duration // until the response was read, or the failure
	Failed  bool
	Kind    string // failure kind, "" if it succeeded
	Err     string // failure message, "" if it succeeded
	Release string // value of Config.ReleaseHeader, if any
	Retried bool   // sent a second time after an idle keep-alive close
}

// End is when the request finished or failed.
func (s Sample) End() time.Time { return s.Start.Add(s.Latency) }

// Result sums up a run.
type Result struct {
	Requests int            // finished, failed or not
	Failed   map[string]int // by kind
	Retried  int            // idempotent retries after an idle keep-alive close
	Examples []string       // the first few failures, for messages
	// FailedConns lists failed requests with their connections, at most
	// Config.MaxFailures per Run; FailedDropped counts the ones past it.
	FailedConns   []Failure
	FailedDropped int
	Samples       []Sample
	Elapsed       time.Duration
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

// Budget is a cap on requests that several runs draw from. Safe for
// concurrent use.
type Budget struct {
	mu        sync.Mutex
	left      int // < 0: no cap
	exhausted bool
}

// NewBudget allows n requests; n <= 0 allows any number.
func NewBudget(n int) *Budget {
	if n <= 0 {
		n = -1
	}
	return &Budget{left: n}
}

// Take claims one request; false once the budget is spent.
func (b *Budget) Take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left == 0 {
		b.exhausted = true
		return false
	}
	if b.left > 0 {
		b.left--
	}
	return true
}

// Exhausted reports whether a client was refused a request: the load ended
// by the cap, not by its time or context.
func (b *Budget) Exhausted() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.exhausted
}

// Run drives load until the run's bounds are reached. It blocks until every
// client has stopped.
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
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = DefaultMaxFailures
	}
	budget := cfg.Budget
	if budget == nil {
		budget = NewBudget(cfg.MaxRequests)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	var (
		mu  sync.Mutex
		res = &Result{Failed: make(map[string]int)}
	)
	keepAliveClients := int(float64(cfg.Clients)*cfg.KeepAlive + 0.5)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		wg.Add(1)
		go func(keepAlive bool) {
			defer wg.Done()
			c := &Client{Network: cfg.Network, Addr: cfg.Addr, Host: cfg.Host, KeepAlive: keepAlive, Timeout: cfg.Timeout}
			defer c.Close()
			var local []Sample
			for ctx.Err() == nil && budget.Take() {
				t0 := time.Now()
				resp, err := c.Do(cfg.Path)
				s := Sample{Start: t0, Latency: time.Since(t0), Failed: err != nil, Retried: resp.Retried}
				if cfg.ReleaseHeader != "" && resp.Header != nil {
					s.Release = resp.Header.Get(cfg.ReleaseHeader)
				}
				if err != nil {
					s.Kind, s.Err = Classify(err), err.Error()
				} else if cfg.OnResponse != nil {
					cfg.OnResponse(resp.Body)
				}
				if !cfg.NoSamples {
					local = append(local, s)
				}
				mu.Lock()
				res.Requests++
				if s.Retried {
					res.Retried++
				}
				if err != nil {
					res.Failed[s.Kind]++
					if len(res.Examples) < 5 {
						res.Examples = append(res.Examples, s.Err)
					}
					if len(res.FailedConns) < cfg.MaxFailures {
						res.FailedConns = append(res.FailedConns, Failure{At: s.End(), Kind: s.Kind, Conn: resp.Conn})
					} else {
						res.FailedDropped++
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
	Host      string // Host header; default "loadgen"
	KeepAlive bool
	Timeout   time.Duration

	conn net.Conn
	br   *bufio.Reader
	used bool // conn has carried a request already
	info Conn // conn's ends and dial time
}

// addrPort is a TCP address as a netip.AddrPort, IPv4 unmapped; zero for
// other kinds (unix sockets).
func addrPort(a net.Addr) netip.AddrPort {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := t.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// StatusError is a complete response whose status is not 2xx.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return fmt.Sprintf("status %d", e.Code) }

// Response is what Do read. Header is set whenever a response head arrived,
// also with a StatusError.
type Response struct {
	Code    int
	Header  http.Header
	Body    []byte
	Retried bool // the RFC 9112 idle-close retry happened
	Conn    Conn // the connection the (last) attempt went over
}

// Get sends one request and returns the body of a 2xx response. retried
// reports the RFC 9112 idle-close retry.
func (c *Client) Get(path string) (body []byte, retried bool, err error) {
	r, err := c.Do(path)
	return r.Body, r.Retried, err
}

// Do sends one request and reads the whole response; a non-2xx status is a
// *StatusError. It blocks for at most Timeout per attempt.
func (c *Client) Do(path string) (Response, error) {
	r, early, err := c.try(path)
	if err != nil && early {
		// The server closed a reused idle connection as we sent: the request
		// was not processed; any HTTP client retries it once.
		r, _, err = c.try(path)
		r.Retried = true
	}
	return r, err
}

func (c *Client) try(path string) (r Response, early bool, err error) {
	if c.conn == nil {
		d := net.Dialer{Timeout: c.Timeout}
		dialed := time.Now()
		conn, err := d.Dial(c.Network, c.Addr)
		if err != nil {
			return r, false, err
		}
		c.conn, c.br, c.used = conn, bufio.NewReader(conn), false
		c.info = Conn{Local: addrPort(conn.LocalAddr()), Remote: addrPort(conn.RemoteAddr()), Dialed: dialed}
	}
	r.Conn = c.info
	reused := c.used
	c.used = true
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	connHdr := "keep-alive"
	if !c.KeepAlive {
		connHdr = "close"
	}
	host := c.Host
	if host == "" {
		host = "loadgen"
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: " + connHdr + "\r\n\r\n"
	if _, err := io.WriteString(c.conn, req); err != nil {
		c.Close()
		return r, reused, err
	}
	if _, err := c.br.Peek(1); err != nil {
		c.Close()
		return r, reused && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)), err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.Close()
		return r, false, err
	}
	r.Code, r.Header = resp.StatusCode, resp.Header
	var buf bytes.Buffer
	_, err = io.Copy(&buf, resp.Body)
	resp.Body.Close()
	if err != nil {
		c.Close()
		return r, false, err
	}
	if resp.Close || !c.KeepAlive {
		c.Close()
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return r, false, &StatusError{resp.StatusCode}
	}
	r.Body = buf.Bytes()
	return r, false, nil
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
	case errors.As(err, &se):
		return Status
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
