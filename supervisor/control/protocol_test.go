package control

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// ---- DecodeRequest ----

func TestDecodeRequestGood(t *testing.T) {
	tests := []struct {
		have string
		want string
	}{
		{`{"cmd":"status"}`, "status"},
		{`{"cmd":"reload"}` + "\n", "reload"},
		{`{"cmd":"stop"}`, "stop"},
		{`{"cmd":"stop"}` + "\r\n", "stop"},
		{` { "cmd" : "status" } ` + "\n", "status"},
		{"\t{\"cmd\":\"reload\"}\n", "reload"},
		{`{"cmd":"st\u0061tus"}`, "status"}, // JSON escapes are decoded
	}
	for _, tt := range tests {
		got, err := DecodeRequest([]byte(tt.have))
		if err != nil {
			t.Errorf("DecodeRequest(%q): unexpected error: %v", tt.have, err)
			continue
		}
		if string(got.Cmd) != tt.want {
			t.Errorf("DecodeRequest(%q): have cmd %q, want %q", tt.have, got.Cmd, tt.want)
		}
	}
}

func TestDecodeRequestBad(t *testing.T) {
	tests := []struct {
		have string
		why  string // a fragment of the error message
	}{
		{`{"cmd":"nope"}`, `unknown cmd "nope"`},
		{`{"cmd":"STATUS"}`, `unknown cmd "STATUS"`}, // commands are case-sensitive
		{`{"cmd":" status"}`, `unknown cmd " status"`},
		{`{"cmd":""}`, `unknown cmd ""`},
		{`{"cmd":null}`, `unknown cmd ""`},
		{`{}`, `unknown cmd ""`},
		{`null`, `unknown cmd ""`},
		{`{"cmd":"stop","x":1}`, `unknown field "x"`},
		{`{"x":1}`, `unknown field "x"`},
		{`{"cmd":"status","reason":"why"}`, `unknown field "reason"`},
		{`not json`, "invalid character"},
		{``, "EOF"},
		{"\n", "EOF"},
		{`{"cmd":"status"`, "EOF"},
		{`{"cmd":"status",}`, "invalid character"},
		{`{"cmd":1}`, "cannot unmarshal number"},
		{`{"cmd":["status"]}`, "cannot unmarshal array"},
		{`"status"`, "cannot unmarshal string"},
		{`["status"]`, "cannot unmarshal array"},
		{`{'cmd':'status'}`, "invalid character"},
	}
	for _, tt := range tests {
		got, err := DecodeRequest([]byte(tt.have))
		if err == nil {
			t.Errorf("DecodeRequest(%q): have %+v, want an error", tt.have, got)
			continue
		}
		if !strings.HasPrefix(err.Error(), "bad control request: ") {
			t.Errorf("DecodeRequest(%q): error %q lacks the \"bad control request: \" prefix", tt.have, err)
		}
		if !strings.Contains(err.Error(), tt.why) {
			t.Errorf("DecodeRequest(%q): error %q does not say %q", tt.have, err, tt.why)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"cmd":"status"}`, `{"cmd":"reload"}` + "\n", `{"cmd":"nope"}`, `{"cmd":"stop","x":1}`,
		`not json`, `{}`, ``, `null`, `{"cmd":null}`, `{"cmd":"stop"}{"cmd":"reload"}`,
		`{"CMD":"status"}`, `{"cmd":"nope","cmd":"stop"}`, `{"cmd":"st\u0061tus"}`,
		`{"cmd":"` + strings.Repeat("x", 4096) + `"}`, strings.Repeat("[", 512),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := DecodeRequest(line)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "bad control request: ") {
				t.Fatalf("DecodeRequest(%q): error %q lacks its prefix", line, err)
			}
			return
		}
		switch req.Cmd {
		case "status", "reload", "stop":
		default:
			t.Fatalf("DecodeRequest(%q): accepted cmd %q", line, req.Cmd)
		}
		// What was accepted began with a JSON object.
		var m map[string]json.RawMessage
		if err := json.NewDecoder(strings.NewReader(string(line))).Decode(&m); err != nil || m == nil {
			t.Fatalf("DecodeRequest(%q) = %+v, but the line does not start with a JSON object (%v)", line, req, err)
		}
	})
}

func TestDefaultPath(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	for _, tt := range []struct{ pid, want string }{
		{"/run/app/app.pid", "/run/app/app.sock"},
		{"/run/app/baton", "/run/app/baton.sock"},
	} {
		if have := DefaultPath(tt.pid, nil); have != tt.want {
			t.Errorf("DefaultPath(%q) = %q, want %q", tt.pid, have, tt.want)
		}
	}
	// Two services without pid files: two sockets; the order of --listen
	// does not matter.
	a := DefaultPath("", []string{"tcp://127.0.0.1:8080", "unix:///run/a.sock"})
	if a != DefaultPath("", []string{"unix:///run/a.sock", "tcp://127.0.0.1:8080"}) || a == DefaultPath("", []string{"tcp://127.0.0.1:8081"}) {
		t.Errorf("default paths by listen specs are not one per service: %q", a)
	}
	if !strings.HasPrefix(a, "/run/user/1000/baton/") {
		t.Errorf("default path %q is not in the runtime directory", a)
	}
	// A pid file so deep that app.sock beside it would not fit in sun_path.
	deep := "/srv/" + strings.Repeat("d", 100) + "/app.pid"
	if have := DefaultPath(deep, nil); len(have) > MaxPath || !strings.HasPrefix(have, "/run/user/1000/baton/pid-") || have == DefaultPath(deep+"x", nil) {
		t.Errorf("DefaultPath of a deep pid file = %q", have)
	}
	if err := CheckPath(strings.TrimSuffix(deep, ".pid") + ".sock"); !errors.Is(err, ErrPathTooLong) {
		t.Errorf("CheckPath of %d bytes: %v", len(deep)+1, err)
	}
}
