//go:build linux

package sockets

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// specTestLongPath returns "/" followed by n-1 bytes of 'x': a path of n bytes.
func specTestLongPath(n int) string { return "/" + strings.Repeat("x", n-1) }

func TestParseSpecGood(t *testing.T) {
	tests := []struct {
		have  string
		index int
		want  Spec
	}{
		// Bare addresses get tcp and the default name.
		{":8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: ":8080"}},
		{":0", 0, Spec{Name: "listen0", Network: "tcp", Addr: ":0"}},
		{":65535", 0, Spec{Name: "listen0", Network: "tcp", Addr: ":65535"}},
		{"127.0.0.1:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: "127.0.0.1:8080"}},
		{"[::1]:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: "[::1]:8080"}},
		{"[::]:80", 0, Spec{Name: "listen0", Network: "tcp", Addr: "[::]:80"}},
		{"localhost:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: "localhost:8080"}},
		{"my-host.example.com:443", 0, Spec{Name: "listen0", Network: "tcp", Addr: "my-host.example.com:443"}},
		{"  :8080\t\n", 0, Spec{Name: "listen0", Network: "tcp", Addr: ":8080"}}, // surrounding space is trimmed

		// Schemes.
		{"tcp://:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: ":8080"}},
		{"tcp://127.0.0.1:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: "127.0.0.1:8080"}},
		{"tcp://[::1]:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: "[::1]:8080"}},
		{"tcp://localhost:8080", 0, Spec{Name: "listen0", Network: "tcp", Addr: "localhost:8080"}},
		{"tcp4://127.0.0.1:1", 0, Spec{Name: "listen0", Network: "tcp4", Addr: "127.0.0.1:1"}},
		{"tcp4://:1", 0, Spec{Name: "listen0", Network: "tcp4", Addr: ":1"}},
		{"tcp4://localhost:1", 0, Spec{Name: "listen0", Network: "tcp4", Addr: "localhost:1"}},
		{"tcp6://[::1]:1", 0, Spec{Name: "listen0", Network: "tcp6", Addr: "[::1]:1"}},
		{"tcp6://:1", 0, Spec{Name: "listen0", Network: "tcp6", Addr: ":1"}},
		// An IPv4-mapped IPv6 address written in IPv6 form is an IPv6 address.
		{"tcp6://[::ffff:127.0.0.1]:1", 0, Spec{Name: "listen0", Network: "tcp6", Addr: "[::ffff:127.0.0.1]:1"}},
		{"unix:///tmp/a.sock", 0, Spec{Name: "listen0", Network: "unix", Addr: "/tmp/a.sock"}},
		{"unix://relative.sock", 0, Spec{Name: "listen0", Network: "unix", Addr: "relative.sock"}},
		{"unix://@abstract", 0, Spec{Name: "listen0", Network: "unix", Addr: "@abstract"}},
		{"mptcp://127.0.0.1:1", 0, Spec{Name: "listen0", Network: "mptcp", Addr: "127.0.0.1:1"}},
		{"unix://" + specTestLongPath(107), 0, Spec{Name: "listen0", Network: "unix", Addr: specTestLongPath(107)}},

		// Names.
		{"http=:8080", 0, Spec{Name: "http", Network: "tcp", Addr: ":8080"}},
		{"http=127.0.0.1:8080", 3, Spec{Name: "http", Network: "tcp", Addr: "127.0.0.1:8080"}},
		{"v6=[::1]:8080", 0, Spec{Name: "v6", Network: "tcp", Addr: "[::1]:8080"}},
		{"api=unix:///run/x.sock", 0, Spec{Name: "api", Network: "unix", Addr: "/run/x.sock"}},
		{"api=unix:///run/x=y.sock", 0, Spec{Name: "api", Network: "unix", Addr: "/run/x=y.sock"}},
		{"admin=tcp4://127.0.0.1:9000", 0, Spec{Name: "admin", Network: "tcp4", Addr: "127.0.0.1:9000"}},
		{"a.b-c_d=:1", 0, Spec{Name: "a.b-c_d", Network: "tcp", Addr: ":1"}},
		{strings.Repeat("n", 255) + "=:1", 0, Spec{Name: strings.Repeat("n", 255), Network: "tcp", Addr: ":1"}},
		// An '=' after the first ':' or '/' is not a name separator.
		{"unix:///tmp/a=b.sock", 0, Spec{Name: "listen0", Network: "unix", Addr: "/tmp/a=b.sock"}},

		// Default names follow the index.
		{":8080", 1, Spec{Name: "listen1", Network: "tcp", Addr: ":8080"}},
		{"unix:///tmp/a.sock", 7, Spec{Name: "listen7", Network: "unix", Addr: "/tmp/a.sock"}},
		{"[::1]:1", 12, Spec{Name: "listen12", Network: "tcp", Addr: "[::1]:1"}},
	}
	for _, tt := range tests {
		got, err := ParseSpec(tt.have, tt.index)
		if err != nil {
			t.Errorf("ParseSpec(%q, %d): unexpected error: %v", tt.have, tt.index, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseSpec(%q, %d)\n have %+v\n want %+v", tt.have, tt.index, got, tt.want)
		}
	}
}

func TestParseSpecBad(t *testing.T) {
	tests := []struct {
		have string
		why  string // a fragment of the error message
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"\t\n", "empty"},
		{"8080", "want [host]:port"},
		{"localhost", "want [host]:port"},
		{":", "port"},
		{":99999", "port"},
		{":+80", "port"},
		{":-0", "port"},
		{"256.1.1.1:80", "neither an IP address nor a host name"},
		{":65536", "port"},
		{":-1", "port"},
		{":http", "port"},
		{":80:80", "want [host]:port"},
		{"::1:80", "want [host]:port"}, // an IPv6 host needs brackets
		{"[::1]", "want [host]:port"},
		{"udp://:53", "unknown scheme"},
		{"http://:80", "unknown scheme"},
		{"TCP://:80", "unknown scheme"}, // schemes are case-sensitive
		{"://:80", "unknown scheme"},
		{"tcp4://[::1]:80", "tcp4 with an IPv6 address"},
		{"tcp6://127.0.0.1:80", "tcp6 with an IPv4 address"},
		{"tcp6://[127.0.0.1]:80", "tcp6 with an IPv4 address"},
		{"bad_host:80", "neither an IP address nor a host name"},
		{"a..b:80", "neither an IP address nor a host name"},
		{"-x-.:80", "neither an IP address nor a host name"},
		{strings.Repeat("a", 64) + ".com:80", "neither an IP address nor a host name"},
		{"[fe80::1%eth0]:80", "neither an IP address nor a host name"},

		// Names.
		{"=:80", "empty name"},
		{"my api=:80", "printable ASCII"},
		{"a\tb=:80", "printable ASCII"},
		{"caf\u00e9=:80", "printable ASCII"},
		{"a\x00=:80", "printable ASCII"},
		{"a\x7f=:80", "printable ASCII"},
		{strings.Repeat("n", 256) + "=:80", "longer than 255"},
		// "a:b" holds a ':', so it is not taken for a name (names never hold
		// ':'): the whole value is then an address with too many colons.
		{"a:b=:80", "want [host]:port"},
		// Likewise a '/' or '[' before the '=' means "not a name"; what is
		// left is no valid address.
		{"a/b=:80", "neither an IP address nor a host name"},
		{"a[b=:80", "want [host]:port"},
		// Name given, address bad.
		{"http=", "want [host]:port"},
		{"http=8080", "want [host]:port"},
		{"http=udp://:53", "unknown scheme"},
		{"x=y=:80", "neither an IP address nor a host name"},

		// unix.
		{"unix://", "empty unix socket path"},
		{"unix://@", "empty unix socket path"},
		{"api=unix://", "empty unix socket path"},
		{"unix://" + specTestLongPath(108), "longer than 107 bytes"},
		// (Linux would take "@" and 107 more bytes for an abstract name,
		// which ParseSpec refuses too; 108 more is too long either way.)
		{"unix://@" + strings.Repeat("x", 108), "longer than 107 bytes"},
		{"unix:/tmp/a.sock", "port"}, // not the unix scheme: "unix" host, "/tmp/a.sock" port
		{"unix:///a.sock?mode=0999", "want octal permission bits"},
		{"unix:///a.sock?mode=01777", "want octal permission bits"},
		{"unix:///a.sock?owner=root", "unknown option"},
		{"unix:///a.sock?user=no-such-user-baton", "no such user"},
		{"unix:///a.sock?group=no-such-group-baton", "no such group"},
		{"unix://@a?mode=0600", "abstract socket has no file mode"},
		{"mptcp4://127.0.0.1:1", "unknown scheme"},
	}
	for _, tt := range tests {
		got, err := ParseSpec(tt.have, 0)
		if err == nil {
			t.Errorf("ParseSpec(%q): have %+v, want an error", tt.have, got)
			continue
		}
		if !errors.Is(err, ErrBadSpec) {
			t.Errorf("ParseSpec(%q): error %q does not wrap ErrBadSpec", tt.have, err)
		}
		if q := fmt.Sprintf("%q", tt.have); !strings.Contains(err.Error(), q) {
			t.Errorf("ParseSpec(%q): error %q does not name the value %s", tt.have, err, q)
		}
		if !strings.Contains(err.Error(), tt.why) {
			t.Errorf("ParseSpec(%q): error %q does not say %q", tt.have, err, tt.why)
		}
		if got != (Spec{}) {
			t.Errorf("ParseSpec(%q): have %+v beside the error, want the zero Spec", tt.have, got)
		}
	}
}

func TestParseSpecsGood(t *testing.T) {
	tests := []struct {
		have []string
		want []Spec
	}{
		{nil, []Spec{}},
		{[]string{}, []Spec{}},
		{
			[]string{":8080", "unix:///tmp/a.sock", "tcp6://[::1]:9"},
			[]Spec{{Name: "listen0", Network: "tcp", Addr: ":8080"}, {Name: "listen1", Network: "unix", Addr: "/tmp/a.sock"}, {Name: "listen2", Network: "tcp6", Addr: "[::1]:9"}},
		},
		{
			[]string{"http=:80", ":443", "admin=unix://@adm"},
			[]Spec{{Name: "http", Network: "tcp", Addr: ":80"}, {Name: "listen1", Network: "tcp", Addr: ":443"}, {Name: "admin", Network: "unix", Addr: "@adm"}},
		},
		// The same address under different networks is not a duplicate
		// by this check (the kernel may still refuse the second bind).
		{
			[]string{":80", "tcp4://:81", "tcp4://127.0.0.1:80"},
			[]Spec{{Name: "listen0", Network: "tcp", Addr: ":80"}, {Name: "listen1", Network: "tcp4", Addr: ":81"}, {Name: "listen2", Network: "tcp4", Addr: "127.0.0.1:80"}},
		},
		// A unix path and a tcp address that spell the same are different.
		{
			[]string{"unix://:80", ":80"},
			[]Spec{{Name: "listen0", Network: "unix", Addr: ":80"}, {Name: "listen1", Network: "tcp", Addr: ":80"}},
		},
	}
	for _, tt := range tests {
		got, err := ParseSpecs(tt.have)
		if err != nil {
			t.Errorf("ParseSpecs(%q): unexpected error: %v", tt.have, err)
			continue
		}
		if got == nil {
			t.Errorf("ParseSpecs(%q): have nil, want a non-nil slice", tt.have)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("ParseSpecs(%q)\n have %+v\n want %+v", tt.have, got, tt.want)
		}
	}
}

func TestParseSpecsBad(t *testing.T) {
	tests := []struct {
		have []string
		bad  string // the value the error must name
		why  string
	}{
		{[]string{":80", ""}, "", "empty"},
		{[]string{":80", "udp://:53", ":81"}, "udp://:53", "unknown scheme"},
		{[]string{"a=:80", "a=:81"}, "a=:81", `name "a" used twice`},
		{[]string{"a=:80", "unix:///x", "a=unix:///y"}, "a=unix:///y", `name "a" used twice`},
		// An explicit name may collide with a later default name.
		{[]string{"listen1=:80", ":81"}, ":81", `name "listen1" used twice`},
		{[]string{":80", ":80"}, ":80", "address listed twice"},
		{[]string{"a=:80", "b=:80"}, "b=:80", "address listed twice"},
		{[]string{":80", "tcp://:80"}, "tcp://:80", "address listed twice"},
		{[]string{"[::1]:80", "tcp://[::1]:80"}, "tcp://[::1]:80", "address listed twice"},
		{[]string{"unix:///tmp/a.sock", "x=unix:///tmp/a.sock"}, "x=unix:///tmp/a.sock", "address listed twice"},
		{[]string{"tcp4://127.0.0.1:9", " tcp4://127.0.0.1:9 "}, " tcp4://127.0.0.1:9 ", "address listed twice"},
		// Addresses are compared in canonical form.
		{[]string{":80", ":080"}, ":080", "address listed twice"},
		{[]string{"[::1]:80", "[0:0::1]:80"}, "[0:0::1]:80", "address listed twice"},
	}
	for _, tt := range tests {
		got, err := ParseSpecs(tt.have)
		if err == nil {
			t.Errorf("ParseSpecs(%q): have %+v, want an error", tt.have, got)
			continue
		}
		if got != nil {
			t.Errorf("ParseSpecs(%q): have %+v beside the error, want nil", tt.have, got)
		}
		if !errors.Is(err, ErrBadSpec) {
			t.Errorf("ParseSpecs(%q): error %q does not wrap ErrBadSpec", tt.have, err)
		}
		if q := fmt.Sprintf("%q", tt.bad); !strings.Contains(err.Error(), q) {
			t.Errorf("ParseSpecs(%q): error %q does not name the value %s", tt.have, err, q)
		}
		if !strings.Contains(err.Error(), tt.why) {
			t.Errorf("ParseSpecs(%q): error %q does not say %q", tt.have, err, tt.why)
		}
	}
}

func TestSpecStringRoundTrip(t *testing.T) {
	for _, v := range []string{
		":8080", "http=[::1]:1", "tcp4://127.0.0.1:1", "tcp6://[::1]:1",
		"api=unix:///run/x.sock", "unix://@abstract", "localhost:0",
	} {
		s, err := ParseSpec(v, 4)
		if err != nil {
			t.Fatalf("ParseSpec(%q): %v", v, err)
		}
		again, err := ParseSpec(s.String(), 9)
		if err != nil || again != s {
			t.Errorf("ParseSpec(%q).String() = %q reparses to %+v, %v; want %+v", v, s.String(), again, err, s)
		}
	}
}

var specFuzzSeeds = []string{
	":8080", "127.0.0.1:8080", "[::1]:8080", "localhost:8080",
	"tcp://:8080", "tcp://127.0.0.1:8080", "tcp4://127.0.0.1:1", "tcp6://[::1]:1",
	"tcp6://[::ffff:127.0.0.1]:1", "unix:///tmp/a.sock", "unix://@abstract",
	"http=:8080", "api=unix:///run/x.sock", "api=unix:///run/x=y.sock",
	"", " ", "8080", ":99999", ":-1", ":+80", ":080", "udp://:53", "tcp4://[::1]:80",
	"tcp6://127.0.0.1:80", "=:80", "a:b=:80", "a b=:80", "a/b=:80", "x=y=:80",
	"unix://", "unix://@", "unix://" + specTestLongPath(107), "unix://" + specTestLongPath(108),
	"[fe80::1%eth0]:80", "[localhost]:80", "999.1.1.1:80", "tcp://tcp://:80",
	"caf\u00e9=:80", "\xff=:80", "unix:// x",
	"mptcp://127.0.0.1:1", "unix:///a.sock?mode=0660&user=0&group=0", "unix:///a.sock?mode=9", "unix://@a?mode=0600",
}

func FuzzParseSpec(f *testing.F) {
	for i, s := range specFuzzSeeds {
		f.Add(s, uint16(i%3))
	}
	f.Fuzz(func(t *testing.T, value string, index uint16) {
		s, err := ParseSpec(value, int(index))
		if err != nil {
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("ParseSpec(%q): error %q does not wrap ErrBadSpec", value, err)
			}
			if s != (Spec{}) {
				t.Fatalf("ParseSpec(%q): have %+v beside the error", value, s)
			}
			return
		}
		switch s.Network {
		case "tcp", "tcp4", "tcp6", "mptcp", "unix":
		default:
			t.Fatalf("ParseSpec(%q): network %q", value, s.Network)
		}
		if s.Name == "" {
			t.Fatalf("ParseSpec(%q): empty name", value)
		}
		if strings.ContainsRune(s.Name, ':') || strings.IndexFunc(s.Name, unicode.IsSpace) >= 0 {
			t.Fatalf("ParseSpec(%q): name %q holds ':' or white space", value, s.Name)
		}
		if s.Addr == "" {
			t.Fatalf("ParseSpec(%q): empty address", value)
		}
		if s.Network == "unix" && len(s.Addr) > 107 {
			t.Fatalf("ParseSpec(%q): unix address of %d bytes", value, len(s.Addr))
		}
		again, err := ParseSpec(s.String(), int(index)+1)
		if err != nil {
			t.Fatalf("ParseSpec(%q) = %+v; reparsing %q: %v", value, s, s.String(), err)
		}
		if !reflect.DeepEqual(again, s) {
			t.Fatalf("ParseSpec(%q) = %+v; reparsing %q gives %+v", value, s, s.String(), again)
		}
	})
}

func TestParseSpecUnixPerm(t *testing.T) {
	s, err := ParseSpec("web=unix:///run/a.sock?mode=0660&user=0&group=root", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := Perm{Mode: 0o660, UID: 0, GID: 0}
	if s.Addr != "/run/a.sock" || s.Perm == nil || *s.Perm != want {
		t.Fatalf("have %+v perm %+v, want /run/a.sock with %+v", s, s.Perm, want)
	}
	specs := []Spec{{Network: "unix", Addr: "/a"}, {Network: "unix", Addr: "/b", Perm: &Perm{Mode: 0o600, UID: 5, GID: -1}},
		{Network: "unix", Addr: "@c"}, {Network: "tcp", Addr: ":1"}}
	DefaultPerm(specs, 7, 8)
	if *specs[0].Perm != (Perm{Mode: 0o666, UID: 7, GID: 8}) || *specs[1].Perm != (Perm{Mode: 0o600, UID: 5, GID: 8}) ||
		specs[2].Perm != nil || specs[3].Perm != nil {
		t.Fatalf("DefaultPerm: %+v %+v %+v %+v", specs[0].Perm, specs[1].Perm, specs[2].Perm, specs[3].Perm)
	}
}

func TestAbstractUnixNameMayUseAllOfSunPath(t *testing.T) {
	name := "@" + strings.Repeat("a", 107) // 108 bytes: no NUL terminator needed
	if _, err := ParseSpec("unix://"+name, 0); err != nil {
		t.Fatalf("abstract name of 108 bytes: %v", err)
	}
	if _, err := ParseSpec("unix:///"+strings.Repeat("a", 107), 0); err == nil {
		t.Fatal("a 108-byte path was accepted: it leaves no room for the NUL")
	}
}

func TestMatchActivatedSockets(t *testing.T) {
	files := func(n int) []*os.File {
		var fs []*os.File
		for i := 0; i < n; i++ {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
			t.Cleanup(func() { r.Close() })
			fs = append(fs, r)
		}
		return fs
	}
	specs := []Spec{{Name: "admin"}, {Name: "web"}, {Name: "listen2"}}
	fs := files(3)
	act := []Activated{{Name: "web", File: fs[0]}, {Name: "unknown", File: fs[1]}, {Name: "admin", File: fs[2]}}
	m := match(specs, act)
	// By name where a name matches, else the next unused one in order.
	if m[0] != fs[2] || m[1] != fs[0] || m[2] != fs[1] {
		t.Fatalf("match: admin<-%v web<-%v listen2<-%v", m[0].Name(), m[1].Name(), m[2].Name())
	}
	// More sockets than specs: the spare ones are closed, not leaked.
	fs = files(2)
	m = match(specs[:1], []Activated{{Name: "x", File: fs[0]}, {Name: "y", File: fs[1]}})
	if len(m) != 1 || m[0] != fs[0] {
		t.Fatalf("match with a spare socket: %v", m)
	}
	if err := fs[1].Close(); err == nil {
		t.Fatal("the spare socket was left open")
	}
}
