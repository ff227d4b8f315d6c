package loadgen

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// serve runs h on a loopback port until the test ends.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestBudgetSharedAcrossRunsAndNon2xx(t *testing.T) {
	var n atomic.Int64
	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Release", "r7")
		if r.Host != "app.example" {
			w.WriteHeader(http.StatusBadRequest)
		}
		// Every third answer is a 404: a non-2xx failure, not "other".
		if n.Add(1)%3 == 0 {
			w.WriteHeader(http.StatusNotFound)
		}
	})
	b := NewBudget(90)
	wait := StartMix(context.Background(), Mix{Network: "tcp", Addr: addr, Host: "app.example",
		Clients: 4, KeepAlive: 0.5, SlowClients: 2, SlowPath: "/slow", Duration: 10 * time.Second,
		Budget: b, ReleaseHeader: "X-Release"})
	res := wait().All()
	if res.Requests != 90 || !b.Exhausted() {
		t.Fatalf("%d requests, budget exhausted %v: want 90 and true", res.Requests, b.Exhausted())
	}
	if res.Failed[Status] != 30 || res.Failures() != 30 {
		t.Errorf("failed %v: want 30 non-2xx and nothing else", res.Failed)
	}
	for _, s := range res.Samples {
		if s.Release != "r7" || s.Failed != (s.Kind != "") || (s.Failed && s.Err != "status 404") {
			t.Fatalf("sample %+v: want release r7 on every answer, failures as status 404", s)
		}
	}
}

func TestRefusedAndWindows(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c := &Client{Network: "tcp", Addr: addr, Timeout: time.Second}
	if _, err := c.Do("/"); Classify(err) != Refused {
		t.Errorf("GET on a closed port: %v classified %q, want %q", err, Classify(err), Refused)
	}

	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	samples := []Sample{
		{Start: at(0), Latency: 5 * time.Millisecond},    // before
		{Start: at(95), Latency: 10 * time.Millisecond},  // overlaps the window's start
		{Start: at(150), Latency: 1 * time.Millisecond},  // inside
		{Start: at(300), Latency: 1 * time.Millisecond},  // after
		{Start: at(150), Latency: 1, Failed: true},       // failures are left out
		{Start: at(190), Latency: 20 * time.Millisecond}, // overlaps the end
	}
	in, out := SplitByWindows(samples, []Window{{at(100), at(200)}, {at(120), at(130)}})
	if len(in) != 3 || len(out) != 2 {
		t.Errorf("in %v, out %v: want 3 in, 2 out", in, out)
	}
}

// Failures are listed with their connection up to MaxFailures, and only
// counted past it; a refused connect has no connection to name.
func TestFailedConnsBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res := Run(context.Background(), Config{Network: "tcp", Addr: addr, Clients: 2, MaxRequests: 10,
		MaxFailures: 3, NoSamples: true, Duration: 10 * time.Second})
	if res.Failed[Refused] != 10 || len(res.FailedConns) != 3 || res.FailedDropped != 7 || len(res.Samples) != 0 {
		t.Fatalf("%v: %d listed, %d dropped, %d samples; want 10 refused, 3 listed, 7 dropped, no samples",
			res, len(res.FailedConns), res.FailedDropped, len(res.Samples))
	}
	for _, f := range res.FailedConns {
		if f.Kind != Refused || f.Conn != (Conn{}) || f.At.IsZero() {
			t.Errorf("failure %+v: want refused, no connection, a time", f)
		}
	}

	// A server that closes after reading: the failure names both ends.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Read(make([]byte, 512))
			c.Close()
		}
	}()
	t0 := time.Now()
	res = Run(context.Background(), Config{Network: "tcp", Addr: ln.Addr().String(), Clients: 1, MaxRequests: 1})
	if len(res.FailedConns) != 1 {
		t.Fatalf("%v: want 1 failure listed", res)
	}
	f := res.FailedConns[0]
	if f.Conn.Remote.String() != ln.Addr().String() || !f.Conn.Local.Addr().IsLoopback() || f.Conn.Local.Port() == 0 ||
		f.Conn.Dialed.Before(t0) || f.At.Before(f.Conn.Dialed) {
		t.Errorf("failure %+v: want the connection's ends on loopback, dialed after %s and before the failure", f, t0)
	}
}
