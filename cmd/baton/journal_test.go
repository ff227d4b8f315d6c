//go:build linux

package main

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
)

// sentEntry is one journal entry a fake journald received.
type sentEntry struct {
	msg  string
	pri  journal.Priority
	vars map[string]string
}

// journalLogger is newLogger's journal pipeline (JSON entries through an
// asyncSink into a journalWriter) with a fake journald; fallback stands for
// stderr. The entries are in the fake once the logger is synced.
func journalLogger(t *testing.T, send func(string, journal.Priority, map[string]string) error, fallback io.Writer) *zap.Logger {
	t.Helper()
	log, _, _, err := buildLogger("journal", "debug", "", &journalWriter{send: send, fallback: fallback})
	if err != nil {
		t.Fatal(err)
	}
	return log
}

// The fields a user filters on are journal fields of their own, MESSAGE is
// readable, PRIORITY follows the level, and a relayed worker line is the
// line itself with the worker's fields.
func TestJournalEntryFields(t *testing.T) {
	var got []sentEntry
	var mu sync.Mutex
	var fallback bytes.Buffer
	log := journalLogger(t, func(m string, p journal.Priority, v map[string]string) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, sentEntry{m, p, v})
		return nil
	}, &fallback)
	master := log.Named("master").With(zap.Int("generation", 2), zap.Int("master_pid", 4242))
	master.Warn("upgrade failed", zap.String("event", "upgrade_failed"), zap.String("reason", "worker 1 exited with code 3"))
	master.With(zap.Int("worker", 1), zap.Int("pid", 4300)).Info("worker output", zap.String("stream", "stderr"), zap.String("line", "boom: no config"))
	master.Error("x", zap.Int("9lives", 1), zap.String("a-b", "c"))
	if err := log.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("sent %d entries, want 3 (fallback got %q)", len(got), fallback.String())
	}
	e := got[0]
	if e.msg != `upgrade failed reason="worker 1 exited with code 3"` || e.pri != journal.PriWarning {
		t.Errorf("own entry: MESSAGE %q PRIORITY %d", e.msg, e.pri)
	}
	for k, v := range map[string]string{"GENERATION": "2", "MASTER_PID": "4242", "EVENT": "upgrade_failed", "REASON": "worker 1 exited with code 3", "LOGGER": "master", "SYSLOG_IDENTIFIER": "baton"} {
		if e.vars[k] != v {
			t.Errorf("own entry: %s=%q, want %q (all: %v)", k, e.vars[k], v, e.vars)
		}
	}
	w := got[1]
	if w.msg != "boom: no config" || w.pri != journal.PriInfo {
		t.Errorf("worker line: MESSAGE %q PRIORITY %d", w.msg, w.pri)
	}
	for k, v := range map[string]string{"GENERATION": "2", "MASTER_PID": "4242", "WORKER": "1", "WORKER_PID": "4300", "STREAM": "stderr"} {
		if w.vars[k] != v {
			t.Errorf("worker line: %s=%q, want %q (all: %v)", k, w.vars[k], v, w.vars)
		}
	}
	if _, ok := w.vars["PID"]; ok {
		t.Errorf("worker line: the worker's pid also as PID: %v", w.vars)
	}
	for k := range got[2].vars {
		if journalName(k) != k || strings.HasPrefix(k, "_") {
			t.Errorf("field name %q is not journald's spelling", k)
		}
	}
	if got[2].vars["F_9LIVES"] != "1" || got[2].vars["A_B"] != "c" || got[2].pri != journal.PriErr {
		t.Errorf("odd names: %v, PRIORITY %d", got[2].vars, got[2].pri)
	}
}

// When journald is gone the entry goes to stderr (the fallback) as JSON.
func TestJournalGoneFallsBackToStderr(t *testing.T) {
	var fallback bytes.Buffer
	log := journalLogger(t, func(string, journal.Priority, map[string]string) error {
		return errors.New("dial unixgram /run/systemd/journal/socket: connection refused")
	}, &fallback)
	log.Info("serving", zap.Int("generation", 1))
	log.Sync()
	if s := fallback.String(); !strings.Contains(s, `"msg":"serving"`) || !strings.Contains(s, `"generation":1`) {
		t.Fatalf("fallback got %q", s)
	}
}
