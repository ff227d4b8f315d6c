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
type workerPipes struct {
	outR, outW, errR, errW *os.File
	tail                   stderrTail
	done                   chan struct{} // closed when both streams hit EOF
}

func newWorkerPipes() (*workerPipes, error) {
	p := &workerPipes{done: make(chan struct{})}
	var err error
	if p.outR, p.outW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if p.errR, p.errW, err = os.Pipe(); err != nil {
		p.outR.Close()
		p.outW.Close()
		return nil, err
	}
	return p, nil
}

// started closes the write ends the worker now holds and starts reading.
// Reading runs outside the master's loop: a flood of output costs the
// pumps' goroutines time, never the loop's, and memory stays bounded by
// maxLine per stream.
//
// Each line is logged with message msg, and handed to onLine if it is set.
func (p *workerPipes) started(log *zap.Logger, msg string, onLine func(stream, line string)) {
	p.outW.Close()
	p.errW.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(p.outR, log, msg, "stdout", nil, onLine) }()
	go func() { defer wg.Done(); pump(p.errR, log, msg, "stderr", &p.tail, onLine) }()
	go func() { wg.Wait(); close(p.done) }()
}

// abandon closes everything when the worker never started.
func (p *workerPipes) abandon() {
	for _, f := range []*os.File{p.outR, p.outW, p.errR, p.errW} {
		f.Close()
	}
}

func pump(r *os.File, log *zap.Logger, msg, stream string, tail *stderrTail, onLine func(stream, line string)) {
	defer r.Close()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			partial := errors.Is(err, bufio.ErrBufferFull)
			s := string(trimNewline(line))
			fields := []zap.Field{zap.String("stream", stream), zap.String("line", s)}
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
