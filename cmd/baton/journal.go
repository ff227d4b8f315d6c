//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/baton-sh/baton/supervisor"
	"github.com/coreos/go-systemd/v22/journal"
)

// stderrIsJournal says whether baton's stderr is systemd's journal stream
// (JOURNAL_STREAM names stderr's device and inode): then baton logs through
// journald's native protocol instead, so that its fields can be filtered on.
// A malformed JOURNAL_STREAM counts as no.
func stderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// journalWriter turns the JSON entries of baton's logger into journal
// entries sent with journald's native protocol (go-systemd's journal
// package): MESSAGE is the message with the entry's own fields after it as
// key=value (a relayed worker line is the line itself), PRIORITY comes from
// the level, and every field is also a journal field of its own in
// journald's spelling (generation → GENERATION, master_pid → MASTER_PID,
// event → EVENT; a worker's pid → WORKER_PID).
//
// It sits behind asyncSink, so a slow journald stalls the sink's goroutine
// only. When the journal cannot take an entry (journald gone: its socket
// refuses), the JSON line goes to fallback (baton's stderr) instead.
type journalWriter struct {
	send     func(msg string, pri journal.Priority, vars map[string]string) error
	fallback io.Writer
}

func newJournalWriter(fallback io.Writer) *journalWriter {
	return &journalWriter{send: journal.Send, fallback: fallback}
}

// Write sends one JSON-encoded entry; it returns the fallback's error, if
// both outputs failed.
func (w *journalWriter) Write(b []byte) (int, error) {
	msg, pri, vars, err := journalEntry(b)
	if err == nil {
		err = w.send(msg, pri, vars)
	}
	if err != nil {
		return w.fallback.Write(b)
	}
	return len(b), nil
}

// contextFields are journal fields not repeated in MESSAGE: those every
// entry of a master or worker carries (from the logger's With), and the
// event name, which the message already says in words.
var contextFields = map[string]bool{"generation": true, "master_pid": true, "keeper_pid": true, "worker": true, "pid": true, "event": true}

// journalEntry maps one JSON entry (see newLogger) to MESSAGE, PRIORITY and
// the other journal fields.
func journalEntry(b []byte) (string, journal.Priority, map[string]string, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var e map[string]any
	if err := d.Decode(&e); err != nil {
		return "", 0, nil, fmt.Errorf("decode log entry: %w", err)
	}
	msg, _ := e["msg"].(string)
	level, _ := e["level"].(string)
	vars := map[string]string{"SYSLOG_IDENTIFIER": "baton"}
	if l, ok := e["logger"].(string); ok {
		vars["LOGGER"] = l
	}
	delete(e, "msg")
	delete(e, "level")
	delete(e, "logger")
	delete(e, "ts")
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var text strings.Builder
	text.WriteString(msg)
	_, hasWorker := e["worker"]
	for _, k := range keys {
		v := journalValue(e[k])
		name := journalName(k)
		if k == "pid" && hasWorker {
			name = "WORKER_PID"
		}
		vars[name] = v
		if msg == supervisor.OutputMessage || contextFields[k] {
			continue
		}
		text.WriteString(" " + k + "=")
		if v == "" || strings.ContainsAny(v, " \t\"=") {
			v = strconv.Quote(v)
		}
		text.WriteString(v)
	}
	if msg == supervisor.OutputMessage {
		// The worker's own line, as journalctl would show it had the
		// worker written to the journal itself.
		line, _ := e["line"].(string)
		return line, priority(level), vars, nil
	}
	return text.String(), priority(level), vars, nil
}

// priority maps zap's level names to syslog priorities.
func priority(level string) journal.Priority {
	switch level {
	case "debug":
		return journal.PriDebug
	case "info":
		return journal.PriInfo
	case "warn":
		return journal.PriWarning
	case "error":
		return journal.PriErr
	case "dpanic", "panic", "fatal":
		return journal.PriCrit
	}
	return journal.PriNotice
}

// journalName spells a zap field name the way journald wants field names:
// upper case letters, digits and underscores, not starting with an
// underscore (those are journald's trusted fields) or a digit.
func journalName(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] == '_' || b[0] >= '0' && b[0] <= '9' {
		return "F_" + string(b)
	}
	return string(b)
}

// journalValue renders a decoded JSON value: strings as they are, numbers
// as written, anything else as compact JSON.
func journalValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	case nil:
		return ""
	}
	j, _ := json.Marshal(v)
	return string(j)
}
