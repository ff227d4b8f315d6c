//go:build linux

package supervisor

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
