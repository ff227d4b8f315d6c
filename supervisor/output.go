//go:build linux

package supervisor

import (
	"bufio"
	"errors"
	"io"
	"os"
	"sync"

	"go.uber.org/zap"
)

// Worker output modes.
const (
	OutputTagged  = "tagged"  // the master logs every line with generation, worker and pid
	OutputInherit = "inherit" // workers write to baton's own stdout and stderr
)

// OutputMessage is the log message of every relayed line of worker output
// (tagged mode); a log sink may treat these entries apart.
const OutputMessage = "worker output"

const (
	maxLine      = 16 << 10 // longer lines are logged in pieces
	tailLines    = 20       // stderr lines kept for failure reports
	tailLineSize = 400      // bytes kept of each of them
)

// stderrTail keeps the last lines a worker wrote to stderr, so a failed
// start can say what the worker said before it died.
type stderrTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *stderrTail) add(line string) {
	if len(line) > tailLineSize {
		line = line[:tailLineSize] + "…"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == tailLines {
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:tailLines-1]
	}
	t.lines = append(t.lines, line)
}

func (t *stderrTail) snapshot() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines...)
}

// workerPipes are the read ends of one worker's stdout and stderr.
//
// With tee (--worker-output inherit) only stderr goes through a pipe: its
// bytes are copied to baton's own stderr as they come, and its last lines
// are kept for failure reports too, so reports are the same in both modes.
// stdout is then baton's own (outR and outW are nil).
type workerPipes struct {
	outR, outW, errR, errW *os.File
	tee                    bool
	tail                   stderrTail
	done                   chan struct{} // closed when the streams hit EOF
}

func newWorkerPipes(tee bool) (*workerPipes, error) {
	p := &workerPipes{done: make(chan struct{}), tee: tee}
	var err error
	if !tee {
		if p.outR, p.outW, err = os.Pipe(); err != nil {
			return nil, err
		}
	}
	if p.errR, p.errW, err = os.Pipe(); err != nil {
		if !tee {
			p.outR.Close()
			p.outW.Close()
		}
		return nil, err
	}
	return p, nil
}

// started closes the write ends the worker now holds and starts reading.
// Reading runs outside the master's loop: a flood of output costs the
// pumps' goroutines time, never the loop's, and memory stays bounded by
// maxLine per stream.
//
// Each line is logged with message msg and event ev, and handed to onLine if it is set.
func (p *workerPipes) started(log *zap.Logger, msg string, ev zap.Field, onLine func(stream, line string)) {
	p.errW.Close()
	if p.tee {
		go func() { teePump(p.errR, os.Stderr, &p.tail); close(p.done) }()
		return
	}
	p.outW.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(p.outR, log, msg, ev, "stdout", nil, onLine) }()
	go func() { defer wg.Done(); pump(p.errR, log, msg, ev, "stderr", &p.tail, onLine) }()
	go func() { wg.Wait(); close(p.done) }()
}

// abandon closes everything when the worker never started.
func (p *workerPipes) abandon() {
	for _, f := range []*os.File{p.outR, p.outW, p.errR, p.errW} {
		if f != nil {
			f.Close()
		}
	}
}

// teePump copies r to w as bytes arrive (a prompt or a progress bar without
// a newline is not held back) and keeps the last lines in tail.
func teePump(r *os.File, w io.Writer, tail *stderrTail) {
	defer r.Close()
	buf := make([]byte, 32<<10)
	var line []byte // the current, unfinished line, at most tailLineSize+1 bytes
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
			for _, c := range buf[:n] {
				if c == '\n' {
					tail.add(string(trimNewline(append(line, c))))
					line = line[:0]
				} else if len(line) <= tailLineSize {
					line = append(line, c)
				}
			}
		}
		if err != nil {
			if len(line) > 0 {
				tail.add(string(line))
			}
			return
		}
	}
}

func pump(r *os.File, log *zap.Logger, msg string, ev zap.Field, stream string, tail *stderrTail, onLine func(stream, line string)) {
	defer r.Close()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			partial := errors.Is(err, bufio.ErrBufferFull)
			s := string(trimNewline(line))
			fields := []zap.Field{ev, zap.String("stream", stream), zap.String("line", s)}
			if partial {
				fields = append(fields, zap.Bool("partial", true))
			}
			log.Info(msg, fields...)
			if tail != nil {
				tail.add(s)
			}
			if onLine != nil {
				onLine(stream, s)
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				log.Warn("worker output read failed", zap.String("stream", stream), zap.Error(err))
			}
			return
		}
	}
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}
