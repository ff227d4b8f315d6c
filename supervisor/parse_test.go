//go:build linux

package supervisor

import (
	"fmt"
	"maps"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ---- parseNotify ----

func TestParseNotify(t *testing.T) {
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
		got := parseNotify([]byte(tt.have))
		if got == nil {
			t.Errorf("parseNotify(%.40q): have nil map", tt.have)
			continue
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("parseNotify(%.40q)\n have %.200q\n want %.200q", tt.have, got, tt.want)
		}
	}
}

func FuzzParseNotify(f *testing.F) {
	for _, s := range []string{
		"READY=1", "READY=1\nSTATUS=x", "MAINPID=1\nREADY=1\n", "", "=", "A", "WATCHDOG=1",
		"STATUS=" + strings.Repeat("v", 4096), "STATUS=" + strings.Repeat("a=b\n", 512),
		"READY=1\r\n", "READY=1\nREADY=0", "\x00=\x00", "==", "\n=\n", "BATON_BARRIER=1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := parseNotify(b)
		if got == nil {
			t.Fatalf("parseNotify(%q): nil map", b)
		}
		for k, v := range got {
			if k == "" || strings.ContainsAny(k, "\r\n=") {
				t.Fatalf("parseNotify(%q): key %q is empty or holds '\\n', '\\r' or '='", b, k)
			}
			if strings.ContainsAny(v, "\r\n") {
				t.Fatalf("parseNotify(%q): value %q of %q holds '\\n'", b, v, k)
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
			t.Fatalf("parseNotify(%q)\n have %q\n want %q", b, got, want)
		}
	})
}

// ---- ParseReadyRule ----

func TestParseReadyRuleGood(t *testing.T) {
	tests := []struct {
		have string
		want ReadyRule
	}{
		{"notify", ReadyRule{Mode: ReadyNotify}},
		{"notify:", ReadyRule{Mode: ReadyNotify}}, // an empty argument is tolerated
		{"delay:2s", ReadyRule{Mode: ReadyDelay, Delay: 2 * time.Second}},
		{"delay:0", ReadyRule{Mode: ReadyDelay}},
		{"delay:0s", ReadyRule{Mode: ReadyDelay}},
		{"delay:1.5s", ReadyRule{Mode: ReadyDelay, Delay: 1500 * time.Millisecond}},
		{"delay:1m30s", ReadyRule{Mode: ReadyDelay, Delay: 90 * time.Second}},
		{"delay:250ms", ReadyRule{Mode: ReadyDelay, Delay: 250 * time.Millisecond}},
		{"delay:+1s", ReadyRule{Mode: ReadyDelay, Delay: time.Second}},
		{"exec:true", ReadyRule{Mode: ReadyExec, Probe: "true"}},
		// Only the first ':' separates: the command keeps its own.
		{"exec:curl -fs http://127.0.0.1:8080/health", ReadyRule{Mode: ReadyExec, Probe: "curl -fs http://127.0.0.1:8080/health"}},
		{"exec: /bin/check arg", ReadyRule{Mode: ReadyExec, Probe: " /bin/check arg"}}, // kept as given
	}
	for _, tt := range tests {
		got, err := ParseReadyRule(tt.have)
		if err != nil {
			t.Errorf("ParseReadyRule(%q): unexpected error: %v", tt.have, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseReadyRule(%q)\n have %+v\n want %+v", tt.have, got, tt.want)
		}
		if again, err := ParseReadyRule(got.String()); err != nil || again != got {
			t.Errorf("ParseReadyRule(%q).String() = %q reparses to %+v, %v", tt.have, got.String(), again, err)
		}
	}
}

func TestParseReadyRuleBad(t *testing.T) {
	tests := []struct {
		have string
		why  string
	}{
		{"", "want notify, delay:DURATION or exec:COMMAND"},
		{"bogus", "want notify, delay:DURATION or exec:COMMAND"},
		{"Notify", "want notify, delay:DURATION or exec:COMMAND"}, // case-sensitive
		{"notify:1", "want notify, delay:DURATION or exec:COMMAND"},
		{" notify", "want notify, delay:DURATION or exec:COMMAND"},
		{":2s", "want notify, delay:DURATION or exec:COMMAND"},
		{"delay", "want delay:DURATION"},
		{"delay:", "want delay:DURATION"},
		{"delay:2", "want delay:DURATION"}, // no unit
		{"delay:-1s", "want delay:DURATION"},
		{"delay:two", "want delay:DURATION"},
		{"delay: 2s", "want delay:DURATION"},
		{"delay:9999999999h", "want delay:DURATION"}, // overflows
		{"exec", "exec: needs a command"},
		{"exec:", "exec: needs a command"},
		{"exec: \t ", "exec: needs a command"},
	}
	for _, tt := range tests {
		got, err := ParseReadyRule(tt.have)
		if err == nil {
			t.Errorf("ParseReadyRule(%q): have %+v, want an error", tt.have, got)
			continue
		}
		if q := fmt.Sprintf("%q", tt.have); !strings.Contains(err.Error(), q) {
			t.Errorf("ParseReadyRule(%q): error %q does not name the value %s", tt.have, err, q)
		}
		if !strings.Contains(err.Error(), tt.why) {
			t.Errorf("ParseReadyRule(%q): error %q does not say %q", tt.have, err, tt.why)
		}
		if got != (ReadyRule{}) {
			t.Errorf("ParseReadyRule(%q): have %+v beside the error", tt.have, got)
		}
	}
}

func FuzzParseReadyRule(f *testing.F) {
	for _, s := range []string{
		"notify", "notify:", "notify:x", "delay:2s", "delay:-1s", "delay:", "delay:1.5h",
		"delay:2562047h47m16.854775807s", "exec:true", "exec:", "exec: ", "exec:a:b", "", ":",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReadyRule(s)
		if err != nil {
			if q := fmt.Sprintf("%q", s); !strings.Contains(err.Error(), q) {
				t.Fatalf("ParseReadyRule(%q): error %q does not name the value", s, err)
			}
			return
		}
		switch r.Mode {
		case ReadyNotify:
			if r.Delay != 0 || r.Probe != "" {
				t.Fatalf("ParseReadyRule(%q) = %+v: notify with arguments", s, r)
			}
		case ReadyDelay:
			if r.Delay < 0 || r.Probe != "" {
				t.Fatalf("ParseReadyRule(%q) = %+v", s, r)
			}
		case ReadyExec:
			if strings.TrimSpace(r.Probe) == "" || r.Delay != 0 {
				t.Fatalf("ParseReadyRule(%q) = %+v", s, r)
			}
		default:
			t.Fatalf("ParseReadyRule(%q): mode %d", s, r.Mode)
		}
		again, err := ParseReadyRule(r.String())
		if err != nil || again != r {
			t.Fatalf("ParseReadyRule(%q) = %+v; reparsing %q gives %+v, %v", s, r, r.String(), again, err)
		}
	})
}

