package sockets

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Spec is one parsed --listen value.
type Spec struct {
	Name    string // LISTEN_FDNAMES entry; "listen<i>" when not given
	Network string // tcp, tcp4, tcp6 or unix
	Addr    string // host:port, or a filesystem path / "@abstract" name for unix
}

func (s Spec) String() string {
	if s.Network == "unix" {
		return s.Name + "=unix://" + s.Addr
	}
	return s.Name + "=" + s.Network + "://" + s.Addr
}

// ErrBadSpec is wrapped by every ParseSpec error.
var ErrBadSpec = errors.New("bad listen spec")

// ParseSpec parses a --listen value. index names the spec when it carries no
// name of its own. Accepted forms:
//
//	:8080  127.0.0.1:8080  [::1]:8080  localhost:8080
//	tcp://…  tcp4://…  tcp6://…  unix:///run/app.sock  unix://@abstract
//	NAME=any of the above
func ParseSpec(value string, index int) (Spec, error) {
	fail := func(why string) (Spec, error) {
		return Spec{}, fmt.Errorf("%w %q: %s", ErrBadSpec, value, why)
	}
	rest := strings.TrimSpace(value)
	if rest == "" {
		return fail("empty")
	}
	s := Spec{Name: "listen" + strconv.Itoa(index), Network: "tcp"}

	// A name never contains ':' or '/', so "a=b" before any of them is a name.
	if eq := strings.IndexByte(rest, '='); eq >= 0 && !strings.ContainsAny(rest[:eq], ":/[") {
		s.Name, rest = rest[:eq], rest[eq+1:]
		if err := checkName(s.Name); err != nil {
			return fail(err.Error())
		}
	}
	if scheme, addr, ok := strings.Cut(rest, "://"); ok {
		switch scheme {
		case "tcp", "tcp4", "tcp6", "unix":
			s.Network = scheme
		default:
			return fail(fmt.Sprintf("unknown scheme %q (want tcp, tcp4, tcp6 or unix)", scheme))
		}
		rest = addr
	}
	if s.Network == "unix" {
		if rest == "" || rest == "@" {
			return fail("empty unix socket path")
		}
		// sun_path holds 108 bytes: a path needs its NUL terminator, an
		// abstract name ("@…", the '@' standing for a leading NUL) does not.
		if limit := 107; len(rest) > limit && !(rest[0] == '@' && len(rest) <= limit+1) {
			return fail("unix socket path longer than 107 bytes")
		}
		s.Addr = rest
		return s, nil
	}

	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return fail("want [host]:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return fail(fmt.Sprintf("port %q is not a number from 0 to 65535", port))
	}
	port = strconv.Itoa(n) // canonical, so ":080" and ":80" are one address
	if ip := net.ParseIP(host); ip != nil {
		v6 := strings.Contains(host, ":")
		host = ip.String() // canonical too: [0:0::1] is [::1]
		if v6 && ip.To4() != nil {
			host = "::ffff:" + host // keep the v4-mapped form the user wrote
		}
	}
	if ip := net.ParseIP(host); host != "" && ip == nil && !validHostname(host) {
		return fail(fmt.Sprintf("host %q is neither an IP address nor a host name", host))
	} else if ip != nil {
		switch {
		case s.Network == "tcp4" && ip.To4() == nil:
			return fail("tcp4 with an IPv6 address")
		case s.Network == "tcp6" && ip.To4() != nil && !strings.Contains(host, ":"):
			return fail("tcp6 with an IPv4 address")
		}
	}
	s.Addr = net.JoinHostPort(host, port)
	return s, nil
}

// ParseSpecs parses every value and rejects duplicate names and addresses.
func ParseSpecs(values []string) ([]Spec, error) {
	specs := make([]Spec, 0, len(values))
	names := make(map[string]bool)
	addrs := make(map[string]bool)
	for i, v := range values {
		s, err := ParseSpec(v, i)
		if err != nil {
			return nil, err
		}
		if names[s.Name] {
			return nil, fmt.Errorf("%w %q: name %q used twice", ErrBadSpec, v, s.Name)
		}
		if key := s.Network + " " + s.Addr; addrs[key] {
			return nil, fmt.Errorf("%w %q: address listed twice", ErrBadSpec, v)
		} else {
			addrs[key] = true
		}
		names[s.Name] = true
		specs = append(specs, s)
	}
	return specs, nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name before '='")
	}
	if len(name) > 255 {
		return errors.New("name longer than 255 bytes")
	}
	for _, r := range name {
		// sd_listen_fds_with_names(3) splits on ':'; keep names printable ASCII.
		if r <= ' ' || r >= 0x7f || r == ':' {
			return fmt.Errorf("name %q may hold only printable ASCII other than ':'", name)
		}
	}
	return nil
}

func validHostname(h string) bool {
	// All digits and dots is a mistyped address (256.1.1.1), not a name.
	if len(h) > 253 || strings.Trim(h, "0123456789.") == "" {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}
