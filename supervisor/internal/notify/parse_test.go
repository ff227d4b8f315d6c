//go:build linux

package notify

import (
	"maps"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	long := strings.Repeat("x", 64<<10)
	tests := []struct {
		have string
		want map[string]string
	}{
		{"READY=1", map[string]string{"READY": "1"}},
		{"READY=1\nSTATUS=x", map[string]string{"READY": "1", "STATUS": "x"}},
		{"MAINPID=1\nREADY=1\n", map[string]string{"MAINPID": "1", "READY": "1"}},
		{"WATCHDOG=1", map[string]string{"WATCHDOG": "1"}},
		{"", map[string]string{}},
		{"\n\n", map[string]string{}},
		{"=", map[string]string{}},      // empty key: ignored
		{"=value", map[string]string{}}, // empty key: ignored
		{"A", map[string]string{}},      // no '=': ignored
		{"A\nB\nREADY=1", map[string]string{"READY": "1"}},
		{"READY=", map[string]string{"READY": ""}},
		{"STATUS=a=b=c", map[string]string{"STATUS": "a=b=c"}}, // split at the first '='
		{"STATUS=\n", map[string]string{"STATUS": ""}},
		{"READY=1\nREADY=0", map[string]string{"READY": "0"}}, // the last one wins
		{"\n\nREADY=1\n\n", map[string]string{"READY": "1"}},
		{"STATUS= spaced out ", map[string]string{"STATUS": " spaced out "}}, // values are not trimmed
		{"STATUS=" + long, map[string]string{"STATUS": long}},
		{"BATON_STDERR=" + long + "\nREADY=1", map[string]string{"BATON_STDERR": long, "READY": "1"}},
		{"\xff\xfe=\x00", map[string]string{"\xff\xfe": "\x00"}},                  // bytes pass through
		{"READY=1\r\nSTATUS=x\r", map[string]string{"READY": "1", "STATUS": "x"}}, // "\r" splits too, as in systemd
	}
	for _, tt := range tests {
		got := Parse([]byte(tt.have))
		if got == nil {
			t.Errorf("Parse(%.40q): have nil map", tt.have)
			continue
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("Parse(%.40q)\n have %.200q\n want %.200q", tt.have, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"READY=1", "READY=1\nSTATUS=x", "MAINPID=1\nREADY=1\n", "", "=", "A", "WATCHDOG=1",
		"STATUS=" + strings.Repeat("v", 4096), "STATUS=" + strings.Repeat("a=b\n", 512),
		"READY=1\r\n", "READY=1\nREADY=0", "\x00=\x00", "==", "\n=\n", "BATON_BARRIER=1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Parse(b)
		if got == nil {
			t.Fatalf("Parse(%q): nil map", b)
		}
		for k, v := range got {
			if k == "" || strings.ContainsAny(k, "\r\n=") {
				t.Fatalf("Parse(%q): key %q is empty or holds '\\n', '\\r' or '='", b, k)
			}
			if strings.ContainsAny(v, "\r\n") {
				t.Fatalf("Parse(%q): value %q of %q holds '\\n'", b, v, k)
			}
		}
		// Every "KEY=VALUE" line with a non-empty key is in the map, the
		// last line for a key winning, and nothing else is.
		want := make(map[string]string)
		for _, line := range strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' || r == '\r' }) {
			if i := strings.IndexByte(line, '='); i > 0 {
				want[line[:i]] = line[i+1:]
			}
		}
		if !maps.Equal(got, want) {
			t.Fatalf("Parse(%q)\n have %q\n want %q", b, got, want)
		}
	})
}