// ---- ParseSignal ----

func TestParseSignalGood(t *testing.T) {
	tests := []struct {
		have string
		want syscall.Signal
	}{
		{"TERM", syscall.SIGTERM},
		{"SIGTERM", syscall.SIGTERM},
		{"term", syscall.SIGTERM},
		{"sigterm", syscall.SIGTERM},
		{"SigTerm", syscall.SIGTERM},
		{"QUIT", syscall.SIGQUIT},
		{"SIGQUIT", syscall.SIGQUIT},
		{"INT", syscall.SIGINT},
		{"sigint", syscall.SIGINT},
		{"HUP", syscall.SIGHUP},
		{"USR1", syscall.SIGUSR1},
		{"usr2", syscall.SIGUSR2},
		{"SIGUSR2", syscall.SIGUSR2},
		{"WINCH", syscall.SIGWINCH},
		{"KILL", syscall.SIGKILL},
		{"sigkill", syscall.SIGKILL},
	}
	for _, tt := range tests {
		got, err := ParseSignal(tt.have)
		if err != nil {
			t.Errorf("ParseSignal(%q): unexpected error: %v", tt.have, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseSignal(%q): have %v, want %v", tt.have, got, tt.want)
		}
		if again, err := ParseSignal(sigName(got)); err != nil || again != got {
			t.Errorf("ParseSignal(sigName(%v) = %q) = %v, %v", got, sigName(got), again, err)
		}
	}
}

func TestParseSignalBad(t *testing.T) {
	for _, have := range []string{
		"", "SIG", "sig", "TTIN", "SIGTTIN", "ttou", "SIGTTOU", // TTIN/TTOU are named but not accepted
		"15", "SIG15", "-15", " TERM", "TERM ", "SIGSIGTERM", "SIG_TERM", "SIG-TERM",
		"STOP", "SIGSTOP", "CHLD", "USR", "USR3", "TERMINATE", "TERM\x00",
	} {
		got, err := ParseSignal(have)
		if err == nil {
			t.Errorf("ParseSignal(%q): have %v, want an error", have, got)
			continue
		}
		if got != 0 {
			t.Errorf("ParseSignal(%q): have %v beside the error, want 0", have, got)
		}
		if q := fmt.Sprintf("%q", have); !strings.Contains(err.Error(), q) {
			t.Errorf("ParseSignal(%q): error %q does not name the value %s", have, err, q)
		}
	}
}

func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{
		"TERM", "sigterm", "QUIT", "INT", "HUP", "USR1", "usr2", "WINCH", "KILL",
		"TTIN", "SIGTTOU", "", "SIG", "15", "SIGSIGTERM", " TERM",
	} {
		f.Add(s)
	}
	accepted := map[syscall.Signal]bool{
		syscall.SIGTERM: true, syscall.SIGQUIT: true, syscall.SIGINT: true, syscall.SIGHUP: true,
		syscall.SIGUSR1: true, syscall.SIGUSR2: true, syscall.SIGWINCH: true, syscall.SIGKILL: true,
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := ParseSignal(s)
		if err != nil {
			if sig != 0 {
				t.Fatalf("ParseSignal(%q): %v beside the error", s, sig)
			}
			return
		}
		if !accepted[sig] {
			t.Fatalf("ParseSignal(%q) = %v, not an accepted drain signal", s, sig)
		}
		if again, err := ParseSignal(sigName(sig)); err != nil || again != sig {
			t.Fatalf("ParseSignal(%q) = %v; ParseSignal(%q) = %v, %v", s, sig, sigName(sig), again, err)
		}
	})
}
