//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/baton-sh/baton/supervisor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the one logger baton uses: console lines for a person at
// a terminal, journald's native protocol when stderr is the journal
// (journal.go), JSON for log shippers and files. No sampling (every
// lifecycle event matters) and no stack traces (errors here are user-facing).
//
// With a log file, the second result reopens it (for logrotate's SIGUSR1).
// Entries go out through an asyncSink: logging never blocks the caller.
func newLogger(format, level, file string) (*zap.Logger, func() error, func() uint64, error) {
	return buildLogger(format, level, file, nil)
}

// buildLogger is newLogger with the journal's writer given (tests), or nil
// for the real one.
func buildLogger(format, level, file string, journalOut io.Writer) (*zap.Logger, func() error, func() uint64, error) {
	if format == "" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && file == "" {
			format = "console"
		} else if file == "" && stderrIsJournal() {
			format = "journal"
		}
	}
	cfg := zap.NewProductionConfig()
	cfg.Sampling = nil
	cfg.DisableStacktrace = true
	cfg.DisableCaller = true
	switch format {
	case "json", "journal": // the journal's entries are made from the JSON ones
		cfg.EncoderConfig.TimeKey = "ts"
		cfg.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		cfg.EncoderConfig.EncodeDuration = func(d time.Duration, enc zapcore.PrimitiveArrayEncoder) { enc.AppendFloat64(float64(d) / 1e6) } // milliseconds, fractional
	case "console":
		cfg.Encoding = "console"
		cfg.EncoderConfig = zap.NewDevelopmentEncoderConfig()
		cfg.EncoderConfig.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	default:
		return nil, nil, nil, fmt.Errorf("--log-format %q: want console, json or journal", format)
	}
	if format == "journal" && file != "" {
		return nil, nil, nil, fmt.Errorf("--log-format journal with --log-file %q: the journal is the output; drop one", file)
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	enc := zapcore.NewJSONEncoder(cfg.EncoderConfig)
	if format == "console" {
		enc = zapcore.NewConsoleEncoder(cfg.EncoderConfig)
	}
	// The "dropped" notice, encoded like every other entry.
	notice := func(n uint64) []byte {
		buf, err := enc.Clone().EncodeEntry(zapcore.Entry{Level: zapcore.WarnLevel, Time: time.Now(), LoggerName: "log",
			Message: "log entries dropped: the log output was not keeping up"}, []zapcore.Field{zap.Uint64("dropped", n)})
		if err != nil {
			return nil
		}
		return buf.Bytes()
	}
	var out io.Writer = os.Stderr
	syncOut := os.Stderr.Sync
	var reopen func() error
	if file != "" {
		rf, err := openReopenable(file)
		if err != nil {
			return nil, nil, nil, err
		}
		out, syncOut, reopen = rf, rf.Sync, rf.reopen
	} else if format == "journal" {
		out = journalOut
		if out == nil {
			out = newJournalWriter(os.Stderr)
		}
	}
	sink := newAsyncSink(out, syncOut, notice)
	core := splitCore{
		own:     zapcore.NewCore(enc, sink, cfg.Level),
		relayed: zapcore.NewCore(enc.Clone(), zapcore.AddSync(sink.relayed()), cfg.Level),
	}
	return zap.New(core), reopen, sink.dropped.Load, nil
}

// splitCore sends relayed worker output (supervisor.OutputMessage) to a
// writer that may wait and is dropped first, and the master's own entries
// to one that never waits (asyncSink).
type splitCore struct{ own, relayed zapcore.Core }

func (c splitCore) Enabled(l zapcore.Level) bool { return c.own.Enabled(l) }

func (c splitCore) With(f []zapcore.Field) zapcore.Core {
	return splitCore{c.own.With(f), c.relayed.With(f)}
}

func (c splitCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c splitCore) Write(e zapcore.Entry, f []zapcore.Field) error {
	if e.Message == supervisor.OutputMessage {
		return c.relayed.Write(e, f)
	}
	return c.own.Write(e, f)
}

func (c splitCore) Sync() error { return c.own.Sync() }

// reopenable is a log file that logrotate can move away: reopen starts a
// new file at the same path.
type reopenable struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

func openReopenable(path string) (*reopenable, error) {
	r := &reopenable{path: path}
	if err := r.reopen(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *reopenable) reopen() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("--log-file %q: %w", r.path, err)
	}
	r.mu.Lock()
	old := r.f
	r.f = f
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (r *reopenable) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Write(b)
}

func (r *reopenable) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Sync()
}

func syncLogger(l *zap.Logger) {
	// Syncing a terminal or pipe stderr fails with EINVAL/ENOTTY; nothing lost.
	// A stuck or broken output cannot take the complaint either.
	if err := l.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTTY) &&
		!errors.Is(err, errLogStuck) && !errors.Is(err, syscall.EPIPE) {
		fmt.Fprintln(os.Stderr, "baton: sync log:", err)
	}
}
